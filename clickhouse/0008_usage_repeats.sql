-- Events produced more than once: every copy of an event_id that the sink did not write to
-- usage because another copy (from another usage message) is already there. usage holds
-- each event once; this table is the audit of what was dropped, and the sink's memory of
-- which repeats it has already taken back out of the live spend tables (it publishes a
-- negative spend delta for each repeat once, after recording it here).
--
-- A copy is identified by where it came from: its usage-topic partition and offset. A
-- re-delivery of the same copy (a replay after a crash) is not a repeat, and is not here.
--
-- The sink writes this table with an insert deduplication token derived from the rows,
-- so a retried insert is written once.
--
-- A note on 0002: the sink records the offsets it has written in sink_offsets, for
-- operators (how far ClickHouse is behind the priced topic); it does not skip messages
-- by those offsets, since a re-created priced topic starts again from offset 0.
CREATE TABLE IF NOT EXISTS {database}.usage_repeats
(
    event_id         String,
    occurred_at      DateTime64(3, 'UTC'),
    team             LowCardinality(String),
    cost_total       Decimal(38, 12),
    currency         LowCardinality(String),
    source_partition UInt32,
    source_offset    UInt64,
    kept_partition   UInt32,
    kept_offset      UInt64,
    dropped_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (event_id, source_partition, source_offset)
SETTINGS non_replicated_deduplication_window = 10000;
