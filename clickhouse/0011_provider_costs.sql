-- What the providers say they charged (and counted): their cost and usage reports, one row
-- per line as the provider reports it, beside the ledger's own priced rows, so that
-- `spendstream reconcile` can hold the ledger to the bill (streams/reports/reconcile.py).
--
-- `spendstream bills import` and `spendstream bills fetch` fill it
-- (streams/ledger/bills/). A line is identified by line_id, derived from what the
-- provider's report says the line is (its day, model, project, line item, ...), never
-- from where it sits in a file; content is a digest of its values. Importing the same
-- report again writes nothing (every line_id is there with the same content); a report
-- fetched again after the provider revised a day replaces the revised lines
-- (ReplacingMergeTree keeps the latest imported_at of a line_id), so read it with FINAL.
--
-- kind is 'cost' (an amount billed, in currency) or 'usage' (requests and tokens the
-- provider counted, amount zero). project, api_key and service_tier are '' where the
-- report does not say; reconciliation matches on a dimension only when every cost line of
-- the provider in the month carries it. Money is Decimal(38, 12), as in usage: amounts
-- are read from the reports' text as exact decimals, never through a float.
CREATE TABLE IF NOT EXISTS {database}.provider_costs
(
    line_id            String,
    content            String,
    source             LowCardinality(String),
    kind               LowCardinality(String),
    day                Date,
    provider           LowCardinality(String),
    model              LowCardinality(String),
    account            String,
    project            String,
    api_key            String,
    service_tier       LowCardinality(String),
    line_item          String,
    amount             Decimal(38, 12),
    currency           LowCardinality(String),
    requests           UInt64,
    input_tokens       UInt64,
    output_tokens      UInt64,
    cache_read_tokens  UInt64,
    cache_write_tokens UInt64,
    imported_from      String,
    imported_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(imported_at)
PARTITION BY toYYYYMM(day)
ORDER BY (provider, day, source, line_id);
