-- ecom:no-transaction
-- The login's cleanup also deletes sessions idle past their 7 days (and the
-- day kept after); this index lets it find them without reading every
-- session at each pass.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_last_used_at ON auth.sessions (last_used_at);
