"""The ledger's arithmetic, case by case, with the figures worked out by hand.

BTC has 8 decimals and USDT 6; the market's tick is 0.01 USDT and its lot 0.001 BTC,
so a lot is 100 000 BTC units and a tick × lot is 10 USDT units; the maker pays 10
basis points and the taker 20.
"""

from __future__ import annotations

import msgspec
import pytest

from tradeplane_engine.core import (
    Cancel,
    Engine,
    MarketSpec,
    OrderType,
    Place,
    RejectCode,
    Replace,
    Side,
    TimeInForce,
)
from tradeplane_engine.ledger import (
    CLEARING,
    FEES,
    WORLD,
    DefineAsset,
    DefineMarket,
    Deposit,
    Duplicate,
    Fill,
    Forward,
    Funded,
    FundOrder,
    FundOrders,
    FundReplace,
    Ledger,
    Movement,
    MovementKind,
    Refused,
    Report,
    Settle,
    Terms,
    TermsError,
    Unsent,
    Withdraw,
    fee,
    journal_lines,
    shard_of,
)
from tradeplane_engine.ledger.commands import AnyLedgerCommand
from tradeplane_engine.ledger.events import AnyLedgerEvent

SPEC = MarketSpec(base="BTC", quote="USDT", tick_size="0.01", lot_size="0.001")
LOT = 100_000
"""BTC units in a lot."""
UNIT = 10
"""USDT units in a tick × lot."""


class Desk:
    """One market and the ledger shards of its accounts, run by hand."""

    def __init__(self, shards: int = 1, maker_bps: int = 10, taker_bps: int = 20) -> None:
        self.engine = Engine(SPEC)
        self.ledgers = [Ledger(shard, shards) for shard in range(shards)]
        self.market_sequence = 0
        self.deferred: list[Report] | None = None
        """When a list: events messages kept here, to settle by hand."""
        for shard in range(shards):
            self.do(shard, DefineAsset(0, 0, asset="BTC", decimals=8))
            self.do(shard, DefineAsset(0, 0, asset="USDT", decimals=6))
            self.do(shard, DefineMarket(0, 0, market="m", base="BTC", quote="USDT",
                                        tick_size="0.01", lot_size="0.001",
                                        maker_bps=maker_bps, taker_bps=taker_bps))

    def shard(self, account: str) -> Ledger:
        return self.ledgers[shard_of(account, len(self.ledgers))]

    def do(self, shard: int, command: AnyLedgerCommand) -> list[AnyLedgerEvent]:
        ledger = self.ledgers[shard]
        return ledger.apply(type(command)(**{**{name: getattr(command, name) for name in
                                                 command.__struct_fields__},
                                              "sequence": ledger.sequence + 1}))

    def on(self, account: str, command: AnyLedgerCommand) -> list[AnyLedgerEvent]:
        """Apply to the account's shard; what it forwards goes to the market at once and
        every shard settles the market's events."""
        events = self.do(shard_of(account, len(self.ledgers)), command)
        for event in events:
            if isinstance(event, Forward):
                self.market(event.command)
        return events

    def market(self, command: Place | Replace | Cancel) -> None:
        self.market_sequence += 1
        stamped = type(command)(**{**{name: getattr(command, name) for name in
                                      command.__struct_fields__},
                                   "sequence": self.market_sequence})
        events = self.engine.apply(stamped)
        if self.deferred is not None:
            self.deferred.append(Report(self.market_sequence, self.market_sequence, events))
            return
        for shard in range(len(self.ledgers)):
            self.do(shard, Settle(0, 0, market="m", reports=[
                Report(self.market_sequence, self.market_sequence, events)]))

    def fund(self, account: str, btc: int = 0, usdt: int = 0) -> None:
        for asset, amount in (("BTC", btc), ("USDT", usdt)):
            if amount:
                self.on(account, Deposit(0, 0, transfer_id=f"{account}-{asset}-in",
                                         account=account, asset=asset, amount=amount))

    def balance(self, account: str, asset: str) -> tuple[int, int]:
        return self.shard(account).balance(account, asset)

    def buy(self, account: str, price: int, lots: int, cid: str,
            **options: object) -> list[AnyLedgerEvent]:
        return self.on(account, FundOrder(0, 0, market="m", place=Place(
            0, 0, account=account, side=Side.BUY, price=price, quantity=lots,
            client_order_id=cid, **options)))  # type: ignore[arg-type]

    def sell(self, account: str, price: int, lots: int, cid: str,
             **options: object) -> list[AnyLedgerEvent]:
        return self.on(account, FundOrder(0, 0, market="m", place=Place(
            0, 0, account=account, side=Side.SELL, price=price, quantity=lots,
            client_order_id=cid, **options)))  # type: ignore[arg-type]

    def audit(self) -> None:
        for ledger in self.ledgers:
            assert ledger.audit() == []


