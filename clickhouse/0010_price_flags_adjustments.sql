-- Price flags, and corrections as adjustments (issue 22).
--
-- price_flag: a row priced, but with a doubt finance must see. "tier_priced_as_standard":
-- the call ran on a service tier (batch, flex, priority) that neither the catalog, the
-- price book nor the providers' published tier rules price for its model, so it was billed
-- at the standard rate; price_flag_reason says why in words. '' on every other row.
ALTER TABLE {database}.usage ADD COLUMN IF NOT EXISTS price_flag LowCardinality(String) DEFAULT '';
ALTER TABLE {database}.usage ADD COLUMN IF NOT EXISTS price_flag_reason LowCardinality(String) DEFAULT '';

-- Flagged calls per day, team, provider, model, tier and reason: the weekly report's section
-- and the reconciliation read this instead of scanning usage. Filled from now on, as every
-- rollup; keyed by team and day like the others, so the sink's rollup repair can redo it.
CREATE TABLE IF NOT EXISTS {database}.usage_daily_flags
(
    day               Date,
    team              LowCardinality(String),
    provider          LowCardinality(String),
    model             LowCardinality(String),
    service_tier      LowCardinality(String),
    price_flag        LowCardinality(String),
    price_flag_reason LowCardinality(String),
    currency          LowCardinality(String),
    calls             UInt64,
    cost_total        Decimal(38, 12)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, team, provider, model, service_tier, price_flag, price_flag_reason, currency)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.usage_daily_flags_mv TO {database}.usage_daily_flags AS
SELECT toDate(occurred_at) AS day, team, provider, model, service_tier, price_flag, price_flag_reason, currency,
       count() AS calls, sum(cost_total) AS cost_total
FROM {database}.usage
WHERE price_flag != ''
GROUP BY day, team, provider, model, service_tier, price_flag, price_flag_reason, currency;

-- The flagged calls of the week from week_start (7 UTC days), per provider, model and tier.
CREATE VIEW IF NOT EXISTS {database}.weekly_price_flags AS
SELECT provider, model, service_tier, price_flag, any(price_flag_reason) AS reason, currency,
       sum(calls) AS calls, sum(cost_total) AS cost
FROM {database}.usage_daily_flags
WHERE day >= {week_start:Date} AND day < {week_start:Date} + 7
GROUP BY provider, model, service_tier, price_flag, currency
ORDER BY calls DESC, provider, model, service_tier;

-- Corrections, appended by `spendstream reprice`: usage rows are never rewritten. A row
-- here is the difference, per cost part, between what an event costs at the prices of
-- the run (price_version) and what the ledger said it cost before the run (its usage
-- row plus the earlier adjustments of the event in the same currency). A change of
-- currency is two rows: the old currency's amount taken back, the new one added.
-- priced, price_flag and price_flag_reason describe the event at the run's prices.
-- run_id, run_by, run_at and reason say who corrected what, when and why.
--
-- The sorting key makes a run's rows of one day contiguous; the deduplication window
-- lets the command retry an insert (same rows, same token) without writing it twice.
CREATE TABLE IF NOT EXISTS {database}.usage_adjustments
(
    event_id               String,
    occurred_at            DateTime64(3, 'UTC'),
    provider               LowCardinality(String),
    model                  LowCardinality(String),
    service_tier           LowCardinality(String),
    team                   LowCardinality(String),
    feature                LowCardinality(String),
    environment            LowCardinality(String),
    user_id                String,
    project                LowCardinality(String),
    api_key_id             LowCardinality(String),
    currency               LowCardinality(String),
    cost_input             Decimal(38, 12),
    cost_output            Decimal(38, 12),
    cost_cache_read        Decimal(38, 12),
    cost_cache_write       Decimal(38, 12),
    cost_other             Decimal(38, 12),
    cost_total             Decimal(38, 12),
    priced                 Bool,
    price_flag             LowCardinality(String),
    price_flag_reason      LowCardinality(String),
    price_version          LowCardinality(String),
    previous_price_version LowCardinality(String),
    run_id                 String,
    run_by                 String,
    run_at                 DateTime64(3, 'UTC'),
    reason                 String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (toDate(occurred_at), event_id, run_id, currency)
SETTINGS non_replicated_deduplication_window = 10000;

-- Adjustments flow into the same rollups as usage, so every report view (weekly,
-- chargeback, per person) counts them: a corrected amount with no calls or tokens of its
-- own. Inserted adjustments are summed with usage's rows by the SummingMergeTree merges.
-- The sink's rollup repair (streams/ledger/rollup_repair.py) counts them too: it finds
-- these views as the ones reading usage_adjustments into a rollup.
CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.usage_hourly_adjustments_mv TO {database}.usage_hourly AS
SELECT
    toStartOfHour(occurred_at) AS hour,
    team, feature, environment, provider, model, currency,
    toUInt64(0) AS calls, toUInt64(0) AS unpriced_calls,
    toUInt64(0) AS input_tokens, toUInt64(0) AS output_tokens, toUInt64(0) AS cache_read_tokens,
    toUInt64(0) AS cache_write_tokens, toUInt64(0) AS reasoning_tokens,
    toUInt64(0) AS unpriced_input_tokens, toUInt64(0) AS unpriced_output_tokens,
    sum(cost_input) AS cost_input, sum(cost_output) AS cost_output, sum(cost_cache_read) AS cost_cache_read,
    sum(cost_cache_write) AS cost_cache_write, sum(cost_other) AS cost_other, sum(cost_total) AS cost_total
FROM {database}.usage_adjustments
GROUP BY hour, team, feature, environment, provider, model, currency;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.usage_daily_adjustments_mv TO {database}.usage_daily AS
SELECT
    toDate(occurred_at) AS day,
    team, feature, environment, provider, model, currency,
    toUInt64(0) AS calls, toUInt64(0) AS unpriced_calls,
    toUInt64(0) AS input_tokens, toUInt64(0) AS output_tokens, toUInt64(0) AS cache_read_tokens,
    toUInt64(0) AS cache_write_tokens, toUInt64(0) AS reasoning_tokens,
    toUInt64(0) AS unpriced_input_tokens, toUInt64(0) AS unpriced_output_tokens,
    sum(cost_input) AS cost_input, sum(cost_output) AS cost_output, sum(cost_cache_read) AS cost_cache_read,
    sum(cost_cache_write) AS cost_cache_write, sum(cost_other) AS cost_other, sum(cost_total) AS cost_total
FROM {database}.usage_adjustments
GROUP BY day, team, feature, environment, provider, model, currency;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.usage_daily_by_user_adjustments_mv TO {database}.usage_daily_by_user AS
SELECT toDate(occurred_at) AS day, user_id, team, currency, toUInt64(0) AS calls, sum(cost_total) AS cost_total
FROM {database}.usage_adjustments
GROUP BY day, user_id, team, currency;
