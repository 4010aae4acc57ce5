-- Idempotency records of the gateway: one per (tenant, principal, method,
-- route, key), written in the same transaction as the command it answers.
CREATE SCHEMA IF NOT EXISTS gateway;

CREATE TABLE gateway.idempotency (
    store_key    text        PRIMARY KEY,
    tenant       text        NOT NULL,
    fingerprint  text        NOT NULL,
    status       integer     NOT NULL,
    content_type text,
    body         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX idempotency_expires_at ON gateway.idempotency (expires_at);