def refusals(events: list[AnyLedgerEvent]) -> list[RejectCode]:
    return [event.code for event in events if isinstance(event, Refused)]


def test_terms_in_asset_units() -> None:
    terms = Terms.of("m", "BTC", "USDT", "0.01", "0.001", 10, 20, {"BTC": 8, "USDT": 6})
    assert (terms.base_per_lot, terms.quote_per_unit) == (LOT, UNIT)
    desk = Desk()  # the same market
    desk.fund("buyer", usdt=100_000_000)
    desk.fund("seller", btc=10 * LOT)
    # 2 lots at 3 000 000 ticks (30 000.00 USDT): 60.000000 USDT = 60 000 000 units,
    # plus 20 bp of it: 120 000 units.
    desk.buy("buyer", 3_000_000, 2, "b1")
    assert desk.balance("buyer", "USDT")[1] == 60_000_000 + 120_000
    desk.sell("seller", 3_100_000, 2, "s1")  # above the bid: it rests
    assert desk.balance("seller", "BTC")[1] == 200_000


@pytest.mark.parametrize(("tick", "lot", "decimals", "complaint"), [
    ("0.01", "0.001", {"BTC": 2, "USDT": 6}, "lot of 0.001 BTC"),
    ("0.01", "0.001", {"BTC": 8, "USDT": 4}, "tick × lot"),
    ("0.01", "0.001", {"BTC": 8}, "USDT is not defined"),
])
def test_a_grid_finer_than_the_assets_is_refused(tick: str, lot: str,
                                                 decimals: dict[str, int],
                                                 complaint: str) -> None:
    with pytest.raises(TermsError, match=complaint):
        Terms.of("m", "BTC", "USDT", tick, lot, 0, 0, decimals)


@pytest.mark.parametrize(("value", "bps", "expected"), [
    (10_000, 10, 10), (10_001, 10, 11), (1, 1, 1), (0, 20, 0), (12_345, 0, 0),
])
def test_fees_round_up(value: int, bps: int, expected: int) -> None:
    assert fee(value, bps) == expected


def test_deposits_and_withdrawals_are_idempotent_by_id() -> None:
    desk = Desk()
    deposit = Deposit(0, 0, transfer_id="t1", account="alice", asset="USDT", amount=500)
    desk.on("alice", deposit)
    assert isinstance(desk.on("alice", deposit)[0], Duplicate)
    assert desk.balance("alice", "USDT") == (500, 0)
    assert refusals(desk.on("alice", Deposit(0, 0, transfer_id="t1", account="alice",
                                             asset="USDT", amount=501))) == [
        RejectCode.TRANSFER_ID_REUSED]
    assert refusals(desk.on("alice", Withdraw(0, 0, transfer_id="w1", account="alice",
                                              asset="USDT", amount=501))) == [
        RejectCode.INSUFFICIENT_FUNDS]
    desk.on("alice", Withdraw(0, 0, transfer_id="w1", account="alice", asset="USDT",
                              amount=200))
    assert isinstance(desk.on("alice", Withdraw(0, 0, transfer_id="w1", account="alice",
                                                asset="USDT", amount=200))[0], Duplicate)
    assert desk.balance("alice", "USDT") == (300, 0)
    assert desk.balance(WORLD, "USDT") == (-300, 0)
    desk.audit()


