"""Prices a chunk of validated events column by column, exactly.

Pricing one event at a time costs a few microseconds of Decimal arithmetic and object
building, which on the enrich stage's hot path is as much as decoding it. But the tens of
thousands of events of a chunk share a handful of rate cards (provider, model, tier, minute),
and multiplying a count column by a rate column is one Arrow call. So:

1. Group the rows by (provider, model, service tier, minute) and resolve each group's rate
   card once (:meth:`streams.pricing.rate_cards.Pricer.rate_card`, memoized).
2. A card that :class:`~streams.pricing.rate_cards.ColumnRates` can hold gives one entry per
   long-context bracket; each row takes the entry of its card's bracket for its input tokens.
3. The rows the columns cannot price exactly (other billable units, a card with rates
   outside ``ColumnRates``, counts the fast path does not take) are set aside: they count
   zero in the columns.
4. The cost parts are Arrow ``decimal128`` arithmetic: a count below 10^12 times a rate
   below 1,000 with at most twelve decimal places is exact at the cost scale, so nothing is
   rounded and every part equals the per-event path's to the last digit (a property test
   holds them equal). Counts are ``decimal128(19, 0)``, rates ``decimal128(15, 12)``, a part
   ``decimal128(35, 12)``, and the total of five parts fits ``decimal128(38, 12)``.
5. The rows set aside in step 3 are priced one by one by their card's exact per-event path
   and put in place.

Unpriced rows (no price for the model) are an entry too: zero parts, ``priced`` false and
the card's reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

from streams.events.priced import MONEY
from streams.events.validation import map_sizes
from streams.pricing.rate_cards import ColumnRates, Pricer

_COUNT = pa.decimal128(19, 0)  # int64's digits: the narrowest decimal Arrow casts an int64 to
_RATE = pa.decimal128(15, 12)
COST_COLUMNS = ("cost_input", "cost_output", "cost_cache_read", "cost_cache_write", "cost_other", "cost_total")
PRICE_COLUMNS = (
    *COST_COLUMNS, "currency", "priced", "unpriced_reason", "price_version", "price_flag", "price_flag_reason"
)
_COUNT_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
# Entry 0: the entry of rows priced one by one; their columns are replaced in step 5.
_PER_EVENT = ColumnRates(None, None, None, None, Decimal(0), "", False, "", "")


def price_columns(pricer: Pricer, events: Mapping[str, pa.Array]) -> dict[str, pa.Array]:
    """The :data:`PRICE_COLUMNS` of validated events given as columns (``provider``,
    ``model``, ``service_tier``, ``occurred_at``, the four token counts, ``other_units``)."""
    inputs, outputs, cache_reads, cache_writes = (events[name] for name in _COUNT_COLUMNS)

    # 1. One rate card per (provider, model, tier, minute).
    minute = pc.floor_temporal(events["occurred_at"], unit="minute")
    group, first_rows = _group_rows([events["provider"], events["model"], events["service_tier"], minute])
    keys = (events[name].take(first_rows).to_pylist() for name in ("provider", "model", "service_tier", "occurred_at"))
    cards = [pricer.rate_card(*key) for key in zip(*keys)]

    # 2. Each row's entry: its card's bracket for its input tokens.
    entries = [_PER_EVENT]
    group_entry: list[int] = []  # the base bracket's entry, per group
    tiers: list[tuple[int, int, int]] = []  # (group, start, entry), by ascending start per group
    for g, card in enumerate(cards):
        brackets = card.column_brackets()
        if brackets is None:
            group_entry.append(0)
            continue
        *above, (_, base) = brackets
        group_entry.append(len(entries))
        entries.append(base)
        for start, rates in reversed(above):
            tiers.append((g, start, len(entries)))
            entries.append(rates)
    entry = pa.array(group_entry, pa.int32()).take(group)
    for g, start, e in tiers:  # the highest start a call exceeds wins
        entry = pc.if_else(pc.and_(pc.equal(group, g), pc.greater(inputs, start)), e, entry)

    # 3. The rows only the per-event path prices (in step 5): their card's, or with other
    # units, or counts it refuses (it says why in ``unpriced_reason``).
    per_event = pc.equal(entry, 0)
    per_event = pc.or_(per_event, pc.greater(map_sizes(events["other_units"]), 0))
    per_event = pc.or_(per_event, pc.greater(pc.add(cache_reads, cache_writes), inputs))
    for column in (inputs, outputs, cache_reads, cache_writes):
        per_event = pc.or_(per_event, pc.less(column, 0))

    # 4. The parts, as exact decimal arithmetic over the columns.
    def counts(column: pa.Array) -> pa.Array:
        return pc.if_else(per_event, 0, column)

    def amounts(pick: str) -> pa.Array:
        return pa.array([getattr(e, pick) or 0 for e in entries], _RATE).take(entry)

    def has_line(pick: str) -> pa.Array:  # else these tokens bill at the input rate
        return pa.array([getattr(e, pick) is not None for e in entries], pa.bool_()).take(entry)

    def each(pick: str, type_: pa.DataType) -> pa.Array:
        return pa.array([getattr(e, pick) for e in entries], type_).take(entry)

    i, o, cr, cw = counts(inputs), counts(outputs), counts(cache_reads), counts(cache_writes)
    uncached = pc.subtract(pc.subtract(i, pc.if_else(has_line("cache_read"), cr, 0)),
                           pc.if_else(has_line("cache_write"), cw, 0))
    parts = [
        pc.multiply(count.cast(_COUNT), amounts(pick))
        for count, pick in ((uncached, "input"), (o, "output"), (cr, "cache_read"), (cw, "cache_write"))
    ]
    other = amounts("other")
    total = pc.add(pc.add(pc.add(parts[0], parts[1]), pc.add(parts[2], parts[3])), other)
    columns = dict(zip(COST_COLUMNS, (part.cast(MONEY) for part in (*parts, other, total)), strict=True))
    columns.update(
        currency=each("currency", pa.string()),
        priced=each("priced", pa.bool_()),
        unpriced_reason=each("unpriced_reason", pa.string()),
        price_version=each("price_version", pa.string()),
        price_flag=each("price_flag", pa.string()),
        price_flag_reason=each("price_flag_reason", pa.string()),
    )

    # 5. The per-event rows, priced one by one by their card and put in place.
    rows = pc.indices_nonzero(per_event)
    if len(rows):
        values = [events[name].take(rows).to_pylist() for name in (*_COUNT_COLUMNS, "other_units")]
        costs = [
            cards[g].price(i, o, cr, cw, dict(units))
            for g, i, o, cr, cw, units in zip(group.take(rows).to_pylist(), *values, strict=True)
        ]
        for name in PRICE_COLUMNS:
            field = name.removeprefix("cost_")
            replacement = pa.array([getattr(cost, field) for cost in costs], columns[name].type)
            columns[name] = pc.replace_with_mask(columns[name], per_event, replacement)
    return columns


def unpriced_where(columns: Mapping[str, pa.Array], rows: pa.BooleanArray, reason: str) -> dict[str, pa.Array]:
    """The :data:`PRICE_COLUMNS` with ``rows`` made unpriced for ``reason``: zero cost parts,
    ``priced`` false. For calls whose counts cannot be trusted whatever the rate card says."""
    if not pc.any(rows).as_py():
        return {}
    out = {name: pc.if_else(rows, pa.scalar(0, columns[name].type), columns[name]) for name in COST_COLUMNS}
    out["priced"] = pc.and_(columns["priced"], pc.invert(rows))
    out["unpriced_reason"] = pc.if_else(rows, reason, columns["unpriced_reason"])
    for name in ("price_flag", "price_flag_reason"):  # a flag is a doubt about a price; there is none
        out[name] = pc.if_else(rows, "", columns[name])
    return out


def _group_rows(columns: Sequence[pa.Array]) -> tuple[pa.Array, pa.Array]:
    """Per row, the index of its distinct combination of ``columns``; and each combination's
    first row. Pairwise dictionary codes keep every intermediate key below rows squared."""
    group = pc.dictionary_encode(columns[0]).indices.cast(pa.int64())
    for column in columns[1:]:
        encoded = pc.dictionary_encode(column)
        combined = pc.add(pc.multiply(group, len(encoded.dictionary)), encoded.indices.cast(pa.int64()))
        group = pc.dictionary_encode(combined).indices.cast(pa.int64())
    rows = pa.table({"group": group, "row": pa.array(range(len(group)), pa.int64())})
    firsts = rows.group_by("group", use_threads=False).aggregate([("row", "min")]).sort_by("group")
    return group, firsts.column("row_min").combine_chunks()
