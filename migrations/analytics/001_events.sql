-- The analytics read model: every event the analytics service received.
CREATE SCHEMA IF NOT EXISTS analytics;

CREATE TABLE analytics.events (
    id           uuid        PRIMARY KEY,
    tenant       text        NOT NULL,
    type         text        NOT NULL,
    topic        text        NOT NULL,
    aggregate_id text        NOT NULL,
    seq          bigint      NOT NULL,
    payload      jsonb,
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_tenant_time ON analytics.events (tenant, occurred_at DESC, id DESC);
CREATE INDEX events_tenant_type_time ON analytics.events (tenant, type, occurred_at DESC);
