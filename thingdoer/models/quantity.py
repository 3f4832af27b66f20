"""Kubernetes resource quantities, parsed exactly (no floats).

A quantity is a decimal number with an optional suffix: binary (``Ki`` .. ``Ei``), decimal
(``n u m k M G T P E``) or an exponent (``1e3``). Like Kubernetes, values that do not fall on
a whole unit round *up*: ``0.1m`` of cpu is 1 millicore, ``0.5`` bytes is 1 byte.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}
MAX_VALUE = 2**63 - 1  # as Kubernetes: a quantity must fit an int64
_QUANTITY = re.compile(r"^([+-]?[0-9]+(?:\.[0-9]*)?|[+-]?\.[0-9]+)(?:([eE][+-]?[0-9]+)|([a-zA-Z]*))$")


def parse(text: str | int | float) -> Decimal:
    """The value of a quantity in base units; ``ValueError`` names what is wrong."""
    if isinstance(text, bool):
        raise ValueError("must be a quantity string such as \"250m\" or \"64Mi\"")
    if isinstance(text, (int, float)):
        text = repr(text) if isinstance(text, float) else str(text)
    match = _QUANTITY.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError('quantities must match the regular expression '
                         "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
    number, exponent, suffix = match.groups()
    try:
        value = Decimal(number)
    except InvalidOperation as err:  # pragma: no cover - the regex admits only numbers
        raise ValueError(f"{number!r} is not a number") from err
    if exponent:
        scale = Decimal(10) ** int(exponent[1:]) if abs(int(exponent[1:])) <= 30 else None
    elif suffix in _BINARY:
        scale = Decimal(_BINARY[suffix])
    elif suffix in _DECIMAL:
        scale = _DECIMAL[suffix]
    else:
        raise ValueError(f"unknown suffix {suffix!r}: use one of Ki Mi Gi Ti Pi Ei, "
                         "n u m k M G T P E, or none")
    if scale is None or abs(value * scale) > MAX_VALUE:
        raise ValueError("the value is too large: quantities must fit in 64 bits")
    return value * scale


def _whole(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def cpu_millis(text: str) -> int:
    """cpu quantity → millicores: ``"250m"`` → 250, ``"1.5"`` → 1500."""
    return _whole(parse(text) * 1000)


def memory_bytes(text: str) -> int:
    """memory quantity → bytes: ``"64Mi"`` → 67108864, ``"1G"`` → 10**9."""
    return _whole(parse(text))


def format_cpu(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def format_memory(nbytes: int) -> str:
    for suffix, unit in reversed(_BINARY.items()):
        if nbytes and nbytes % unit == 0:
            return f"{nbytes // unit}{suffix}"
    return str(nbytes)
