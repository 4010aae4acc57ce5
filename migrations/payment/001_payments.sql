-- Payments and refunds. The gateway inserts a payment as 'pending' with its
-- payment.requested command; the payment service settles it (pending ->
-- succeeded | failed, nothing leaves a final state) and applies refunds with
-- one conditional update, so refunded never exceeds captured.
CREATE SCHEMA IF NOT EXISTS payment;

CREATE TABLE payment.payments (
    id             uuid        PRIMARY KEY,
    tenant         text        NOT NULL,
    order_id       text        NOT NULL,
    amount         bigint      NOT NULL CHECK (amount > 0),
    currency       text        NOT NULL,
    method         text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    captured       bigint      NOT NULL DEFAULT 0,
    refunded       bigint      NOT NULL DEFAULT 0,
    failure_reason text,
    provider_ref   text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (refunded >= 0 AND refunded <= captured)
);
CREATE INDEX payments_tenant_created ON payment.payments (tenant, created_at);

CREATE TABLE payment.refunds (
    id         uuid        PRIMARY KEY,
    payment_id uuid        NOT NULL REFERENCES payment.payments (id),
    tenant     text        NOT NULL,
    amount     bigint      NOT NULL CHECK (amount > 0),
    status     text        NOT NULL CHECK (status IN ('succeeded', 'rejected')),
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- the foreign key's lookups, and a payment's refunds
CREATE INDEX refunds_payment ON payment.refunds (payment_id);
