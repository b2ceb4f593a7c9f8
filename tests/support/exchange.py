"""A whole exchange inside the test process, on a real nats-server started for the test.

The engine services and the gateway run as asyncio tasks beside the test's clients, so
a test sees every component's real behaviour over real NATS, with no processes to
leak. ``tradeplane up`` (a separate test) covers the same pieces as processes.

NATS runs with the real accounts and permissions (docs/security.md): the gateway and
the engines connect as themselves, so a permission they lack fails here. The test's own
connection, and ``Exchange.url``, are the admin's, which may act as any account: test
traders ``connect(exchange.url, account="alice")`` without issuing secrets (the auth
service's own tests issue and revoke real ones).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import msgspec
import nats
import nkeys
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from tradeplane.ledger_tools import submit
from tradeplane.processes import NatsServer
from tradeplane_engine.access import Credentials, trader_inbox
from tradeplane_engine.core import AnyCommand
from tradeplane_engine.ledger import AnyLedgerCommand, DefineAsset, Deposit, shard_of
from tradeplane_engine.service import MarketService
from tradeplane_engine.service.ledger import LedgerService
from tradeplane_engine.streams import StreamSettings, markets_bucket
from tradeplane_engine.wire import (
    HEADER_COMMANDS,
    MARKETS_BUCKET,
    LedgerBatch,
    MarketDefinition,
    decode_command,
    decode_commands,
    encode_definition,
)
from tradeplane_gateway import accounts
from tradeplane_gateway.auth import AuthService
from tradeplane_gateway.client import Client
from tradeplane_gateway.markets import MarketDirectory
from tradeplane_gateway.service import Gateway

T = TypeVar("T")

SOL = MarketDefinition(name="sol-usdt", base="SOL", quote="USDT", tick_size="0.01",
                       lot_size="0.01", min_notional="1", price_band="10",
                       reference_price="100")
BTC = MarketDefinition(name="btc-usdt", base="BTC", quote="USDT", tick_size="0.1",
                       lot_size="0.0001", min_notional="5")

SETTINGS = StreamSettings(memory=True)


def run[T](coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a test's coroutine with a deadline, so a hang fails instead of stalling CI."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def eventually(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0,
                     what: str = "condition") -> None:
    """Wait for a condition with a deadline (never a bare sleep as synchronisation)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await asyncio.sleep(0.01)


async def stream_commands(js: JetStreamContext, market: str,
                          through: int | None = None) -> list[AnyCommand]:
    """Every command of a market's command stream (through sequence ``through``), as an
    engine applies them: each of a message of several with its index, and what does not
    decode left out (the engine skips it)."""
    stream = f"tp-cmd-{market}"
    last = through if through is not None else (await js.stream_info(stream)).state.last_seq
    commands: list[AnyCommand] = []
    for sequence in range(1, last + 1):
        message = await js.get_msg(stream, sequence)
        data = message.data or b""
        parts = ([bytes(entry.command) for entry in decode_commands(data)]
                 if message.headers and HEADER_COMMANDS in message.headers else [data])
        for index, part in enumerate(parts):
            with contextlib.suppress(msgspec.DecodeError):
                commands.append(decode_command(part, sequence, 0, index))
    return commands


