-- Raw priced usage: one row per AI call, exactly as the sink agent receives it in a
-- PricedUsage record (schemas/priced_batch.avsc). Every rollup and report reads from here.
--
-- Types follow the queries people run (by team, feature, model, environment and day):
-- low-cardinality dimensions are LowCardinality(String); per-call identifiers stay plain
-- String. Money is Decimal(38, 12), the same precision and scale as the Avro decimal, so
-- sums are exact. occurred_at is the time of the call in UTC; ingested_at is when the
-- sink wrote the row.
--
-- The sorting key starts with the dimensions reports filter and group by, and ends in
-- event_id so that a row's position is fully determined. The bloom filter on event_id
-- serves the sink's look-up of a batch's ids (to drop re-deliveries), which cannot use
-- the sorting key. non_replicated_deduplication_window lets an insert carrying an
-- insert_deduplication_token be retried without writing its rows twice.
CREATE TABLE IF NOT EXISTS {database}.usage
(
    event_id            String,
    occurred_at         DateTime64(3, 'UTC'),
    provider            LowCardinality(String),
    model               LowCardinality(String),
    service_tier        LowCardinality(String),
    team                LowCardinality(String),
    attributed_by       LowCardinality(String),
    feature             LowCardinality(String),
    environment         LowCardinality(String),
    user_id             String,
    project             LowCardinality(String),
    agent_id            String,
    session_id          String,
    trace_id            String,
    api_key_id          LowCardinality(String),
    service             LowCardinality(String),
    tags                Map(String, String),
    request_fingerprint String,
    input_tokens        UInt64,
    output_tokens       UInt64,
    cache_read_tokens   UInt64,
    cache_write_tokens  UInt64,
    reasoning_tokens    UInt64,
    other_units         Map(String, UInt64),
    cost_input          Decimal(38, 12),
    cost_output         Decimal(38, 12),
    cost_cache_read     Decimal(38, 12),
    cost_cache_write    Decimal(38, 12),
    cost_other          Decimal(38, 12),
    cost_total          Decimal(38, 12),
    currency            LowCardinality(String),
    priced              Bool,
    unpriced_reason     LowCardinality(String),
    price_version       LowCardinality(String),
    source_partition    UInt32,
    source_offset       UInt64,
    ingested_at         DateTime64(3, 'UTC') DEFAULT now64(3),

    INDEX event_id_bloom event_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (team, toDate(occurred_at), feature, model, environment, event_id)
SETTINGS non_replicated_deduplication_window = 10000;
