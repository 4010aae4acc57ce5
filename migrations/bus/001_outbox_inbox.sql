-- The transactional outbox, its per-aggregate sequence, the published-row
-- window kept for re-drive, dead outbox rows, and the consumer inbox.
CREATE SCHEMA IF NOT EXISTS bus;

-- One row per message waiting to be published. pos orders rows; writers of the
-- same aggregate are serialised by bus.aggregate_seq, so pos follows commit
-- order within an aggregate. Published rows are deleted (moved to
-- bus.outbox_published when a retention window is configured).
CREATE TABLE bus.outbox (
    pos          bigserial PRIMARY KEY,
    id           uuid        NOT NULL,
    partition    smallint    NOT NULL,
    topic        text        NOT NULL,
    type         text        NOT NULL,
    tenant       text        NOT NULL,
    aggregate_id text        NOT NULL,
    seq          bigint      NOT NULL,
    ts           bigint      NOT NULL,
    v            integer     NOT NULL DEFAULT 1,
    traceparent  text        NOT NULL DEFAULT '',
    request_id   text        NOT NULL DEFAULT '',
    payload      text        NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_partition_pos ON bus.outbox (partition, pos);

CREATE TABLE bus.aggregate_seq (
    tenant       text   NOT NULL,
    aggregate_id text   NOT NULL,
    seq          bigint NOT NULL,
    PRIMARY KEY (tenant, aggregate_id)
);

CREATE TABLE bus.outbox_published (
    pos          bigint      PRIMARY KEY,
    id           uuid        NOT NULL,
    partition    smallint    NOT NULL,
    topic        text        NOT NULL,
    type         text        NOT NULL,
    tenant       text        NOT NULL,
    aggregate_id text        NOT NULL,
    seq          bigint      NOT NULL,
    ts           bigint      NOT NULL,
    v            integer     NOT NULL,
    traceparent  text        NOT NULL,
    request_id   text        NOT NULL,
    payload      text        NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_published_at ON bus.outbox_published (published_at);
CREATE INDEX outbox_published_id ON bus.outbox_published (id);

-- Rows the drainer could not publish after repeated attempts (never lost:
-- ecomctl shows them and can move them back).
CREATE TABLE bus.outbox_dead (
    LIKE bus.outbox_published INCLUDING DEFAULTS,
    error     text        NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pos)
);

-- Message ids each consumer group has applied (dedup window: INBOX_RETAIN_S).
CREATE TABLE bus.inbox (
    grp         text        NOT NULL,
    id          uuid        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (grp, id)
);
CREATE INDEX inbox_received_at ON bus.inbox (received_at);
