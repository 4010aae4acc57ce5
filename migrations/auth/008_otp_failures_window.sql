-- ecom:no-transaction
-- The login's cleanup finds failure budgets past their hour by this index.
CREATE INDEX CONCURRENTLY IF NOT EXISTS otp_failures_window_start ON auth.otp_failures (window_start);
