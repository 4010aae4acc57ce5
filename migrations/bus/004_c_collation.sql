-- Identifier columns in the backbone's keys compare byte by byte (COLLATE
-- "C") whatever the database's locale: every B-tree comparison of a text
-- key otherwise copies both strings and calls the locale's strcoll (C.UTF-8
-- is not "C" to PostgreSQL 15), on each outbox append's aggregate_seq upsert
-- and each inbox insertion. Byte order is the right order for identifiers.
-- (Rewrites the tables and their indexes: on large ones, run in a quiet hour.)
ALTER TABLE bus.aggregate_seq
    ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN aggregate_id TYPE text COLLATE "C";
ALTER TABLE bus.inbox ALTER COLUMN grp TYPE text COLLATE "C";
