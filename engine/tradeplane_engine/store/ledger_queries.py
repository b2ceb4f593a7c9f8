"""What the recorded ledger says about an account: its balances and its journal.

Both read what the ledger recorder wrote (``ledger_balances``, ``ledger_journal``).
Amounts are integers in the asset's smallest unit, given as decimal strings of units (the
database does not know the assets' decimals; the ledger does). A trader's account lives
in one shard; the system accounts (``$fees``, ``$clearing``, ``$world``) in every shard,
so their rows carry the shard.
"""

from __future__ import annotations

from typing import Any

import asyncpg

MAX_JOURNAL = 500
"""The most journal rows one page holds."""


async def account_balances(connection: asyncpg.Connection, account: str) -> dict[str, Any]:
    """``{"account", "balances": [{"shard", "asset", "available", "held", "sequence"}]}``,
    by shard and asset."""
    rows = await connection.fetch(
        "SELECT shard, asset, available, held, sequence FROM ledger_balances"
        " WHERE account = $1 ORDER BY shard, asset", account)
    return {"account": account, "balances": [
        {"shard": row["shard"], "asset": row["asset"], "available": str(int(row["available"])),
         "held": str(int(row["held"])), "sequence": row["sequence"]} for row in rows]}


async def account_journal(connection: asyncpg.Connection, account: str, *,
                          before: tuple[int, int] | None = None,
                          limit: int = 100) -> dict[str, Any]:
    """An account's journal rows, newest first: ``{"account", "entries", "next"?}``.

    ``before`` is the ``next`` of the previous page, ``[sequence, index]``: only rows
    before it. Pages stay whole across a command's several rows for the account."""
    limit = max(1, min(MAX_JOURNAL, limit))
    sequence, index = before if before is not None else (2**63 - 1, 0)
    rows = await connection.fetch(
        "SELECT shard, sequence, index, kind, asset, available_delta, held_delta, market,"
        " order_id, reference, sequenced_at FROM ledger_journal WHERE account = $1"
        " AND (sequence, index) < ($2, $3) ORDER BY sequence DESC, index DESC, shard"
        " LIMIT $4", account, sequence, index, limit)
    page: dict[str, Any] = {"account": account, "entries": [
        {"shard": row["shard"], "sequence": row["sequence"], "index": row["index"],
         "kind": row["kind"], "asset": row["asset"],
         "available": str(int(row["available_delta"])),
         "held": str(int(row["held_delta"])),
         "market": row["market"], "orderId": row["order_id"],
         "reference": row["reference"], "timestamp": row["sequenced_at"]}
        for row in rows]}
    if len(rows) == limit:
        page["next"] = [rows[-1]["sequence"], rows[-1]["index"]]
    return page


async def journal_sums(connection: asyncpg.Connection, shard: int, *,
                       through: int | None = None,
                       account: str | None = None) -> dict[tuple[str, str], tuple[int, int]]:
    """Σ of the journal's (available, held) changes per (account, asset) of a shard,
    through a command sequence (all: None), for one account or all."""
    rows = await connection.fetch(
        "SELECT account, asset, sum(available_delta) AS available, sum(held_delta) AS held"
        " FROM ledger_journal WHERE shard = $1 AND sequence <= $2"
        " AND ($3::text IS NULL OR account = $3) GROUP BY account, asset",
        shard, through if through is not None else 2**63 - 1, account)
    return {(row["account"], row["asset"]): (int(row["available"]), int(row["held"]))
            for row in rows}


async def recorded_balances(connection: asyncpg.Connection,
                            shard: int) -> dict[tuple[str, str], tuple[int, int]]:
    """``ledger_balances`` of a shard: (account, asset) → (available, held)."""
    rows = await connection.fetch(
        "SELECT account, asset, available, held FROM ledger_balances WHERE shard = $1",
        shard)
    return {(row["account"], row["asset"]): (int(row["available"]), int(row["held"]))
            for row in rows}


async def recorded_through(connection: asyncpg.Connection, shard: int) -> int:
    """The last ledger command sequence of a shard the recorder journaled (0: none)."""
    sequence = await connection.fetchval(
        "SELECT sequence FROM ledger_positions WHERE shard = $1", shard)
    return int(sequence or 0)
