#!/usr/bin/env bash
# Usage: bench/gateway.sh [BUILD_DIR]   (inside scripts/test-env; `make bench` runs it)
#
# The gateway beside its physical limits, in one run (issue 3, "Benchmarks"),
# against `ecom gateway` (GATEWAY_THREADS=2, APP_ENV=development, LOG_LEVEL=warn)
# on a fresh, migrated database next to DATABASE_URL.
# wrk on 127.0.0.1, 2 threads, 64 connections, BENCH_SECONDS (10) each, --latency:
#   1. GET /health
#   2. GET /api/v1/analytics/events, cache hot (warmed first)
#   3. nginx, worker_processes 2 (= GATEWAY_THREADS), returning the same small
#      JSON body as the cached GET: the HTTP limit of this machine
#   2-3 again with one server thread: a gateway with GATEWAY_THREADS=1, nginx
#      with 1 worker (wrk unchanged)
#   4. POST /api/v1/analytics/events, one fixed key: replays of the first answer
#   5. POST /api/v1/analytics/events, a unique Idempotency-Key per request
# pgbench -M prepared, BENCH_SECONDS each, one outbox row per transaction:
#   6. 16 clients: a sequenced append (bus.aggregate_seq upsert CTE + the
#      bus.outbox insert, as for a payment's commands; an analytics event has
#      an aggregate of its own and no sequence row: outbox.h, `sole`) and a
#      plain single-row INSERT INTO bus.outbox: the durable-write limit; and,
#      for the analysis, the gateway's whole POST transaction (idempotency
#      claim + idempotency record + outbox row, in the same two pipelines) on 8
#      clients, the gateway's pool (4 per thread)
#   7. the gateway's peak RSS (VmHWM) after the load
# and the ratios the issue targets; each ratio's two sides run back to back.
# Under each gateway run: the CPU time per request of the gateway and of its
# PostgreSQL backends (from /proc; PostgreSQL must run on this machine), and
# the gateway's and nginx's user and kernel time and preemptions per request.
# The POSTs are checked: non-2xx answers, outbox rows and idempotency records
# written against the requests wrk counted.
# Before the runs: CHECKPOINT, sync, and a wait (up to 30 s) for a second in
# which the machine is 85% idle (what the benchmarks before left behind, such
# as autovacuum, finishes first); the wait is printed.
# BENCH_ONLY=get,post,pgbench runs only those groups (default: all): get = 1-3,
# post = 4-5, pgbench = 6. Figures are printed, never asserted; the exit status
# is non-zero only when a run could not be made. Every process started here is
# stopped on exit.
set -euo pipefail

build=${1:-build}
secs=${BENCH_SECONDS:-10}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ecom="$build/bin/ecom"
: "${DATABASE_URL:?run inside scripts/test-env}"
[ -x "$ecom" ] || { echo "gateway bench: $ecom missing (make build)" >&2; exit 1; }
for tool in wrk pgbench psql curl; do
  command -v "$tool" >/dev/null || { echo "gateway bench: $tool not found (scripts/bootstrap)" >&2; exit 1; }
done

threads=2
conns=64
pg_clients=16
gw_pool=$((threads * 4)) # pga_pool_new(..., 4, ...) per gateway thread
wrk_cmd=(wrk -t"$threads" -c"$conns" -d"${secs}s" --latency)
# the body of the cached GET on an empty table; nginx answers the same bytes
fixed_body='{"data":[],"count":0,"nextCursor":null}'

