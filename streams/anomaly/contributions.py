"""What rows contribute: how a detector declares which scope each row counts towards and
which driver labels it adds.

A detector says it once, as templates over a row's text fields (:class:`RowText`) and
conditions on its fields (:class:`RowFilter`); the fold (:mod:`streams.anomaly.fold`)
evaluates them over a whole batch at once, so no detector code runs per row.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

FieldTest = tuple[str, str, frozenset[str], bool]  # (field, "given" | "set" | "in", values, holds)


class RowFilter(NamedTuple):
    """The rows that pass every one of ``tests``: a text field is ``given`` (not empty), a
    flag is ``set``, or a field is ``in`` some values; ``holds`` False negates a test.
    Evaluated once per distinct test and batch, with one Arrow call each (the fold's
    ``_Batch.mask``)."""

    tests: frozenset[FieldTest] = frozenset()

    def __and__(self, other: RowFilter) -> RowFilter:
        return RowFilter(self.tests | other.tests)

    def __invert__(self) -> RowFilter:
        [(name, test, values, holds)] = self.tests  # only a single test is negated
        return RowFilter(frozenset({(name, test, values, not holds)}))


_ALWAYS = RowFilter()


def given(name: str) -> RowFilter:
    return RowFilter(frozenset({(name, "given", frozenset(), True)}))


def is_set(name: str) -> RowFilter:
    return RowFilter(frozenset({(name, "set", frozenset(), True)}))


def one_of(name: str, values: Iterable[str]) -> RowFilter:
    return RowFilter(frozenset({(name, "in", frozenset(values), True)}))


class RowText(NamedTuple):
    """A scope or a driver label: a template over a row's text fields, such as
    ``"model={provider}/{model}"``, for the rows where ``when`` holds."""

    template: str
    when: RowFilter = _ALWAYS


class Contribution(NamedTuple):
    """What a row adds for one detector: its spend, calls and squared cost to ``scope``, its
    spend and calls to each driver label, and, when ``fingerprints``, a call to its request
    fingerprint (if it has one)."""

    scope: RowText
    labels: tuple[RowText, ...]
    fingerprints: bool = False
