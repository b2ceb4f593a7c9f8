"""Kubernetes resource quantities (``"500m"``, ``"1.5"``, ``"1Gi"``, ``"1e3"``) as exact
numbers, so that two spellings of one amount compare equal.

The API server stores a quantity in its canonical form: ``"1.5"`` comes back as
``"1500m"``, ``"1024Mi"`` as ``"1Gi"``, the number ``1`` as ``"1"``. A drift check that
compared the strings would find every such child changed and patch it on every pass;
comparing ``parse(a) == parse(b)`` does not. Exact fractions, never floats: ``0.1`` CPU
is a tenth, not the float nearest it.

``canonical`` spells an amount as the API server does (what the test emulator stores).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
           r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
"""The quantity pattern of Kubernetes' OpenAPI (``resource.Quantity``)."""
_SYNTAX = re.compile(r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
                     r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))?")
BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
"""Powers of 1024."""
DECIMAL = {"n": -3, "u": -2, "m": -1, "": 0, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5,
           "E": 6}
"""Powers of 1000."""


class QuantityError(ValueError):
    """Not a Kubernetes quantity."""


def parse(value: Any) -> Fraction:
    """The exact amount of a quantity, a string or a plain number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise QuantityError(f"not a quantity: {value!r}")
    match = _SYNTAX.fullmatch(str(value))
    if match is None:
        raise QuantityError(f"not a quantity: {value!r}")
    number = Fraction(match["number"])
    suffix = match["suffix"] or ""
    if suffix in BINARY:
        return number * Fraction(1024) ** BINARY[suffix]
    if suffix in DECIMAL:
        return number * Fraction(1000) ** DECIMAL[suffix]
    exponent = Fraction(suffix[1:])
    if exponent.denominator != 1:
        raise QuantityError(f"not a quantity: {value!r} (a fractional exponent)")
    return number * Fraction(10) ** int(exponent)


def same(first: Any, second: Any) -> bool:
    """Do two quantities say the same amount? Anything that is not a quantity is
    compared as it is."""
    try:
        return parse(first) == parse(second)
    except QuantityError:
        return bool(first == second)


def canonical(value: Any) -> str:
    """The API server's spelling: the format of the input (binary suffixes stay binary,
    an exponent stays an exponent, anything else is decimal), the largest unit that
    keeps the number whole; amounts below a nano are rounded up to one (as Kubernetes
    does)."""
    amount = parse(value)
    text = str(value)
    if amount < 0:
        return "-" + canonical(text[1:] if text[:1] in "+-" else text)
    if amount == 0:
        return "0"
    match = _SYNTAX.fullmatch(text)
    suffix = (match["suffix"] or "") if match else ""
    if suffix in BINARY and amount.denominator == 1:
        for unit, power in sorted(BINARY.items(), key=lambda item: -item[1]):
            if amount % 1024 ** power == 0:
                return f"{amount // 1024 ** power}{unit}"
        return str(amount.numerator)
    nanos = amount * 10 ** 9
    if nanos.denominator != 1:
        nanos = Fraction(nanos.__ceil__())
    exponent = -9
    whole = int(nanos)
    while whole % 1000 == 0 and exponent < 18:
        whole //= 1000
        exponent += 3
    if suffix[:1] in ("e", "E"):
        return str(whole) if exponent == 0 else f"{whole}e{exponent}"
    units = {3 * power: unit for unit, power in DECIMAL.items()}
    return f"{whole}{units[exponent]}"
