-- Rollups of usage, kept by ClickHouse itself: a materialized view runs on every block
-- inserted into usage and adds its aggregate to a SummingMergeTree table, whose merges
-- then add up rows with the same key. Reports read these instead of the raw rows, so
-- they answer in milliseconds however large usage grows.
--
-- Exact by construction: costs are Decimal(38, 12) sums (no floats anywhere), and a
-- rollup counts each row of usage once. A re-delivered batch that the sink drops (its
-- event ids are already there) is never inserted. A retried insert that ClickHouse drops
-- as a duplicate (same insert deduplication token) is still pushed to the views, and
-- each rollup drops it in turn: that is why every rollup table keeps the same
-- deduplication window as usage (deduplicate_blocks_in_dependent_materialized_views, on
-- by default, derives the rollup block's token from the source block's).
--
-- Merges run in the background, so a key can sit in several rows for a while: always
-- read rollups with sum(...) and GROUP BY, never row by row.
--
-- Days and hours are UTC. The rollups hold the rows inserted after this migration;
-- every install applies it with 0001 on its first migrate.

-- Per hour and per day, over the dimensions reports group by. currency is part of the
-- key because amounts in different currencies must never be added together.
-- In the views, raw.input_tokens names the column of usage: plain input_tokens would be
-- the alias of sum(input_tokens) and nest one aggregate in another.
CREATE TABLE IF NOT EXISTS {database}.usage_hourly
(
    hour                   DateTime('UTC'),
    team                   LowCardinality(String),
    feature                LowCardinality(String),
    environment            LowCardinality(String),
    provider               LowCardinality(String),
    model                  LowCardinality(String),
    currency               LowCardinality(String),
    calls                  UInt64,
    unpriced_calls         UInt64,
    input_tokens           UInt64,
    output_tokens          UInt64,
    cache_read_tokens      UInt64,
    cache_write_tokens     UInt64,
    reasoning_tokens       UInt64,
    unpriced_input_tokens  UInt64,
    unpriced_output_tokens UInt64,
    cost_input             Decimal(38, 12),
    cost_output            Decimal(38, 12),
    cost_cache_read        Decimal(38, 12),
    cost_cache_write       Decimal(38, 12),
    cost_other             Decimal(38, 12),
    cost_total             Decimal(38, 12)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, team, feature, environment, provider, model, currency)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.usage_hourly_mv TO {database}.usage_hourly AS
SELECT
    toStartOfHour(occurred_at)        AS hour,
    team, feature, environment, provider, model, currency,
    count()                           AS calls,
    countIf(NOT priced)               AS unpriced_calls,
    sum(input_tokens)                 AS input_tokens,
    sum(output_tokens)                AS output_tokens,
    sum(cache_read_tokens)            AS cache_read_tokens,
    sum(cache_write_tokens)           AS cache_write_tokens,
    sum(reasoning_tokens)             AS reasoning_tokens,
    sumIf(raw.input_tokens, NOT priced)  AS unpriced_input_tokens,
    sumIf(raw.output_tokens, NOT priced) AS unpriced_output_tokens,
    sum(cost_input)                   AS cost_input,
    sum(cost_output)                  AS cost_output,
    sum(cost_cache_read)              AS cost_cache_read,
    sum(cost_cache_write)             AS cost_cache_write,
    sum(cost_other)                   AS cost_other,
    sum(cost_total)                   AS cost_total
FROM {database}.usage AS raw
GROUP BY hour, team, feature, environment, provider, model, currency;

CREATE TABLE IF NOT EXISTS {database}.usage_daily
(
    day                    Date,
    team                   LowCardinality(String),
    feature                LowCardinality(String),
    environment            LowCardinality(String),
    provider               LowCardinality(String),
    model                  LowCardinality(String),
    currency               LowCardinality(String),
    calls                  UInt64,
    unpriced_calls         UInt64,
    input_tokens           UInt64,
    output_tokens          UInt64,
    cache_read_tokens      UInt64,
    cache_write_tokens     UInt64,
    reasoning_tokens       UInt64,
    unpriced_input_tokens  UInt64,
    unpriced_output_tokens UInt64,
    cost_input             Decimal(38, 12),
    cost_output            Decimal(38, 12),
    cost_cache_read        Decimal(38, 12),
    cost_cache_write       Decimal(38, 12),
    cost_other             Decimal(38, 12),
    cost_total             Decimal(38, 12)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, team, feature, environment, provider, model, currency)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.usage_daily_mv TO {database}.usage_daily AS
SELECT
    toDate(occurred_at)               AS day,
    team, feature, environment, provider, model, currency,
    count()                           AS calls,
    countIf(NOT priced)               AS unpriced_calls,
    sum(input_tokens)                 AS input_tokens,
    sum(output_tokens)                AS output_tokens,
    sum(cache_read_tokens)            AS cache_read_tokens,
    sum(cache_write_tokens)           AS cache_write_tokens,
    sum(reasoning_tokens)             AS reasoning_tokens,
    sumIf(raw.input_tokens, NOT priced)  AS unpriced_input_tokens,
    sumIf(raw.output_tokens, NOT priced) AS unpriced_output_tokens,
    sum(cost_input)                   AS cost_input,
    sum(cost_output)                  AS cost_output,
    sum(cost_cache_read)              AS cost_cache_read,
    sum(cost_cache_write)             AS cost_cache_write,
    sum(cost_other)                   AS cost_other,
    sum(cost_total)                   AS cost_total
FROM {database}.usage AS raw
GROUP BY day, team, feature, environment, provider, model, currency;

-- Per person (the event's user_id) and day: the API half of per-person totals, which
-- the licence inventory (0005) completes.
CREATE TABLE IF NOT EXISTS {database}.usage_daily_by_user
(
    day        Date,
    user_id    String,
    team       LowCardinality(String),
    currency   LowCardinality(String),
    calls      UInt64,
    cost_total Decimal(38, 12)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, user_id, team, currency)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.usage_daily_by_user_mv TO {database}.usage_daily_by_user AS
SELECT toDate(occurred_at) AS day, user_id, team, currency, count() AS calls, sum(cost_total) AS cost_total
FROM {database}.usage
GROUP BY day, user_id, team, currency;
