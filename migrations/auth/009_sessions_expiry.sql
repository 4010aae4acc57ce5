-- ecom:no-transaction
-- The login's cleanup finds sessions past their expiry by this index.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_expires_at ON auth.sessions (expires_at);
