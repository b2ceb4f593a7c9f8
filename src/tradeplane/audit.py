"""``tradeplane audit``: prove, against a live exchange, that no asset was created or lost.

It asks each ledger shard's leader for its status (``tp.ledger.<k>.status``) and checks:

1. every shard's own audit (``Ledger.audit()``) is empty;
2. per asset, the shards' ``$clearing`` balances sum to zero, once every shard has settled
   every market to the same command (until then: "not comparable yet", asked again
   until the timeout);
3. with a database: once the ledger recorder has journaled what the shard had applied,
   the journal's sums equal ``ledger_balances``, each command's movements sum to zero
   per asset, and the journal through the sequence of each live answer equals the
   live balances of every recorded account (``tp.ledger.<k>.balances``) and of the
   shard's system accounts (from the status).

Exit status: 0 when everything holds, 1 on a breach (each printed), 2 when the exchange
or the database cannot be asked.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal, InvalidOperation
from typing import IO, Any

import asyncpg
import msgspec
import nats
from nats.aio.client import Client as NatsClient

from tradeplane.trading import CONNECT_OPTIONS
from tradeplane_engine.access import Access
from tradeplane_engine.ledger import CLEARING, FEES, SYSTEM_ACCOUNTS, WORLD
from tradeplane_engine.store.database import redact
from tradeplane_engine.store.ledger_queries import (
    journal_sums,
    recorded_balances,
    recorded_through,
)
from tradeplane_engine.wire import ledger_subject

INBOX = "_INBOX.audit"
"""A shard answers status requests on ``_INBOX.`` reply subjects only."""
REQUEST_TIMEOUT = 5.0
POLL = 0.2
"""Seconds between two looks while waiting for settlement or the recorder."""

type Sums = dict[tuple[str, str], tuple[int, int]]


class AuditError(Exception):
    """The exchange or the database could not be asked (exit status 2)."""


class Audit:
    """One audit run: the breaches it found, and what it could not compare."""

    def __init__(self, nc: NatsClient, shards: int, timeout: float) -> None:
        self.nc = nc
        self.shards = shards
        self.deadline = asyncio.get_running_loop().time() + timeout
        self.breaches: list[str] = []
        self.notes: list[str] = []

    def expired(self) -> bool:
        return asyncio.get_running_loop().time() > self.deadline

    async def request(self, shard: int, what: str, body: Any = None) -> dict[str, Any]:
        subject = ledger_subject(shard, what)
        try:
            reply = await self.nc.request(subject, msgspec.json.encode(body or {}),
                                          timeout=REQUEST_TIMEOUT)
            answer: dict[str, Any] = msgspec.json.decode(reply.data)
        except (TimeoutError, nats.errors.Error, msgspec.DecodeError) as exc:
            raise AuditError(f"ledger shard {shard}: no answer on {subject} "
                             f"({type(exc).__name__}; is a replica leading?)") from exc
        return answer

    async def statuses(self) -> list[dict[str, Any]]:
        """Every shard's status, asked again until they have settled alike or time is up."""
        while True:
            statuses = [await self.request(shard, "status", {"audit": True})
                        for shard in range(self.shards)]
            for status in statuses:
                if "audit" not in status:
                    raise AuditError(f"ledger shard {status.get('shard')}: its status "
                                     f"has no audit ({str(status)[:120]})")
                if status.get("shards") != self.shards:
                    raise AuditError(f"ledger shard {status.get('shard')} is one of "
                                     f"{status.get('shards')} shards, not {self.shards}")
            if self.shards == 1 or _settled_alike(statuses) or self.expired():
                return statuses
            await asyncio.sleep(POLL)

    def check_statuses(self, statuses: list[dict[str, Any]]) -> None:
        for status in statuses:
            self.breaches += [f"shard {status['shard']}: {breach}" for breach in
                              status["audit"]]
        if not _settled_alike(statuses):
            self.notes.append("clearing across shards: not comparable yet (the shards "
                              "have not settled every market to the same command)")
            return
        for asset in sorted({asset for status in statuses for asset in status["clearing"]}):
            total = sum(status["clearing"].get(asset, 0) for status in statuses)
            if total:
                self.breaches.append(f"{asset}: the shards' $clearing sum to {total}, not 0")

    async def check_database(self, connection: asyncpg.Connection,
                             status: dict[str, Any]) -> None:
        shard = status["shard"]
        if not await self._recorded(connection, shard, status["sequence"]):
            return
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            sums = await journal_sums(connection, shard)
            recorded = await recorded_balances(connection, shard)
        self._compare(f"shard {shard}: ledger_balances", recorded, "the journal", sums)
        for asset in sorted({asset for _, asset in sums}):
            total = sum(available + held for (_, of), (available, held) in sums.items()
                        if of == asset)
            if total:
                self.breaches.append(f"shard {shard}: {asset}: the journal sums to {total}, "
                                     "not 0")
        through = await journal_sums(connection, shard, through=status["sequence"])
        world = {asset: status["withdrawn"].get(asset, 0) - status["deposited"].get(asset, 0)
                 for asset in {*status["deposited"], *status["withdrawn"]}}
        for account, live in ((CLEARING, status["clearing"]), (FEES, status["fees"]),
                              (WORLD, world)):
            self._compare(f"shard {shard}: {account} live", _units_of(account, live),
                          f"the journal through {status['sequence']}",
                          {key: value for key, value in through.items() if key[0] == account})
        for account in sorted({account for account, _ in recorded} - set(SYSTEM_ACCOUNTS)):
            await self._check_account(connection, shard, account, status["decimals"])

    async def _check_account(self, connection: asyncpg.Connection, shard: int, account: str,
                             decimals: dict[str, int]) -> None:
        answer = await self.request(shard, "balances", {"account": account})
        if "error" in answer:
            self.breaches.append(f"shard {shard}: {account}: {answer['error']}")
            return
        try:
            live = {(account, asset): (_units(amounts["available"], decimals[asset]),
                                       _units(amounts["held"], decimals[asset]))
                    for asset, amounts in answer["balances"].items()}
        except (KeyError, ValueError, InvalidOperation) as exc:
            self.breaches.append(f"shard {shard}: {account}: balances not in units of "
                                 f"their assets ({exc!r})")
            return
        if not await self._recorded(connection, shard, answer["sequence"]):
            return
        journal = await journal_sums(connection, shard, through=answer["sequence"],
                                     account=account)
        self._compare(f"shard {shard}: {account} live", live,
                      f"the journal through {answer['sequence']}", journal)

    async def _recorded(self, connection: asyncpg.Connection, shard: int,
                        sequence: int) -> bool:
        """Wait until the recorder has journaled command ``sequence``; a breach if not."""
        while (through := await recorded_through(connection, shard)) < sequence:
            if self.expired():
                self.breaches.append(f"shard {shard}: recorded through command {through}, "
                                     f"the ledger is at {sequence} (is the recorder "
                                     "recording it?)")
                return False
            await asyncio.sleep(POLL)
        return True

    def _compare(self, what: str, found: Sums, against: str, expected: Sums) -> None:
        for key in sorted(set(found) | set(expected)):
            one, other = found.get(key, (0, 0)), expected.get(key, (0, 0))
            if one != other:
                self.breaches.append(f"{what}: {key[0]} {key[1]}: (available, held) "
                                     f"{one}; {against}: {other}")


