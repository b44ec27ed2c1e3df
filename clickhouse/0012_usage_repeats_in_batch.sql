-- usage_repeats records every copy dropped, also the copies of an event that arrive in the
-- same chunk as the one kept (an SDK envelope carrying an event twice, or a poll carrying
-- two messages with it): the enrich agent drops those before they become rows and hands
-- them to the sink to record. Two copies inside one usage message share its partition and
-- offset, so a copy is now identified by (event_id, source_partition, source_offset,
-- source_copy): source_copy counts the valid copies of the event before it in the same
-- message (0 for the first, and for every row recorded before this migration).
ALTER TABLE {database}.usage_repeats
    ADD COLUMN IF NOT EXISTS source_copy UInt32 DEFAULT 0 AFTER source_offset;
