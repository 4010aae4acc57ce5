-- The read model's identifier columns compare byte by byte (COLLATE "C")
-- whatever the database's locale. Their B-trees compared every key through
-- the locale's strcoll (a copy of both strings, then the collation), on each
-- of the two index insertions per event and on every read; these are
-- identifiers, not prose, so byte order is also the order a reader expects.
-- (Rewrites the table and its indexes: on a large one, run it in a quiet hour.)
ALTER TABLE analytics.events
    ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN type TYPE text COLLATE "C",
    ALTER COLUMN aggregate_id TYPE text COLLATE "C";
