-- GET /api/v1/analytics/events pages newest first by id (UUIDv7: time order).
CREATE INDEX events_tenant_id ON analytics.events (tenant, id DESC);
CREATE INDEX events_tenant_type_id ON analytics.events (tenant, type, id DESC);
