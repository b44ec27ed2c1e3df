"""Budgets: how much a scope may spend per calendar period, and what happens past it.

Budgets live on a compacted Kafka topic keyed by budget id (a tombstone removes one), so
every worker and every tool sees the same set, and a change takes effect without a
restart. ``spendstream budgets set/rm/list/load`` writes and reads that topic; a file of
budgets (TOML) can be loaded in one go, all or nothing: an unknown key, a wrong type, a
value the topic cannot hold or a repeated id stops the whole file, with its line.

    [[budgets]]
    id = "search-monthly"
    scope = "team=search"                 # or "team=search,feature=answers", "user=u-17", ...
    amount = "5000"                       # quoted: money is never a float
    period = "month"                      # day, week or month, in SPENDSTREAM_TIMEZONE
    thresholds = ["0.8", "1.0"]           # fractions of amount; the last is the hard cap
    hard_action = "block"                 # block: the guard refuses calls; alert: only alert
    fail_policy = "open"                  # no worker answers a reservation in time: open allows, closed refuses
    reservation_expiry_seconds = 600      # optional: an unsettled reservation is released after this
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from decimal import Context, Decimal
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from streams.events import scopes
from streams.events.codec import BUDGET, default_codec
from streams.runtime.compacted import CompactedView
from streams.runtime.kafka_start import start_or_stop
from streams.settings import Settings

DEFAULT_THRESHOLDS = (Decimal("0.8"), Decimal("1.0"))

# What the budgets topic (schemas/budget.avsc) and the ClickHouse table
# (clickhouse/0007_budgets.sql) can hold: amount Decimal(38, 12), thresholds Decimal(9, 4).
# A value past these is refused when a budget is made, not when a worker fails to store it.
AMOUNT_PRECISION, AMOUNT_SCALE = 38, 12
THRESHOLD_PRECISION, THRESHOLD_SCALE = 9, 4
MAX_THRESHOLDS = 16
MAX_SCOPE_LENGTH = 500

# The largest budget record the limits above allow is under 3 KB. A larger value on the
# topic is refused before it is decoded: a decimal of a million digits takes the Avro
# reader seconds, and a worker reads the topic on its event loop.
MAX_RECORD_BYTES = 8192


class BudgetError(ValueError):
    """A budget that cannot be used, with what to fix."""


def canonical_scope(text: str) -> str:
    """A budget's scope written the one way the spend table writes it
    (:func:`streams.events.scopes.canonical_scope`), or :class:`BudgetError` saying why not.
    """
    try:
        return scopes.canonical_scope(text)
    except scopes.ScopeError as exc:
        raise BudgetError(str(exc)) from exc


def _largest(precision: int, scale: int) -> Decimal:
    """The largest value of a ``Decimal(precision, scale)``: 999.99 for (5, 2)."""
    return Decimal(f"{'9' * (precision - scale)}.{'9' * scale}")


def bounded_decimal(value: Decimal, what: str, precision: int, scale: int) -> Decimal:
    """``value`` if a ``Decimal(precision, scale)`` holds it exactly and it is positive,
    written with no more than ``scale`` places and no exponent (``1E+3`` becomes ``1000``).

    NaN, infinities and exponents past the bounds (``1e309``, ``1e-30``) are refused here
    with the bounds in the message, so nothing downstream meets a value it cannot encode.
    """
    largest = _largest(precision, scale)
    quantum = Decimal(1).scaleb(-scale)
    if not value.is_finite() or value <= 0 or value > largest:
        raise ValueError(f"{what} must be more than 0, at most {largest} and have at most {scale} decimal places")
    # Exact within the bounds; the default context (28 digits) is too narrow for 38.
    exact = value.quantize(quantum, context=Context(prec=precision))
    if exact != value:
        raise ValueError(f"{what} {value} has more than {scale} decimal places (at most {largest}, {scale} places)")
    exponent = int(value.as_tuple().exponent)  # an int: the value is finite
    if exponent > 0:
        return value.quantize(Decimal(1), context=Context(prec=precision))
    return exact if exponent < -scale else value


def _no_float(value: Any, what: str) -> None:
    """Refuse a float (inexact: money is never one) and a boolean (not a number at all)."""
    if isinstance(value, float):
        raise ValueError(f"{what} {value!r} is a float; quote it, e.g. \"{value}\"")
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is not a number; write a quoted decimal, e.g. \"0.8\"")


class Budget(BaseModel):
    """One budget. Amounts and thresholds are exact decimals, bounded by what the budgets
    topic and ClickHouse store; an unknown field is an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")

    budget_id: str = Field(min_length=1, max_length=200)
    scope: str = Field(max_length=MAX_SCOPE_LENGTH)
    amount: Decimal
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    period: Literal["day", "week", "month"]
    thresholds: tuple[Decimal, ...] = Field(default=DEFAULT_THRESHOLDS, max_length=MAX_THRESHOLDS)
    hard_action: Literal["block", "alert"] = "block"
    # When no worker answers a reservation in time (streams.budgets.reservations): allow the
    # call (logged and counted) or refuse it. A budget that only alerts never refuses.
    fail_policy: Literal["open", "closed"] = "open"
    # An unsettled reservation against this budget is released after this; None: the worker's setting.
    reservation_expiry_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    updated_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    @field_validator("scope")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return canonical_scope(value)

    @field_validator("amount", mode="before")
    @classmethod
    def _no_float_amount(cls, value: Any) -> Any:
        _no_float(value, "amount")
        return value

    @field_validator("amount")
    @classmethod
    def _bounded_amount(cls, value: Decimal) -> Decimal:
        return bounded_decimal(value, "amount", AMOUNT_PRECISION, AMOUNT_SCALE)

    @field_validator("thresholds", mode="before")
    @classmethod
    def _no_float_thresholds(cls, value: Any) -> Any:
        for item in value if isinstance(value, (list, tuple)) else ():
            _no_float(item, "threshold")
        return value

    @field_validator("thresholds")
    @classmethod
    def _bounded_sorted_thresholds(cls, value: tuple[Decimal, ...]) -> tuple[Decimal, ...]:
        if not value:
            raise ValueError("give at least one threshold (the last is the hard cap)")
        value = tuple(bounded_decimal(t, "threshold", THRESHOLD_PRECISION, THRESHOLD_SCALE) for t in value)
        if list(value) != sorted(set(value)):
            raise ValueError("thresholds must be increasing and distinct")
        return value

    @property
    def hard_threshold(self) -> Decimal:
        return self.thresholds[-1]

    def to_record(self) -> dict[str, Any]:
        return {**self.model_dump(), "thresholds": list(self.thresholds)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Budget":
        return cls(**record)


def describe(exc: ValidationError, names: Mapping[str, str] | None = None) -> str:
    """A pydantic error in one line, a clause per field, naming each field as the person
    typed it (``names``: field → option or key), without pydantic's links and types."""
    return "; ".join(_problems(exc, names or {}).values())


def _problems(exc: ValidationError, names: Mapping[str, str]) -> dict[str, str]:
    """Field → what is wrong with it. Our validators write whole sentences that name the
    field; pydantic's own messages ("Field required") get the field's name in front."""
    problems: dict[str, str] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] == "value_error":
            message = error["msg"].removeprefix("Value error, ")
        else:
            message = f"{names.get(field, field)}: {error['msg'][0].lower()}{error['msg'][1:]}"
        problems[field] = f"{problems[field]}; {message}" if field in problems else message
    return problems