@pytest.mark.parametrize(("command", "code"), [
    (Deposit(0, 0, transfer_id="t", account="alice", asset="DOGE", amount=1),
     RejectCode.NOT_FUNDED),
    (Deposit(0, 0, transfer_id="t", account="alice", asset="USDT", amount=0),
     RejectCode.INVALID_AMOUNT),
    (Deposit(0, 0, transfer_id="t", account="alice", asset="USDT", amount=-5),
     RejectCode.INVALID_AMOUNT),
    (Deposit(0, 0, transfer_id="", account="alice", asset="USDT", amount=5),
     RejectCode.INVALID_AMOUNT),
    (Deposit(0, 0, transfer_id="t", account="$fees", asset="USDT", amount=5),
     RejectCode.INVALID_AMOUNT),
    (Deposit(0, 0, transfer_id="t", account="alice", asset="USDT", amount=10**40),
     RejectCode.INVALID_AMOUNT),
    (DefineAsset(0, 0, asset="BTC", decimals=6), RejectCode.INVALID_AMOUNT),
    (DefineAsset(0, 0, asset="btc", decimals=6), RejectCode.INVALID_AMOUNT),
    (DefineMarket(0, 0, market="m", base="BTC", quote="USDT", tick_size="0.1",
                  lot_size="0.001"), RejectCode.INVALID_AMOUNT),
    (DefineMarket(0, 0, market="n", base="BTC", quote="USDT", tick_size="0.01",
                  lot_size="0.001", maker_bps=-5), RejectCode.INVALID_AMOUNT),
    (DefineMarket(0, 0, market="n", base="ETH", quote="USDT", tick_size="0.01",
                  lot_size="0.001"), RejectCode.NOT_FUNDED),
])
def test_bad_admin_commands_are_refused_and_change_nothing(command: AnyLedgerCommand,
                                                           code: RejectCode) -> None:
    desk = Desk()
    before = desk.ledgers[0].snapshot()
    events = desk.do(0, command)
    assert refusals(events) == [code]
    after = Ledger.restore(desk.ledgers[0].snapshot())
    after.sequence -= 1
    assert after.snapshot() == before


def test_a_snapshot_is_the_documented_json_arrays_compiled_or_not() -> None:
    """The ledger core is compiled (scripts/build_native.py), and a compiled module drops
    a msgspec struct's options: the snapshot's structs live in plain Python, and their
    encoding is held here (a replica's state hash is of these bytes)."""
    desk = Desk()
    desk.fund("buyer", usdt=10_000_000)
    desk.buy("buyer", 1_000, 10, "b1")
    state = msgspec.json.decode(desk.shard("buyer").snapshot())
    assert state[0] == 1  # the snapshot's version
    assert [terms[0] for terms in state[5]] == ["m"]  # each market's terms: an array
    [order] = state[8]  # each order: an array (ledger.snapshot.OrderState)
    assert order[:8] == ["m", "buyer", "b1", "buy", 1_000, 10, 10, 100_200]


@pytest.mark.parametrize("part", [8, 9], ids=["an order", "a settlement"])
def test_a_snapshot_naming_a_market_it_does_not_define_is_refused(part: int) -> None:
    """A snapshot comes from the database: one whose order or settlement is of a market
    it does not define is refused with a reason, not half restored."""
    desk = Desk()
    desk.fund("buyer", usdt=10_000_000)
    desk.buy("buyer", 1_000, 10, "b1")
    desk.fund("seller", btc=LOT)
    desk.sell("seller", 1_000, 1, "s1")  # trades with b1: the market settles
    ledger = desk.shard("buyer")
    state = msgspec.json.decode(ledger.snapshot())
    assert state[part], state
    state[part][0][0] = "elsewhere"
    with pytest.raises(ValueError, match="market 'elsewhere', which it does not define"):
        Ledger.restore(msgspec.json.encode(state))


def test_a_buy_holds_its_value_and_the_larger_fee() -> None:
    desk = Desk()
    desk.fund("alice", usdt=1_000_000)
    desk.buy("alice", 1_000, 50, "b1")  # 50 lots at 10.00: 500 000 units + 20 bp
    assert desk.balance("alice", "USDT") == (1_000_000 - 501_000, 501_000)
    desk.audit()


def test_an_order_the_account_cannot_cover_is_refused_and_changes_nothing() -> None:
    desk = Desk()
    desk.fund("alice", usdt=500_999)
    assert refusals(desk.buy("alice", 1_000, 50, "b1")) == [RejectCode.INSUFFICIENT_FUNDS]
    assert desk.balance("alice", "USDT") == (500_999, 0)
    assert desk.engine.l3().bids == []
    desk.fund("bob", btc=49 * LOT)
    assert refusals(desk.sell("bob", 1_000, 50, "s1")) == [RejectCode.INSUFFICIENT_FUNDS]
    desk.audit()


