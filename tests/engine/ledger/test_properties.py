"""The ledger over random order flow, checked with hypothesis.

A real matching engine runs the command streams of the engine's own property tests
(every order type, STP mode, cancels, replaces, cancel-alls, mode changes). Every
order and replace is funded by its account's ledger shard first, and only what the
ledger forwards reaches the engine; the engine's events messages are settled by every
shard. Forwarding and settlement lag behind funding by a random amount, so replaces
are funded on a stale view of their orders, as in the running exchange. After every
step, in every shard:

(a) per asset, accounts + fees + clearing = deposits − withdrawals, and the clearing
    accounts of all shards sum to zero once they settled the same events;
(b) no trader's available or held amount is negative;
(c) each account holds exactly what its orders hold (open ones and those in flight),
    and every open order holds at least what it needs (its remaining quantity at its
    price, with the fee at the larger rate) — no shortfall, no unfunded order;
and at the end, once everything is canceled and settled, nothing is held, and
replaying the ledger's commands, from the start or from a snapshot, gives the same
state hash.
"""

from __future__ import annotations

from collections import Counter, deque

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine.core.streams import streams
from tradeplane_engine.core import (
    AnyCommand,
    Cancel,
    CancelAll,
    Engine,
    MarketSpec,
    Place,
    Replace,
    SetTradingMode,
    TradingMode,
)
from tradeplane_engine.ledger import (
    CLEARING,
    AnyLedgerCommand,
    DefineAsset,
    DefineMarket,
    Deposit,
    Duplicate,
    Forward,
    FundOrder,
    FundReplace,
    Ledger,
    Movement,
    MovementKind,
    Refused,
    Report,
    Settle,
    Unsent,
    journal_lines,
    shard_of,
)
from tradeplane_engine.ledger.events import AnyLedgerEvent

MARKET = "btc-usd"
SEEN: Counter[str] = Counter()
"""What every example did, summed: ``test_the_examples_exercised_the_ledger`` reads it."""
ACCOUNTS = ("a", "b", "c")


