-- Idempotency keys compare byte by byte (COLLATE "C"), not through the
-- locale's strcoll, in the primary key every command's claim and record
-- search and insert into. (Rewrites the table: run in a quiet hour.)
ALTER TABLE gateway.idempotency
    ALTER COLUMN store_key TYPE text COLLATE "C",
    ALTER COLUMN tenant TYPE text COLLATE "C";
