"""The Arrow fold: a batch of priced rows into a :class:`~streams.anomaly.summaries.BatchSummary`,
paying per batch, not per row.

The detectors' contributions (:mod:`streams.anomaly.contributions`) are evaluated over
the whole batch with a few Arrow calls and group-bys, so Python touches the groups, never
the rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache, reduce
from string import Formatter
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from streams.anomaly.contributions import FieldTest, RowFilter, RowText, given
from streams.anomaly.detectors.base import MAX_DRIVERS, Detector
from streams.anomaly.summaries import BatchSummary
from streams.events import priced

# The fields the detectors read; row mappings given to ``summarize`` are read with this
# schema (microseconds: a watermark keeps the precision its rows have).
SUMMARY_SCHEMA = pa.schema([
    priced.SCHEMA.field(name) for name in (
        "provider", "model", "team", "feature", "environment", "user_id", "agent_id", "session_id",
        "trace_id", "api_key_id", "service", "request_fingerprint", "cost_total", "priced", "unpriced_reason",
        "service_tier", "price_flag", "price_flag_reason",
    )
] + [pa.field("occurred_at", pa.timestamp("us", tz="UTC"))])

# Driver labels of one kind a summary carries per key and bucket: the largest by cost (then
# calls). A state keeps at most twice MAX_DRIVERS labels, trimmed to the largest MAX_DRIVERS,
# so the rest would mostly be dropped on arrival; at 100k users a team's bucket would carry
# tens of thousands of user labels, which made the summaries large and the anomaly agent
# slower than the rest of the flow. A label below the cut in every batch but large summed
# over many is lost, as it is when a state trims it.
DRIVERS_PER_BUCKET = 2 * MAX_DRIVERS


class _Part(NamedTuple):
    """One scope or one label of one contribution, as the fold evaluates it."""

    detector: int
    scope: RowText
    label: RowText | None  # None: the scope's own total
    when: RowFilter  # the rows that count


class ArrowFold:
    """Folds a batch into a :class:`BatchSummary` with Arrow, paying per batch, not per row.

    1. Every text field a template names is dictionary-encoded once: a row's scope or
       label is then a pair of small integers, not a string built per row.
    2. Each part's condition (which rows count towards a scope, or a label) and each
       detector's time bucket is evaluated over the batch, one Arrow call per distinct test.
    3. The parts are stacked into three integer-keyed tables, totals (part, bucket, scope
       codes), labels (also label codes; by the detector's ``drivers_span``, so a spike
       key's drivers are one group per hour, not per minute) and fingerprints, and each is
       grouped once. Of the labels, only the largest :data:`DRIVERS_PER_BUCKET` of each
       part, bucket and scope are kept.
    4. Only the groups reach Python, where templates are filled from the dictionaries,
       in the order a row-by-row fold would meet them (first row, then part), so ties in
       the states' top-N trimming fall the same way. Sums are exact decimals; squares of
       costs are summed in decimal256, where they neither round nor overflow.
    """

    def __init__(self, detectors: list[Detector]) -> None:
        self.detectors = detectors
        self.totals: list[_Part] = []
        self.labels: list[_Part] = []
        self.fingerprints: list[_Part] = []
        for d, detector in enumerate(detectors):
            for contribution in detector.contributions():
                scope = contribution.scope
                self.totals.append(_Part(d, scope, None, scope.when))
                self.labels += [_Part(d, scope, label, scope.when & label.when) for label in contribution.labels]
                if contribution.fingerprints:
                    fingerprint = RowText("{request_fingerprint}", given("request_fingerprint"))
                    self.fingerprints.append(_Part(d, scope, fingerprint, scope.when & fingerprint.when))
        self.prefixes = [f"{detector.name}:" for detector in detectors]
        self.fields = sorted({
            name for part in self.totals + self.labels + self.fingerprints
            for text in (part.scope, part.label) if text is not None for name in _fields_of(text.template)
        })

    def summarize(self, rows: pa.Table) -> BatchSummary:
        summary = BatchSummary()
        if rows.num_rows == 0:
            return summary
        occurred_at = rows.column("occurred_at")
        summary.watermark = pc.max(occurred_at).as_py()
        for detector in self.detectors:
            for name, values in detector.batch_fields(rows).items():
                rows = rows.append_column(name, values)
        for name in self.fields:  # a missing text field reads as empty: no scope, no label
            column = rows.column(name)
            if column.null_count:
                rows = rows.set_column(rows.schema.get_field_index(name), name, pc.fill_null(column, ""))
        minutes = _minutes(occurred_at).combine_chunks()
        buckets = [detector.buckets_of(minutes) for detector in self.detectors]
        driver_buckets = [d.driver_buckets_of(b) for d, b in zip(self.detectors, buckets, strict=True)]
        batch = _Batch(rows, self.fields)
        texts = _Texts(batch)
        for (part, index, s0, s1, _, _), (cost, square, calls) in batch.groups(self.totals, buckets, with_square=True):
            found = summary.bucket(texts.key(self.prefixes[part.detector], part.scope, s0, s1), index)
            found.cost += cost
            found.cost_sq += square
            found.calls += calls
        labels = batch.groups(self.labels, driver_buckets, largest=DRIVERS_PER_BUCKET)
        for (part, index, s0, s1, l0, l1), (cost, calls) in labels:
            drivers = summary.bucket(texts.key(self.prefixes[part.detector], part.scope, s0, s1), index).drivers
            label = texts.fill(part.label, l0, l1)
            entry = drivers.get(label)
            if entry is None:
                drivers[label] = [cost, calls]
            else:
                entry[0] += cost
                entry[1] += calls
        for (part, index, s0, s1, l0, _), (_, calls) in batch.groups(self.fingerprints, buckets):
            prints = summary.buckets[texts.key(self.prefixes[part.detector], part.scope, s0, s1)][index].fingerprints
            fingerprint = texts.fill(part.label, l0, None)
            prints[fingerprint] = prints.get(fingerprint, 0) + calls
        return summary


class _Batch:
    """A batch's columns as the fold reads them: codes of its text fields, conditions."""

    def __init__(self, rows: pa.Table, fields: list[str]) -> None:
        self.rows = rows
        self.length = rows.num_rows
        self.codes: dict[str, pa.Array] = {}
        self.dictionaries: dict[str, pa.Array] = {}
        for name in fields:
            encoded = pc.dictionary_encode(rows.column(name).combine_chunks())
            self.codes[name], self.dictionaries[name] = encoded.indices, encoded.dictionary
        self._tests: dict[FieldTest, pa.Array] = {}
        self._masks: dict[frozenset[FieldTest], pa.Array] = {}
        self.cost = rows.column("cost_total").combine_chunks()
        self.row = pa.array(range(self.length), pa.int64())
        self.none = pa.repeat(pa.scalar(0, pa.int32()), self.length)
        self._square: pa.Array | None = None

    @property
    def square(self) -> pa.Array:
        if self._square is None:
            wide = self.cost.cast(_WIDE_MONEY)
            self._square = pc.multiply(wide, wide)
        return self._square

    def mask(self, when: RowFilter) -> pa.Array:
        """Which rows pass ``when`` (every distinct test and conjunction computed once)."""
        found = self._masks.get(when.tests)
        if found is None:
            tests = [self._test(test) for test in sorted(when.tests)]
            found = reduce(pc.and_, tests) if tests else pa.repeat(pa.scalar(True), self.length)
            self._masks[when.tests] = found
        return found

    def _test(self, test: FieldTest) -> pa.Array:
        found = self._tests.get(test)
        if found is None:
            name, kind, values, holds = test
            column = self.rows.column(name).combine_chunks()
            if kind == "given":
                found = pc.not_equal(column, "")
            elif kind == "set":
                found = pc.fill_null(column, False)
            else:
                found = pc.is_in(column, value_set=pa.array(sorted(values), column.type))
            self._tests[test] = found = found if holds else pc.invert(found)
        return found

    def text_codes(self, text: RowText | None) -> tuple[pa.Array, pa.Array]:
        """The codes of a template's first two fields (a constant for a missing one)."""
        names = _fields_of(text.template) if text is not None else ()
        codes = [self.codes[name] for name in names] + [self.none, self.none]
        return codes[0], codes[1]

    def groups(
        self, parts: list[_Part], buckets: list[pa.Array], *, with_square: bool = False, largest: int = 0
    ) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
        """``((part, bucket, scope codes, label codes), (sums..., rows))`` per group of rows
        of the parts, in the order of each group's first row, then part; ``buckets`` are
        the rows' buckets per detector. ``largest`` > 0 keeps only that many groups of each
        part, bucket and scope: those of the largest cost, then calls, then first row."""
        if not parts:
            return
        names = ("part", "bucket", "s0", "s1", "l0", "l1", "cost", "row", "counted")
        columns: dict[str, list[pa.Array]] = {name: [] for name in names}
        if with_square:
            columns["square"] = []
        for n, part in enumerate(parts):
            s0, s1 = self.text_codes(part.scope)
            l0, l1 = self.text_codes(part.label)
            values = (
                pa.repeat(pa.scalar(n, pa.int32()), self.length), buckets[part.detector],
                s0, s1, l0, l1, self.cost, self.row, self.mask(part.when),
            )
            for name, value in zip(names, values):
                columns[name].append(value)
            if with_square:
                columns["square"].append(self.square)
        stacked = pa.table({name: pa.concat_arrays(arrays) for name, arrays in columns.items()})
        stacked = stacked.filter(pc.fill_null(stacked.column("counted"), False))
        if stacked.num_rows == 0:
            return
        sums = [("cost", "sum")] + ([("square", "sum")] if with_square else [])
        keys = ["part", "bucket", "s0", "s1", "l0", "l1"]
        grouped = (
            stacked.group_by(keys, use_threads=False)
            .aggregate([*sums, ([], "count_all"), ("row", "min")])
        )
        if largest:
            grouped = _largest_per_scope(grouped, largest)
        grouped = grouped.sort_by([("row_min", "ascending"), ("part", "ascending")])
        key_columns = [grouped.column(name).to_pylist() for name in keys]
        sum_columns = [grouped.column(f"{name}_sum").to_pylist() for name, _ in sums]
        sum_columns.append(grouped.column("count_all").to_pylist())
        key_columns[0] = [parts[n] for n in key_columns[0]]
        for key, values in zip(zip(*key_columns), zip(*sum_columns)):
            yield key, values


def _largest_per_scope(grouped: pa.Table, count: int) -> pa.Table:
    """The ``count`` groups of largest cost (then calls, then first row) of each part,
    bucket and scope, in Arrow: sorted so that each scope's groups are consecutive and
    largest first, a group's rank is its position less that of its scope's first group."""
    scope = ["part", "bucket", "s0", "s1"]
    ranked = grouped.sort_by([(name, "ascending") for name in scope] + [
        ("cost_sum", "descending"), ("count_all", "descending"), ("row_min", "ascending"),
    ])
    if ranked.num_rows <= count:
        return ranked
    changed = [
        pc.not_equal(column.slice(1), column.slice(0, ranked.num_rows - 1))
        for column in (ranked.column(name).combine_chunks() for name in scope)
    ]
    first = pa.concat_arrays([pa.array([True]), reduce(pc.or_, changed)])
    position = pa.array(range(ranked.num_rows), pa.int64())
    starts = pc.take(pc.indices_nonzero(first), pc.subtract(pc.cumulative_sum(first.cast(pa.int64())), 1))
    return ranked.filter(pc.less(pc.subtract(position, starts), count))


class _Texts:
    """Fills templates from a batch's dictionaries, each distinct text once."""

    def __init__(self, batch: _Batch) -> None:
        self.batch = batch
        self.values: dict[str, list[str]] = {}
        self.texts: dict[tuple[str, str, int, int | None], str] = {}

    def _values(self, name: str) -> list[str]:
        values = self.values.get(name)
        if values is None:
            values = self.values[name] = self.batch.dictionaries[name].to_pylist()
        return values

    def fill(self, text: RowText, first: int, second: int | None, prefix: str = "") -> str:
        memo = (prefix, text.template, first, second)
        found = self.texts.get(memo)
        if found is None:
            values = [self._values(name)[code] for name, code in zip(_fields_of(text.template), (first, second))]
            found = self.texts[memo] = prefix + _format_of(text.template).format(*values)
        return found

    def key(self, prefix: str, scope: RowText, first: int, second: int) -> str:
        return self.fill(scope, first, second, prefix)


@lru_cache(maxsize=None)
def _fields_of(template: str) -> tuple[str, ...]:
    """The fields a template names, in order (at most two)."""
    names = tuple(name for _, name, _, _ in Formatter().parse(template) if name is not None)
    assert len(names) <= 2, f"a template of more than two fields: {template}"
    return names


@lru_cache(maxsize=None)
def _format_of(template: str) -> str:
    """The template with positional fields, for ``str.format(*values)``."""
    return "".join(
        literal.replace("{", "{{").replace("}", "}}") + ("{}" if name is not None else "")
        for literal, name, _, _ in Formatter().parse(template)
    )


_WIDE_MONEY = pa.decimal256(37, 12)  # its square, decimal256(75, 24), cannot round or overflow


def _minutes(occurred_at: pa.ChunkedArray) -> pa.ChunkedArray:
    """Epoch minutes of a timestamp column (floored, as :func:`minute_of`)."""
    naive = occurred_at.cast(pa.timestamp(occurred_at.type.unit))
    return pc.divide(pc.floor_temporal(naive, 1, "minute").cast(pa.timestamp("s")).cast(pa.int64()), 60)
