-- wrk script: POST /api/v1/analytics/events, always the same body and the same
-- Idempotency-Key (BENCH_REPLAY_KEY): once the first request has committed,
-- every request is a replay of the stored answer (Idempotent-Replayed: true).
-- The request is static, so wrk builds it once.
wrk.method = "POST"
wrk.body = '{"type":"bench"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Idempotency-Key"] = os.getenv("BENCH_REPLAY_KEY") or "bench-replay"
