"""tradeplane's matching engine: the pure core (``core``) and, later, the services around it."""