def decode_budget(value: bytes) -> Budget:
    """A Budget from its bytes on the budgets topic, or :class:`BudgetError` saying why not.

    Anything may be on that topic (any client can write to it), so the size is checked
    before decoding and the record is validated like a budget typed at the command line.
    """
    if len(value) > MAX_RECORD_BYTES:
        raise BudgetError(f"record of {len(value)} bytes, more than a budget can be ({MAX_RECORD_BYTES})")
    try:
        return Budget.from_record(default_codec().decode(value)[1])
    except ValidationError as exc:
        raise BudgetError(describe(exc)) from exc


# The keys of a [[budgets]] table, and the Budget field each one sets.
FILE_KEYS: dict[str, str] = {
    "id": "budget_id",
    "scope": "scope",
    "amount": "amount",
    "currency": "currency",
    "period": "period",
    "thresholds": "thresholds",
    "hard_action": "hard_action",
    "fail_policy": "fail_policy",
    "reservation_expiry_seconds": "reservation_expiry_seconds",
}
_KEY_OF_FIELD = {field: key for key, field in FILE_KEYS.items()}
_BUDGETS_HEADER = re.compile(r"^\s*\[\[\s*budgets\s*\]\]")
_OTHER_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]*?)\s*\]")
_KEY_LINE = re.compile(r"""^\s*(["']?)([A-Za-z0-9_.-]+)\1\s*=""")


class _Lines:
    """Where things are in a TOML text, which tomllib does not say: the line of each
    ``[[budgets]]`` header, of each key under it, and of each top-level key or table."""

    def __init__(self, text: str) -> None:
        self.tables: list[tuple[int, dict[str, int]]] = []  # per [[budgets]]: header line, key → line
        self.top: dict[str, int] = {}  # top-level key or table name → first line
        keys: dict[str, int] | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if _BUDGETS_HEADER.match(line):
                keys = {}
                self.tables.append((number, keys))
            elif header := _OTHER_HEADER.match(line):
                keys = None
                self.top.setdefault(header.group(1).split(".")[0].strip("\"'"), number)
            elif key := _KEY_LINE.match(line):
                if keys is None:
                    self.top.setdefault(key.group(2), number)
                else:
                    keys.setdefault(key.group(2), number)

    def of_budget(self, index: int, key: str | None = None) -> int:
        """The line of ``key`` in the ``index``-th budget (its header when not found)."""
        if index >= len(self.tables):  # an inline array of tables: the line of `budgets =`
            return self.top.get("budgets", 1)
        header, keys = self.tables[index]
        return keys.get(key, header) if key else header