def test_a_trade_settles_value_fees_and_price_improvement() -> None:
    desk = Desk()
    desk.fund("seller", btc=10 * LOT)
    desk.fund("buyer", usdt=10_000_000)
    desk.sell("seller", 1_000, 4, "s1")  # rests: the maker, at 10.00
    assert desk.balance("seller", "BTC") == (6 * LOT, 4 * LOT)
    desk.buy("buyer", 1_100, 4, "b1")  # takes all 4 lots at 10.00, limit 11.00
    value = 1_000 * 4 * UNIT  # 40 000 units
    assert desk.balance("buyer", "BTC") == (4 * LOT, 0)
    # The buyer held 44 000 + 88; paid 40 000 and the taker's 80; the rest came back.
    assert desk.balance("buyer", "USDT") == (10_000_000 - value - 80, 0)
    assert desk.balance("seller", "BTC") == (6 * LOT, 0)
    assert desk.balance("seller", "USDT") == (value - 40, 0)  # maker fee 10 bp
    assert desk.balance(FEES, "USDT") == (120, 0)
    assert desk.balance(CLEARING, "USDT") == (0, 0)
    assert desk.balance(CLEARING, "BTC") == (0, 0)
    desk.audit()


def test_a_fill_is_one_event_whose_legs_are_its_journal_lines() -> None:
    desk = Desk()
    desk.fund("seller", btc=10 * LOT)
    desk.fund("buyer", usdt=10_000_000)
    desk.sell("seller", 1_000, 4, "s1")
    desk.deferred = []
    desk.buy("buyer", 1_100, 4, "b1")  # as above: 4 lots at 10.00, limit 11.00
    events = desk.do(0, Settle(0, 0, market="m", reports=desk.deferred))
    value = 1_000 * 4 * UNIT
    # The buyer held 44 000 and 88 of fee: it pays 40 000 and 80; 4 008 comes back.
    fills = [(event.account, event.buy, event.value, event.delivered, event.fee,
              event.released) for event in events if isinstance(event, Fill)]
    assert fills == [("seller", False, value, 4 * LOT, 40, 0),
                     ("buyer", True, value, 4 * LOT, 80, 4_008)]
    lines = [(line.kind, line.account, line.asset, line.available, line.held)
             for line in journal_lines(events) if isinstance(line, Movement)]
    trade, fee_, release = MovementKind.TRADE, MovementKind.FEE, MovementKind.RELEASE
    assert lines == [
        (trade, "seller", "BTC", 0, -4 * LOT), (trade, "seller", "USDT", value, 0),
        (fee_, "seller", "USDT", -40, 0),
        (trade, "buyer", "USDT", 0, -value), (fee_, "buyer", "USDT", 0, -80),
        (trade, "buyer", "BTC", 4 * LOT, 0), (release, "buyer", "USDT", 4_008, -4_008),
        (fee_, FEES, "USDT", 120, 0)]  # both sides in this shard: nothing via $clearing
    assert desk.balance("buyer", "USDT") == (10_000_000 - value - 80, 0)
    desk.audit()


def test_a_partial_fill_keeps_exactly_what_the_rest_needs() -> None:
    desk = Desk()
    desk.fund("seller", btc=10 * LOT)
    desk.fund("buyer", usdt=10_000_000)
    desk.buy("buyer", 1_000, 10, "b1")  # rests: 100 000 + 200 held
    desk.sell("seller", 990, 3, "s1")  # takes 3 at 10.00 (the maker's price)
    funding = desk.shard("buyer").orders[("m", "buyer", "b1")]
    assert funding.remaining == 7
    assert desk.balance("buyer", "USDT")[1] == 70_000 + 140 == funding.held
    # It paid the maker's 10 bp (30) of the 20 bp it held for (60): 30 came back at once.
    assert desk.balance("buyer", "USDT")[0] == 10_000_000 - 100_200 + 30
    desk.audit()


def test_a_market_buy_holds_its_budget_and_returns_what_it_did_not_spend() -> None:
    desk = Desk()
    desk.fund("seller", btc=10 * LOT)
    desk.fund("buyer", usdt=1_000_000)
    desk.sell("seller", 1_000, 2, "s1")
    events = desk.on("buyer", FundOrder(0, 0, market="m", place=Place(
        0, 0, account="buyer", side=Side.BUY, order_type=OrderType.MARKET,
        time_in_force=TimeInForce.IOC, quote_amount=5_000, client_order_id="mb")))
    assert not refusals(events)
    # It spent 2 lots at 10.00 (20 000 units) and the taker fee (40); the rest is back.
    assert desk.balance("buyer", "USDT") == (1_000_000 - 20_000 - 40, 0)
    assert desk.balance("buyer", "BTC") == (2 * LOT, 0)
    desk.audit()


