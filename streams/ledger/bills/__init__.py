"""Provider bills in the ledger: each provider's cost and usage reports, read exactly and
stored idempotently in ``provider_costs`` (``clickhouse/0011_provider_costs.sql``).

``formats`` names the report formats and reads a file; ``lines`` is what every format is
read into; one module per provider's shape (``openai``, ``anthropic``, ``google_cloud``,
``aws_cur``, ``openrouter``, ``plain_csv``); ``store`` writes lines; ``fetch`` pages
through OpenAI's and Anthropic's admin APIs. Reconciliation against the ledger's priced
rows is a report: :mod:`streams.reports.reconcile`.
"""
