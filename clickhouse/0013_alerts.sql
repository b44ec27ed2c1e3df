-- Alerts, as the worker publishes them on the alert topic (schemas/alert.avsc): one row
-- per record, firing and resolved alike, so the dashboard and anyone with SQL can see
-- what fired, when it resolved and what drove it, after the topic's retention too.
-- The worker's record_alerts agent writes them from the alert topic, and acknowledges a
-- batch only once it is here; a batch written again after a crash collapses, since
-- ReplacingMergeTree keeps one row per (alert_id, state, emitted_at).
-- details is the record's map of drivers (top feature, model, user, budget id, ...).
CREATE TABLE IF NOT EXISTS {database}.alerts
(
    alert_id     String,
    kind         LowCardinality(String),
    severity     LowCardinality(String),
    state        LowCardinality(String),
    scope        String,
    window_start DateTime64(3, 'UTC'),
    window_end   DateTime64(3, 'UTC'),
    observed     Decimal(38, 12),
    threshold    Decimal(38, 12),
    currency     LowCardinality(String),
    message      String,
    details      Map(String, String),
    emitted_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(emitted_at)
ORDER BY (alert_id, state, emitted_at);
