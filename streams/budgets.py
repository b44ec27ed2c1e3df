"""Budgets: how much a scope may spend per calendar period, and what happens past it.

Budgets live on a compacted Kafka topic keyed by budget id (a tombstone removes one), so
every worker and every tool sees the same set, and a change takes effect without a
restart. ``spendstream budgets set/rm/list/load`` writes and reads that topic; a file of
budgets (TOML) can be loaded in one go.

    [[budgets]]
    id = "search-monthly"
    scope = "team=search"                 # or "team=search,feature=answers", "user=u-17", ...
    amount = "5000"                       # quoted: money is never a float
    period = "month"                      # day, week or month, in SPENDSTREAM_TIMEZONE
    thresholds = ["0.8", "1.0"]           # fractions of amount; the last is the hard cap
    hard_action = "block"                 # block: the guard refuses calls; alert: only alert
"""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from streams.codec import BUDGET, default_codec
from streams.compacted import CompactedView
from streams.settings import Settings
from streams.spend import SCOPE_FIELDS, scope_value_problem

DEFAULT_THRESHOLDS = (Decimal("0.8"), Decimal("1.0"))


class BudgetError(ValueError):
    """A budget that cannot be used, with what to fix."""


def canonical_scope(text: str) -> str:
    """``feature=answers, team=search`` → ``team=search,feature=answers`` (kinds in a fixed order).

    A value holding ``=`` (``team=a=b``) is refused, as events with one are: the spend
    table never has a scope with such a value, so a budget on it could never be reached.
    """
    parts: dict[str, str] = {}
    for item in text.split(","):
        kind, sep, value = item.strip().partition("=")
        kind, value = kind.strip(), value.strip()
        if not sep or not value:
            raise BudgetError(f"scope part {item.strip()!r} is not kind=value")
        if kind not in SCOPE_FIELDS:
            raise BudgetError(f"unknown scope kind {kind!r}; use {', '.join(SCOPE_FIELDS)}")
        if kind in parts:
            raise BudgetError(f"scope kind {kind!r} given twice")
        if problem := scope_value_problem(f"scope {kind}", value):
            raise BudgetError(problem)
        parts[kind] = value.lower() if kind == "team" else value
    return ",".join(f"{kind}={parts[kind]}" for kind in SCOPE_FIELDS if kind in parts)


class Budget(BaseModel):
    """One budget. Amounts and thresholds are exact decimals."""

    budget_id: str = Field(min_length=1, max_length=200)
    scope: str
    amount: Decimal = Field(gt=0)
    currency: str = "USD"
    period: Literal["day", "week", "month"]
    thresholds: tuple[Decimal, ...] = DEFAULT_THRESHOLDS
    hard_action: Literal["block", "alert"] = "block"
    updated_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    @field_validator("scope")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return canonical_scope(value)

    @field_validator("amount", mode="before")
    @classmethod
    def _no_float_amount(cls, value: Any) -> Any:
        if isinstance(value, float):
            raise ValueError(f"amount {value!r} is a float; quote it, e.g. \"{value}\"")
        return value

    @model_validator(mode="after")
    def _sorted_thresholds(self) -> "Budget":
        if not self.thresholds or any(t <= 0 for t in self.thresholds):
            raise ValueError("thresholds must be positive fractions of the amount")
        if list(self.thresholds) != sorted(set(self.thresholds)):
            raise ValueError("thresholds must be increasing and distinct")
        return self

    @property
    def hard_threshold(self) -> Decimal:
        return self.thresholds[-1]

    def to_record(self) -> dict[str, Any]:
        return {**self.model_dump(), "thresholds": list(self.thresholds)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Budget":
        return cls(**record)


def load_file(path: Path) -> list[Budget]:
    """Budgets from a TOML file, with errors that name the budget and the field."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BudgetError(f"{path}: {exc}") from exc
    budgets = []
    for index, raw in enumerate(data.get("budgets", [])):
        fields = {("budget_id" if key == "id" else key): value for key, value in raw.items()}
        try:
            budgets.append(Budget(**fields))
        except (ValidationError, BudgetError) as exc:
            raise BudgetError(f"{path}: budgets[{index}] ({raw.get('id', '?')}): {exc}") from exc
    return budgets


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
    """Every budget in force, read from the topic."""
    codec = default_codec()
    view: CompactedView[Budget] = CompactedView(
        settings, settings.budgets_topic, lambda value: Budget.from_record(codec.decode(value)[1])
    )
    async with view:
        await view.caught_up.wait()
        return sorted(view.values.values(), key=lambda b: b.budget_id)


@asynccontextmanager
async def _producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(**settings.kafka_client_options(), acks="all")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()
