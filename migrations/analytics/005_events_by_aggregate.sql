-- GET /api/v1/analytics/projects/:projectId/events pages one aggregate's
-- events ("project:<id>") newest first.
CREATE INDEX events_tenant_aggregate_id ON analytics.events (tenant, aggregate_id, id DESC);
