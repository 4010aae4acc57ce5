-- OTP login: tickets (codes stored only as HMACs), the per-subject failure
-- budget across tickets (RFC 4226 §7.3), and sessions with their refresh token.
CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE auth.otp_tickets (
    tenant      text        NOT NULL,
    ticket_id   text        NOT NULL,
    subject     text        NOT NULL,
    channel     text        NOT NULL,
    code_mac    text        NOT NULL,
    attempts    integer     NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    consumed_at timestamptz,
    PRIMARY KEY (tenant, ticket_id)
);
CREATE INDEX otp_tickets_subject ON auth.otp_tickets (tenant, subject, created_at);

CREATE TABLE auth.otp_failures (
    tenant       text        NOT NULL,
    subject      text        NOT NULL,
    window_start timestamptz NOT NULL,
    failures     integer     NOT NULL,
    PRIMARY KEY (tenant, subject)
);

CREATE TABLE auth.sessions (
    sid          text        PRIMARY KEY,
    tenant       text        NOT NULL,
    subject      text        NOT NULL,
    refresh_hash text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX sessions_subject ON auth.sessions (tenant, subject);
