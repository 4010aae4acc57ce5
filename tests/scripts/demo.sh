#!/usr/bin/env bash
# The runbook's curl demos (scripts/demo) against `ecom all`: first in memory
# (what `make run` starts), then on the PostgreSQL and Redis of scripts/test-env.
set -euo pipefail
build=${1:-build-test}
bin="$PWD/$build/bin/ecom"
rc=0

free_port() { scripts/free-port; }

run_stack() { # run_stack LABEL [ENV...]
  local label=$1; shift
  local port admin log pid
  port=$(free_port); admin=$(free_port)
  log=$(mktemp /tmp/ecom-demo.XXXXXX)
  export NOTIFY_SINK_FILE="$log.sink"
  env "$@" PORT="$port" ADMIN_PORT="$admin" "$bin" --env-file env.dev all >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
  echo "-- demo against ecom all ($label)"
  scripts/demo "http://127.0.0.1:$port" || { rc=1; tail -20 "$log"; }
  kill -TERM "$pid"
  if ! wait "$pid"; then echo "ecom all ($label) did not exit cleanly"; tail -20 "$log"; rc=1; fi
  rm -f "$log" "$log.sink"
}

run_stack memory DATABASE_URL= REDIS_URL=
if [ -n "${DATABASE_URL:-}" ] && [ -n "${REDIS_URL:-}" ]; then
  db="demo_$$"
  psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
  url="${DATABASE_URL%/*}/$db"
  DATABASE_URL="$url" "$bin" migrate >/dev/null
  redis-cli -u "$REDIS_URL/9" flushdb >/dev/null
  run_stack "postgres+redis" DATABASE_URL="$url" REDIS_URL="$REDIS_URL/9"
fi
exit $rc