def test_a_market_buy_by_quantity_is_refused() -> None:
    desk = Desk()
    desk.fund("buyer", usdt=1_000_000)
    events = desk.on("buyer", FundOrder(0, 0, market="m", place=Place(
        0, 0, account="buyer", side=Side.BUY, order_type=OrderType.MARKET,
        time_in_force=TimeInForce.IOC, quantity=2, client_order_id="mb")))
    assert refusals(events) == [RejectCode.QUOTE_AMOUNT_REQUIRED]
    assert desk.balance("buyer", "USDT") == (1_000_000, 0)


def test_a_refused_order_gives_its_hold_back() -> None:
    desk = Desk()
    desk.fund("alice", usdt=1_000_000)
    # Post-only that would cross gets canceled; below-min-notional gets refused: here,
    # a FOK that cannot fill is canceled by the market.
    desk.buy("alice", 1_000, 5, "fok", time_in_force=TimeInForce.FOK)
    assert desk.balance("alice", "USDT") == (1_000_000, 0)
    assert not desk.shard("alice").orders
    desk.audit()


def test_the_same_client_order_id_again_is_held_once_and_sent_again() -> None:
    """A retry (or a client order id in use) is not held twice: it goes to the market
    again, where the stream drops a retry and the engine refuses a second open order
    under the id (207) — a refusal the ledger ignores, the first order being open."""
    desk = Desk()
    desk.fund("alice", usdt=1_000_000)
    desk.buy("alice", 1_000, 5, "x")
    events = desk.buy("alice", 1_000, 5, "x")
    assert [type(event).__name__ for event in events] == ["Duplicate", "Forward"]
    assert desk.balance("alice", "USDT") == (1_000_000 - 50_100, 50_100)
    assert len(desk.engine.l3().bids) == 1  # the engine refused the copy (207)
    desk.market(Cancel(0, 0, account="alice", client_order_id="x"))
    assert desk.balance("alice", "USDT") == (1_000_000, 0)
    assert not refusals(desk.buy("alice", 1_000, 5, "x"))  # a new order under the id
    desk.audit()


def limit(account: str, side: Side, price: int, lots: int, cid: str) -> Place:
    return Place(0, 0, account=account, side=side, price=price, quantity=lots,
                 client_order_id=cid)


def test_a_fund_orders_funds_each_order_in_turn_as_a_fund_order_would() -> None:
    """Held, refused, a retry of the first, and unnamed: each order's events end with its
    ``Forward`` or its ``Refused``, and the balances are those of one command each."""
    orders = [limit("alice", Side.BUY, 1_000, 5, "a1"),
              limit("alice", Side.BUY, 1_000, 500, "a2"),  # more than alice has
              limit("alice", Side.BUY, 1_000, 5, "a1"),
              limit("alice", Side.BUY, 1_000, 1, "")]
    batched, alone = Desk(), Desk()
    for desk in (batched, alone):
        desk.fund("alice", usdt=1_000_000)
    sequence = batched.ledgers[0].sequence + 1
    events = batched.on("alice", FundOrders(0, 0, orders=[
        Funded("m", place, ack=f"ack.{index}") for index, place in enumerate(orders)]))
    separately = [alone.on("alice", FundOrder(0, 0, market="m", place=place))
                  for place in orders]
    assert [[type(event).__name__ for event in own] for own in separately] == [
        ["Movement", "Forward"], ["Refused"], ["Duplicate", "Forward"], ["Movement", "Forward"]]
    assert [type(event).__name__ for event in events] == [
        type(event).__name__ for own in separately for event in own]
    assert refusals(events) == [RejectCode.INSUFFICIENT_FUNDS]
    assert batched.balance("alice", "USDT") == alone.balance("alice", "USDT") == (
        1_000_000 - 50_100 - 10_020, 50_100 + 10_020)
    # The unnamed order is named after its command and its place in it.
    forwarded = [event.command for event in events if isinstance(event, Forward)]
    assert forwarded[-1].client_order_id == f"L0-{sequence}-3"
    assert batched.ledgers[0].in_flight() == []  # the desk's market took them at once
    batched.audit()
    alone.audit()