def _settled_alike(statuses: list[dict[str, Any]]) -> bool:
    return all(status["settled"] == statuses[0]["settled"] for status in statuses)


def _units(amount: str, decimals: int) -> int:
    units = Decimal(amount).scaleb(decimals)
    if units != units.to_integral_value():
        raise ValueError(f"{amount} has more than {decimals} decimals")
    return int(units)


def _units_of(account: str, amounts: dict[str, int]) -> Sums:
    return {(account, asset): (units, 0) for asset, units in amounts.items() if units}


async def audit(servers: str, access: Access, shards: int, dsn: str | None, out: IO[str],
                *, timeout: float = 30.0) -> int:
    """Run the audit; its exit status (see the module)."""
    if shards < 1:
        out.write("tradeplane audit: --ledger-shards must be 1 or more\n")
        return 2
    try:
        nc = await nats.connect(servers, **{**CONNECT_OPTIONS, **access.options(INBOX)})
    except (OSError, nats.errors.Error) as exc:
        out.write(f"tradeplane audit: cannot reach NATS at {redact(servers)}: "
                  f"{type(exc).__name__}\n")
        return 2
    try:
        run = Audit(nc, shards, timeout)
        statuses = await run.statuses()
        run.check_statuses(statuses)
        if dsn:
            connection = await asyncpg.connect(dsn)
            try:
                for status in statuses:
                    await run.check_database(connection, status)
            finally:
                await connection.close()
    except AuditError as exc:
        out.write(f"tradeplane audit: {exc}\n")
        return 2
    except (OSError, asyncpg.PostgresError) as exc:
        out.write(f"tradeplane audit: the database: {type(exc).__name__}: {exc}\n")
        return 2
    finally:
        await nc.close()
    for note in run.notes:
        out.write(f"note: {note}\n")
    for breach in run.breaches:
        out.write(f"BREACH: {breach}\n")
    sequences = ", ".join(f"{status['shard']}@{status['sequence']}" for status in statuses)
    if run.breaches:
        out.write(f"audit failed: {len(run.breaches)} breaches (shards at {sequences})\n")
        return 1
    out.write(f"audit passed: {shards} ledger shards (at {sequences})"
              f"{', journal checked against the live balances' if dsn else ''}\n")
    return 0
