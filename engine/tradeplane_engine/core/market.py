"""A market's definition: decimal strings at the edge, exact integers inside.

Prices inside the engine are whole ticks and quantities whole lots. This module is
the only place that turns the decimal strings traders and operators write into those
integers and back, so that a value off the tick or lot grid is caught here, at the
edge, with a stable code, and never rounded.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from fractions import Fraction

import msgspec

from tradeplane_engine.core.codes import RejectCode
from tradeplane_engine.errors import TradeplaneEngineError

MAX_UNITS = 2**53 - 1
"""Largest price in ticks, quantity in lots or quote amount in tick × lot units: exact in
every JSON reader, JavaScript's too. The edge conversion and the engine hold the same one."""


class TradingMode(StrEnum):
    """What a market accepts. Changed only by a sequenced admin command."""

    OPEN = "open"
    """Everything: place, replace, cancel."""
    POST_ONLY = "postOnly"
    """Only limit GTC orders, and those that would cross are canceled (reason MODE); cancels."""
    CANCEL_ONLY = "cancelOnly"
    """Only cancels (by id, by client id, cancel-all)."""
    HALTED = "halted"
    """No trader command at all; only admin commands. The book is frozen as it is."""


class OffGrid(TradeplaneEngineError, ValueError):  # noqa: N818 - reads as what it is: the value is off the grid
    """A decimal string that is not a valid price, quantity or amount for this market."""

    def __init__(self, code: RejectCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
"""The one decimal grammar, for orders and market definitions alike: ``0`` or digits
without a leading zero, then optionally a point and one or more digits. No sign,
exponent, whitespace or other digits than ASCII's; ``.5``, ``1.`` and ``007`` are
refused, so a value has one spelling up to trailing zeros (the CRD's pattern is the same)."""

MAX_DECIMAL_LENGTH = 64
"""Longest decimal string accepted, in characters."""


def parse_decimal(text: str, what: str) -> Decimal:
    """Parse a decimal string of the one grammar (``DECIMAL``), at most 64 characters."""
    if not isinstance(text, str) or not text or len(text) > MAX_DECIMAL_LENGTH:
        raise ValueError(f"{what} must be a decimal string of 1 to {MAX_DECIMAL_LENGTH} "
                         f"characters, got {text!r:.80}")
    if DECIMAL.fullmatch(text) is None:
        raise ValueError(f"{what} must be a plain decimal string such as '0.01' (digits, "
                         f"no sign, exponent or leading zero), got {text!r}")
    return Decimal(text)


def format_decimal(value: Decimal) -> str:
    """A decimal as a plain string without exponent or trailing zeros ("0.5", "100")."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


class MarketSpec(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The part of a Market's definition the matching engine needs.

    Field names are snake_case here and camelCase on the wire and in the Market
    custom resource (``tickSize``, ``lotSize``, ``minNotional``, ``priceBand``).
    """

    base: str
    quote: str
    tick_size: str
    lot_size: str
    min_notional: str = "0"
    price_band: str = "0"
    """Largest distance of a limit price from the reference price, in percent; "0" = none."""
    reference_price: str | None = None
    """Reference for the price band until the first trade sets it (last trade price after)."""
    trading_mode: TradingMode = TradingMode.OPEN

    def __post_init__(self) -> None:
        for name in ("base", "quote"):
            value = getattr(self, name)
            if not value or not value.isascii() or not value.isalnum():
                raise ValueError(f"{name} must be a non-empty alphanumeric symbol, got {value!r}")
        if parse_decimal(self.tick_size, "tickSize") <= 0:
            raise ValueError("tickSize must be positive")
        if parse_decimal(self.lot_size, "lotSize") <= 0:
            raise ValueError("lotSize must be positive")
        parse_decimal(self.min_notional, "minNotional")  # never negative: no sign
        parse_decimal(self.price_band, "priceBand")
        if self.reference_price is not None:
            self.rules()  # refuses a reference price off the tick grid

    @property
    def symbol(self) -> str:
        return f"{self.base}-{self.quote}"

    def rules(self) -> MarketRules:
        """The integer rules the engine applies on every order."""
        tick = Decimal(self.tick_size)
        lot = Decimal(self.lot_size)
        unit = tick * lot
        min_units = Fraction(Fraction(Decimal(self.min_notional)), Fraction(unit))
        band = Fraction(Fraction(Decimal(self.price_band)), 100)  # percent, exactly
        reference = 0 if self.reference_price is None else self.to_ticks(self.reference_price)
        return MarketRules(
            min_notional=-(-min_units.numerator // min_units.denominator),
            band_numerator=band.numerator,
            band_denominator=band.denominator,
            reference_price=reference,
        )

    def to_ticks(self, price: str) -> int:
        """Whole ticks for a decimal price; OffGrid when it is off the grid or out of range."""
        return self._to_units(price, self.tick_size, RejectCode.INVALID_PRICE,
                              RejectCode.PRICE_NOT_ON_TICK, "price")

    def to_lots(self, quantity: str) -> int:
        """Whole lots for a decimal quantity; OffGrid when it is off the grid or out of range."""
        return self._to_units(quantity, self.lot_size, RejectCode.INVALID_QUANTITY,
                              RejectCode.QUANTITY_NOT_ON_LOT, "quantity")

    def to_notional_units(self, amount: str) -> int:
        """A quote amount in units of tick × lot (the unit of price_ticks × quantity_lots)."""
        unit = format_decimal(Decimal(self.tick_size) * Decimal(self.lot_size))
        return self._to_units(amount, unit, RejectCode.INVALID_QUANTITY,
                              RejectCode.QUANTITY_NOT_ON_LOT, "quote amount")

    def from_ticks(self, ticks: int) -> str:
        return format_decimal(Decimal(ticks) * Decimal(self.tick_size))

    def from_lots(self, lots: int) -> str:
        return format_decimal(Decimal(lots) * Decimal(self.lot_size))

    def from_notional_units(self, units: int) -> str:
        return format_decimal(Decimal(units) * Decimal(self.tick_size) * Decimal(self.lot_size))

    @staticmethod
    def _to_units(text: str, step: str, invalid: RejectCode, off_grid: RejectCode,
                  what: str) -> int:
        kept = _UNITS_KEPT.get(step)
        if kept is None:
            kept = _UNITS_KEPT[step] = {}
        units = kept.get(text) if type(text) is str else None
        if units is None:
            units = MarketSpec._parse_units(text, step, invalid, off_grid, what)
            if len(kept) >= FORMATTED_KEPT:
                kept.clear()
            kept[text] = units
        return units

    @staticmethod
    def _parse_units(text: str, step: str, invalid: RejectCode, off_grid: RejectCode,
                     what: str) -> int:
        try:
            value = parse_decimal(text, what)
        except ValueError as exc:
            raise OffGrid(invalid, str(exc)) from exc
        try:
            units, remainder = divmod(value, Decimal(step))
        except InvalidOperation as exc:  # more digits than the decimal context holds
            raise OffGrid(invalid, f"{what} {text} is out of range") from exc
        if remainder != 0:
            raise OffGrid(off_grid, f"{what} {text} is not a multiple of {step}")
        if units <= 0 or units > MAX_UNITS:
            raise OffGrid(invalid, f"{what} {text} must be positive and at most {MAX_UNITS} steps")
        return int(units)


_UNITS_KEPT: dict[str, dict[str, int]] = {}
"""Decimal strings already converted to whole steps (only those on the grid and in
range), by step, then string: up to ``FORMATTED_KEPT`` of each step (then it starts
again). Orders repeat their prices and quantities; a kept one is a dictionary lookup."""


class UnitFormatter:
    """Whole units (ticks, lots) to plain decimal strings, with integer arithmetic only.

    The service layer formats every price and quantity it publishes; this gives the
    same strings as ``format_decimal``, about five times faster than going through
    ``Decimal``. A market's prices and quantities repeat (levels, common sizes), so the
    strings are also kept, up to ``FORMATTED_KEPT`` of them (then it starts again): a
    kept one costs a dictionary lookup instead of about a microsecond.
    """

    __slots__ = ("_kept", "_multiplier", "_power", "_scale")

    def __init__(self, step: str) -> None:
        exponent = parse_decimal(step, "step").as_tuple().exponent
        assert isinstance(exponent, int)
        scale = max(0, -exponent)
        self._scale = scale
        self._power = 10**scale
        self._multiplier = int(Decimal(step).scaleb(scale))
        self._kept: dict[int, str] = {}

    def __call__(self, units: int) -> str:
        text = self._kept.get(units)
        if text is None:
            text = self._format(units)
            if len(self._kept) >= FORMATTED_KEPT:
                self._kept.clear()
            self._kept[units] = text
        return text

    def _format(self, units: int) -> str:
        value = units * self._multiplier
        if not self._scale:
            return str(value)
        whole, fraction = divmod(value, self._power)
        if not fraction:
            return str(whole)
        return f"{whole}.{fraction:0{self._scale}d}".rstrip("0")


FORMATTED_KEPT = 4_096
"""Strings a ``UnitFormatter`` keeps: about half a MiB at most, with their integers (a
market has three formatters in each process that publishes for it)."""


class MarketRules(msgspec.Struct, frozen=True):
    """A market's rules as integers, in ticks, lots and tick × lot notional units."""

    min_notional: int
    band_numerator: int
    band_denominator: int
    reference_price: int
