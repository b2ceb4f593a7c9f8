"""``make bench``: what the engine and the gateway spend per order around the core.

The engine core is measured alone (``bench/run.py``); end to end, most of an order's
CPU is the services' (``bench/e2e.py``). This measures the part of it that is the
services' own Python, without NATS, on the standard workload:

1. **The engine's public messages**: the standard workload is applied to the matching
   ``Engine`` (untimed), then its events go through ``MarketData`` as the engine
   service hands them over, in batches of 1 and of 32 commands: each batch's private
   updates per account, trades and L2 delta, encoded. Timed per command.
2. **The gateway's order intake**: the workload's places as the gateway receives them
   (JSON requests with decimal strings), decoded and turned into commands
   (``decode_request`` and ``submission``), as the gateway does for every request.
   Timed per order.
3. **The result path**, what a command with a ``result`` reply costs besides its
   messages: the engine remembering finished orders and finding the order a cancel
   named (``OrderMemory``), for every command of the workload; the gateway turning a
   place's result (its events batch, as the engine sends it) into the trader's reply
   (``results.result_reply``), for every place. Timed per command and per place.
4. **A command's publish**: what the NATS client does to publish a command with the
   headers it carries from a gateway (answer subject, message id) and from a ledger
   shard (those, the acknowledgement subject and a traceparent), up to the bytes it
   queues for the socket: nats-py's own client against the services' ``ServiceClient``
   (``tradeplane_engine.connection``). Timed per publish. And the headers of a message
   as a replica receives a command (three), read by each client.

Figures are printed; nothing is asserted. Medians of several passes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client

from tradeplane_engine.connection import ServiceClient
from tradeplane_engine.core import AnyEvent, Engine, Place
from tradeplane_engine.core.market import UnitFormatter
from tradeplane_engine.service.marketdata import MarketData
from tradeplane_engine.service.memory import OrderMemory
from tradeplane_engine.wire import EventBatch, MarketDefinition, PublicFormatter, encode_events
from tradeplane_engine.workload import SPEC, generate, to_commands
from tradeplane_gateway.markets import MarketDirectory
from tradeplane_gateway.protocol import ResponseMode
from tradeplane_gateway.results import result_reply
from tradeplane_gateway.validation import Submission, decode_request, submission

MARKET = "bench-usdt"


def best_of[T](repeat: int, run: Callable[[], T]) -> float:
    """Median seconds of ``repeat`` calls of ``run``."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def market_data_pass(batches: list[list[tuple[int, int, list[AnyEvent]]]]) -> int:
    """Every batch through a fresh ``MarketData``; the bytes it would publish."""
    market_data = MarketData(MARKET, PublicFormatter(SPEC))
    published = 0
    for batch in batches:
        for sequence, timestamp, events in batch:
            market_data.add(sequence, timestamp, events)
        published += sum(len(payload) for _, payload in market_data.messages())
    return published


def bench_market_data(count: int, seed: int, repeat: int) -> None:
    engine = Engine(SPEC)
    applied = [(command.sequence, command.sequence * 1000, engine.apply(command))
               for command in to_commands(generate(count, seed))]
    events = sum(len(item[2]) for item in applied)
    print(f"engine service, public messages: the standard workload, {count:,} commands "
          f"({events:,} events)", flush=True)
    for size in (1, 32):
        batches = [applied[start:start + size] for start in range(0, len(applied), size)]
        published = market_data_pass(batches)
        seconds = best_of(repeat, functools.partial(market_data_pass, batches))
        print(f"  batches of {size:>2} commands: {seconds / count * 1e6:6.2f} µs per command, "
              f"{published / count:,.0f} bytes published per command", flush=True)


def place_requests(count: int, seed: int) -> list[tuple[str, bytes]]:
    """The workload's places as trader requests: (account, JSON body)."""
    formatter = PublicFormatter(SPEC)
    requests = []
    for command in to_commands(generate(count, seed)):
        if type(command) is not Place or not command.price:
            continue
        body = {"market": MARKET, "side": command.side.value,
                "price": formatter.price(command.price),
                "quantity": formatter.quantity(command.quantity),
                "timeInForce": command.time_in_force.value, "response": "result"}
        requests.append((command.account, msgspec.json.encode(body)))
    return requests


def directory() -> MarketDirectory:
    """The gateway's view of the benchmark's market."""
    definition = MarketDefinition(name=MARKET, base=SPEC.base, quote=SPEC.quote,
                                  tick_size=SPEC.tick_size, lot_size=SPEC.lot_size)
    markets = MarketDirectory()
    asyncio.run(markets.apply(MARKET, msgspec.json.encode(definition), "PUT"))
    return markets


