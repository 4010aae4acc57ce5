-- The read model keeps each event's payload as the JSON text that crossed the
-- bus (type json: checked, stored verbatim) instead of jsonb. Nothing queries
-- inside payloads, the reads return them as text, and building the jsonb
-- form cost PostgreSQL about a fifth of its time per event. Reads now return
-- the payload exactly as sent, as the in-memory store always did.
-- (Rewrites the table: on a large one, run it in a quiet hour.)
ALTER TABLE analytics.events ALTER COLUMN payload TYPE json USING payload::json;
