-- Authorization (RBAC roles and bindings, ReBAC tuples) and session rotation.
-- Every policy write takes the transaction-scoped advisory lock
-- hashtext('auth.policy') before drawing its revision from auth.rev, so
-- revisions commit in order and a gateway following the change feed
-- (rev > last seen) never skips a row. Deletes keep a tombstone (deleted =
-- true, a new revision) so followers see them.
CREATE SEQUENCE auth.rev;

CREATE TABLE auth.roles (
    tenant  text    NOT NULL,
    name    text    NOT NULL,
    perms   text    NOT NULL,  -- space-separated permissions
    deleted boolean NOT NULL DEFAULT false,
    rev     bigint  NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE INDEX roles_rev ON auth.roles (rev);

CREATE TABLE auth.role_bindings (
    tenant  text    NOT NULL,
    subject text    NOT NULL,  -- '*' binds every authenticated subject
    role    text    NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    rev     bigint  NOT NULL,
    PRIMARY KEY (tenant, subject, role)
);
CREATE INDEX role_bindings_rev ON auth.role_bindings (rev);

CREATE TABLE auth.tuples (
    tenant   text    NOT NULL,
    object   text    NOT NULL,  -- type:id
    relation text    NOT NULL,
    subject  text    NOT NULL,  -- type:id or type:id#relation
    deleted  boolean NOT NULL DEFAULT false,
    rev      bigint  NOT NULL,
    PRIMARY KEY (tenant, object, relation, subject)
);
CREATE INDEX tuples_rev ON auth.tuples (rev);

-- Sessions: a session is a refresh-token family. Absolute lifetime in
-- expires_at, idle lifetime from last_used_at; a revocation carries a
-- revision so every gateway adds the sid to its deny-list.
ALTER TABLE auth.sessions
    ALTER COLUMN refresh_hash DROP NOT NULL,
    ADD COLUMN expires_at  timestamptz NOT NULL DEFAULT now() + interval '30 days',
    ADD COLUMN revoked_rev bigint;
CREATE INDEX sessions_revoked_rev ON auth.sessions (revoked_rev) WHERE revoked_rev IS NOT NULL;

-- Refresh tokens, stored as SHA-256 hashes. A use moves one row from active
-- to rotated in a single conditional UPDATE; presenting a rotated token again
-- revokes its whole family (the session).
CREATE TABLE auth.refresh_tokens (
    hash       text        PRIMARY KEY,
    sid        text        NOT NULL,
    tenant     text        NOT NULL,
    state      text        NOT NULL CHECK (state IN ('active', 'rotated', 'revoked')),
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at    timestamptz
);
CREATE INDEX refresh_tokens_sid ON auth.refresh_tokens (sid);
