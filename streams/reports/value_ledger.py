"""The value ledger: what each AI workflow delivered, to weigh against what it cost.

Cost tracking is the first half of ROI; the second half is the value each workflow's
owners estimate: outcomes (cases summarised, leads enriched), hours saved at an hourly
rate, revenue it enabled. They keep it in a TOML file (``config/value_ledger.example.toml``)
with one entry per workflow and month::

    currency = "USD"

    [[entries]]
    team = "support"
    workflow = "case-summary"      # the feature tag its calls carry
    period = "2025-11"
    outcomes = 1200
    outcome_unit = "cases summarised"
    time_saved_hours = "300"
    hourly_rate = "55"
    revenue_enabled = "0"

Money and hours are quoted decimals (floats are refused: they are inexact). Importing
writes the entries to ``value_ledger`` (``clickhouse/0006_value_ledger.sql``); an entry for
a (team, workflow, month) that is already there is replaced. The ``workflow_value`` view
and :func:`streams.reports.reports.roi_report` put each entry beside its cost.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated

from clickhouse_connect.driver.client import Client
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streams.ingest.attribution import normalise_team
from streams.pricing.price_book import format_validation_errors, read_toml_without_floats

VALUE_LEDGER_TABLE = "value_ledger"
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")

NonNegative = Annotated[Decimal, Field(ge=0, max_digits=38, decimal_places=12)]


def _iso_currency(value: str | None) -> str | None:
    if value is not None and not _CURRENCY.match(value):
        raise ValueError(f"{value!r} is not a three-letter ISO 4217 code")
    return value


class ValueLedgerError(ValueError):
    """A value ledger file that cannot be imported; the message says where and why."""


class Entry(BaseModel):
    """What one workflow delivered in one month."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    team: str = Field(min_length=1)
    workflow: str = Field(min_length=1)
    period: str = Field(description="The month, YYYY-MM.")
    outcomes: int = Field(0, ge=0)
    outcome_unit: str = ""
    time_saved_hours: NonNegative = Decimal(0)
    hourly_rate: NonNegative = Decimal(0)
    revenue_enabled: NonNegative = Decimal(0)
    currency: str | None = Field(None, description="Overrides the file's currency for this entry.")
    note: str = ""

    _currency = field_validator("currency")(_iso_currency)

    @field_validator("team")
    @classmethod
    def _team(cls, value: str) -> str:
        return normalise_team(value)

    @field_validator("period")
    @classmethod
    def _month(cls, value: str) -> str:
        if not _MONTH.match(value):
            raise ValueError(f"{value!r} is not a month; write YYYY-MM")
        return value

    @property
    def period_start(self) -> date:
        return date.fromisoformat(f"{self.period}-01")


class ValueLedger(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = "USD"
    entries: list[Entry] = Field(default_factory=list)

    _currency = field_validator("currency")(_iso_currency)

    @model_validator(mode="after")
    def _one_entry_per_workflow_month(self) -> ValueLedger:
        seen: set[tuple[str, str, str]] = set()
        for entry in self.entries:
            key = (entry.team, entry.workflow, entry.period)
            if key in seen:
                raise ValueError(f"{entry.team}/{entry.workflow} has two entries for {entry.period}")
            seen.add(key)
        return self

    @classmethod
    def load(cls, path: Path) -> ValueLedger:
        """Read and validate a value ledger file; raise :class:`ValueLedgerError` if unusable."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueLedgerError(f"value ledger {path}: cannot read it: {exc}") from exc
        data = read_toml_without_floats(text, f"value ledger {path}", ValueLedgerError)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueLedgerError(format_validation_errors(f"value ledger {path}", exc)) from None


def import_value_ledger(client: Client, path: Path) -> ValueLedger:
    """Write the entries of the file at ``path`` to ``value_ledger``, replacing earlier ones."""
    path = Path(path)
    ledger = ValueLedger.load(path)
    columns = [
        "team", "workflow", "period", "currency", "outcomes", "outcome_unit",
        "time_saved_hours", "hourly_rate", "revenue_enabled", "note", "source",
    ]  # fmt: skip
    rows = [
        [
            e.team,
            e.workflow,
            e.period_start,
            e.currency or ledger.currency,
            e.outcomes,
            e.outcome_unit,
            e.time_saved_hours,
            e.hourly_rate,
            e.revenue_enabled,
            e.note,
            path.name,
        ]
        for e in ledger.entries
    ]
    if rows:
        client.insert(VALUE_LEDGER_TABLE, rows, column_names=columns)
    return ledger
