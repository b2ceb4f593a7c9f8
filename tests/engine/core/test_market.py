"""MarketSpec: what a valid market definition is, the integer rules it gives the engine,
and the decimal conversion between the strings traders write and whole ticks and lots.

The conversion tables are the only place PRICE_NOT_ON_TICK and QUANTITY_NOT_ON_LOT come
from (the engine only ever sees integers); a test below holds them to covering both.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import TypedDict, Unpack

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.engine.core.helpers import CONVERSION_ONLY_CODES
from tradeplane_engine.core import MAX_UNITS, MarketSpec, OffGrid, RejectCode
from tradeplane_engine.core.market import (
    FORMATTED_KEPT,
    TradingMode,
    UnitFormatter,
    format_decimal,
)

PRICE_NOT_ON_TICK = RejectCode.PRICE_NOT_ON_TICK
QUANTITY_NOT_ON_LOT = RejectCode.QUANTITY_NOT_ON_LOT
INVALID_PRICE = RejectCode.INVALID_PRICE
INVALID_QUANTITY = RejectCode.INVALID_QUANTITY


class SpecFields(TypedDict, total=False):
    base: str
    quote: str
    tick_size: str
    lot_size: str
    min_notional: str
    price_band: str
    reference_price: str | None


def make_spec(**fields: Unpack[SpecFields]) -> MarketSpec:
    """A BTC-USD spec with a 0.01 tick and a 0.001 lot, changed by ``fields``."""
    return MarketSpec(
        base=fields.get("base", "BTC"), quote=fields.get("quote", "USD"),
        tick_size=fields.get("tick_size", "0.01"), lot_size=fields.get("lot_size", "0.001"),
        min_notional=fields.get("min_notional", "0"), price_band=fields.get("price_band", "0"),
        reference_price=fields.get("reference_price"),
    )


# -- the definition ---------------------------------------------------------------------

def test_a_spec_from_the_wire_uses_camel_case() -> None:
    wire = (b'{"base":"ETH","quote":"USDT","tickSize":"0.05","lotSize":"0.0001",'
            b'"minNotional":"5","priceBand":"7.5","referencePrice":"1800.05",'
            b'"tradingMode":"postOnly"}')
    spec = msgspec.json.decode(wire, type=MarketSpec)
    assert spec == MarketSpec(base="ETH", quote="USDT", tick_size="0.05", lot_size="0.0001",
                              min_notional="5", price_band="7.5", reference_price="1800.05",
                              trading_mode=TradingMode.POST_ONLY)
    assert spec.symbol == "ETH-USDT"
    assert msgspec.json.decode(msgspec.json.encode(spec)) == msgspec.json.decode(wire)


def test_defaults() -> None:
    spec = MarketSpec(base="BTC", quote="USD", tick_size="1", lot_size="1")
    assert (spec.min_notional, spec.price_band, spec.reference_price, spec.trading_mode) == (
        "0", "0", None, TradingMode.OPEN)


INVALID_SPECS = [
    pytest.param(SpecFields(base=""), "base must be", id="empty base"),
    pytest.param(SpecFields(base="BT-C"), "base must be", id="base with a dash"),
    pytest.param(SpecFields(base="BTÇ"), "base must be", id="non-ASCII base"),
    pytest.param(SpecFields(quote="US D"), "quote must be", id="quote with a space"),
    pytest.param(SpecFields(tick_size="0"), "tickSize must be positive", id="zero tick"),
    pytest.param(SpecFields(tick_size="-0.01"), "plain decimal", id="negative tick"),
    pytest.param(SpecFields(tick_size=".01"), "plain decimal", id="tick without a leading 0"),
    pytest.param(SpecFields(tick_size="1."), "plain decimal", id="tick ending in a point"),
    pytest.param(SpecFields(lot_size="+1"), "plain decimal", id="plus-signed lot"),
    pytest.param(SpecFields(lot_size="01"), "plain decimal", id="lot with a leading zero"),
    pytest.param(SpecFields(tick_size="1e-2"), "plain decimal", id="tick with an exponent"),
    pytest.param(SpecFields(tick_size="NaN"), "plain decimal", id="NaN tick"),
    pytest.param(SpecFields(tick_size=""), "decimal string", id="empty tick"),
    pytest.param(SpecFields(lot_size="0.000"), "lotSize must be positive", id="zero lot"),
    pytest.param(SpecFields(lot_size="one"), "plain decimal", id="lot in words"),
    pytest.param(SpecFields(min_notional="-1"), "plain decimal", id="negative min notional"),
    pytest.param(SpecFields(price_band="-5"), "plain decimal", id="negative band"),
    pytest.param(SpecFields(price_band="5%"), "plain decimal", id="band with a percent sign"),
    pytest.param(SpecFields(reference_price="100.005"), "not a multiple",
                 id="reference price off the tick"),
    pytest.param(SpecFields(reference_price="0"), "must be positive",
                 id="zero reference price"),
]


@pytest.mark.parametrize(("fields", "message"), INVALID_SPECS)
def test_invalid_specs_are_refused(fields: SpecFields, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_spec(**fields)


def test_a_reference_price_off_the_tick_is_refused_with_its_code() -> None:
    with pytest.raises(OffGrid) as refused:
        make_spec(reference_price="100.005")
    assert refused.value.code is PRICE_NOT_ON_TICK


def test_an_invalid_spec_on_the_wire_is_a_validation_error() -> None:
    wire = b'{"base":"BTC","quote":"USD","tickSize":"0","lotSize":"1"}'
    with pytest.raises(msgspec.ValidationError, match="tickSize must be positive"):
        msgspec.json.decode(wire, type=MarketSpec)


RULES = [
    pytest.param(SpecFields(), 0, Fraction(0), 0, id="no minimum, no band, no reference"),
    pytest.param(SpecFields(min_notional="10"), 1_000_000, Fraction(0), 0,
                 id="min notional in 0.00001 units"),
    pytest.param(SpecFields(tick_size="0.5", lot_size="0.1", min_notional="10"), 200,
                 Fraction(0), 0, id="min notional exactly on the unit grid"),
    pytest.param(SpecFields(tick_size="0.5", lot_size="0.1", min_notional="10.01"), 201,
                 Fraction(0), 0, id="min notional off the grid rounds up"),
    pytest.param(SpecFields(price_band="10"), 0, Fraction(1, 10), 0, id="a 10 percent band"),
    pytest.param(SpecFields(price_band="2.5"), 0, Fraction(1, 40), 0, id="a 2.5 percent band"),
    pytest.param(SpecFields(tick_size="0.5", reference_price="100.5"), 0, Fraction(0), 201,
                 id="reference price in ticks"),
]


@pytest.mark.parametrize(("fields", "min_notional", "band", "reference"), RULES)
def test_rules(fields: SpecFields, min_notional: int, band: Fraction, reference: int) -> None:
    rules = make_spec(**fields).rules()
    assert rules.min_notional == min_notional
    assert Fraction(rules.band_numerator, rules.band_denominator) == band
    assert rules.reference_price == reference


# -- decimal conversion -----------------------------------------------------------------

Conversion = tuple[str, str, int | RejectCode]
"""(step size, decimal string, whole steps or the reject code)"""

TO_TICKS: list[Conversion] = [
    ("0.01", "100.25", 10025),
    ("0.01", "100.2", 10020),
    ("0.01", "100", 10000),
    ("0.01", "0.01", 1),
    ("0.01", "1.00", 100),
    ("0.01", "0.05", 5),
    ("0.5", "7.5", 15),
    ("5", "15", 3),
    ("1", str(MAX_UNITS), MAX_UNITS),
    ("0.01", "100.255", PRICE_NOT_ON_TICK),
    ("0.01", "0.001", PRICE_NOT_ON_TICK),
    ("0.5", "0.25", PRICE_NOT_ON_TICK),
    ("5", "12", PRICE_NOT_ON_TICK),
    ("0.01", "0", INVALID_PRICE),
    ("0.01", "0.00", INVALID_PRICE),
    ("0.01", "-1", INVALID_PRICE),
    ("0.01", "-", INVALID_PRICE),
    ("0.01", "1e2", INVALID_PRICE),
    ("0.01", "abc", INVALID_PRICE),
    ("0.01", "", INVALID_PRICE),
    ("0.01", " 1", INVALID_PRICE),
    ("0.01", "1,5", INVALID_PRICE),
    ("0.01", "1.2.3", INVALID_PRICE),
    ("0.01", "+1", INVALID_PRICE),
    ("0.01", "+0.5", INVALID_PRICE),
    ("0.01", "-0", INVALID_PRICE),
    ("0.01", ".5", INVALID_PRICE),
    ("0.01", "1.", INVALID_PRICE),
    ("0.01", "+1.00", INVALID_PRICE),
    ("0.01", ".05", INVALID_PRICE),
    ("0.01", ".", INVALID_PRICE),
    ("0.01", "0138", INVALID_PRICE),
    ("0.01", "00.5", INVALID_PRICE),
    ("0.01", "1 ", INVALID_PRICE),
    ("0.01", "1\n", INVALID_PRICE),
    ("0.01", "1_000", INVALID_PRICE),
    ("0.01", "\uff11", INVALID_PRICE),  # fullwidth 1
    ("0.01", "0.50", 50),
    ("0.01", "0.5", 50),
    ("1", "10", 10),
    ("0.01", "NaN", INVALID_PRICE),
    ("0.01", "Infinity", INVALID_PRICE),
    ("0.01", "\u0661\u0662", INVALID_PRICE),  # Arabic-Indic digits are digits, not ASCII
    ("0.01", "1" * 65, INVALID_PRICE),
    ("0.01", "9" * 40, INVALID_PRICE),
    ("1", str(MAX_UNITS + 1), INVALID_PRICE),
]

TO_LOTS: list[Conversion] = [
    ("0.001", "1.5", 1500),
    ("0.001", "0.001", 1),
    ("0.1", "2", 20),
    ("10", "30", 3),
    ("0.001", "0.0005", QUANTITY_NOT_ON_LOT),
    ("10", "15", QUANTITY_NOT_ON_LOT),
    ("0.001", "0", INVALID_QUANTITY),
    ("0.001", "-2", INVALID_QUANTITY),
    ("0.001", "2e3", INVALID_QUANTITY),
    ("0.001", "lots", INVALID_QUANTITY),
    ("0.001", "+1", INVALID_QUANTITY),
    ("0.001", ".5", INVALID_QUANTITY),
    ("0.001", "2.", INVALID_QUANTITY),
    ("0.001", "007", INVALID_QUANTITY),
    ("1", str(MAX_UNITS + 1), INVALID_QUANTITY),
]

TO_NOTIONAL: list[Conversion] = [
    # (tick size × lot size, amount, units); the spec's tick and lot are derived from it
    ("0.01×0.001", "10", 1_000_000),
    ("0.01×0.001", "0.00001", 1),
    ("0.5×0.1", "1", 20),
    ("0.01×0.001", "0.000015", QUANTITY_NOT_ON_LOT),
    ("0.5×0.1", "0.07", QUANTITY_NOT_ON_LOT),
    ("0.01×0.001", "0", INVALID_QUANTITY),
    ("0.01×0.001", "ten", INVALID_QUANTITY),
    ("0.01×0.001", "+10", INVALID_QUANTITY),
    ("0.01×0.001", ".5", INVALID_QUANTITY),
]


def _check(convert: Callable[[str], int], text: str, expected: int | RejectCode) -> None:
    if isinstance(expected, RejectCode):
        with pytest.raises(OffGrid) as refused:
            convert(text)
        assert refused.value.code is expected
        assert refused.value.reason == str(refused.value)
        assert isinstance(refused.value, ValueError)
    else:
        assert convert(text) == expected


@pytest.mark.parametrize(("tick", "text", "expected"), TO_TICKS)
def test_to_ticks(tick: str, text: str, expected: int | RejectCode) -> None:
    _check(make_spec(tick_size=tick).to_ticks, text, expected)


@pytest.mark.parametrize(("lot", "text", "expected"), TO_LOTS)
def test_to_lots(lot: str, text: str, expected: int | RejectCode) -> None:
    _check(make_spec(lot_size=lot).to_lots, text, expected)


@pytest.mark.parametrize(("unit", "text", "expected"), TO_NOTIONAL)
def test_to_notional_units(unit: str, text: str, expected: int | RejectCode) -> None:
    tick, lot = unit.split("×")
    _check(make_spec(tick_size=tick, lot_size=lot).to_notional_units, text, expected)


def test_the_conversion_tables_cover_the_codes_only_conversion_raises() -> None:
    raised = {expected for table in (TO_TICKS, TO_LOTS, TO_NOTIONAL)
              for _, _, expected in table if isinstance(expected, RejectCode)}
    assert raised >= CONVERSION_ONLY_CODES
    assert raised <= {*CONVERSION_ONLY_CODES, INVALID_PRICE, INVALID_QUANTITY}


FROM_UNITS = [
    pytest.param("ticks", "0.01", 10025, "100.25"),
    pytest.param("ticks", "0.01", 10000, "100"),
    pytest.param("ticks", "0.50", 3, "1.5"),
    pytest.param("ticks", "5", 3, "15"),
    pytest.param("ticks", "0.01", 0, "0"),
    pytest.param("lots", "0.001", 1500, "1.5"),
    pytest.param("lots", "0.001", 1, "0.001"),
    pytest.param("lots", "10", 7, "70"),
]


@pytest.mark.parametrize(("what", "step", "units", "text"), FROM_UNITS)
def test_from_units(what: str, step: str, units: int, text: str) -> None:
    if what == "ticks":
        assert make_spec(tick_size=step).from_ticks(units) == text
    else:
        assert make_spec(lot_size=step).from_lots(units) == text


def test_from_notional_units() -> None:
    assert make_spec().from_notional_units(1_000_000) == "10"
    assert make_spec(tick_size="0.5", lot_size="0.1").from_notional_units(21) == "1.05"


@given(step=st.sampled_from(["0.01", "0.5", "5", "0.00000001", "0.125"]),
       units=st.integers(1, MAX_UNITS))
def test_conversion_round_trips(step: str, units: int) -> None:
    spec = make_spec(tick_size=step, lot_size=step)
    assert spec.to_ticks(spec.from_ticks(units)) == units
    assert spec.to_lots(spec.from_lots(units)) == units


def test_a_conversion_is_kept_per_step_and_a_refusal_is_not() -> None:
    spec = make_spec(tick_size="0.01", lot_size="0.001")
    for _ in range(2):  # the second time from what was kept
        assert spec.to_ticks("1.5") == 150
        assert spec.to_lots("1.5") == 1500
        with pytest.raises(OffGrid) as refused:
            spec.to_ticks("1.505")
        assert refused.value.code is PRICE_NOT_ON_TICK
    # Past the bound, what is kept starts again: conversions stay right.
    texts = [f"{number}.25" for number in range(1, FORMATTED_KEPT + 10)]
    assert [spec.to_ticks(text) for text in texts] == [
        number * 100 + 25 for number in range(1, FORMATTED_KEPT + 10)]
    assert spec.to_ticks("1.5") == 150


@given(step=st.sampled_from(["0.01", "0.5", "5", "0.00000001", "0.125", "1"]),
       units=st.integers(0, MAX_UNITS))
def test_a_unit_formatter_gives_format_decimal_strings_kept_or_not(step: str,
                                                                   units: int) -> None:
    formatter = UnitFormatter(step)
    expected = format_decimal(Decimal(units) * Decimal(step))
    assert formatter(units) == expected
    assert formatter(units) == expected  # kept


def test_a_unit_formatter_starts_again_past_what_it_keeps() -> None:
    formatter = UnitFormatter("0.01")
    values = range(FORMATTED_KEPT + 10)
    assert [formatter(value) for value in values] == [
        format_decimal(Decimal(value) / 100) for value in values]
    assert formatter(12_345) == "123.45"
