"""The SDK's local L2 book equals the engine's after a randomised session, gaps included."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.support.exchange import SOL, local_exchange, run
from tradeplane_gateway import Client, LocalBook, RequestError, connect


class LossyBook(LocalBook):
    """Loses the n-th deltas for n in ``lose``, as a slow or cut-off consumer would."""

    def __init__(self, *args: Any, lose: set[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lose = lose
        self.received = 0

    async def receive(self, delta: dict[str, Any]) -> None:
        self.received += 1
        if self.received in self.lose:
            self.lose.discard(self.received)
            return
        await super().receive(delta)


async def random_session(clients: list[Client], orders: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(orders):
        client = rng.choice(clients)
        roll = rng.random()
        try:
            if roll < 0.6:
                await client.place("sol-usdt", rng.choice(("buy", "sell")),
                                   f"{rng.randint(1, 300) / 100:.2f}",
                                   f"{rng.randint(9500, 10500) / 100:.2f}", response="ack")
            elif roll < 0.75:
                await client.place("sol-usdt", rng.choice(("buy", "sell")),
                                   f"{rng.randint(1, 500) / 100:.2f}", type="market",
                                   response="ack")
            elif roll < 0.95:
                await client.cancel("sol-usdt", rng.randint(1, orders), response="ack")
            else:
                await client.cancel_all("sol-usdt", response="ack")
        except RequestError:
            pass  # an edge refusal (say, below the minimum notional) is part of the game


async def engine_book(client: Client) -> dict[str, Any]:
    answer = await client.nc.request("tp.md.sol-usdt.book.snapshot", b"", timeout=5)
    result: dict[str, Any] = msgspec.json.decode(answer.data)
    return result


def test_local_book_follows_a_random_session_and_recovers_from_gaps(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_exchange(tmp_path, SOL) as exchange, \
                connect(exchange.url, account="alice") as alice, \
                connect(exchange.url, account="bob") as bob, \
                LocalBook(alice.nc, "sol-usdt") as clean, \
                LossyBook(bob.nc, "sol-usdt", lose={10, 11, 40, 70}) as lossy:
            await asyncio.gather(random_session([alice], 250, seed=1),
                                 random_session([bob], 250, seed=2))
            service = exchange.services["sol-usdt"]
            # A result-mode request is applied after everything sequenced before it.
            with pytest.raises(RequestError) as refused:
                await alice.cancel("sol-usdt", client_order_id="none-such")
            final = await engine_book(alice)
            # Commands sequenced together share a sequence; the book holds the cancel's.
            assert refused.value.sequence is not None
            assert final["sequence"] >= refused.value.sequence > 100
            for book in (clean, lossy):
                await book.wait_for_sequence(service.market_data.book_sequence)
                assert book.sequence >= service.market_data.book_sequence
                assert book.bids == [tuple(level) for level in final["bids"]]
                assert book.asks == [tuple(level) for level in final["asks"]]
            assert clean.resyncs == 0
            assert lossy.received > 70
            assert lossy.resyncs >= 2
            assert not lossy.lose
            assert final["bids"] or final["asks"]

    run(scenario(), timeout=120)