rc=0
tmp=$(mktemp -d /tmp/ecom-gwbench.XXXXXX)
db="ecom_gwbench_$$"
base=${DATABASE_URL%/*}
query=""
case "$DATABASE_URL" in *\?*) query="?${DATABASE_URL#*\?}" ;; esac
bench_url="$base/$db$query"
gw_pid=""
one_pid=""
nginx_pid=""

stop() { # PID: TERM, then KILL after 5 s
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
# shellcheck disable=SC2317 # called by the traps
cleanup() {
  local s=$?
  trap - EXIT INT TERM
  stop "$gw_pid"
  stop "$one_pid"
  stop "$nginx_pid"
  psql -q -X "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$tmp"
  exit "$s"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$here/../scripts/free-port"; }
wait_http() { # URL PID: until URL answers 2xx, or the process is gone
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
sql() { psql -AtqX -v ON_ERROR_STOP=1 "$bench_url" -c "$1"; }
random_hex() { od -An -N8 -tx1 /dev/urandom | tr -d ' \n'; }

# wrk's figures: "rps p50_ms p99_ms requests non2xx socket_errors"
wrk_parse() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return v / 1000
      if (v ~ /ms$/) return v + 0
      if (v ~ /s$/) return v * 1000
      if (v ~ /m$/) return v * 60000
      return v + 0
    }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    $2 == "requests" && $3 == "in" { n = $1 }
    /Non-2xx or 3xx responses:/ { bad = $NF }
    /Socket errors:/ { gsub(",", ""); err = $4 + $6 + $8 + $10 }
    $1 == "Requests/sec:" { rps = $2 }
    END { printf "%.0f %.2f %.2f %d %d %d\n", rps, p50, p99, n, bad, err }
  ' "$1"
}
row() { # LABEL RATE UNIT P50 P99 [NOTE]
  printf '  %-52s %7.0f %-5s  p50 %6.2f ms  p99 %6.2f ms%s\n' "$1" "$2" "$3" "$4" "$5" "${6:+   $6}"
}
# CPU time (user + system, clock ticks) of a process, and of the gateway's
# PostgreSQL backends (application_name ecom-gateway, this database)
proc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
gw_pg_ticks() {
  local t=0 p
  for p in $(sql "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'ecom-gateway'"); do
    t=$((t + $(proc_ticks "$p")))
  done
  echo "$t"
}
# nginx: the master and its workers
nginx_ticks() {
  local t=0 p
  for p in $nginx_pid $(pgrep -P "$nginx_pid" 2>/dev/null); do
    t=$((t + $(proc_ticks "$p")))
  done
  echo "$t"
}
hz=$(getconf CLK_TCK)
# PIDS: user ticks, system ticks and involuntary context switches (a thread
# preempted while it could run) summed over the processes and their threads
srv_snap() {
  local p u=0 k=0 c=0 a b v
  for p in "$@"; do
    read -r a b < <(awk '{ print $14, $15 }' "/proc/$p/stat" 2>/dev/null || echo "0 0")
    v=$(cat /proc/"$p"/task/*/status 2>/dev/null | awk '$1 == "nonvoluntary_ctxt_switches:" { s += $2 } END { print s + 0 }')
    u=$((u + a)) k=$((k + b)) c=$((c + v))
  done
  echo "$u $k $c"
}
# BEFORE AFTER N (srv_snap outputs, requests): user and kernel time per
# request, and preemptions per request
srv_split() {
  awk -v b="$1" -v a="$2" -v n="$3" -v hz="$hz" 'BEGIN {
    split(b, x, " "); split(a, y, " ")
    printf "(user %.1f us, kernel %.1f us; preempted %.2f times per request)",
      (y[1] - x[1]) * 1e6 / hz / n, (y[2] - x[2]) * 1e6 / hz / n, (y[3] - x[3]) / n }'
}
# RUN LABEL URL [wrk args]: runs wrk, prints its row and the CPU time spent per
# request by the gateway and by its PostgreSQL backends (figures that a busy
# machine moves much less than requests/s), leaves the figures in w_*
run_wrk() {
  local name=$1 label=$2 url=$3
  shift 3
  w_rps=0 w_p50=0 w_p99=0 w_n=0 w_bad=0 w_err=0
  local g0 p0 g1 p1 x0 x1 gs0 gs1 ns0="" ns1=""
  g0=$(proc_ticks "$gw_pid") p0=$(gw_pg_ticks) x0=0 gs0=$(srv_snap "$gw_pid")
  [ -n "$nginx_pid" ] && x0=$(nginx_ticks) && ns0=$(srv_snap $nginx_pid $(pgrep -P "$nginx_pid"))
  if ! "${wrk_cmd[@]}" "$@" "$url" >"$tmp/$name.wrk" 2>&1; then
    echo "  $label: wrk failed:" && sed 's/^/    /' "$tmp/$name.wrk"
    rc=1
    return 1
  fi
  g1=$(proc_ticks "$gw_pid") p1=$(gw_pg_ticks) x1=0 gs1=$(srv_snap "$gw_pid")
  [ -n "$nginx_pid" ] && x1=$(nginx_ticks) && ns1=$(srv_snap $nginx_pid $(pgrep -P "$nginx_pid"))
  read -r w_rps w_p50 w_p99 w_n w_bad w_err < <(wrk_parse "$tmp/$name.wrk")
  row "$label" "$w_rps" "req/s" "$w_p50" "$w_p99" "non-2xx $w_bad, socket errors $w_err"
  if [ "${w_n:-0}" -gt 0 ] && [[ $url == "$gw"* ]]; then
    awk -v g=$((g1 - g0)) -v p=$((p1 - p0)) -v n="$w_n" -v hz="$hz" 'BEGIN {
      printf "      cpu per request: gateway %.1f us, its PostgreSQL backends %.1f us\n", g * 1e6 / hz / n, p * 1e6 / hz / n }'
    echo "        gateway $(srv_split "$gs0" "$gs1" "$w_n")"
  elif [ "${w_n:-0}" -gt 0 ] && [ -n "$nginx_url" ] && [[ $url == "$nginx_url"* ]]; then
    awk -v x=$((x1 - x0)) -v n="$w_n" -v hz="$hz" 'BEGIN {
      printf "      cpu per request: nginx %.1f us\n", x * 1e6 / hz / n }'
    echo "        nginx $(srv_split "$ns0" "$ns1" "$w_n")"
  fi
}
# RUN LABEL CLIENTS SCRIPT: pgbench, prints its row, leaves the figures in p_*
run_pgbench() {
  local name=$1 label=$2 clients=$3 script=$4
  p_tps=0 p_p50=0 p_p99=0 p_failed=0
  printf '%s\n' "$script" >"$tmp/$name.sql"
  if ! (cd "$tmp" && pgbench -n -M prepared -c "$clients" -j "$threads" -T "$secs" -f "$name.sql" \
    -l --log-prefix="$name.log" "$bench_url") >"$tmp/$name.out" 2>&1; then
    echo "  $label: pgbench failed:" && sed 's/^/    /' "$tmp/$name.out" | tail -n 15
    rc=1
    return 1
  fi
  p_tps=$(awk '/^tps = / { printf "%.0f", $3; exit }' "$tmp/$name.out")
  p_failed=$(awk '/^number of failed transactions:/ { print $5; exit }' "$tmp/$name.out")
  # per-transaction log: client, transaction, latency (us), ...
  read -r p_p50 p_p99 < <(cat "$tmp/$name.log".* | awk '{ print $3 }' | sort -n | awk '
    { v[NR] = $1 }
    function q(p,  i) { i = int(p * NR + 0.999999); if (i < 1) i = 1; return v[i] / 1000 }
    END { if (NR) printf "%.2f %.2f\n", q(0.50), q(0.99); else print "0 0" }')
  row "$label" "$p_tps" "tx/s" "$p_p50" "$p_p99" "failed ${p_failed:-0}"
}
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else printf "n/a" }'; }
# shellcheck disable=SC2317 # called through verdict
cmp_le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a ~ /^[0-9.]+$/ && a + 0 > 0 && a + 0 <= b + 0) }'; }
# shellcheck disable=SC2317 # called through verdict
cmp_ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a ~ /^[0-9.]+$/ && a + 0 >= b + 0) }'; }
verdict() { if "$@"; then echo "met"; else echo "NOT met"; fi; }
only=",${BENCH_ONLY:-get,post,pgbench},"
want() { [[ $only == *",$1,"* ]]; }

