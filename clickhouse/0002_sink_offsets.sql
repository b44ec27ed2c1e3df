-- The sink's exactly-once bookkeeping: per source (topic, partition), the offset range
-- of the last batch the sink has inserted into usage, and the deduplication token that
-- insert carried. On start (or after a rebalance) the sink resumes after last_offset
-- and skips what is already written; a retried insert reuses its token, so ClickHouse
-- drops the repeat.
--
-- One row per (topic, partition) survives merges: the one with the highest version,
-- which the sink sets to last_offset so a late write of an older range never wins.
-- Read it with FINAL (or argMax by version), since merges run in the background.
CREATE TABLE IF NOT EXISTS {database}.sink_offsets
(
    topic        LowCardinality(String),
    partition    UInt32,
    first_offset UInt64,
    last_offset  UInt64,
    row_count    UInt64,
    dedup_token  String,
    committed_at DateTime64(3, 'UTC') DEFAULT now64(3),
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (topic, partition);
