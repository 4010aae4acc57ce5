-- ecom:no-transaction
-- The login's cleanup finds sessions revoked long ago by this index (only
-- revoked sessions have an entry).
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_revoked_at ON auth.sessions (revoked_at) WHERE revoked_at IS NOT NULL;
