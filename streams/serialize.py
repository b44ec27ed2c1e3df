"""Turning query results and table values into JSON without losing exactness."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any


def jsonable(value: Any) -> Any:
    """Decimals become strings (never floats), datetimes ISO 8601, tuples lists."""
    if isinstance(value, Decimal):
        return format(value, "f")  # never exponent notation: 0E-12 reads as nonsense
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value
