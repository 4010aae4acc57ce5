-- ecom:no-transaction
-- The login's cleanup finds sessions idle past their 7 days (and the day
-- kept after) by this index; without it they stayed until their absolute
-- expiry, 30 days after the login.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_last_used_at ON auth.sessions (last_used_at);
