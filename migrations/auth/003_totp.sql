-- TOTP enrolments (RFC 6238): one per tenant and subject. The shared secret
-- is stored sealed (AES-256-GCM under a key derived from OTP_PEPPER, bound to
-- tenant and subject). An enrolment is pending until a code from the
-- authenticator activates it; last_step refuses replays (RFC 6238 §5.2) and
-- drift is the learned clock offset in steps (§6).
CREATE TABLE auth.totp (
    tenant     text        NOT NULL,
    subject    text        NOT NULL,
    secret     text        NOT NULL,
    state      text        NOT NULL CHECK (state IN ('pending', 'active')),
    last_step  bigint      NOT NULL DEFAULT -1,
    drift      integer     NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, subject)
);