def load_file(path: Path) -> list[Budget]:
    """Budgets from a TOML file, all or nothing: every problem of the file is reported,
    each with its line, the budget and the key, and a file with any problem yields none.

    Strict, because a budget that loads differently from what was meant fails silently:
    a misspelt key (``hard_actoin``) would leave the default in force, a ``[budget]``
    table would load nothing, and a repeated id would quietly replace the first.
    """
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BudgetError(f"{path}: {exc}") from exc
    lines = _Lines(text)
    errors = [
        f"{path}:{lines.top.get(key, 1)}: unknown {'table' if isinstance(value, dict) else 'key'} {key!r}"
        f"{_did_you_mean(key, ['budgets'])}; each budget is a [[budgets]] table"
        for key, value in data.items()
        if key != "budgets"
    ]
    tables = data.get("budgets", [])
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        errors.append(f"{path}:{lines.top.get('budgets', 1)}: budgets must be [[budgets]] tables, "
                      f"not {_toml_type(tables)}")
        tables = []
    elif not tables and not errors:
        errors.append(f"{path}: no budgets; write each one as a [[budgets]] table")
    budgets: list[Budget] = []
    first_line_of: dict[str, tuple[int, int]] = {}  # id → (index, line)
    for index, table in enumerate(tables):
        where = f"budgets[{index}] ({table.get('id', '?')})"
        unknown = [key for key in table if key not in FILE_KEYS]
        errors += [
            f"{path}:{lines.of_budget(index, key)}: {where}: unknown key {key!r}{_did_you_mean(key, FILE_KEYS)}; "
            f"the keys are {', '.join(FILE_KEYS)}"
            for key in unknown
        ]
        budget_id = table.get("id")
        if isinstance(budget_id, str) and budget_id in first_line_of:
            first, line = first_line_of[budget_id]
            errors.append(f"{path}:{lines.of_budget(index, 'id')}: {where}: id {budget_id!r} is already "
                          f"budgets[{first}] on line {line}; ids must be unique in a file")
        elif isinstance(budget_id, str):
            first_line_of[budget_id] = (index, lines.of_budget(index, "id"))
        try:
            budgets.append(Budget(**{FILE_KEYS[key]: value for key, value in table.items() if key in FILE_KEYS}))
        except ValidationError as exc:
            errors += [
                f"{path}:{lines.of_budget(index, _KEY_OF_FIELD.get(field))}: {where}: {problem}"
                for field, problem in _problems(exc, _KEY_OF_FIELD).items()
            ]
    if errors:
        raise BudgetError("\n".join(errors))
    return budgets


def _did_you_mean(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _toml_type(value: Any) -> str:
    """What a TOML value is, in TOML's words."""
    if isinstance(value, list):
        return "an array of values"
    return {str: "a string", bool: "a boolean", int: "an integer", float: "a float", dict: "a table"}.get(
        type(value), type(value).__name__
    )


class BudgetIndex:
    """The live set of budgets, looked up by scope. Fed from the budgets topic."""

    def __init__(self) -> None:
        self._by_id: dict[str, Budget] = {}
        self._by_scope: dict[str, list[Budget]] = {}

    def put(self, budget: Budget) -> None:
        self.remove(budget.budget_id)
        self._by_id[budget.budget_id] = budget
        self._by_scope.setdefault(budget.scope, []).append(budget)

    def remove(self, budget_id: str) -> Budget | None:
        old = self._by_id.pop(budget_id, None)
        if old is not None:
            self._by_scope[old.scope].remove(old)
        return old

    def for_scope(self, scope: str) -> list[Budget]:
        return self._by_scope.get(scope, [])

    def get(self, budget_id: str) -> Budget | None:
        return self._by_id.get(budget_id)

    def __iter__(self) -> Any:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)


# --- The budgets topic -----------------------------------------------------------------


async def publish(settings: Settings, budgets: list[Budget]) -> None:
    """Set budgets: one record each on the compacted budgets topic, keyed by id."""
    codec = default_codec()
    async with _producer(settings) as producer:
        for budget in budgets:
            await producer.send_and_wait(
                settings.budgets_topic, codec.encode(BUDGET, budget.to_record()), key=budget.budget_id.encode()
            )


async def remove(settings: Settings, budget_id: str) -> None:
    """Remove a budget: a tombstone for its id."""
    async with _producer(settings) as producer:
        await producer.send_and_wait(settings.budgets_topic, None, key=budget_id.encode())


async def current(settings: Settings) -> list[Budget]:
    """Every budget in force, read from the topic (an unreadable record is logged, skipped)."""
    view: CompactedView[Budget] = CompactedView(settings, settings.budgets_topic, decode_budget)
    async with view:
        await view.caught_up.wait()
        return sorted(view.values.values(), key=lambda b: b.budget_id)


async def ids_on_topic(settings: Settings) -> set[str]:
    """The id of every budget on the topic not removed, readable or not: an unreadable
    record is still one that ``budgets rm`` can remove."""
    view: CompactedView[bytes] = CompactedView(settings, settings.budgets_topic, bytes)
    async with view:
        await view.caught_up.wait()
        return set(view.values)


@asynccontextmanager
async def _producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(**settings.kafka_client_options(), acks="all")
    await start_or_stop(producer)
    try:
        yield producer
    finally:
        await producer.stop()
