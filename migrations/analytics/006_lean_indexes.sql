-- Index upkeep was most of the analytics service's cost per event: four
-- B-trees per row, one of them (tenant, aggregate_id, ...) with an insertion
-- point per aggregate, so nearly every event dirtied a different leaf page.
--  * (tenant, id) is unique and replaces the primary key on id: the service's
--    ON CONFLICT uses it, and every read is by tenant.
--  * Ascending keys: UUIDv7 ids grow, so new entries land on the rightmost
--    leaf (PostgreSQL's fast path); the newest-first reads scan backwards.
--  * Only project feeds are read by aggregate
--    (GET /api/v1/analytics/projects/:projectId/events): a partial index.
ALTER TABLE analytics.events DROP CONSTRAINT events_pkey;
DROP INDEX analytics.events_tenant_id;
DROP INDEX analytics.events_tenant_type_id;
DROP INDEX analytics.events_tenant_aggregate_id;
CREATE UNIQUE INDEX events_tenant_id ON analytics.events (tenant, id);
CREATE INDEX events_tenant_type_id ON analytics.events (tenant, type, id);
CREATE INDEX events_project_id ON analytics.events (tenant, aggregate_id, id) WHERE aggregate_id LIKE 'project:%';