def bench_intake(count: int, seed: int, repeat: int) -> None:
    markets = directory()
    requests = place_requests(count, seed)
    numbers = iter(range(10**9))

    def intake() -> None:
        for account, body in requests:
            submission(markets, account, decode_request("place", body),
                       lambda: f"g-{next(numbers)}")

    seconds = best_of(repeat, intake)
    print(f"gateway, order intake: {len(requests):,} limit places of the standard workload",
          flush=True)
    print(f"  decoded and made commands: {seconds / len(requests) * 1e6:6.2f} µs per order",
          flush=True)


def bench_formatter(repeat: int) -> None:
    formatter = UnitFormatter(SPEC.tick_size)
    values = [9_000 + (number * 7) % 2_000 for number in range(200_000)]

    def run() -> None:
        for value in values:
            formatter(value)

    seconds = best_of(repeat, run)
    print(f"  a price formatted (2,000 distinct): {seconds / len(values) * 1e9:6.0f} ns",
          flush=True)


def bench_result_path(count: int, seed: int, repeat: int) -> None:
    engine = Engine(SPEC)
    applied = [(command, engine.apply(command)) for command in to_commands(generate(count, seed))]
    formatter = PublicFormatter(SPEC)

    def remember() -> None:
        memory = OrderMemory(formatter)
        for _, events in applied:
            memory.remember(events)
            memory.named_order(events)

    seconds = best_of(repeat, remember)
    print(f"the result path: the standard workload, {count:,} commands", flush=True)
    print(f"  engine, order memory (remember, the order a cancel named): "
          f"{seconds / count * 1e6:6.2f} µs per command", flush=True)
    known = directory().get(MARKET)
    assert known is not None
    results = [(Submission(known, command.account, command, ResponseMode.RESULT),
                encode_events(EventBatch(MARKET, command.sequence, command.sequence * 1000,
                                         events)))
               for command, events in applied if type(command) is Place]

    def reply() -> None:
        for work, result in results:
            result_reply(work, result, None)

    seconds = best_of(repeat, reply)
    print(f"  gateway, a place's result into its reply: {seconds / len(results) * 1e6:6.2f} "
          f"µs per place ({len(results):,} places)", flush=True)


async def _publish(client: Client, headers: dict[str, str], payload: bytes,
                   count: int) -> None:
    for _ in range(count):
        await client._send_publish("tp.cmd.bench-usdt", "_GW.x.a.1", payload, len(payload),
                                   headers)
        client._pending.clear()
        client._pending_data_size = 0


def bench_publish(repeat: int, count: int = 50_000) -> None:
    gateway = {"Tp-Reply": "_GW.x7Qm2LpR9sTa.r.184467", "Nats-Msg-Id": "trader1:Gw8fK2pQ1x0041"}
    ledger = {**gateway, "Tp-Ack": "_GW.x7Qm2LpR9sTa.y.184467",
              "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    payload = b'{"type":"place","account":"trader1","side":"buy","price":10012,"qty":300}'
    print("publishing a command (the client's work up to the bytes it queues, no server)",
          flush=True)
    for what, headers in (("a gateway's 2 headers", gateway), ("a ledger's 4 headers", ledger)):
        figures = []
        for client in (Client(), ServiceClient()):
            def run(client: Client = client, headers: dict[str, str] = headers) -> None:
                asyncio.run(_publish(client, headers, payload, count))

            figures.append(best_of(repeat, run) / count * 1e6)
        print(f"  with {what}: nats-py {figures[0]:5.2f} µs, ServiceClient {figures[1]:5.2f} µs",
              flush=True)
    block = b"".join(f"{name}: {value}\r\n".encode() for name, value in ledger.items()
                     if name != "traceparent") + b"\r\n"
    reads = []
    for reader in (Client, ServiceClient):
        def read(reader: type[Client] = reader) -> None:
            for _ in range(count):
                reader._parse_header_lines(block)

        reads.append(best_of(repeat, read) / count * 1e6)
    print(f"  a received message's 3 headers read: nats-py {reads[0]:5.2f} µs, "
          f"ServiceClient {reads[1]:5.2f} µs", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bench_market_data(args.commands, args.seed, args.repeat)
    bench_formatter(args.repeat)
    print(flush=True)
    bench_intake(args.commands, args.seed, args.repeat)
    print(flush=True)
    bench_result_path(args.commands, args.seed, args.repeat)
    print(flush=True)
    bench_publish(args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