class Exchange:
    """The pure parts as the services run them: ledger shards, one engine, and the
    queues between them (forwarded commands, events messages to settle)."""

    def __init__(self, spec: MarketSpec, shards: int, maker_bps: int, taker_bps: int) -> None:
        self.engine = Engine(spec)
        self.ledgers = [Ledger(shard, shards) for shard in range(shards)]
        self.logs: list[list[AnyLedgerCommand]] = [[] for _ in range(shards)]
        self.to_engine: deque[AnyCommand] = deque()
        self.to_settle: deque[tuple[int, list]] = deque()  # type: ignore[type-arg]
        self.market_sequence = 0
        self.last_report: Report | None = None
        self.sent: set[tuple[str, str]] = set()
        """Orders forwarded, by account and client order id: their message id."""
        self.seen: Counter[str] = Counter()
        """What happened, by kind: the test shows it exercised what it checks."""
        for ledger in range(shards):
            self.ledger_apply(ledger, DefineAsset(0, 0, asset="BTC", decimals=3))
            self.ledger_apply(ledger, DefineAsset(0, 0, asset="USD", decimals=2))
            self.ledger_apply(ledger, DefineMarket(
                0, 0, market=MARKET, base="BTC", quote="USD", tick_size=spec.tick_size,
                lot_size=spec.lot_size, maker_bps=maker_bps, taker_bps=taker_bps))

    def ledger_apply(self, shard: int, command: AnyLedgerCommand) -> list[AnyLedgerEvent]:
        ledger = self.ledgers[shard]
        command = msgspec.structs.replace(command, sequence=ledger.sequence + 1,
                                          timestamp=ledger.sequence + 1)
        self.logs[shard].append(command)
        events = ledger.apply(command)
        # Double entry: a command's journal lines (a fill's legs among them) sum to zero
        # per asset, the system accounts counted.
        totals: Counter[str] = Counter()
        for line in journal_lines(events):
            if isinstance(line, Movement):
                totals[line.asset] += line.available + line.held
        assert not any(totals.values()), (command, totals)
        unsent: list[Unsent] = []
        for event in journal_lines(events):
            if isinstance(event, Forward):
                self.seen[type(event.command).__name__] += 1
                if isinstance(event.command, Place):
                    # The market's stream stores a message id once (Nats-Msg-Id); a
                    # funded order it drops is unsent, as the leader says.
                    place = event.command
                    key = (place.account, place.client_order_id)
                    if key in self.sent:
                        if not any(isinstance(other, Duplicate) for other in events):
                            unsent.append(Unsent(
                                0, 0, market=MARKET, account=place.account,
                                client_order_id=place.client_order_id,
                                funded_at=command.sequence))
                        continue
                    self.sent.add(key)
                self.to_engine.append(event.command)
            elif isinstance(event, Movement):
                self.seen[event.kind] += 1
                # A hold only ever moves available to held, a release the other way.
                if event.kind is MovementKind.HOLD:
                    assert event.available == -event.held <= 0, event
                elif event.kind is MovementKind.RELEASE:
                    assert event.available == -event.held >= 0, event
            elif isinstance(event, Refused):
                self.seen[event.code.name] += 1
            else:
                self.seen[type(event).__name__] += 1
        for dropped in unsent:
            self.seen["unsent"] += 1
            self.ledger_apply(shard, dropped)
        return events

    def submit(self, command: AnyCommand) -> None:
        """A trader's command, as the gateway routes it: orders and replaces to the
        account's shard, everything else straight to the market."""
        account = getattr(command, "account", None)
        if isinstance(command, Place):
            shard = shard_of(command.account, len(self.ledgers))
            self.ledger_apply(shard, FundOrder(0, 0, market=MARKET, place=command))
        elif isinstance(command, Replace):
            assert account is not None
            shard = shard_of(account, len(self.ledgers))
            self.ledger_apply(shard, FundReplace(0, 0, market=MARKET, replace=command))
        else:
            self.to_engine.append(command)

    def aimed(self, command: AnyCommand, aim: int) -> AnyCommand:
        """A cancel or replace by order id aimed, most of the time, at an order resting
        in the engine's book now (the stream's ids are those of a book without refusals)."""
        if not isinstance(command, Cancel | Replace) or not command.order_id or aim % 4 == 0:
            return command
        book = self.engine.l3()
        resting = [*book.bids, *book.asks]
        if not resting:
            return command
        target = resting[aim % len(resting)]
        return msgspec.structs.replace(command, order_id=target.order_id,
                                       account=target.account)

    def run_engine(self) -> None:
        command = self.to_engine.popleft()
        self.market_sequence += 1
        stamped = msgspec.structs.replace(command, sequence=self.market_sequence,
                                          timestamp=self.market_sequence)
        self.to_settle.append((self.market_sequence, self.engine.apply(stamped)))

    def settle(self, count: int = 1, overlap: bool = False) -> None:
        """Settle the next ``count`` events messages in one ``settle``; with ``overlap``,
        the last one settled goes first again (a new leader grouping them otherwise)."""
        reports = [Report(sequence, sequence, events) for sequence, events in
                   (self.to_settle.popleft()
                    for _ in range(min(count, len(self.to_settle))))]
        if overlap and self.last_report is not None:
            reports.insert(0, self.last_report)
        self.last_report = reports[-1]
        for shard in range(len(self.ledgers)):
            events = self.ledger_apply(shard, Settle(0, 0, market=MARKET, reports=reports))
            self.seen["resettled"] += sum(isinstance(event, Duplicate)
                                          and event.command == "settle" for event in events)

    def check(self) -> None:
        for ledger in self.ledgers:
            assert ledger.audit() == []
        if not self.to_settle and not self.to_engine:
            for asset in ("BTC", "USD"):
                assert sum(ledger.balance(CLEARING, asset)[0] for ledger in self.ledgers) == 0


