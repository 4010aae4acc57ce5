#!/usr/bin/env bash
# `ecom migrate` (order, no-op re-run, concurrent runs, edited files, --check)
# and `ecomctl` (publish, status, bad input) against the test-env PostgreSQL
# and Redis.
set -uo pipefail
build=${1:-build-test}
ecom="$PWD/$build/bin/ecom"
ctl="$PWD/$build/bin/ecomctl"
passed=0; failed=0
check() { if [ "$2" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL $1: ${3:-}"; fi; }
[ -n "${DATABASE_URL:-}" ] && [ -n "${REDIS_URL:-}" ] || { echo "migrate_ecomctl: run under scripts/test-env"; exit 1; }

db="mig_$$"
psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
url="${DATABASE_URL%/*}/$db"
export DATABASE_URL="$url" REDIS_URL="$REDIS_URL/8"
redis-cli -u "$REDIS_URL" flushdb >/dev/null

out=$("$ecom" migrate --check 2>&1); rc=$?
[ $rc -eq 1 ] && grep -q "pending bus/001_outbox_inbox.sql" <<<"$out"; check "--check on an empty database exits 1 and lists the files" $? "$rc $out"
[ "$(psql "$url" -Atc "SELECT to_regclass('public.ecom_migrations') IS NULL")" = t ]; check "--check writes nothing (not even its bookkeeping table)" $? ""
timeout 10 "$ecom" outbox-worker --bogus >/dev/null 2>&1; [ $? -eq 2 ]; check "a daemon given an argument it does not take exits 2 (does not start)" $? ""

# two runs at once: the advisory lock serialises them, both succeed, each file once
"$ecom" migrate >/tmp/mig1.$$ 2>&1 & p1=$!
"$ecom" migrate >/tmp/mig2.$$ 2>&1 & p2=$!
wait $p1; r1=$?; wait $p2; r2=$?
[ $r1 -eq 0 ] && [ $r2 -eq 0 ]; check "two concurrent runs both succeed" $? "$r1 $r2 $(cat /tmp/mig1.$$ /tmp/mig2.$$)"
applied=$(cat /tmp/mig1.$$ /tmp/mig2.$$ | grep -c '^applied ')
total=$(psql "$url" -Atc "SELECT count(*) FROM public.ecom_migrations")
[ "$applied" = "$total" ] && [ "$total" -ge 4 ]; check "each file applied exactly once ($applied applied, $total recorded)" $? ""
rm -f /tmp/mig1.$$ /tmp/mig2.$$

out=$("$ecom" migrate 2>&1); rc=$?
[ $rc -eq 0 ] && grep -q "(0 applied now" <<<"$out"; check "a re-run is a no-op" $? "$out"
"$ecom" migrate --check >/dev/null 2>&1; check "--check exits 0 when nothing is pending" $? ""
"$ecom" migrate --service nope >/dev/null 2>&1; [ $? -eq 2 ]; check "unknown --service exits 2" $? ""

orig=$(psql "$url" -Atc "SELECT checksum FROM public.ecom_migrations WHERE name = '001_events.sql'")
psql "$url" -qc "UPDATE public.ecom_migrations SET checksum = 'x' WHERE name = '001_events.sql'"
out=$("$ecom" migrate 2>&1); rc=$?
[ $rc -ne 0 ] && grep -q "analytics/001_events.sql was edited" <<<"$out"; check "an edited applied file is an error" $? "$out"
psql "$url" -qc "UPDATE public.ecom_migrations SET checksum = '$orig' WHERE name = '001_events.sql'"
"$ecom" migrate >/dev/null 2>&1; check "restored: migrate succeeds again" $? ""

# --- ecomctl
out=$("$ctl" publish --topic orders --type order.placed --tenant t1 --aggregate o-1 --payload '{"a":1' 2>&1); rc=$?
[ $rc -eq 2 ] && [ "$(wc -l <<<"$out")" -eq 1 ] && grep -q "not valid JSON" <<<"$out"; check "publish: bad JSON is one line, exit 2" $? "$rc $out"
out=$("$ctl" publish --topic orders --type order.placed --aggregate o-1 --payload '{}' 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q -- "--tenant is required" <<<"$out"; check "publish: a missing option is named" $? "$out"
out=$("$ctl" publish --topic "bad topic" --type x --tenant t1 --aggregate o-1 --payload '{}' 2>&1); rc=$?
[ $rc -eq 2 ]; check "publish: an invalid topic exits 2" $? "$rc $out"
# bad input is bad input whether the server is there or not
out=$(DATABASE_URL="postgresql://127.0.0.1:1/none" "$ctl" publish --topic "bad topic" --type x --tenant t1 --aggregate o-1 --payload '{}' 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "topic" <<<"$out"; check "publish: an invalid topic exits 2 with PostgreSQL unreachable" $? "$rc $out"
out=$("$ctl" publish --topic orders --type x --tenant t1 --aggregate $'\xff' --payload '{}' 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "must be UTF-8" <<<"$out"; check "publish: an aggregate that is not UTF-8 is named, exit 2 (not a storage error)" $? "$rc $out"
out=$("$ctl" publish --topic orders --type x --tenant t1 --aggregate tp-1 --payload '{}' --traceparent garbage 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "W3C traceparent" <<<"$out" && [ "$(psql "$url" -Atc "SELECT count(*) FROM bus.outbox WHERE aggregate_id = 'tp-1'")" = 0 ]
check "publish: a malformed --traceparent is refused, nothing written" $? "$rc $out"
"$ctl" frobnicate >/dev/null 2>&1; [ $? -eq 2 ]; check "unknown command exits 2" $? ""
out=$("$ctl" publish --topic orders --type order.placed --tenant t1 --aggregate o-1 --payload '{"total":42}' --count 25 2>&1); rc=$?
[ $rc -eq 0 ] && grep -q "appended 25 messages" <<<"$out"; check "publish --count 25" $? "$out"
n=$(psql "$url" -Atc "SELECT count(*), max(seq) FROM bus.outbox WHERE aggregate_id = 'o-1'")
[ "$n" = "25|25" ]; check "25 outbox rows with seq 1..25" $? "$n"
js=$("$ctl" status --json 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(jq .outbox.pending <<<"$js")" = "25" ]; check "status --json shows 25 pending" $? "$js"
"$ctl" status >/dev/null 2>&1; check "status (text) exits 0" $? ""
# drain them and look again
ADMIN_PORT=0 "$ecom" outbox-worker >/dev/null 2>&1 & dp=$!
for _ in $(seq 1 50); do [ "$(psql "$url" -Atc 'SELECT count(*) FROM bus.outbox')" = "0" ] && break; sleep 0.1; done
kill -TERM $dp; wait $dp; rc=$?
[ $rc -eq 0 ]; check "outbox-worker exits 0 on SIGTERM" $? "$rc"
js=$("$ctl" status --json)
[ "$(jq .outbox.pending <<<"$js")" = "0" ] && [ "$(jq '.streams[] | select(.stream=="ecom:orders") | .length' <<<"$js")" = "25" ]
check "status after draining: 0 pending, stream length 25" $? "$js"
# dead letters: a type the payment service does not know goes to its DLQ; list and replay it
"$ctl" publish --topic payment --type payment.exploded --tenant t1 --aggregate p-9 --payload '{"x":1}' >/dev/null
ADMIN_PORT=0 "$ecom" outbox-worker >/dev/null 2>&1 & dp=$!
ADMIN_PORT=0 ECOM_INSTANCE=ci "$ecom" service payment >/dev/null 2>&1 & sp=$!
for _ in $(seq 1 100); do [ "$(redis-cli -u "$REDIS_URL" xlen ecom:dlq:payment)" = "1" ] && break; sleep 0.1; done
list=$("$ctl" dlq list --group payment --json)
[ "$(jq length <<<"$list")" = "1" ] && jq -e '.[0].error | test("unknown type payment.exploded")' >/dev/null <<<"$list"
check "dlq list shows the entry and its error" $? "$list"
first=$(jq -r '.[0].entry' <<<"$list")
out=$("$ctl" dlq replay --group payment --all); rc=$?
[ $rc -eq 0 ] && grep -q "replayed 1, left 0" <<<"$out"; check "dlq replay --all" $? "$out"
for _ in $(seq 1 100); do
  again=$("$ctl" dlq list --group payment --json | jq -r '.[0].entry // empty')
  [ -n "$again" ] && [ "$again" != "$first" ] && break; sleep 0.1
done
[ -n "$again" ] && [ "$again" != "$first" ]; check "the replayed message went through the service again (dead-lettered anew)" $? "$again"
# it went back to the payment group alone: its replay stream, not the topic's stream every group reads
added() { redis-cli -u "$REDIS_URL" xinfo stream "$1" | awk 'prev == "entries-added" { print; exit } { prev = $0 }'; }
[ "$(added ecom:payment)" = "1" ] && [ "$(added ecom:replay:payment)" = "1" ]
check "the replay went to ecom:replay:payment, not ecom:payment" $? "$(added ecom:payment) $(added ecom:replay:payment)"
"$ctl" publish --topic replay:payment --type x --tenant t1 --aggregate a --payload '{}' >/dev/null 2>&1; [ $? -eq 2 ]
check "publish to a topic named like the bus's own streams exits 2" $? ""
"$ctl" dlq replay --group payment >/dev/null 2>&1; [ $? -eq 2 ]; check "dlq replay needs --id or --all" $? ""
"$ctl" dlq replay --group payment --id 1-1 >/dev/null 2>&1; [ $? -eq 2 ]; check "dlq replay of an unknown entry exits 2" $? ""
# an id without its sequence part would be every entry of that millisecond
"$ctl" dlq replay --group payment --id "${again%-*}" >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] && [ "$(redis-cli -u "$REDIS_URL" xlen ecom:dlq:payment)" = "1" ]; check "dlq replay --id <ms> alone is refused, nothing replayed" $? "$rc"
# output that cannot be written is not a success
out=$("$ctl" dlq list --group payment --json 2>&1 >/dev/full); rc=$?
[ $rc -eq 1 ] && grep -q "cannot write the output" <<<"$out"; check "dlq list into a full disk exits 1" $? "$rc $out"
# a misspelt group is refused; a service with no dead letters has an empty list
out=$("$ctl" dlq replay --group paymnet --all 2>&1); rc=$?
[ $rc -eq 2 ] && [ "$(wc -l <<<"$out")" = "1" ] && grep -q "no service paymnet" <<<"$out"
check "dlq replay of a group no service has and no DLQ exists for exits 2" $? "$rc $out"
out=$("$ctl" dlq list --group notification --json); rc=$?
[ $rc -eq 0 ] && [ "$out" = "[]" ]; check "dlq list of a service without dead letters is empty" $? "$rc $out"
kill -TERM $dp $sp; wait $dp $sp
# --- redrive: Redis loses a stream; the published window puts it back and the inbox skips what was applied
events() { psql "$url" -Atc "SELECT count(*) FROM analytics.events WHERE type = '$1'"; }
"$ctl" publish --topic analytics --type redrive.applied --tenant t1 --aggregate r-1 --payload '{}' --count 30 >/dev/null
ADMIN_PORT=0 "$ecom" outbox-worker >/dev/null 2>&1 & dp=$!
ADMIN_PORT=0 ECOM_INSTANCE=ci "$ecom" service analytics >/dev/null 2>&1 & sp=$!
for _ in $(seq 1 100); do [ "$(events redrive.applied)" = "30" ] && break; sleep 0.1; done
[ "$(events redrive.applied)" = "30" ]; check "30 events applied before the loss" $? "$(events redrive.applied)"
kill -TERM $sp; wait $sp
"$ctl" publish --topic analytics --type redrive.unseen --tenant t1 --aggregate r-1 --payload '{}' --count 20 >/dev/null
for _ in $(seq 1 100); do [ "$(psql "$url" -Atc 'SELECT count(*) FROM bus.outbox')" = "0" ] && break; sleep 0.1; done
out=$("$ctl" redrive --since 3600 --topic analytics 2>&1); rc=$?
[ $rc -eq 1 ] && grep -q "held by running outbox-workers" <<<"$out"; check "redrive refuses while an outbox-worker runs" $? "$rc $out"
kill -TERM $dp; wait $dp
redis-cli -u "$REDIS_URL" del ecom:analytics >/dev/null
out=$("$ctl" redrive --since 3600 --topic analytics 2>&1); rc=$?
[ $rc -eq 0 ] && grep -q "redrive: 50 messages published again" <<<"$out"; check "redrive puts the 50 published messages back" $? "$rc $out"
ADMIN_PORT=0 ECOM_INSTANCE=ci "$ecom" service analytics >/dev/null 2>&1 & sp=$!
for _ in $(seq 1 100); do [ "$(events redrive.unseen)" = "20" ] && break; sleep 0.1; done
sleep 0.5
[ "$(events redrive.unseen)" = "20" ] && [ "$(events redrive.applied)" = "30" ]
check "after the loss: the 20 unseen applied once, the 30 applied not again" $? "$(events redrive.unseen) $(events redrive.applied)"
kill -TERM $sp; wait $sp
"$ctl" redrive >/dev/null 2>&1; [ $? -eq 2 ]; check "redrive needs --since" $? ""

# --- dead rows: what the drainer could not publish, listed and moved back
psql "$url" -qAtc "INSERT INTO bus.outbox_dead (pos, id, partition, topic, type, tenant, aggregate_id, seq, ts, v,
  traceparent, request_id, payload, error) VALUES (900000001, '0190a000-0000-7000-8000-0000000000d1', 3, 'orders',
  'order.placed', 't1', 'dead-1', 1, 1700000000000, 1, '', '', '{}', 'WRONGTYPE')"
list=$("$ctl" dead list --json); rc=$?
[ $rc -eq 0 ] && [ "$(jq length <<<"$list")" = "1" ] && [ "$(jq -r '.[0].error' <<<"$list")" = "WRONGTYPE" ]
check "dead list shows the row and its error" $? "$rc $list"
"$ctl" dead retry --pos 900000002 >/dev/null 2>&1; [ $? -eq 2 ]; check "dead retry of an unknown row exits 2" $? ""
"$ctl" dead retry >/dev/null 2>&1; [ $? -eq 2 ]; check "dead retry needs --pos or --all" $? ""
for bad in 99999999999999999999 +900000001 " 900000001" 0 x; do
  out=$("$ctl" dead retry --pos "$bad" 2>&1); rc=$?
  [ $rc -eq 2 ] && grep -q "takes a row's position" <<<"$out"; check "dead retry --pos '$bad' is refused" $? "$rc $out"
done
out=$("$ctl" dead retry --pos 900000001); rc=$?
[ $rc -eq 0 ] && grep -q "moved 1 rows" <<<"$out" &&
  [ "$(psql "$url" -Atc "SELECT count(*) FROM bus.outbox WHERE pos = 900000001 AND aggregate_id = 'dead-1'")" = 1 ] &&
  [ "$(psql "$url" -Atc 'SELECT count(*) FROM bus.outbox_dead')" = 0 ]
check "dead retry moves the row back to the outbox, with its position" $? "$rc $out"
psql "$url" -qAtc "DELETE FROM bus.outbox WHERE pos = 900000001"

DATABASE_URL=postgresql://postgres@127.0.0.1:1/none "$ctl" status >/dev/null 2>&1; [ $? -eq 1 ]; check "unreachable server exits 1" $? ""

echo "migrate_ecomctl: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
