-- Wrong codes are counted per subject, whatever the tenant the request named:
-- a token of one tenant may act in another where its subject has a role
-- binding, so a budget kept per tenant and subject multiplied with every
-- tenant id a client made up. The counts of the hour in progress are
-- dropped with the old table.
DROP TABLE auth.otp_failures;
CREATE TABLE auth.otp_failures (
    subject      text COLLATE "C" PRIMARY KEY,
    window_start timestamptz NOT NULL,
    failures     integer     NOT NULL
);