@dataclass
class Exchange:
    url: str
    nc: NatsClient
    markets: MarketDirectory
    gateway: Gateway
    engine_nc: NatsClient
    server: NatsServer
    services: dict[str, MarketService] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    engine_tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    connections: list[NatsClient] = field(default_factory=list)
    """Traders' connections made by ``client``, closed with the exchange."""
    ledgers: list[LedgerService] = field(default_factory=list)
    """With balances: a replica of each ledger shard, leading alone."""

    async def ledger(self, command: AnyLedgerCommand, shard: int = 0) -> LedgerBatch:
        """An administrator's ledger command (an asset, a deposit), and what it did."""
        return (await submit(self.nc, shard, command)).batch

    async def fund(self, account: str, **amounts: int) -> None:
        """Deposit ``asset=units`` for ``account`` (each asset defined beforehand)."""
        shards = len(self.ledgers)
        for asset, amount in amounts.items():
            await self.ledger(Deposit(0, 0, transfer_id=f"{account}-{asset}-{amount}",
                                      account=account, asset=asset, amount=amount),
                              shard_of(account, shards))

    async def define(self, definition: MarketDefinition) -> None:
        kv = await markets_bucket(self.nc.jetstream(), SETTINGS)
        await kv.put(definition.name, encode_definition(definition))
        await self.markets.wait_for(definition.name)

    async def start_engine(self, definition: MarketDefinition) -> MarketService:
        return await self.start_engine_with(definition)

    async def start_engine_with(self, definition: MarketDefinition,
                                pool: asyncpg.Pool | None = None) -> MarketService:
        service = MarketService(self.engine_nc, definition, SETTINGS, pool=pool)
        self.services[definition.name] = service
        self.engine_tasks[definition.name] = asyncio.create_task(service.run())
        await asyncio.wait_for(service.ready.wait(), 10)
        return service

    async def client(self, account: str) -> Client:
        """An SDK client trading as ``account`` until the exchange stops."""
        nc = await nats.connect(self.server.url,
                                **self.server.access("admin").options(trader_inbox(account)))
        self.connections.append(nc)
        return Client(nc, account)

    @contextlib.asynccontextmanager
    async def raw_trader(self, account: str) -> AsyncIterator[NatsClient]:
        """A plain NATS connection that may request as ``account`` (the admin's, with the
        account's inboxes: a gateway answers nowhere else)."""
        nc = await nats.connect(self.server.url,
                                **self.server.access("admin").options(trader_inbox(account)))
        try:
            yield nc
        finally:
            await nc.close()

    async def stop_engine(self, name: str) -> None:
        """Stop a market's engine as a crash would: nothing is flushed or handed over."""
        self.services.pop(name)
        task = self.engine_tasks.pop(name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


    async def issue(self, pool: asyncpg.Pool, account: str, directory: Path) -> Path:
        """A real trader account (the exchange runs ``with_auth``): its credentials file."""
        async with pool.acquire() as connection:
            secret = await accounts.create(connection, account)
        path = directory / f"{account}.json"
        Credentials(account, secret).save(path)
        return path


@contextlib.asynccontextmanager
async def auth_service(server: NatsServer, pool: asyncpg.Pool) -> AsyncIterator[AuthService]:
    """The auth service on ``server``, with its accounts in ``pool``'s database."""
    assert server.secrets is not None
    callout = await nats.connect(server.url, **server.access("auth").options())
    system = await nats.connect(server.url, **server.access("sys").options())
    issuer = nkeys.from_seed(server.secrets.issuer_seed.read_text().strip().encode())
    service = AuthService(callout, system, pool, issuer)
    started = asyncio.Event()
    task = asyncio.create_task(service.run(started))
    try:
        await asyncio.wait_for(started.wait(), 10)
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await system.close()
        await callout.close()


@contextlib.asynccontextmanager
async def local_exchange(data_dir: Path, *definitions: MarketDefinition,
                         engines: bool = True, accounts_pool: asyncpg.Pool | None = None,
                         ledger_shards: int = 0,
                         assets: dict[str, int] | None = None) -> AsyncIterator[Exchange]:
    """nats-server + gateway (+ an engine per market) for the length of a test; with
    ``accounts_pool`` (a migrated database), the auth service too, so real traders can
    connect (``Exchange.issue``); with ``ledger_shards``, balances (docs/ledger.md): a
    ledger service per shard, each asset of ``assets`` (name: decimals) defined in each."""
    server = NatsServer.secured(data_dir / "nats").start()
    try:
        nc = await nats.connect(server.url, pending_size=64 * 1024 * 1024,
                                **server.access("admin").options())
        await markets_bucket(nc.jetstream(), SETTINGS)
        gateway_nc = await nats.connect(server.url, pending_size=64 * 1024 * 1024,
                                        **server.access("gateway").options())
        engine_nc = await nats.connect(server.url, pending_size=64 * 1024 * 1024,
                                       **server.access("engine").options())
        kv = await gateway_nc.jetstream().key_value(MARKETS_BUCKET)
        markets = MarketDirectory()
        follow = asyncio.create_task(markets.follow(kv))
        gateway = Gateway(gateway_nc, markets, ledger_shards=ledger_shards)
        await gateway.start()
        exchange = Exchange(server.url_as("admin"), nc, markets, gateway, engine_nc, server,
                            tasks=[follow])
        if ledger_shards:
            ledger_nc = await nats.connect(server.url, pending_size=64 * 1024 * 1024,
                                           **server.access("ledger").options())
            exchange.connections.append(ledger_nc)
            ledger_kv = await ledger_nc.jetstream().key_value(MARKETS_BUCKET)
            for shard in range(ledger_shards):
                service = LedgerService(ledger_nc, shard, ledger_shards, SETTINGS)
                exchange.ledgers.append(service)
                exchange.tasks.append(asyncio.create_task(service.run(ledger_kv)))
                await asyncio.wait_for(service.ready.wait(), 10)
                for asset, decimals in (assets or {}).items():
                    await exchange.ledger(DefineAsset(0, 0, asset=asset, decimals=decimals),
                                          shard)
        async with contextlib.AsyncExitStack() as stack:
            if accounts_pool is not None:
                await stack.enter_async_context(auth_service(server, accounts_pool))
            async with _running(exchange, definitions, engines, gateway_nc) as running:
                yield running
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def _running(exchange: Exchange, definitions: tuple[MarketDefinition, ...],
                   engines: bool, gateway_nc: NatsClient) -> AsyncIterator[Exchange]:
    """The exchange's markets defined (and engines started) until the test ends."""
    try:
        for definition in definitions:
            await exchange.define(definition)
            if engines:
                await exchange.start_engine(definition)
        yield exchange
    finally:
        await exchange.gateway.stop()
        tasks = [*exchange.tasks, *exchange.engine_tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for connection in (*exchange.connections, exchange.engine_nc, gateway_nc,
                           exchange.nc):
            await connection.close()