def test_an_order_of_a_fund_orders_in_flight_is_named_by_its_place_and_unsent_alone() -> None:
    ledger = Desk().ledgers[0]
    ledger.apply(Deposit(ledger.sequence + 1, 0, transfer_id="in", account="alice",
                         asset="USDT", amount=1_000_000))
    sequence = ledger.sequence + 1
    ledger.apply(FundOrders(sequence, 0, orders=[
        Funded("m", limit("alice", Side.BUY, 1_000, 5, "a1")),
        Funded("m", limit("alice", Side.BUY, 1_000, 2, "a2"))]))
    assert ledger.in_flight() == [(sequence, 0), (sequence, 1)]
    restored = Ledger.restore(ledger.snapshot())
    assert restored.in_flight() == [(sequence, 0), (sequence, 1)]
    assert restored.state_hash() == ledger.state_hash()
    # Unsent names the funding: the wrong place changes nothing, the right one releases.
    wrong = ledger.apply(Unsent(ledger.sequence + 1, 0, market="m", account="alice",
                                client_order_id="a2", funded_at=sequence, funded_index=0))
    assert [type(event) for event in wrong] == [Duplicate]
    ledger.apply(Unsent(ledger.sequence + 1, 0, market="m", account="alice",
                        client_order_id="a2", funded_at=sequence, funded_index=1))
    assert ledger.in_flight() == [(sequence, 0)]
    assert ledger.balance("alice", "USDT") == (1_000_000 - 50_100, 50_100)


def test_a_replace_holds_more_first_and_settles_to_the_new_need() -> None:
    desk = Desk()
    desk.fund("alice", usdt=1_000_000)
    desk.buy("alice", 1_000, 5, "b")  # 50 000 + 100
    order_id = desk.shard("alice").orders[("m", "alice", "b")].order_id
    events = desk.on("alice", FundReplace(0, 0, market="m", replace=Replace(
        0, 0, account="alice", order_id=order_id, price=1_200, quantity=8)))
    assert not refusals(events)
    assert desk.balance("alice", "USDT") == (1_000_000 - 96_192, 96_192)  # 96 000 + 192
    events = desk.on("alice", FundReplace(0, 0, market="m", replace=Replace(
        0, 0, account="alice", order_id=order_id, price=900, quantity=2)))
    assert desk.balance("alice", "USDT") == (1_000_000 - 18_036, 18_036)
    assert refusals(desk.on("alice", FundReplace(0, 0, market="m", replace=Replace(
        0, 0, account="alice", order_id=order_id, price=1_000_000, quantity=8)))) == [
        RejectCode.INSUFFICIENT_FUNDS]
    assert refusals(desk.on("alice", FundReplace(0, 0, market="m", replace=Replace(
        0, 0, account="alice", order_id=order_id + 7, price=1_000, quantity=8)))) == [
        RejectCode.UNKNOWN_ORDER]
    desk.audit()


def test_a_replace_the_market_refuses_gives_its_provision_back() -> None:
    desk = Desk()
    desk.fund("seller", btc=10 * LOT)
    desk.fund("buyer", usdt=1_000_000)
    desk.sell("seller", 1_000, 5, "s")
    order_id = desk.shard("seller").orders[("m", "seller", "s")].order_id
    desk.buy("buyer", 1_000, 2, "b")  # 2 of the 5 lots trade
    # A new total of 2 is not above the 2 filled: the market refuses it (209).
    events = desk.on("seller", FundReplace(0, 0, market="m", replace=Replace(
        0, 0, account="seller", order_id=order_id, quantity=2)))
    assert not refusals(events)
    assert desk.balance("seller", "BTC") == (5 * LOT, 3 * LOT)
    desk.audit()


def test_across_shards_each_settles_its_leg_against_clearing() -> None:
    desk = Desk(shards=2)
    seller, buyer = "seller", "buyer"
    assert shard_of(seller, 2) != shard_of(buyer, 2), "pick accounts in different shards"
    desk.fund(seller, btc=10 * LOT)
    desk.fund(buyer, usdt=1_000_000)
    desk.sell(seller, 1_000, 3, "s")
    desk.buy(buyer, 1_000, 3, "b")
    assert desk.balance(buyer, "BTC") == (3 * LOT, 0)
    assert desk.balance(seller, "USDT") == (30_000 - 30, 0)
    for asset in ("BTC", "USDT"):
        assert sum(ledger.balance(CLEARING, asset)[0] for ledger in desk.ledgers) == 0
        assert all(ledger.balance(CLEARING, asset)[0] != 0 for ledger in desk.ledgers)
    desk.audit()


