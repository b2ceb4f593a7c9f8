"""The data plane no one can forge: each attack, tried by an authenticated trader and by
clients that cannot authenticate, is refused, and the exchange trades on with nothing
lost. Real nats-server with the configuration ``tradeplane security init`` writes, the
real auth service, accounts in a real PostgreSQL (docs/security.md)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from tests.support.exchange import SOL, Exchange, eventually, local_exchange, run
from tradeplane_engine.access import trader_inbox
from tradeplane_engine.store.database import open_database
from tradeplane_gateway import accounts, connect
from tradeplane_gateway.auth import SWEEP_EVERY

PLACE = json.dumps({"market": "sol-usdt", "side": "buy", "quantity": "1", "price": "99",
                    "clientOrderId": "forged"}).encode()

# (what, kind, subject): each is outside a trader's permissions, so NATS refuses it.
ATTACKS = [
    ("act as another account", "pub", "tp.api.alice.order.place"),
    ("cancel another account's orders", "pub", "tp.api.alice.order.cancelAll"),
    ("read another account's updates", "sub", "tp.acct.alice.orders"),
    ("read every private update", "sub", "tp.acct.>"),
    ("read other accounts' replies", "sub", "_INBOX.>"),
    ("read one other account's replies", "sub", "_INBOX.alice.>"),
    ("read every request", "sub", "tp.api.>"),
    ("impersonate the gateway", "queue", "tp.api.*.>"),
    ("answer book snapshots in the gateways' place", "queue", "tp.md.*.book.snapshot"),
    ("forge a command", "pub", "tp.cmd.sol-usdt"),
    ("forge an events message", "pub", "tp.evt.sol-usdt"),
    ("forge a gateway's grouped results", "pub", "_SVC.gateway.x.g"),
    ("forge a gateway's grouped acknowledgements", "pub", "_SVC.gateway.x.k"),
    ("forge a market data delta", "pub", "tp.md.sol-usdt.book"),
    ("forge another account's update", "pub", "tp.acct.alice.orders"),
    ("break a market's lease", "pub", "$KV.tp-leases.sol-usdt"),
    ("rewrite a market definition", "pub", "$KV.tp-markets.sol-usdt"),
    ("forge a replica report", "pub", "$KV.tp-replicas.sol-usdt.engine-1"),
    ("delete a command stream", "pub", "$JS.API.STREAM.DELETE.tp-cmd-sol-usdt"),
    ("read every command", "pub", "$JS.API.CONSUMER.CREATE.tp-cmd-sol-usdt"),
    ("read a stream's messages", "pub", "$JS.API.STREAM.MSG.GET.tp-cmd-sol-usdt"),
    ("trigger a switchover", "pub", "tp.engine.sol-usdt.switchover"),
    ("ask an engine directly", "pub", "tp.engine.sol-usdt.order"),
    ("trigger a snapshot", "pub", "tp.recorder.sol-usdt.snapshot"),
    ("read the history of anyone", "pub", "tp.history.sol-usdt.trades"),
]


class Errors:
    """A connection's error callback: what NATS refused."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def on_error(self, error: Exception) -> None:
        self.seen.append(str(error))

    def refused(self, subject: str) -> bool:
        return any("permissions violation" in error and subject.lower() in error.lower()
                   for error in self.seen)


async def trader_connection(exchange: Exchange, login: Path, errors: Errors) -> Any:
    credentials = json.loads(login.read_text())
    return await nats.connect(exchange.server.url, user=credentials["user"],
                              password=credentials["password"],
                              inbox_prefix=trader_inbox(credentials["user"]),
                              error_cb=errors.on_error)


async def _state(exchange: Exchange) -> dict[str, Any]:
    """What an attack must not change: the definition, the streams."""
    js = exchange.nc.jetstream()
    definition = await (await js.key_value("tp-markets")).get("sol-usdt")
    commands = (await js.stream_info("tp-cmd-sol-usdt")).state.last_seq
    events = (await js.stream_info("tp-evt-sol-usdt")).state.last_seq
    return {"definition": definition.value,
            "commands": commands, "events": events}


