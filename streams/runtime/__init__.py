"""Everything that reaches into Faust or aiokafka: fixes to their delivery, batching,
changelog markers, compacted-topic views, topic creation and process tuning.

No other module but ``streams.app`` may touch their internals (a test checks).
"""
