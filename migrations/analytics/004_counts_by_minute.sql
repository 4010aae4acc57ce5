-- Per-tenant counters by type and minute for GET /api/v1/analytics/stats: the
-- number of analytics.events rows of (tenant, type) whose occurred_at falls in
-- the UTC minute starting at `minute`. The analytics service bumps them in the
-- statement that inserts the events (only for the rows it inserted), so they
-- commit together. A window of up to a day reads at most 1440 rows per type
-- instead of every event in it.
CREATE TABLE analytics.counts_by_minute (
    tenant text        NOT NULL,
    type   text        NOT NULL,
    minute timestamptz NOT NULL,
    count  bigint      NOT NULL,
    -- the stats query is one range of (tenant, minute)
    PRIMARY KEY (tenant, minute, type)
);

-- The events recorded before this migration. (Writers must not run an older
-- binary after it: their events would not be counted.)
INSERT INTO analytics.counts_by_minute (tenant, type, minute, count)
SELECT tenant, type, date_trunc('minute', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', count(*)
FROM analytics.events
GROUP BY 1, 2, 3;