@settings(max_examples=150, deadline=None)
@given(stream=streams(), shards=st.sampled_from([1, 2]),
       fees=st.sampled_from([(0, 0), (10, 25), (25, 10), (0, 1000), (7, 3)]),
       deposits=st.lists(st.sampled_from([0, 20_000, 200_000, 2_000_000, 20_000_000]),
                         min_size=6, max_size=6),
       targets=st.lists(st.integers(0, 1_000), min_size=60, max_size=60),
       lag=st.lists(st.sampled_from(["fund", "fund", "engine", "settle"]), min_size=200,
                    max_size=200),
       groups=st.lists(st.integers(-2, 4), min_size=50, max_size=50))
def test_invariants_hold_at_every_step(stream: tuple[MarketSpec, list[AnyCommand]],
                                       shards: int, fees: tuple[int, int],
                                       deposits: list[int], targets: list[int],
                                       lag: list[str], groups: list[int]) -> None:
    spec, commands = stream
    exchange = Exchange(spec, shards, *fees)
    for index, account in enumerate(ACCOUNTS):
        for offset, asset in enumerate(("BTC", "USD")):
            amount = deposits[2 * index + offset]
            if amount:
                exchange.ledger_apply(shard_of(account, shards), Deposit(
                    0, 0, transfer_id=f"{account}-{asset}", account=account, asset=asset,
                    amount=amount))
    exchange.check()
    pending = deque(_named(commands))
    aims = iter(targets)
    steps = iter(lag)
    # How many events messages each settle takes; a negative count also settles the last
    # one again (a new leader grouping them otherwise).
    sizes = iter(groups)

    def settle() -> None:
        size = next(sizes, 1)
        exchange.settle(abs(size) or 1, overlap=size < 0)

    while pending or exchange.to_engine or exchange.to_settle:
        step = next(steps, "drain")
        if step == "fund" and pending:
            exchange.submit(exchange.aimed(pending.popleft(), next(aims, 0)))
        elif step == "engine" and exchange.to_engine:
            exchange.run_engine()
        elif step == "settle" and exchange.to_settle:
            settle()
        elif step == "drain":
            if exchange.to_settle:
                settle()
            elif exchange.to_engine:
                exchange.run_engine()
            else:
                exchange.submit(exchange.aimed(pending.popleft(), next(aims, 0)))
        exchange.check()
    # The end of the market: every order canceled (as the operator does), settled.
    exchange.submit(SetTradingMode(0, 0, mode=TradingMode.OPEN))
    exchange.submit(CancelAll(0, 0, account=None))
    while exchange.to_engine:
        exchange.run_engine()
    while exchange.to_settle:
        exchange.settle()
    exchange.check()
    for ledger in exchange.ledgers:
        assert not ledger.orders
        for account in ACCOUNTS:
            for asset in ("BTC", "USD"):
                assert ledger.balance(account, asset)[1] == 0
    for shard, ledger in enumerate(exchange.ledgers):
        _replays_alike(ledger, exchange.logs[shard])
    SEEN.update(exchange.seen)


def _named(commands: list[AnyCommand]) -> list[AnyCommand]:
    """Orders without a client order id get one, as the gateway names them."""
    return [msgspec.structs.replace(command, client_order_id=f"g{command.sequence}")
            if isinstance(command, Place) and not command.client_order_id else command
            for command in commands]


def _replays_alike(ledger: Ledger, log: list[AnyLedgerCommand]) -> None:
    again = Ledger(ledger.shard, ledger.shards)
    middle = len(log) // 2
    for command in log[:middle]:
        again.apply(command)
    restored = Ledger.restore(again.snapshot())
    assert restored.state_hash() == again.state_hash()
    for command in log[middle:]:
        again.apply(command)
        restored.apply(command)
    assert again.state_hash() == restored.state_hash() == ledger.state_hash()


def test_the_examples_exercised_the_ledger() -> None:
    """Runs after the property: its examples funded, refused, filled and released."""
    for seen in ("Place", "Replace", "hold", "release", "trade", "fee", "deposit",
                 "INSUFFICIENT_FUNDS", "QUOTE_AMOUNT_REQUIRED", "UNKNOWN_ORDER", "Duplicate",
                 "unsent", "resettled"):
        assert SEEN[seen] > 0, (seen, SEEN)
