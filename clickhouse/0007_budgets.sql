-- Budgets, as the worker reads them from the compacted budgets topic
-- (schemas/budget.avsc): one row per version of a budget, the latest updated_at wins
-- (read with FINAL); a removed budget is written once more with deleted = 1, and FINAL
-- then leaves it out.
-- scope is the budget's comma-separated key=value list, e.g. 'team=search' or
-- 'team=search,feature=answers'; period is day, week or month.
CREATE TABLE IF NOT EXISTS {database}.budgets
(
    budget_id   String,
    scope       String,
    amount      Decimal(38, 12),
    currency    LowCardinality(String),
    period      LowCardinality(String),
    thresholds  Array(Decimal(9, 4)) DEFAULT [],
    hard_action LowCardinality(String) DEFAULT 'block',
    updated_at  DateTime64(3, 'UTC'),
    deleted     UInt8 DEFAULT 0
)
ENGINE = ReplacingMergeTree(updated_at, deleted)
ORDER BY budget_id;

-- The monthly budget of each team (scope exactly team=<name>), in one currency: what
-- chargeback compares the team's API spend with. Should two budgets name the same
-- team, the one updated last counts.
CREATE VIEW IF NOT EXISTS {database}.team_monthly_budgets AS
SELECT lower(trimBoth(substring(scope, 6))) AS team, argMax(amount, updated_at) AS amount
FROM {database}.budgets FINAL
WHERE period = 'month' AND match(scope, '^team=[^,=]+$') AND currency = {currency:String}
GROUP BY team
ORDER BY team;
