"""spendstream: a streaming ledger of AI spend.

The flow, one module per stage: codec → validation → pricing → attribution → enrich →
spend (windowed tables) → sink (ClickHouse). The app module wires them into Faust agents;
the producer SDK, the CLI and the local stack sit beside the flow.
"""