# ---- setup ----

psql -q -X -v ON_ERROR_STOP=1 "$DATABASE_URL" -c "CREATE DATABASE $db" >/dev/null
DATABASE_URL="$bench_url" "$ecom" migrate >/dev/null

# THREADS PORT LOG: starts a gateway on the bench database; its pid in started_pid
start_gateway() {
  env APP_ENV=development GATEWAY_THREADS="$1" LOG_LEVEL=warn PORT="$2" \
    JWT_SECRET="gwbench-$(random_hex)-$(random_hex)" DATABASE_URL="$bench_url" \
    "$ecom" gateway >"$3" 2>&1 &
  started_pid=$!
  if ! wait_http "http://127.0.0.1:$2/health" "$started_pid"; then
    echo "gateway bench: the gateway did not start:" >&2
    sed 's/^/  /' "$3" >&2
    exit 1
  fi
}
gw_port=$(free_port)
gw="http://127.0.0.1:$gw_port"
start_gateway "$threads" "$gw_port" "$tmp/gateway.log"
gw_pid=$started_pid

# WORKERS: nginx answering the cached GET's body; sets nginx_pid and nginx_url
# (empty, and rc=1, when it cannot run)
start_nginx() {
  nginx_url=""
  nginx_pid=""
  if ! command -v nginx >/dev/null 2>&1; then
    echo "gateway bench: nginx not installed (make bench installs it): no HTTP limit" >&2
    rc=1
    return 0
  fi
  local nginx_port
  nginx_port=$(free_port)
  while [ "$nginx_port" = "$gw_port" ]; do nginx_port=$(free_port); done
  rm -rf "$tmp/nginx"
  mkdir -p "$tmp/nginx"
  {
    [ "$(id -u)" -ne 0 ] || echo "user root;"
    cat <<CONF
worker_processes $1;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path $tmp/nginx/body;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  server {
    listen 127.0.0.1:$nginx_port reuseport;
    location / {
      default_type application/json;
      return 200 '$fixed_body';
    }
  }
}
CONF
  } >"$tmp/nginx/nginx.conf"
  nginx -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf" >"$tmp/nginx/stdout.log" 2>&1 &
  nginx_pid=$!
  if wait_http "http://127.0.0.1:$nginx_port/" "$nginx_pid"; then
    nginx_url="http://127.0.0.1:$nginx_port/"
  else
    echo "gateway bench: nginx did not start:" >&2
    cat "$tmp/nginx/stdout.log" "$tmp/nginx/error.log" >&2 2>/dev/null || true
    rc=1
  fi
}
start_nginx "$threads"

