-- GET /events pages by id (002); the time-ordered indexes of 001 only cost writes.
DROP INDEX IF EXISTS analytics.events_tenant_time;
DROP INDEX IF EXISTS analytics.events_tenant_type_time;