@pytest.mark.parametrize(("what", "kind", "subject"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_an_authenticated_trader_is_refused(tmp_path: Path, database: str, what: str,
                                            kind: str, subject: str) -> None:
    async def scenario() -> None:
        pool = await open_database(database, size=2)
        try:
            async with local_exchange(tmp_path, SOL, accounts_pool=pool) as exchange:
                alice = await exchange.issue(pool, "alice", tmp_path)
                mallory = await exchange.issue(pool, "mallory", tmp_path)
                async with connect(exchange.server.url, credentials=alice) as victim:
                    resting = await victim.place("sol-usdt", "sell", "1", "101")
                    before = await _state(exchange)
                    errors = Errors()
                    nc = await trader_connection(exchange, mallory, errors)
                    try:
                        received: list[bytes] = []
                        if kind == "pub":
                            await nc.publish(subject, PLACE, reply=f"{trader_inbox('mallory')}.x")
                        else:
                            async def got(msg: Any) -> None:
                                received.append(msg.data)
                            await nc.subscribe(subject, queue="tp-gateway" if kind == "queue"
                                               else "", cb=got)
                        await nc.flush()
                        await eventually(lambda: errors.refused(subject), 5,
                                         f"NATS refusing {what}")
                        # The exchange trades on: alice's order and the market are intact.
                        bob = await exchange.client("bob")
                        again = await bob.place("sol-usdt", "buy", "1", "101")
                        assert [(fill.price, fill.quantity) for fill in again.fills] == [
                            ("101", "1")]
                        assert resting.order is not None
                        status = await victim.status("sol-usdt", resting.order.order_id)
                        assert status.order is not None
                        assert status.order.status == "filled"
                        assert received == []  # nothing of alice's reached mallory
                    finally:
                        await nc.close()
                    after = await _state(exchange)
                    assert after["definition"] == before["definition"]
                    assert after["commands"] == before["commands"] + 1  # alice's buy only
        finally:
            await pool.close()

    run(scenario())


def test_reply_subjects_cannot_steer_answers(tmp_path: Path, database: str) -> None:
    """A request on the trader's own subjects (a request, or a subject that names none)
    with a reply subject that is not its inbox (a lease key, a market's book, another
    account's updates or inbox, a stream) gets no answer anywhere; nor does a book
    snapshot request, of a market or of none, whose reply subject is not an inbox. (A
    book snapshot is public: it may be answered to another inbox.)"""

    async def scenario() -> None:
        pool = await open_database(database, size=2)
        try:
            async with local_exchange(tmp_path, SOL, accounts_pool=pool) as exchange:
                mallory = await exchange.issue(pool, "mallory", tmp_path)
                before = await _state(exchange)
                watcher = await nats.connect(exchange.server.url,
                                             **exchange.server.access("admin").options())
                seen: list[str] = []

                async def on(msg: Any) -> None:
                    seen.append(msg.subject)
                for subject in ("$KV.>", "tp.md.*.book", "tp.md.*.trades", "tp.acct.>",
                                "tp.cmd.>", "tp.evt.>", "_INBOX.alice.>"):
                    await watcher.subscribe(subject, cb=on)
                await watcher.flush()
                errors = Errors()
                nc = await trader_connection(exchange, mallory, errors)
                try:
                    for reply in ("$KV.tp-leases.sol-usdt", "$KV.tp-markets.sol-usdt",
                                  "tp.md.sol-usdt.book", "tp.acct.alice.orders",
                                  "tp.cmd.sol-usdt", "tp.evt.sol-usdt"):
                        await nc.publish("tp.api.mallory.order.place", PLACE, reply=reply)
                        await nc.publish("tp.api.mallory.foo.bar", PLACE, reply=reply)
                        await nc.publish("tp.md.sol-usdt.book.snapshot", b"", reply=reply)
                        await nc.publish("tp.md.nosuch.book.snapshot", b"", reply=reply)
                    for subject in ("tp.api.mallory.order.place", "tp.api.mallory.foo.bar",
                                    "tp.api.mallory.order"):
                        await nc.publish(subject, PLACE, reply="_INBOX.alice.stolen")
                    # Its own inbox still gets answers, from each responder the steered
                    # requests went to; each answers in order, so what it would have
                    # answered to those was sent before these answers came.
                    answer = await nc.request("tp.api.mallory.order.status",
                                              b'{"market": "sol-usdt", "orderId": 1}',
                                              timeout=5)
                    assert json.loads(answer.data)["ok"] is False
                    answer = await nc.request("tp.md.sol-usdt.book.snapshot", b"", timeout=5)
                    assert json.loads(answer.data)["market"] == "sol-usdt"
                    answer = await nc.request("tp.md.nosuch.book.snapshot", b"", timeout=5)
                    assert json.loads(answer.data)["error"] == "unknown market"
                    await watcher.flush()
                finally:
                    await nc.close()
                    await watcher.close()
                assert seen == []
                after = await _state(exchange)
                assert after == before
        finally:
            await pool.close()

    run(scenario())


def test_clients_that_cannot_authenticate_are_refused(tmp_path: Path, database: str) -> None:
    """No credentials, a wrong secret, an unknown account, a revoked one, and a trader's
    secret under another account's name: NATS refuses the connection."""

    async def scenario() -> None:
        pool = await open_database(database, size=2)
        try:
            async with local_exchange(tmp_path, SOL, accounts_pool=pool) as exchange:
                alice = json.loads((await exchange.issue(pool, "alice", tmp_path)).read_text())
                await exchange.issue(pool, "gone", tmp_path)
                async with pool.acquire() as connection:
                    await accounts.revoke(connection, "gone")
                gone = json.loads((tmp_path / "gone.json").read_text())
                url = exchange.server.url
                for login in ({}, {"user": "alice", "password": "tps_wrong"},
                              {"user": "nobody", "password": alice["password"]},
                              {"user": "gone", "password": gone["password"]},
                              {"user": "bob", "password": alice["password"]},
                              {"user": "gateway", "password": alice["password"]}):
                    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                        await nats.connect(url, allow_reconnect=False, connect_timeout=5,
                                           error_cb=Errors().on_error, **login)
                # The exchange took no harm, and alice gets in.
                async with connect(url, account="alice", secret=alice["password"]) as client:
                    reply = await client.place("sol-usdt", "sell", "1", "101")
                    assert reply.order is not None
                    assert reply.order.status == "new"
        finally:
            await pool.close()

    run(scenario())


def test_revocation_closes_live_connections_within_seconds(tmp_path: Path,
                                                           database: str) -> None:
    async def scenario() -> None:
        pool = await open_database(database, size=2)
        try:
            async with local_exchange(tmp_path, SOL, accounts_pool=pool) as exchange:
                login = await exchange.issue(pool, "alice", tmp_path)
                closed = asyncio.Event()
                refusals = Errors()

                async def on_disconnect() -> None:
                    closed.set()
                async with connect(exchange.server.url, credentials=login,
                                   disconnected_cb=on_disconnect,
                                   error_cb=refusals.on_error) as alice:
                    await alice.place("sol-usdt", "sell", "1", "101")
                    started = time.monotonic()
                    async with pool.acquire() as connection:
                        await accounts.revoke(connection, "alice")
                    await asyncio.wait_for(closed.wait(), SWEEP_EVERY * 3)
                    took = time.monotonic() - started
                    print(f"revoked connection closed after {took:.2f} s")
                    assert took < SWEEP_EVERY * 3
                    # It tries to reconnect, and is refused.
                    await eventually(lambda: any("Authorization Violation" in error
                                                 for error in refusals.seen), 10,
                                     "a reconnect refused")
                    assert not alice.nc.is_connected
                with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                    await nats.connect(exchange.server.url, allow_reconnect=False,
                                       error_cb=Errors().on_error, user="alice",
                                       password=json.loads(login.read_text())["password"])
        finally:
            await pool.close()

    run(scenario())


# Each service's user, and what it must not do (only its own part of the data plane).
CONFINED = [
    ("gateway", "tp.evt.sol-usdt"), ("gateway", "$KV.tp-leases.sol-usdt"),
    ("gateway", "$KV.tp-markets.sol-usdt"), ("gateway", "tp.acct.alice.orders"),
    ("engine", "tp.cmd.sol-usdt"), ("engine", "$KV.tp-markets.sol-usdt"),
    ("engine", "$JS.API.STREAM.DELETE.tp-cmd-sol-usdt"),
    ("recorder", "tp.cmd.sol-usdt"), ("recorder", "tp.evt.sol-usdt"),
    ("recorder", "$KV.tp-leases.sol-usdt"),
    ("operator", "tp.evt.sol-usdt"), ("operator", "$KV.tp-leases.sol-usdt"),
    ("operator", "$JS.API.STREAM.DELETE.tp-cmd-sol-usdt"),
]


@pytest.mark.parametrize(("service", "subject"), CONFINED)
def test_service_credentials_are_confined(tmp_path: Path, service: str, subject: str) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange:
            errors = Errors()
            nc = await nats.connect(exchange.server.url, error_cb=errors.on_error,
                                    **exchange.server.access(service).options())
            try:
                await nc.publish(subject, b"forged")
                await nc.flush()
                await eventually(lambda: errors.refused(subject), 5,
                                 f"NATS refusing {service} publishing on {subject}")
            finally:
                await nc.close()

    run(scenario())