metric() { curl -fsS "$gw/metrics" | awk -v k="$1" '$1 == k { print $2; f = 1 } END { if (!f) print 0 }'; }
pg_setting() { sql "SHOW $1"; }

# The benchmarks before this one (make bench) leave work behind: dirty pages,
# a checkpoint, autovacuum of their tables. Their writes go to disk first, then
# the runs wait (up to 30 s) for a second in which the machine is 85% idle.
# cpu_idle_pct: the share of the cores idle over one second, in percent.
cpu_idle_pct() {
  local a b
  a=$(awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    t = y[1] - x[1]; printf "%.0f", (t > 0 ? 100 * (y[2] - x[2]) / t : 100) }'
}
psql -q -X "$DATABASE_URL" -c "CHECKPOINT" >/dev/null 2>&1 || true
sync
quiet_s=0
idle=$(cpu_idle_pct)
while [ "$idle" -lt 85 ] && [ "$quiet_s" -lt 30 ]; do
  quiet_s=$((quiet_s + 1))
  idle=$(cpu_idle_pct)
done

echo "== gateway (bench/gateway.sh)"
echo "  wrk -t$threads -c$conns -d${secs}s --latency on 127.0.0.1; ecom gateway: GATEWAY_THREADS=$threads," \
  "APP_ENV=development, $gw_pool PostgreSQL connections; pgbench -M prepared -j$threads -T$secs"
echo "  PostgreSQL $(sql 'SHOW server_version'): fsync=$(pg_setting fsync)," \
  "synchronous_commit=$(pg_setting synchronous_commit), wal_sync_method=$(pg_setting wal_sync_method)"
echo "  NOTE: wrk (or pgbench), the server under test and PostgreSQL all share this machine's $(nproc) cores;"
echo "        every figure below is with the load generator on the same cores" \
  "(load average before the run: $(cut -d' ' -f1-3 /proc/loadavg));"
echo "        the runs started once the machine was ${idle}% idle over a second (after ${quiet_s} s of waiting," \
  "CHECKPOINT and sync)."
echo

