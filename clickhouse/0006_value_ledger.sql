-- The value ledger: what each workflow (a team's feature) delivered in a month, as its
-- owners estimate it: outcomes (cases summarised, leads enriched, ...), hours saved at an
-- hourly rate, and revenue it enabled. `spendstream value import FILE.toml` fills it.
-- One entry per (team, workflow, month): importing an entry again replaces it (the
-- latest import wins; read with FINAL).
CREATE TABLE IF NOT EXISTS {database}.value_ledger
(
    team             LowCardinality(String),
    workflow         LowCardinality(String),
    period           Date,
    currency         LowCardinality(String),
    outcomes         UInt64,
    outcome_unit     String,
    time_saved_hours Decimal(38, 12),
    hourly_rate      Decimal(38, 12),
    revenue_enabled  Decimal(38, 12),
    note             String,
    source           String,
    imported_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(imported_at)
ORDER BY (team, workflow, period);

-- Each ledger entry beside the workflow's API spend in that month and currency (all
-- environments). value = time_saved_hours * hourly_rate + revenue_enabled, exact.
-- Cost per outcome is cost / outcomes; ROI is (value - cost) / cost.
CREATE VIEW IF NOT EXISTS {database}.workflow_value AS
SELECT
    v.team             AS team,
    v.workflow         AS workflow,
    v.period           AS period,
    v.currency         AS currency,
    v.outcomes         AS outcomes,
    v.outcome_unit     AS outcome_unit,
    v.time_saved_hours AS time_saved_hours,
    v.hourly_rate      AS hourly_rate,
    v.revenue_enabled  AS revenue_enabled,
    v.time_saved_hours * v.hourly_rate + v.revenue_enabled AS value,
    s.cost             AS cost,
    s.calls            AS calls
FROM (SELECT * FROM {database}.value_ledger FINAL) AS v
LEFT JOIN
(
    SELECT team, feature, toStartOfMonth(day) AS period, currency, sum(cost_total) AS cost, sum(calls) AS calls
    FROM {database}.usage_daily
    GROUP BY team, feature, period, currency
) AS s ON s.team = v.team AND s.feature = v.workflow AND s.period = v.period AND s.currency = v.currency
ORDER BY period, team, workflow;
