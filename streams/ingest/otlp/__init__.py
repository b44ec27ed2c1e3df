"""The OTLP/HTTP receiver: OpenTelemetry GenAI spans to usage events (``spendstream otlp``).

``decode`` reads export requests (protobuf or JSON), ``mapping`` turns GenAI spans into
UsageEvent records, ``server`` is the HTTP process that publishes them.
"""