# ---- HTTP: the cached GET and nginx back to back, so the ratio sees the same machine ----

events="$gw/api/v1/analytics/events"
health_rps=0 get_rps=0 get_p99=0 nginx_rps=0 get1_rps=0 get1_p99=0 nginx1_rps=0
if want get; then
run_wrk health "GET /health" "$gw/health" || true
health_rps=$w_rps

events="$gw/api/v1/analytics/events"
curl -fsS -o /dev/null "$events"
warm=$(curl -fsS -D - -o /dev/null "$events" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-cache-status" { print $2 }')
hit0=$(metric 'ecom_cache_requests_total{result="hit"}')
stale0=$(metric 'ecom_cache_requests_total{result="stale"}')
miss0=$(metric 'ecom_cache_requests_total{result="miss"}')
accepted() { for t in $(seq 0 $((threads - 1))); do metric "ecom_http_connections_accepted_total{thread=\"$t\"}"; done; }
acc0=($(accepted))
moved0=$(metric ecom_http_connections_handed_over_total)
get_rps=0 get_p99=0
if run_wrk get_hot "GET /api/v1/analytics/events (cache hot)" "$events"; then
  get_rps=$w_rps get_p99=$w_p99
fi
acc1=($(accepted))
split=""
for t in "${!acc1[@]}"; do split="$split${split:+ / }$((acc1[t] - acc0[t]))"; done
echo "      connections served by gateway thread meanwhile (wrk's $conns and a few metric reads): $split;" \
  "$(($(metric ecom_http_connections_handed_over_total) - moved0)) handed over by the thread that accepted them"
echo "      cache before the run: $warm; during it: hit $(($(metric 'ecom_cache_requests_total{result="hit"}') - hit0))," \
  "stale $(($(metric 'ecom_cache_requests_total{result="stale"}') - stale0))," \
  "miss $(($(metric 'ecom_cache_requests_total{result="miss"}') - miss0)) of $w_n responses"

nginx_rps=0
if [ -n "$nginx_url" ]; then
  run_wrk nginx "nginx, $threads workers, same ${#fixed_body}-byte body" "$nginx_url" && nginx_rps=$w_rps
  stop "$nginx_pid"
  nginx_pid=""
else
  echo "  nginx: skipped"
fi

# The same pair with one server thread (the gateway's GATEWAY_THREADS=1, nginx's
# 1 worker; wrk unchanged): on 2 cores wrk's two threads need one core, and a
# second server thread mostly competes with them for the other.
if [ "$threads" -gt 1 ]; then
  echo "  one server thread (GATEWAY_THREADS=1, nginx 1 worker; wrk unchanged):"
  main_pid=$gw_pid main_gw=$gw
  one_port=$(free_port)
  while [ "$one_port" = "$gw_port" ]; do one_port=$(free_port); done
  start_gateway 1 "$one_port" "$tmp/gateway1.log"
  gw_pid=$started_pid gw="http://127.0.0.1:$one_port"
  one_pid=$gw_pid
  curl -fsS -o /dev/null "$gw/api/v1/analytics/events"
  if run_wrk get_hot1 "GET /api/v1/analytics/events (cache hot)" "$gw/api/v1/analytics/events"; then
    get1_rps=$w_rps get1_p99=$w_p99
  fi
  stop "$one_pid"
  one_pid=""
  gw_pid=$main_pid gw=$main_gw
  start_nginx 1
  if [ -n "$nginx_url" ]; then
    run_wrk nginx1 "nginx, 1 worker, same ${#fixed_body}-byte body" "$nginx_url" && nginx1_rps=$w_rps
    stop "$nginx_pid"
    nginx_pid=""
  fi
fi
fi

post_rps=0 post_p99=0
if want post; then
replayed='ecom_idempotency_total{outcome="replayed"}'
key="r$(random_hex)"
first=$(curl -fsS -D - -o /dev/null -X POST -H 'Content-Type: application/json' -H "Idempotency-Key: $key" \
  -d '{"type":"bench"}' "$events" | tr -d '\r' | awk 'NR == 1 { s = $2 } tolower($1) == "idempotent-replayed:" { r = $2 }
  END { print s " replayed=" r }')
r0=$(metric "$replayed")
outbox0=$(sql 'SELECT count(*) FROM bus.outbox')
BENCH_REPLAY_KEY="$key" run_wrk post_replay "POST /api/v1/analytics/events (replay, one key)" "$events" \
  -s "$here/lua/post_replay.lua" || true
sleep 0.5
echo "      check: first request $first; wrk saw $w_n responses ($w_bad non-2xx, $w_err socket errors);" \
  "gateway counted $(($(metric "$replayed") - r0)) replays; new outbox rows $(($(sql 'SELECT count(*) FROM bus.outbox') - outbox0))"

# ---- writes: POST with unique keys, then pgbench at once ----

echo
created='ecom_http_requests_total{route="analytics.events.create",method="POST",status="202"}'
outbox0=$(sql 'SELECT count(*) FROM bus.outbox')
idem0=$(sql 'SELECT count(*) FROM gateway.idempotency')
c0=$(metric "$created")
xacts() { sql "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"; }
x0=$(xacts)
wal0=$(sql 'SELECT pg_current_wal_lsn()')
post_rps=0 post_p99=0
if BENCH_KEY_PREFIX="u$(random_hex)" run_wrk post_unique "POST /api/v1/analytics/events (unique keys)" "$events" \
  -s "$here/lua/post_unique.lua"; then
  post_rps=$w_rps post_p99=$w_p99
fi
sleep 1 # requests still in flight when wrk stopped (and the statistics' flush)
x_d=$(($(xacts) - x0))
wal_d=$(sql "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$wal0')::bigint")
outbox_d=$(($(sql 'SELECT count(*) FROM bus.outbox') - outbox0))
idem_d=$(($(sql 'SELECT count(*) FROM gateway.idempotency') - idem0))
ok=$((w_n - w_bad))
check="ok"
# wrk stops with up to $conns requests in flight; the gateway still commits them
[ "$outbox_d" -ge "$ok" ] && [ "$outbox_d" -le $((ok + conns)) ] && [ "$idem_d" -eq "$outbox_d" ] || check="MISMATCH"
echo "      check: wrk saw $w_n responses ($w_bad non-2xx, $w_err socket errors); gateway answered 202 to" \
  "$(($(metric "$created") - c0)); new outbox rows $outbox_d, new idempotency records $idem_d: $check"
echo "      transactions committed in the database: $x_d ($(awk -v a="$outbox_d" -v b="$x_d" 'BEGIN { if (b > 0) printf "%.1f", a / b; else printf "n/a" }') commands per transaction)"
echo "      WAL written meanwhile (the whole server's): $(awk -v w="$wal_d" -v n="$outbox_d" 'BEGIN { if (n > 0) printf "%.0f", w / n; else printf "n/a" }') bytes per command"
fi

pgb_rps=0 pgb_p99=0 pgp_rps=0
if want pgbench; then
echo
cols="id, partition, tenant, aggregate_id, topic, type, seq, ts, traceparent, request_id, payload"
agg="'event:' || (:k)::text"
tp="'00-79e4c3582998da581602cdaf05bade8f-f5e6eea4c9087f0a-00'"
vals="$tp, md5((:k)::text), '{\"type\":\"bench\"}'"
now_ms="(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
upsert="WITH s AS (INSERT INTO bus.aggregate_seq AS a (tenant, aggregate_id, seq) VALUES ('default', $agg, 1)
 ON CONFLICT (tenant, aggregate_id) DO UPDATE SET seq = a.seq + 1 RETURNING seq)
 INSERT INTO bus.outbox ($cols)
 SELECT gen_random_uuid(), :part, 'default', $agg, 'analytics', 'analytics.track', s.seq, $now_ms, $vals FROM s;"
head_vars='\set part random(0, 63)
\set k random(1, 9000000000000000000)'

pgb_rps=0 pgb_p99=0
run_pgbench pgb_upsert "pgbench: sequenced outbox append (upsert CTE), $pg_clients cl" "$pg_clients" \
  "$head_vars
$upsert" && pgb_rps=$p_tps pgb_p99=$p_p99
pgp_rps=0
plain="INSERT INTO bus.outbox ($cols)
 VALUES (gen_random_uuid(), :part, 'default', $agg, 'analytics', 'analytics.track', 1, $now_ms, $vals);"
run_pgbench pgb_plain "pgbench: plain single-row outbox INSERT, $pg_clients cl" "$pg_clients" \
  "$head_vars
$plain" && pgp_rps=$p_tps
# (no ":name" inside literals: pgbench would take it for a variable)
store="'idem-bench-' || (:k)::text"
run_pgbench pgb_gwtx "pgbench: the gateway's POST pipeline, $gw_pool cl" "$gw_pool" \
  "$head_vars
\\startpipeline
WITH lk AS MATERIALIZED (SELECT pg_try_advisory_xact_lock(hashtextextended($store, 0)) AS got),
 gone AS (DELETE FROM gateway.idempotency WHERE store_key = $store AND expires_at < now() AND (SELECT got FROM lk) RETURNING 1)
 SELECT (SELECT got FROM lk), i.fingerprint, i.status, coalesce(i.content_type, ''), i.body
 FROM (SELECT 1) one LEFT JOIN gateway.idempotency i ON i.store_key = $store AND i.expires_at >= now();
WITH ins AS (INSERT INTO gateway.idempotency (store_key, tenant, fingerprint, status, content_type, body, expires_at)
 SELECT $store, 'default', md5((:k)::text) || md5((:k)::text), 202, 'application/json',
 '{\"id\":\"01a218b8-ab1c-735a-a948-685084c36491\",\"status\":\"accepted\",\"type\":\"bench\"}',
 now() + make_interval(secs => 86400) WHERE pg_try_advisory_xact_lock(hashtextextended($store, 0))
 ON CONFLICT (store_key) DO NOTHING RETURNING 1) SELECT 1 / (SELECT count(*)::int FROM ins);
$plain
\\endpipeline" || true
fi

gw_status() { awk -v k="$1:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$gw_pid/status"; }
rss_hwm=$(gw_status VmHWM)
rss_now=$(gw_status VmRSS)
warns=$(grep -c . "$tmp/gateway.log" || true)

# ---- summary ----

echo
echo "  load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg) (anything else running skews every figure)"
echo "  gateway RSS after the load: VmHWM $rss_hwm MB (VmRSS now $rss_now MB); gateway log lines at warn: $warns"
[ "$warns" -eq 0 ] || sed -n '1,5s/^/    /p' "$tmp/gateway.log"
echo
echo "  targets (issue 3), figures of this run:"
echo "    cached GET vs nginx:        $(pct "$get_rps" "$nginx_rps") of nginx's req/s (target >= 70%:" \
  "$(verdict cmp_ge "$(pct "$get_rps" "$nginx_rps" | tr -d '%')" 70)); p99 $get_p99 ms" \
  "(target <= 5 ms: $(verdict cmp_le "$get_p99" 5))"
if [ "$threads" -gt 1 ]; then
  echo "    the same, one server thread: $(pct "$get1_rps" "$nginx1_rps") of nginx's req/s (target >= 70%:" \
    "$(verdict cmp_ge "$(pct "$get1_rps" "$nginx1_rps" | tr -d '%')" 70)); p99 $get1_p99 ms" \
    "(target <= 5 ms: $(verdict cmp_le "$get1_p99" 5))"
fi
echo "    POST unique vs pgbench:     $(pct "$post_rps" "$pgp_rps") of the plain single-row INSERT's tx/s," \
  "$(pct "$post_rps" "$pgb_rps") of a sequenced append's (target >= 60%:" \
  "$(verdict cmp_ge "$(pct "$post_rps" "$pgp_rps" | tr -d '%')" 60)); p99 $post_p99 ms" \
  "(target <= 20 ms: $(verdict cmp_le "$post_p99" 20)); pgbench upsert p99 $pgb_p99 ms"
echo "    gateway RSS:                VmHWM $rss_hwm MB (target <= 30 MB: $(verdict cmp_le "$rss_hwm" 30))"
echo "    for scale: GET /health $health_rps req/s; issue's reference: Fastify POST ~1,900 req/s p99 54 ms," \
  "nginx ~130,000 req/s"
exit "$rc"
