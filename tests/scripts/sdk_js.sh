#!/usr/bin/env bash
# The JavaScript AuthX SDK (sdk/js) against a real gateway: `ecom gateway` in
# memory, development mode (dev-login on), on a free port; then node's test
# runner over sdk/js/test/ with AUTHX_BASE_URL pointing at it.
set -euo pipefail
build=${1:-build-test}
bin="$PWD/$build/bin/ecom"

if ! command -v node >/dev/null; then
  echo "sdk_js.sh: node not found; the SDK tests need Node.js 18 or later (apt-get install nodejs)"
  exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then
  echo "sdk_js.sh: node $(node --version) is too old; the SDK tests need Node.js 18 or later"
  exit 1
fi

free_port() { scripts/free-port; }

log=$(mktemp /tmp/ecom-sdk-js.XXXXXX)
pid=
stop() { # on any exit: no gateway left behind
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
  pid=
}
trap 'stop; rm -f "$log"' EXIT

# A port that looked free can still be taken by the time we bind it (an
# outgoing connection's local port): then start again on another.
start_gateway() {
  port=$(free_port)
  env DATABASE_URL= REDIS_URL= APP_ENV=development JWT_SECRET=devsecret PORT="$port" ADMIN_PORT=0 \
    GATEWAY_THREADS=2 LOG_LEVEL=error "$bin" gateway >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/ready" >/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  stop
  return 1
}
started=
for _ in 1 2 3; do start_gateway && { started=1; break; }; done
if [ -z "$started" ]; then
  echo "sdk_js.sh: ecom gateway did not become ready"
  tail -20 "$log"
  exit 1
fi

rc=0
echo "-- node --test sdk/js/test/ ($(node --version), gateway on port $port)"
AUTHX_BASE_URL="http://127.0.0.1:$port/api/v1/analytics" timeout 300 node --test sdk/js/test/ || rc=1

kill -TERM "$pid" 2>/dev/null || true
if ! wait "$pid"; then echo "sdk_js.sh: ecom gateway did not exit cleanly on SIGTERM"; tail -20 "$log"; rc=1; fi
pid=
exit $rc
