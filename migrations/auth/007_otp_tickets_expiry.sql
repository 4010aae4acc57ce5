-- ecom:no-transaction
-- The login's cleanup (gw_auth_cleanup_pg) finds OTP tickets past their
-- expiry by this index instead of reading the table every minute.
CREATE INDEX CONCURRENTLY IF NOT EXISTS otp_tickets_expires_at ON auth.otp_tickets (expires_at);
