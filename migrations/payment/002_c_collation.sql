-- The tenant compares byte by byte (COLLATE "C") in the (tenant, created_at)
-- index every new payment inserts into. (Rewrites the table: run in a quiet
-- hour.)
ALTER TABLE payment.payments ALTER COLUMN tenant TYPE text COLLATE "C";
