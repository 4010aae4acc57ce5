-- bus.outbox is a queue: rows arrive at its end and are deleted from its
-- start, so its last pages are often empty, and a VACUUM (the drainer's,
-- every 2,000 published rows, or autovacuum's) would give them back to the
-- file system. To do that, VACUUM holds an ACCESS EXCLUSIVE lock on the table
-- until the truncation is logged and the log flushed, and meanwhile every
-- outbox append, so every command's transaction, waits. The next appends
-- reuse the pages instead.
ALTER TABLE bus.outbox SET (vacuum_truncate = false);
