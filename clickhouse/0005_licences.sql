-- The subscription and licence inventory: seat tools (chat assistants, coding
-- assistants, ...) paid by the company (billing = 'enterprise') or by a person and
-- expensed (billing = 'personal'), one row per seat or per pooled subscription.
-- `spendstream licences import FILE.csv` fills it; re-importing a file replaces the
-- rows that file (its `source` name) brought, so the inventory follows the file.
--
-- A licence costs its full monthly_cost in every calendar month it is active on at
-- least one day (start_date to end_date inclusive; no end_date: still active). person
-- is the same identifier as usage.user_id, so per-person totals join the two.
CREATE TABLE IF NOT EXISTS {database}.licences
(
    source       String,
    line         UInt32,
    tool         LowCardinality(String),
    vendor       LowCardinality(String),
    category     LowCardinality(String),
    billing      LowCardinality(String),
    person       String,
    team         LowCardinality(String),
    monthly_cost Decimal(38, 12),
    currency     LowCardinality(String),
    start_date   Date,
    end_date     Nullable(Date),
    imported_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (source, line);

-- The licences active in the month starting month_start, in one currency.
CREATE VIEW IF NOT EXISTS {database}.licence_costs AS
SELECT team, person, tool, vendor, category, billing, monthly_cost
FROM {database}.licences
WHERE currency = {currency:String}
  AND start_date < addMonths({month_start:Date}, 1)
  AND (end_date IS NULL OR end_date >= {month_start:Date})
ORDER BY team, person, tool;

-- Per team for the month: API spend (the rollup) beside licence costs.
CREATE VIEW IF NOT EXISTS {database}.team_month_totals AS
SELECT
    team,
    sum(api_cost)            AS api_cost,
    sum(enterprise_licences) AS enterprise_licences,
    sum(personal_licences)   AS personal_licences,
    api_cost + enterprise_licences + personal_licences AS total
FROM
(
    SELECT team, sum(cost_total) AS api_cost, toDecimal128(0, 12) AS enterprise_licences, toDecimal128(0, 12) AS personal_licences
    FROM {database}.usage_daily
    WHERE day >= {month_start:Date} AND day < addMonths({month_start:Date}, 1) AND currency = {currency:String}
    GROUP BY team
    UNION ALL
    SELECT team, toDecimal128(0, 12), sumIf(monthly_cost, billing = 'enterprise'), sumIf(monthly_cost, billing = 'personal')
    FROM {database}.licence_costs(month_start = {month_start:Date}, currency = {currency:String})
    GROUP BY team
)
GROUP BY team
ORDER BY total DESC, team;

-- Per person for the month: API spend under their user_id beside their enterprise seats
-- and expensed personal plans, whatever team each was booked to.
CREATE VIEW IF NOT EXISTS {database}.person_month_totals AS
SELECT
    person,
    arraySort(groupUniqArray(team)) AS teams,
    sum(api_cost)            AS api_cost,
    sum(enterprise_licences) AS enterprise_licences,
    sum(personal_licences)   AS personal_licences,
    api_cost + enterprise_licences + personal_licences AS total
FROM
(
    SELECT user_id AS person, team, sum(cost_total) AS api_cost, toDecimal128(0, 12) AS enterprise_licences, toDecimal128(0, 12) AS personal_licences
    FROM {database}.usage_daily_by_user
    WHERE day >= {month_start:Date} AND day < addMonths({month_start:Date}, 1) AND currency = {currency:String}
    GROUP BY user_id, team
    UNION ALL
    SELECT person, team, toDecimal128(0, 12), sumIf(monthly_cost, billing = 'enterprise'), sumIf(monthly_cost, billing = 'personal')
    FROM {database}.licence_costs(month_start = {month_start:Date}, currency = {currency:String})
    WHERE person != ''
    GROUP BY person, team
)
GROUP BY person
ORDER BY total DESC, person;
