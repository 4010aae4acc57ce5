-- Notification deliveries: one row per (message, channel), written in the
-- same transaction as the message's inbox id. A channel whose row exists for
-- a message is not delivered again. The rendered text is not stored (it may
-- hold a one-time code).
CREATE SCHEMA IF NOT EXISTS notification;

CREATE TABLE notification.deliveries (
    message_id uuid        NOT NULL,
    channel    text        NOT NULL,
    tenant     text        NOT NULL,
    subject    text,
    type       text,
    status     text,
    detail     text,
    created_at timestamptz DEFAULT now(),
    PRIMARY KEY (message_id, channel)
);
-- GET /api/v1/notifications/deliveries?subject=: a subject's deliveries, newest first
CREATE INDEX deliveries_tenant_subject ON notification.deliveries (tenant, subject, created_at DESC);
