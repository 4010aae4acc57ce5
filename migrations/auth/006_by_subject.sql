-- A subject's code requests are counted, and its own sessions listed and
-- revoked, across every tenant: a session opened in one tenant acts in
-- another where the subject holds a role binding, and a budget per tenant
-- was multiplied by naming made-up tenants.
CREATE INDEX otp_tickets_by_subject ON auth.otp_tickets (subject, created_at);
CREATE INDEX sessions_by_subject ON auth.sessions (subject);
