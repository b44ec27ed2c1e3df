"""The ledger: ClickHouse access, its migrations, the exactly-once sink, rollup repair
and read-only queries.
"""
