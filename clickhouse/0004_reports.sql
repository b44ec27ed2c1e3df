-- Report views: the parts of the weekly report, as ClickHouse parameterized views over
-- the daily rollup. Call them like table functions, for example:
--
--   SELECT * FROM weekly_team_spend(week_start = '2025-03-03', currency = 'USD')
--
-- A week is the 7 UTC days from week_start; "prior" is the 7 days before it. Money is
-- Decimal(38, 12) in `currency`; a workflow is a (team, feature) pair. Cost per call
-- divides by priced calls only: an unpriced call has no cost, and counting it would
-- make a workflow look cheaper than it is.

-- Spend per team this week and the week before.
CREATE VIEW IF NOT EXISTS {database}.weekly_team_spend AS
SELECT
    team,
    sumIf(cost_total, day >= {week_start:Date}) AS week_cost,
    sumIf(calls, day >= {week_start:Date})      AS week_calls,
    sumIf(cost_total, day < {week_start:Date})  AS prior_cost,
    sumIf(calls, day < {week_start:Date})       AS prior_calls
FROM {database}.usage_daily
WHERE day >= {week_start:Date} - 7 AND day < {week_start:Date} + 7 AND currency = {currency:String}
GROUP BY team
ORDER BY week_cost DESC, team;

-- The five workflows that cost the most this week.
CREATE VIEW IF NOT EXISTS {database}.weekly_top_workflows AS
SELECT team, feature AS workflow, sum(cost_total) AS cost, sum(calls) AS calls
FROM {database}.usage_daily
WHERE day >= {week_start:Date} AND day < {week_start:Date} + 7 AND currency = {currency:String}
GROUP BY team, feature
ORDER BY cost DESC, team, workflow
LIMIT 5;

-- Workflows whose cost per priced call rose by at least min_rise (0.25 = 25 %) over
-- the prior week, among those with at least min_calls priced calls in both weeks. The
-- test multiplies instead of dividing, so it is exact; the per-call figures are
-- shown truncated to 12 decimal places.
CREATE VIEW IF NOT EXISTS {database}.weekly_cost_per_call_rises AS
SELECT
    team,
    feature                                                   AS workflow,
    sumIf(cost_total, day >= {week_start:Date})               AS week_cost,
    sumIf(calls - unpriced_calls, day >= {week_start:Date})   AS week_priced_calls,
    sumIf(cost_total, day < {week_start:Date})                AS prior_cost,
    sumIf(calls - unpriced_calls, day < {week_start:Date})    AS prior_priced_calls,
    week_cost / greatest(week_priced_calls, 1)                AS week_cost_per_call,
    prior_cost / greatest(prior_priced_calls, 1)              AS prior_cost_per_call
FROM {database}.usage_daily
WHERE day >= {week_start:Date} - 7 AND day < {week_start:Date} + 7 AND currency = {currency:String}
GROUP BY team, feature
HAVING week_priced_calls >= {min_calls:UInt64}
   AND prior_priced_calls >= {min_calls:UInt64}
   AND prior_cost > 0
   AND week_cost * prior_priced_calls >= prior_cost * week_priced_calls * (1 + {min_rise:Decimal(9, 4)})
ORDER BY team, workflow;

-- Spend this week from environments that are not production (development, staging,
-- test, or no environment tag at all): traffic that inflates the production figures.
CREATE VIEW IF NOT EXISTS {database}.weekly_non_production AS
SELECT team, feature AS workflow, environment, sum(cost_total) AS cost, sum(calls) AS calls
FROM {database}.usage_daily
WHERE day >= {week_start:Date} AND day < {week_start:Date} + 7 AND currency = {currency:String}
  AND environment NOT IN {production:Array(String)}
GROUP BY team, feature, environment
ORDER BY cost DESC, team, workflow, environment;

-- Calls this week that could not be priced (unknown model, invalid usage), per model:
-- spend the ledger cannot put a figure on, reported rather than counted as zero. No
-- currency parameter: these calls have no amount in any currency.
CREATE VIEW IF NOT EXISTS {database}.weekly_unpriced AS
SELECT
    provider,
    model,
    sum(unpriced_calls)         AS calls,
    sum(unpriced_input_tokens)  AS input_tokens,
    sum(unpriced_output_tokens) AS output_tokens
FROM {database}.usage_daily
WHERE day >= {week_start:Date} AND day < {week_start:Date} + 7
GROUP BY provider, model
HAVING calls > 0
ORDER BY calls DESC, provider, model;

-- Spend per team and UTC day over [start, end): the series behind spend-over-time charts.
CREATE VIEW IF NOT EXISTS {database}.daily_team_spend AS
SELECT day, team, sum(cost_total) AS cost, sum(calls) AS calls
FROM {database}.usage_daily
WHERE day >= {start:Date} AND day < {end:Date} AND currency = {currency:String}
GROUP BY day, team
ORDER BY day, team;
