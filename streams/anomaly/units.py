"""The units every part of the anomaly engine counts in: event time as whole epoch minutes
(UTC), and money as exact decimals.

Windows, time buckets and alert ids are integers of epoch minutes, so a replay computes
exactly what live traffic did; amounts stay decimals, rounded only where they leave: to
the Avro schemas' 12 decimal places in a record, in a message to the digits they have
(:func:`format_money`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from streams.events.amounts import exact

# --- Time: epoch minutes, UTC -------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR = 60
DAY = 24 * HOUR
WEEK = 7 * DAY
HOURS_PER_WEEK = WEEK // HOUR
# 1970-01-01 was a Thursday: ISO weeks (Monday first) start three days before each 7-day
# block of the epoch.
ISO_WEEK_OFFSET = 3 * DAY


def minute_of(at: datetime) -> int:
    """The epoch minute of an aware instant."""
    return int(at.timestamp()) // 60


def instant(minute: int) -> datetime:
    return _EPOCH + timedelta(minutes=minute)


def is_weekend(hour: int) -> bool:
    return (hour // 24 + 3) % 7 >= 5  # epoch day 0 is a Thursday (weekday 3)


def minute_stamp(minute: int) -> str:
    return f"{instant(minute):%Y-%m-%dT%H:%MZ}"


# --- Money: exact decimals ----------------------------------------------------------------

ZERO = Decimal(0)
MICRO = Decimal("0.000001")
_AVRO_SCALE = Decimal("1e-12")  # the alert schema's decimals have scale 12


def to_avro_scale(value: Decimal) -> Decimal:
    """A reported amount with at most 12 decimal places, as the Avro schemas require."""
    return value.quantize(_AVRO_SCALE) if value.as_tuple().exponent < -12 else value  # type: ignore[operator]


def format_money(value: Decimal) -> str:
    """An amount for a message: every digit of a ledger amount (0.004 is not "0.00"), at least
    two decimals; an estimate with more than six decimals (a median, a quotient) to six."""
    value = Decimal(value)
    return exact(value if value.as_tuple().exponent >= -6 else value.quantize(MICRO))  # type: ignore[operator]