def test_an_events_message_settled_twice_changes_nothing() -> None:
    desk = Desk()
    desk.fund("seller", btc=10 * LOT)
    desk.fund("buyer", usdt=1_000_000)
    desk.sell("seller", 1_000, 3, "s")
    desk.buy("buyer", 1_000, 3, "b")
    ledger = desk.ledgers[0]
    before = Ledger.restore(ledger.snapshot())
    events = ledger.apply(Settle(ledger.sequence + 1, 0, market="m", reports=[
        Report(desk.market_sequence, desk.market_sequence, [])]))
    assert events == [Duplicate("settle", f"m:{desk.market_sequence}")]
    before.sequence = ledger.sequence  # only the ledger's own sequence moved
    assert before.state_hash() == ledger.state_hash()
    desk.audit()


def test_one_settle_of_several_events_messages_settles_each_once() -> None:
    """A leader settles what came in together in one ``settle``; a new leader may group
    the same messages otherwise. Each message is settled once, whatever the grouping."""
    one_by_one, grouped = Desk(), Desk()
    grouped.deferred = []
    for desk in (one_by_one, grouped):
        desk.fund("seller", btc=10 * LOT)
        desk.fund("buyer", usdt=100_000_000)
        desk.sell("seller", 1_000, 3, "s")
        desk.buy("buyer", 1_001, 2, "b")  # fills 2 at 1 000: a price improvement
        desk.on("seller", FundOrder(0, 0, market="m", place=Place(
            0, 0, account="seller", side=Side.SELL, price=0, quantity=1,
            order_type=OrderType.MARKET, client_order_id="s2")))  # no bid left: canceled
    assert grouped.deferred is not None
    assert len(grouped.deferred) == 3
    first, second, third = grouped.deferred
    ledger = grouped.ledgers[0]
    settled = ledger.apply(Settle(ledger.sequence + 1, 0, market="m",
                                  reports=[first, second]))
    assert not any(isinstance(event, Duplicate) for event in settled)
    # Again, with the next message behind it: only that one is settled.
    again = ledger.apply(Settle(ledger.sequence + 1, 0, market="m",
                                reports=[first, second, third]))
    assert [event for event in again if isinstance(event, Duplicate)] == [
        Duplicate("settle", f"m:{first.events_sequence}"),
        Duplicate("settle", f"m:{second.events_sequence}")]
    assert ledger.settled["m"] == ledger.settled_through("m") == third.events_sequence
    assert ledger.positions["m"] == third.position
    assert ledger.settled_through("another") == 0
    restored = Ledger.restore(ledger.snapshot())
    assert (restored.settled, restored.positions) == (ledger.settled, ledger.positions)
    for account in ("seller", "buyer", FEES, CLEARING):
        for asset in ("BTC", "USDT"):
            assert grouped.balance(account, asset) == one_by_one.balance(account, asset)
    # The sell's last lot rests, holding the same in both; the market sell is gone.
    assert ({key: (funding.remaining, funding.held) for key, funding in ledger.orders.items()}
            == {key: (funding.remaining, funding.held)
                for key, funding in one_by_one.ledgers[0].orders.items()}
            == {("m", "seller", "s"): (1, LOT)})
    grouped.audit()
    one_by_one.audit()


def test_amounts_beyond_64_bits_are_kept_exactly() -> None:
    """An asset of 18 decimals holds 2**64 units at about 18.4 whole units: balances,
    snapshots and the state hash take integers of any size."""
    ledger = Ledger()
    ledger.apply(DefineAsset(1, 0, asset="ETH", decimals=18))
    amount = 10**30
    for sequence, transfer in ((2, "a"), (3, "b")):
        assert not refusals(ledger.apply(Deposit(sequence, 0, transfer_id=transfer,
                                                 account="whale", asset="ETH",
                                                 amount=amount)))
    assert ledger.balance("whale", "ETH") == (2 * amount, 0)
    again = Ledger.restore(ledger.snapshot())
    assert again.balance("whale", "ETH") == (2 * amount, 0)
    assert again.state_hash() == ledger.state_hash()
    assert ledger.audit() == []

