"""PostgreSQL: the schema and its migrations, the recorder, snapshots, queries."""
