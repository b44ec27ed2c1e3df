"""Turning query results and table values into JSON without losing exactness.

Every value a ClickHouse query can return becomes valid JSON (RFC 8259, which has no NaN
or infinity): the ``/sql`` endpoint answers whatever a person asks, so no type may turn
its answer into a 500 or into text a JSON parser refuses.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import Any
from uuid import UUID


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready Python: exact numbers and text, never NaN or infinity.

    Decimals become strings (never floats); datetimes, dates and times ISO 8601; ``Time``
    values (timedeltas) ``[-]H:MM:SS[.ffffff]`` as ClickHouse writes them; IP addresses and
    UUIDs their usual text; bytes (``FixedString``) text, undecodable bytes escaped;
    NaN and infinities the strings ``"nan"``, ``"inf"`` and ``"-inf"`` (what ClickHouse
    writes with ``output_format_json_quote_denormals``); tuples lists; map keys strings.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else _non_finite(value)
    if isinstance(value, Decimal):
        # never exponent notation: 0E-12 reads as nonsense
        return format(value, "f") if value.is_finite() else _non_finite(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _clock(value)
    if isinstance(value, (IPv4Address, IPv6Address, UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {_key(k): jsonable(v) for k, v in value.items()}
    return value


def _non_finite(value: float | Decimal) -> str:
    if value != value:  # NaN is the one value unequal to itself, float or Decimal
        return "nan"
    return "inf" if value > 0 else "-inf"


def _key(key: Any) -> str:
    converted = jsonable(key)
    return converted if isinstance(converted, str) else json.dumps(converted)


def _clock(value: timedelta) -> str:
    """A ``Time``/``Time64`` value (hours may exceed 24, the value may be negative)."""
    sign = "-" if value < timedelta(0) else ""
    micros = abs(value) // timedelta(microseconds=1)
    seconds, fraction = divmod(micros, 1_000_000)
    hours, rest = divmod(seconds, 3600)
    text = f"{sign}{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{text}.{fraction:06d}".rstrip("0") if fraction else text


def dumps(value: Any) -> str:
    """Strict JSON text of ``value`` after :func:`jsonable`: raises rather than write NaN."""
    return json.dumps(jsonable(value), allow_nan=False, separators=(",", ":"))
