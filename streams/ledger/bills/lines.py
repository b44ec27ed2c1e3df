"""One line of a provider's bill, as every report format is read into it.

Each format's reader (:mod:`streams.ledger.bills.formats`) turns the provider's own shape
into :class:`BillLine` values; :mod:`streams.ledger.bills.store` writes them to
``provider_costs``. What makes a line the same line on a second import is its identity,
the fields the provider's report groups by (day, model, project, line item, ...), so
:func:`line_id` is derived from those, never from where the line sits in a file. Two
lines a report gives with the same identity (an invoice with two identical charges) are
told apart by their occurrence number, counted in the order the report lists them.

Amounts are exact: JSON numbers are read as :class:`~decimal.Decimal` (``parse_float``),
CSV cells are parsed from their text, and a value that is not a finite decimal with at
most 12 places is an error naming the line, never a rounded float.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields, replace
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

_MAX_PLACES = 12  # Decimal(38, 12) in ClickHouse

# The provider's names for service tiers, in the ledger's vocabulary (streams.pricing).
_TIERS = {"standard": "standard", "default": "standard", "auto": "standard", "on_demand": "standard",
          "batch": "batch", "priority": "priority", "scale": "priority", "flex": "flex"}


class BillImportError(ValueError):
    """A report that cannot be read; the message names the line and what is wrong."""


@dataclass(frozen=True)
class BillLine:
    """A row of ``provider_costs`` (``line_id`` and ``content`` are derived, see :func:`identified`)."""

    source: str  # the format it came from, e.g. openai-costs
    kind: str  # cost | usage
    day: date
    provider: str
    model: str
    account: str = ""
    project: str = ""
    api_key: str = ""
    service_tier: str = ""
    line_item: str = ""
    amount: Decimal = Decimal(0)
    currency: str = "USD"
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    identity: tuple[str, ...] = ()  # what the report groups the line by, beyond the fields above


COLUMNS: tuple[str, ...] = ("line_id", "content", *(f.name for f in fields(BillLine) if f.name != "identity"))


def identified(lines: Iterable[BillLine]) -> list[tuple[str, str, BillLine]]:
    """``(line_id, content, line)`` for each line, in order.

    The id hashes the line's identity and its occurrence number among lines of the same
    identity; the content hashes every value, so a re-import can tell an unchanged line
    (skipped) from a revised one (written again, replacing it).
    """
    seen: Counter[tuple[str, ...]] = Counter()
    out = []
    for line in lines:
        key = (line.source, line.kind, line.day.isoformat(), line.provider, line.model, line.account, line.project,
               line.api_key, line.service_tier, line.line_item, line.currency, *line.identity)
        seen[key] += 1
        line_id = _digest((*key, str(seen[key])))
        content = _digest(tuple(str(v) for v in astuple(replace(line, identity=()))))
        out.append((line_id, content, line))
    return out


def row(line_id: str, content: str, line: BillLine) -> list[Any]:
    """The line as a ``provider_costs`` row, in :data:`COLUMNS` order."""
    return [line_id, content, *astuple(line)[:-1]]


def _digest(parts: Sequence[str]) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


# --- Reading values exactly --------------------------------------------------------------


def load_json(text: str, what: str) -> Any:
    """JSON with every number that has a fraction or exponent read as an exact Decimal."""
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError as exc:
        raise BillImportError(f"{what}: not JSON ({exc})") from None


def json_pages(text: str, what: str) -> list[dict[str, Any]]:
    """The pages of a saved API response: one page object, a JSON array of pages, or JSON Lines."""
    stripped = text.strip()
    if not stripped:
        raise BillImportError(f"{what}: the file is empty")
    try:
        data = json.loads(stripped, parse_float=Decimal)
    except ValueError:
        data = [load_json(line, f"{what} line {n}") for n, line in enumerate(stripped.splitlines(), 1) if line.strip()]
    pages = data if isinstance(data, list) else [data]
    if not all(isinstance(page, dict) for page in pages):
        raise BillImportError(f"{what}: expected the API's page objects (JSON objects with a data list)")
    return pages


def amount(value: Any, where: str) -> Decimal:
    """An exact amount from a JSON number (already a Decimal or an int) or its text."""
    if isinstance(value, float):  # never: load_json reads fractions as Decimal
        raise BillImportError(f"{where}: amount {value!r} went through a float")
    if isinstance(value, bool) or value is None:
        raise BillImportError(f"{where}: amount is missing")
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise BillImportError(f"{where}: amount {value!r} is not a decimal number") from None
    if not number.is_finite():
        raise BillImportError(f"{where}: amount {value!r} is not a finite number")
    if number.as_tuple().exponent < -_MAX_PLACES:  # type: ignore[operator]
        raise BillImportError(f"{where}: amount {value!r} has more than {_MAX_PLACES} decimal places")
    return number


def count(value: Any, where: str) -> int:
    """A token or request count (absent or null: 0)."""
    if value in (None, ""):
        return 0
    try:
        number = int(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        raise BillImportError(f"{where}: count {value!r} is not a whole number") from None
    if number < 0 or Decimal(str(value)) != number:
        raise BillImportError(f"{where}: count {value!r} is not a whole number of zero or more")
    return number


def day_of(value: Any, where: str) -> date:
    """The UTC day of a Unix timestamp (seconds), an RFC 3339 time or a ``YYYY-MM-DD`` date."""
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC).date()
        text = str(value).strip()
        if len(text) == 10:
            return date.fromisoformat(text)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" UTC", "+00:00"))
        return (moment.astimezone(UTC) if moment.tzinfo else moment).date()
    except (TypeError, ValueError, OverflowError):
        raise BillImportError(f"{where}: {value!r} is not a date or time") from None


def tier(value: Any) -> str:
    """A provider's service-tier name in the ledger's words ('' when the report does not say)."""
    if value in (None, ""):
        return ""
    name = str(value).strip().lower()
    return _TIERS.get(name, name)


def tier_in(description: str) -> str:
    """The service tier a charge's description names (batch, flex, priority), else standard."""
    words = description.lower()
    return next((name for name in ("batch", "flex", "priority") if name in words), "standard")


def text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def currency(value: Any, where: str) -> str:
    code = text(value).upper() or "USD"
    if len(code) != 3 or not code.isalpha():
        raise BillImportError(f"{where}: currency {value!r} is not a three-letter ISO 4217 code")
    return code
