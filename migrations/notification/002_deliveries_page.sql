-- GET /api/v1/notifications/deliveries pages a subject's deliveries newest
-- first by (created_at, message_id, channel), all descending, continuing after
-- the last row of the previous page with one row comparison: this index makes
-- each page one index range read in order. It covers what 001's
-- (tenant, subject, created_at DESC) index served, which only cost writes now.
CREATE INDEX deliveries_tenant_subject_page
    ON notification.deliveries (tenant, subject, created_at DESC, message_id DESC, channel DESC);
DROP INDEX IF EXISTS notification.deliveries_tenant_subject;
