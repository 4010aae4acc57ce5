#!/usr/bin/env bash
# Usage: bench/authx.sh [BUILD_DIR]   (`make bench` runs it; needs no database)
#
# Authorization on the request path against no authorization, in one run
# (issue 4, "Benchmarks"): one `ecom gateway` in memory mode, development
# (GATEWAY_THREADS=2, LOG_LEVEL=warn), with a bootstrap of 100,000 tuples in
# tenant "bench" (bench_authx --bootstrap). wrk, 2 threads, 64 connections,
# BENCH_SECONDS (10) per side in BENCH_ROUNDS (3) alternating rounds (medians
# compared), on the same process and route,
# GET /api/v1/analytics/projects/p88/events with x-tenant-id: bench:
#   1. with a Bearer token of user u4242: JWT verification, RBAC (events:read
#      through a "*" binding) and the route's ReBAC check viewer(project:p88),
#      which resolves through parent -> folder viewer -> group member (3 levels)
#   2. without a token: development's token-less principal, which skips
#      authentication and every authorization check ("auth off")
# Both answer 200 with the same body (the project has no events). Checked
# first: the token gets 200 there and 403 on a project it cannot view.
# Figures are printed, never asserted.
set -euo pipefail

build=${1:-build}
secs=${BENCH_SECONDS:-10}
ecom="$build/bin/ecom"
tool="$build/bench/bench_authx"
for t in "$ecom" "$tool"; do
  [ -x "$t" ] || { echo "authx bench: $t missing (make build; cmake --build $build --target bench_authx)" >&2; exit 1; }
done
command -v wrk >/dev/null || { echo "authx bench: wrk not found (scripts/bootstrap)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/ecom-authxbench.XXXXXX)
gw_pid=""
cleanup() {
  if [ -n "$gw_pid" ]; then
    kill -TERM "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

"$tool" --bootstrap "$tmp/boot.json" 100000
token=$("$tool" --token u4242 bench)
port=$("$(dirname "${BASH_SOURCE[0]}")/../scripts/free-port")
env -i PATH="$PATH" APP_ENV=development JWT_SECRET=devsecret PORT="$port" ADMIN_PORT=0 GATEWAY_THREADS=2 \
  LOG_LEVEL=warn AUTHX_BOOTSTRAP_FILE="$tmp/boot.json" "$ecom" gateway >"$tmp/gw.log" 2>&1 &
gw_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  curl -fs "$base/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
url="$base/api/v1/analytics/projects/p88/events"
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
ok=$(code -H "x-tenant-id: bench" -H "Authorization: Bearer $token" "$url")
denied=$(code -H "x-tenant-id: bench" -H "Authorization: Bearer $token" "$base/api/v1/analytics/projects/p89/events")
off=$(code -H "x-tenant-id: bench" "$url")
if [ "$ok" != 200 ] || [ "$denied" != 403 ] || [ "$off" != 200 ]; then
  echo "authx bench: unexpected answers (viewer $ok, not a viewer $denied, no token $off)" >&2
  cat "$tmp/gw.log" >&2
  exit 1
fi

rps() { awk '/Requests\/sec/ { print $2 }' "$1"; }
p99() { awk '$1 == "99%" { print $2 }' "$1"; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# alternating rounds, so a slow moment of the machine hits both sides alike
rounds=${BENCH_ROUNDS:-3}
echo "authorization over HTTP (GET /api/v1/analytics/projects/:id/events, 100,000 tuples;"
echo "  $rounds alternating rounds of ${secs} s per side)"
for i in $(seq 1 "$rounds"); do
  wrk -t2 -c64 -d"${secs}s" --latency -H "x-tenant-id: bench" -H "Authorization: Bearer $token" "$url" >"$tmp/auth$i.txt"
  wrk -t2 -c64 -d"${secs}s" --latency -H "x-tenant-id: bench" "$url" >"$tmp/off$i.txt"
  printf '  round %d: %8.0f vs %8.0f req/s (p99 %s vs %s)\n' "$i" "$(rps "$tmp/auth$i.txt")" "$(rps "$tmp/off$i.txt")" \
    "$(p99 "$tmp/auth$i.txt")" "$(p99 "$tmp/off$i.txt")"
done
a=$(for i in $(seq 1 "$rounds"); do rps "$tmp/auth$i.txt"; done | median)
o=$(for i in $(seq 1 "$rounds"); do rps "$tmp/off$i.txt"; done | median)
printf '  %-58s %10.0f req/s (median)\n' "JWT + RBAC + ReBAC (3-level rewrite)" "$a"
printf '  %-58s %10.0f req/s (median)\n' "no authentication, no authorization" "$o"
awk -v a="$a" -v o="$o" 'BEGIN { printf "  ratio %.1f%% of the unauthenticated rate (target >= 80%%)\n", 100 * a / o }'
