-- wrk script: POST /api/v1/analytics/events with a unique Idempotency-Key per
-- request, "<prefix>-<thread>-<counter>" (prefix from BENCH_KEY_PREFIX, random
-- per run), so every request is a new command: one outbox row each.
local body = '{"type":"bench"}'
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local prefix
local n = 0
local headers = {}

function init(args)
  prefix = string.format("%s-%d-", os.getenv("BENCH_KEY_PREFIX") or tostring(os.time()), tid or 0)
  headers["Content-Type"] = "application/json"
end

function request()
  n = n + 1
  headers["Idempotency-Key"] = prefix .. n
  return wrk.format("POST", nil, headers, body)
end
