-- A service applying a batch on several connections (SERVICE_LANES) would
-- have every lane wait on the same hot counter row (one tenant, type and
-- minute) until the lane before it commits. Each lane bumps its own shard of
-- the counter; GET /api/v1/analytics/stats already sums the rows of a type.
ALTER TABLE analytics.counts_by_minute ADD COLUMN shard smallint NOT NULL DEFAULT 0;
ALTER TABLE analytics.counts_by_minute DROP CONSTRAINT counts_by_minute_pkey;
ALTER TABLE analytics.counts_by_minute ADD PRIMARY KEY (tenant, minute, type, shard);
