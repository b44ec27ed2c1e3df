-- UsageEvent version 2: the route a call took, a cost the router or provider reported, a
-- call whose usage never came, and the budget reservation a call settles. Old rows read
-- the defaults (a first attempt, not routed, usage reported).
--
-- usage_missing rows are stored unpriced (unpriced_reason = 'usage_missing'), never at $0:
-- a stream that ended without its usage chunk is spend nobody can see otherwise.
ALTER TABLE {database}.usage
    ADD COLUMN IF NOT EXISTS usage_missing     Bool DEFAULT false,
    ADD COLUMN IF NOT EXISTS router            LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS upstream_provider LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS attempt           UInt16 DEFAULT 1,
    ADD COLUMN IF NOT EXISTS retry_of          String DEFAULT '',
    ADD COLUMN IF NOT EXISTS fallback_from     String DEFAULT '',
    ADD COLUMN IF NOT EXISTS reported_cost     Nullable(Decimal(38, 12)),
    ADD COLUMN IF NOT EXISTS reported_currency LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS reservation_id    String DEFAULT '';

-- Unpriced calls per day and reason (no price for the model, usage missing, ...): the
-- weekly report's unpriced section says why, from a rollup as small as the problem.
CREATE TABLE IF NOT EXISTS {database}.usage_daily_unpriced
(
    day             Date,
    team            LowCardinality(String),
    provider        LowCardinality(String),
    model           LowCardinality(String),
    unpriced_reason LowCardinality(String),
    calls           UInt64,
    input_tokens    UInt64,
    output_tokens   UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, team, provider, model, unpriced_reason)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.usage_daily_unpriced_mv TO {database}.usage_daily_unpriced AS
SELECT
    toDate(occurred_at)    AS day,
    team, provider, model, unpriced_reason,
    count()                AS calls,
    sum(raw.input_tokens)  AS input_tokens,
    sum(raw.output_tokens) AS output_tokens
FROM {database}.usage AS raw
WHERE NOT priced
GROUP BY day, team, provider, model, unpriced_reason;

-- Router hops per day: every call that went through a router, was retried or fell back,
-- or came with a reported cost. hop is 'first', 'retry' or 'fallback'. reported_cost sums
-- only the calls that reported one, beside cost_reported_calls: spendstream's own price of
-- those same calls, so the two compare like for like.
CREATE TABLE IF NOT EXISTS {database}.usage_daily_hops
(
    day                 Date,
    team                LowCardinality(String),
    feature             LowCardinality(String),
    router              LowCardinality(String),
    upstream_provider   LowCardinality(String),
    provider            LowCardinality(String),
    model               LowCardinality(String),
    hop                 LowCardinality(String),
    currency            LowCardinality(String),
    reported_currency   LowCardinality(String),
    calls               UInt64,
    cost_total          Decimal(38, 12),
    reported_calls      UInt64,
    cost_reported_calls Decimal(38, 12),
    reported_cost       Decimal(38, 12)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, team, feature, router, upstream_provider, provider, model, hop, currency, reported_currency)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.usage_daily_hops_mv TO {database}.usage_daily_hops AS
SELECT
    toDate(occurred_at) AS day,
    team, feature, router, upstream_provider, provider, model,
    multiIf(fallback_from != '', 'fallback', retry_of != '' OR attempt > 1, 'retry', 'first') AS hop,
    currency, reported_currency,
    count()                                          AS calls,
    sum(raw.cost_total)                              AS cost_total,
    countIf(raw.reported_cost IS NOT NULL)           AS reported_calls,
    sumIf(raw.cost_total, raw.reported_cost IS NOT NULL) AS cost_reported_calls,
    sum(ifNull(raw.reported_cost, toDecimal128(0, 12))) AS reported_cost
FROM {database}.usage AS raw
WHERE raw.router != '' OR raw.attempt > 1 OR raw.retry_of != '' OR raw.fallback_from != '' OR raw.reported_cost IS NOT NULL
GROUP BY day, team, feature, router, upstream_provider, provider, model, hop, currency, reported_currency;

-- What retries and fallbacks cost, per team and feature over [start, end): the calls and
-- cost of each kind of hop, and the share of the total spent on attempts after the first.
CREATE VIEW IF NOT EXISTS {database}.hop_costs AS
SELECT
    team, feature, currency,
    sumIf(calls, hop = 'first')         AS first_calls,
    sumIf(cost_total, hop = 'first')    AS first_cost,
    sumIf(calls, hop = 'retry')         AS retry_calls,
    sumIf(cost_total, hop = 'retry')    AS retry_cost,
    sumIf(calls, hop = 'fallback')      AS fallback_calls,
    sumIf(cost_total, hop = 'fallback') AS fallback_cost
FROM {database}.usage_daily_hops
WHERE day >= {start:Date} AND day < {end:Date}
GROUP BY team, feature, currency
HAVING retry_calls + fallback_calls > 0
ORDER BY retry_cost + fallback_cost DESC, team, feature;

-- Where the cost a router or provider reported disagrees with spendstream's price of the
-- same calls by more than {tolerance} of spendstream's price (a fraction, e.g. 0.02), or is
-- in another currency, per day, team, feature, router and model over [start, end).
CREATE VIEW IF NOT EXISTS {database}.reported_cost_disagreements AS
SELECT
    day, team, feature, router, upstream_provider, provider, model, currency, reported_currency,
    sum(reported_calls)      AS calls,
    sum(cost_reported_calls) AS own_cost,
    sum(reported_cost)       AS reported_cost,
    reported_cost - own_cost AS difference
FROM {database}.usage_daily_hops
WHERE day >= {start:Date} AND day < {end:Date}
GROUP BY day, team, feature, router, upstream_provider, provider, model, currency, reported_currency
HAVING calls > 0
   AND (currency != reported_currency
        OR abs(reported_cost - own_cost) > {tolerance:Decimal(9, 6)} * abs(own_cost))
ORDER BY abs(difference) DESC, day, team, feature;

-- Why the week's unpriced calls are unpriced, per provider and model: the weekly report
-- sets these reasons beside weekly_unpriced's counts (rows stored before this migration
-- have no reason here).
CREATE VIEW IF NOT EXISTS {database}.weekly_unpriced_reasons AS
SELECT provider, model, unpriced_reason, sum(calls) AS calls
FROM {database}.usage_daily_unpriced
WHERE day >= {week_start:Date} AND day < {week_start:Date} + 7
GROUP BY provider, model, unpriced_reason
ORDER BY provider, model, calls DESC, unpriced_reason;
