-- Identifier columns of the deliveries' keys compare byte by byte (COLLATE
-- "C"), not through the locale's strcoll: the channel in the primary key,
-- tenant and subject in the page index every delivery inserts into.
-- (Rewrites the table: run in a quiet hour.)
ALTER TABLE notification.deliveries
    ALTER COLUMN channel TYPE text COLLATE "C",
    ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN subject TYPE text COLLATE "C";
