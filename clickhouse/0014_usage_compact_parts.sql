-- The sink's inserts into usage are written as compact parts (every column in one file)
-- rather than wide ones (two files or more per column, some sixty columns): an insert of
-- 45,000 priced rows is about 11 MB before compression, over the default 10 MB at which a
-- part becomes wide, and creating those files was a fifth of the insert's time on the
-- embedded engine (a 45,000-row insert with the rollups' views: median 0.146 s against
-- 0.184 s, 14 of each interleaved; the sink's whole work on 300,000 SDK events 2.0 s
-- against 2.1 to 2.6 s). Merges of parts past 64 MB still write wide parts, which read
-- one column without the others.
ALTER TABLE {database}.usage MODIFY SETTING min_bytes_for_wide_part = 67108864;
