#!/usr/bin/env bash
# Usage: tests/scripts/compose_check.sh [BUILD_DIR]   (run by scripts/run-tests)
#
# Checks the deployment files without a Docker engine: docker-compose.dev.yml,
# docker-compose.prod.yml, env.dev, env.prod, package.json, the scripts it calls,
# the Dockerfile and docs/config.md. Prints each failure and ends with
# "compose_check: N passed, M failed"; exits 1 when anything failed.
#
# The compose files are read with PyYAML when python3 has it; otherwise with the
# small awk reader below, which takes the plain block-YAML subset the files keep to
# (no anchors, merge keys, block scalars, flow mappings or sequences of mappings)
# and refuses anything else. With PyYAML present both readers run and must agree,
# so the fallback is exercised wherever the check runs. `docker compose config`
# adds a validation when the Compose V2 plugin is installed.
#
# Environment: COMPOSE_CHECK_ROOT (the tree to check; default: this repository),
# COMPOSE_CHECK_NO_PYYAML=1 (use the awk reader only), COMPOSE_CHECK_VERBOSE=1
# (print passes too), ECOM_BIN_DIR (where `ecom` is; default BUILD_DIR/bin).
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
root=$(cd "${COMPOSE_CHECK_ROOT:-$here}" && pwd)
build=${1:-build}
case "$build" in
  /*) ;;
  *) build="$here/$build" ;;
esac
bin_dir=${ECOM_BIN_DIR:-$build/bin}

tmp=$(mktemp -d /tmp/compose-check.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0
ok() {
  passed=$((passed + 1))
  [ "${COMPOSE_CHECK_VERBOSE:-}" != 1 ] || echo "ok:   $*"
}
bad() {
  failed=$((failed + 1))
  echo "FAIL: $*"
}
# check DESCRIPTION COMMAND...: one assertion; passes when COMMAND succeeds.
check() {
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}

# Predicates for check.
eq() { [ "$1" = "$2" ]; }
ne() { [ "$1" != "$2" ]; }
nonempty() { [ -n "$1" ]; }
empty() { [ -z "$1" ]; }
matches() { grep -Eq -- "$2" <<<"$1"; }        # VALUE ERE
line_in() { grep -qxF -- "$1" <<<"$2"; }       # LINE LINES
not_line_in() { ! line_in "$@"; }
is_file() { [ -f "$1" ]; }
is_exec() { [ -f "$1" ] && [ -x "$1" ]; }
in_list() {                                    # WORD WORDS...
  local x=$1 y
  shift
  for y in "$@"; do [ "$x" = "$y" ] && return 0; done
  return 1
}

# The contracts (DESIGN.md §2, core/migrate.c, the runbook).
profiles_required=(infra payment notification analytics all)
migrate_names=(payment notification analytics gateway outbox-worker all)
migrate_required=(payment-migrate notification-migrate analytics-migrate gateway-migrate)
app_required=(gateway outbox-worker payment notification analytics)
runbook_scripts=(dev:local compose:dev:infra compose:dev:payment compose:dev:notification
  compose:dev:analytics compose:dev:all compose:dev:down compose:prod:all compose:prod:down
  docker:dev:logs docker:dev:health)

# ---------------------------------------------------------------------------
# Readers: FILE -> lines "path=value", path segments joined by "/", list items
# numbered from 0, null as an empty value, booleans as true/false.

flatten_py() {
  python3 - "$1" <<'PY'
import sys, yaml
def emit(path, v):
    if isinstance(v, dict):
        for k, x in v.items():
            emit(f"{path}/{k}" if path else str(k), x)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            emit(f"{path}/{i}", x)
    elif v is None:
        print(f"{path}=")
    elif isinstance(v, bool):
        print(f"{path}={'true' if v else 'false'}")
    else:
        print(f"{path}={v}")
with open(sys.argv[1]) as f:
    emit("", yaml.safe_load(f))
PY
}

flatten_awk() {
  awk -v sq="'" '
    function fail(msg) { printf "line %d: %s\n", nr[i], msg > "/dev/stderr"; exit 1 }
    # Removes a trailing " #comment" outside quotes.
    function strip_comment(s,    k, c, q, out) {
      q = ""; out = ""
      for (k = 1; k <= length(s); k++) {
        c = substr(s, k, 1)
        if (q == "" && c == "#" && (k == 1 || substr(s, k - 1, 1) ~ /[ \t]/)) break
        if (q == "" && (c == "\"" || c == sq)) q = c
        else if (q != "" && c == q) q = ""
        out = out c
      }
      sub(/[ \t]+$/, "", out)
      return out
    }
    function scalar(s) {
      if (s ~ /^".*"$/) { s = substr(s, 2, length(s) - 2); gsub(/\\"/, "\"", s); gsub(/\\\\/, "\\", s); return s }
      if (length(s) >= 2 && substr(s, 1, 1) == sq && substr(s, length(s), 1) == sq) {
        s = substr(s, 2, length(s) - 2); gsub(sq sq, sq, s); return s
      }
      if (s ~ /^[&*!|>{%@`]/) fail("unsupported YAML (anchor, alias, tag, block scalar or flow mapping): " s)
      if (s == "~" || s == "null") return ""
      return s
    }
    function flow_list(path, s,    k, c, q, item, n) {
      if (s !~ /\]$/) fail("a flow sequence must close on its line")
      s = substr(s, 2, length(s) - 2)
      q = ""; item = ""; n = 0
      for (k = 1; k <= length(s) + 1; k++) {
        c = (k <= length(s)) ? substr(s, k, 1) : ","
        if (q == "" && c == ",") {
          gsub(/^[ \t]+|[ \t]+$/, "", item)
          if (item != "") print path "/" n++ "=" scalar(item)
          item = ""
          continue
        }
        if (q == "" && (c == "\"" || c == sq)) q = c
        else if (q != "" && c == q) q = ""
        item = item c
      }
    }
    { raw[NR] = $0 }
    END {
      n = 0
      for (r = 1; r <= NR; r++) {
        line = raw[r]
        if (line ~ /^[ ]*(#.*)?$/ || line == "---") continue
        if (line ~ /^[ ]*\t/) { i = n + 1; nr[i] = r; fail("tab in indentation") }
        n++; nr[n] = r
        match(line, /^ */); ind[n] = RLENGTH
        txt[n] = strip_comment(substr(line, RLENGTH + 1))
      }
      depth = 0
      for (i = 1; i <= n; i++) {
        while (depth > 0 && sind[depth] >= ind[i]) depth--
        parent = depth ? spath[depth] : ""
        t = txt[i]
        if (t ~ /^- / || t == "-") {
          item = substr(t, 3)
          if (item ~ /^[A-Za-z0-9_.\/-]+:( |$)/) fail("a sequence of mappings is not supported")
          if (item ~ /^\[/) fail("nested sequences are not supported")
          print parent "/" count[parent]++ "=" scalar(item)
          continue
        }
        if (t ~ /^<<:/) fail("merge keys are not supported")
        if (t !~ /^[A-Za-z0-9_.\/-]+:( |$)/) fail("expected \"key: value\": " t)
        key = t; sub(/:.*/, "", key)
        val = t; sub(/^[^:]*:[ ]*/, "", val)
        path = parent == "" ? key : parent "/" key
        if (val == "") {
          if (i < n && ind[i + 1] > ind[i]) { depth++; sind[depth] = ind[i]; spath[depth] = path }
          else print path "="
        } else if (val ~ /^\[/) {
          flow_list(path, val)
        } else {
          print path "=" scalar(val)
        }
      }
    }
  ' "$1"
}

have_pyyaml=false
if [ "${COMPOSE_CHECK_NO_PYYAML:-}" != 1 ] && command -v python3 >/dev/null &&
  python3 -c 'import yaml' 2>/dev/null; then
  have_pyyaml=true
fi

# Queries on the flattened file being checked ($flat).
flat=""
# val PATH: the scalar at PATH.
val() { awk -v k="$1=" 'index($0, k) == 1 { print substr($0, length(k) + 1); exit }' "$flat"; }
# children PATH: the distinct keys directly under PATH.
children() {
  awk -v p="$1/" 'index($0, p) == 1 {
    r = substr($0, length(p) + 1); sub(/[\/=].*/, "", r); if (!(r in s)) { s[r] = 1; print r } }' "$flat"
}
# items PATH: a list's items in order, or a scalar as one item.
items() {
  awk -v p="$1" 'index($0, p "=") == 1 { print substr($0, length(p) + 2); next }
    index($0, p "/") == 1 { r = substr($0, length(p) + 2); if (r ~ /^[0-9]+=/) { sub(/^[0-9]+=/, "", r); print r } }' "$flat"
}
# words PATH: a command as one line of words (list form or string form).
words() { items "$1" | tr '\n' ' ' | sed 's/ *$//'; }
# env_of SERVICE KEY: the value the compose file sets (map or KEY=VALUE list form).
env_of() {
  local v
  v=$(val "services/$1/environment/$2")
  if [ -z "$v" ]; then
    v=$(items "services/$1/environment" | awk -v k="$2=" 'index($0, k) == 1 { print substr($0, length(k) + 1); exit }')
  fi
  printf '%s' "$v"
}
# envfile_get FILE KEY: the last KEY=VALUE of an env file, quotes removed.
envfile_get() {
  [ -f "$1" ] || return 0
  awk -v k="$2" -v sq="'" '
    /^[ \t]*#/ { next }
    { sub(/^[ \t]*export[ \t]+/, "") }
    index($0, k "=") == 1 { v = substr($0, length(k) + 2) }
    END {
      if (length(v) >= 2 && (substr(v, 1, 1) == "\"" || substr(v, 1, 1) == sq) && substr(v, length(v), 1) == substr(v, 1, 1))
        v = substr(v, 2, length(v) - 2)
      print v
    }' "$1"
}
in_profile() { line_in "$2" "$(items "services/$1/profiles")"; } # SERVICE PROFILE
not_one_shot() { in_list "$1" always unless-stopped; }
one_shot() { ! not_one_shot "$1"; }
# healthcheck_ok TEST PORT: /ready then /health, both on PORT.
healthcheck_ok() {
  local t=$1 port=$2 r h
  matches "$t" "(127\.0\.0\.1|localhost):$port/ready" || return 1
  matches "$t" "(127\.0\.0\.1|localhost):$port/health" || return 1
  r=${t%%/ready*}
  h=${t%%/health*}
  [ "${#r}" -lt "${#h}" ]
}
pg_url='^postgres(ql)?://([^@/]*@)?postgres(:[0-9]+)?/'
redis_url='^redis://([^@/]*@)?redis(:[0-9]+)?(/|$)'

# ---------------------------------------------------------------------------
check_compose() {
  local mode=$1
  local file="$root/docker-compose.$mode.yml" envf="env.$mode"
  local tag="docker-compose.$mode.yml"
  flat="$tmp/$mode.flat"

  if [ ! -f "$file" ]; then
    bad "$tag: file missing"
    return 0
  fi
  local awk_ok=true
  if ! flatten_awk "$file" >"$tmp/$mode.awk" 2>"$tmp/$mode.awk.err"; then
    awk_ok=false
    bad "$tag: outside the plain YAML subset the fallback reader takes: $(head -n 3 "$tmp/$mode.awk.err")"
    [ "$have_pyyaml" = true ] || return 0
  fi
  if [ "$have_pyyaml" = true ]; then
    if ! flatten_py "$file" >"$flat" 2>"$tmp/$mode.py.err"; then
      bad "$tag: not valid YAML: $(grep -v '^ *File \|^Traceback\|^    ' "$tmp/$mode.py.err" | tail -n 4 | tr '\n' ' ')"
      return 0
    fi
    ok "$tag parses (PyYAML)"
    if [ "$awk_ok" = true ]; then
      if diff -u "$flat" "$tmp/$mode.awk" >"$tmp/$mode.diff"; then
        ok "$tag: the awk fallback reader agrees with PyYAML"
      else
        bad "$tag: the awk fallback reader disagrees with PyYAML (quote scalars such as yes, no, on, off, 0.50):"
        head -n 20 "$tmp/$mode.diff"
      fi
    fi
  else
    cp "$tmp/$mode.awk" "$flat"
    ok "$tag parses (awk fallback reader; PyYAML not available)"
  fi

  # A top-level name keeps the dev and prod stacks (containers, volumes) apart.
  local name other
  name=$(val name)
  check "$tag: top-level name is set" nonempty "$name"
  if [ "$mode" = prod ] && [ -f "$root/docker-compose.dev.yml" ]; then
    other=$(awk '/^name:/ { print $2; exit }' "$root/docker-compose.dev.yml")
    check "$tag: name '$name' differs from the dev file's" ne "$name" "$other"
  fi

  local services svc
  services=$(children services)
  check "$tag: defines services" nonempty "$services"
  local migrates=() apps=()
  for svc in $services; do
    case "$svc" in
      postgres | redis) ;;
      *-migrate) migrates+=("$svc") ;;
      *) apps+=("$svc") ;;
    esac
  done
  for svc in postgres redis "${migrate_required[@]}" "${app_required[@]}"; do
    check "$tag: service $svc is defined" line_in "$svc" "$services"
  done

  # --- postgres, redis
  local img
  img=$(val services/postgres/image)
  check "$tag: postgres runs PostgreSQL 15 (image '$img')" matches "$img" '^(docker\.io/)?(library/)?postgres:15([.-]|$)'
  img=$(val services/redis/image)
  check "$tag: redis runs Redis 7 (image '$img')" matches "$img" '^(docker\.io/)?(library/)?redis:7([.-]|$)'
  check "$tag: redis has AOF on (--appendonly yes)" matches "$(words services/redis/command)" '--appendonly yes'
  for svc in postgres redis; do
    check "$tag: $svc publishes no ports (runbook: internal networking only)" \
      empty "$(items "services/$svc/ports")$(children "services/$svc/ports")"
    check "$tag: $svc has a healthcheck" nonempty "$(words "services/$svc/healthcheck/test")"
  done

  # --- migrate jobs
  local cmd target restart
  for svc in "${migrates[@]}"; do
    cmd=$(words "services/$svc/command")
    target=${cmd#migrate --service }
    if [ "$cmd" != "$target" ] && in_list "$target" "${migrate_names[@]}"; then
      ok "$tag: $svc runs 'migrate --service $target'"
    else
      bad "$tag: $svc must run 'migrate --service NAME', NAME one of ${migrate_names[*]} (command: '$cmd')"
    fi
    check "$tag: $svc migrates its own part (--service ${svc%-migrate})" eq "$target" "${svc%-migrate}"
    check "$tag: $svc starts once postgres is service_healthy" \
      eq "$(val "services/$svc/depends_on/postgres/condition")" service_healthy
    restart=$(val "services/$svc/restart")
    check "$tag: $svc is one-shot (restart '$restart')" one_shot "$restart"
    check "$tag: $svc publishes no ports" empty "$(items "services/$svc/ports")"
  done

  # --- app services
  local expect port port_var test url inst instances="" dep found
  for svc in "${apps[@]}"; do
    cmd=$(words "services/$svc/command")
    case "$svc" in
      gateway | outbox-worker) expect=$svc ;;
      *) expect="service $svc" ;;
    esac
    check "$tag: $svc runs '$expect' (command: '$cmd')" eq "$cmd" "$expect"

    found=""
    for dep in $(children "services/$svc/depends_on") $(items "services/$svc/depends_on"); do
      case "$dep" in
        *-migrate)
          if [ "$(val "services/$svc/depends_on/$dep/condition")" = service_completed_successfully ]; then
            found="$found"$'\n'"$dep"
          else
            bad "$tag: $svc depends on $dep without condition service_completed_successfully"
          fi
          line_in "$dep" "$services" || bad "$tag: $svc depends on an undefined service $dep"
          ;;
      esac
    done
    check "$tag: $svc starts after a migrate job completed successfully" nonempty "$found"
    case "$svc" in
      payment | notification | analytics)
        check "$tag: $svc waits for its own $svc-migrate" line_in "$svc-migrate" "$found"
        ;;
    esac
    for dep in postgres redis; do
      check "$tag: $svc starts once $dep is service_healthy" \
        eq "$(val "services/$svc/depends_on/$dep/condition")" service_healthy
    done

    # The port the role listens on: the compose environment, else the env file,
    # else the built-in default (PORT 3003, ADMIN_PORT 9100).
    port_var=ADMIN_PORT
    [ "$svc" != gateway ] || port_var=PORT
    port=$(env_of "$svc" "$port_var")
    [ -n "$port" ] || port=$(envfile_get "$root/$envf" "$port_var")
    if [ -z "$port" ]; then
      port=9100
      [ "$svc" != gateway ] || port=3003
    fi
    test=$(words "services/$svc/healthcheck/test")
    check "$tag: $svc has a healthcheck trying /ready then /health on its $port_var $port ('$test')" \
      healthcheck_ok "$test" "$port"

    url=$(env_of "$svc" REDIS_URL)
    check "$tag: $svc REDIS_URL names the redis service ('$url')" matches "$url" "$redis_url"
    inst=$(env_of "$svc" ECOM_INSTANCE)
    check "$tag: $svc sets a stable ECOM_INSTANCE" nonempty "$inst"
    if [ -n "$inst" ]; then
      check "$tag: $svc ECOM_INSTANCE '$inst' is unique" not_line_in "$inst" "$instances"
      instances="$instances"$'\n'"$inst"
    fi
    if [ "$svc" != gateway ]; then
      check "$tag: $svc publishes no ports (its admin port stays internal)" empty "$(items "services/$svc/ports")"
    fi
  done
  local ports
  ports=$(items services/gateway/ports)
  check "$tag: gateway publishes port 3003 ($(tr '\n' ' ' <<<"$ports"))" matches "$ports" '(^|:)3003(/tcp)?$'

  # --- every ecom container: env_file, DATABASE_URL
  for svc in "${migrates[@]}" "${apps[@]}"; do
    check "$tag: $svc has env_file $envf" line_in "$envf" "$(items "services/$svc/env_file")"
    url=$(env_of "$svc" DATABASE_URL)
    check "$tag: $svc DATABASE_URL names the postgres service ('$url')" matches "$url" "$pg_url"
  done
  check "$tag: $envf exists" is_file "$root/$envf"

  # --- profiles
  local p used="" members dep_profiles
  for svc in $services; do
    members=$(items "services/$svc/profiles")
    check "$tag: $svc belongs to a profile" nonempty "$members"
    for p in $members; do
      check "$tag: $svc profile '$p' is one of ${profiles_required[*]}" in_list "$p" "${profiles_required[@]}"
      used="$used"$'\n'"$p"
      # Compose does not start a dependency whose profiles are all inactive: every
      # profile that starts a service must start what it depends on.
      for dep in $(children "services/$svc/depends_on") $(items "services/$svc/depends_on"); do
        line_in "$dep" "$services" || continue
        dep_profiles=$(items "services/$dep/profiles")
        if [ -n "$dep_profiles" ] && ! line_in "$p" "$dep_profiles"; then
          bad "$tag: profile '$p' starts $svc but not its dependency $dep"
        fi
      done
    done
  done
  for p in "${profiles_required[@]}"; do
    check "$tag: profile '$p' is used" line_in "$p" "$used"
  done
  for svc in $services; do
    case "$svc" in
      postgres | redis) check "$tag: profile infra starts $svc" in_profile "$svc" infra ;;
      *) check "$tag: profile infra is postgres + redis only (not $svc)" not_line_in infra "$(items "services/$svc/profiles")" ;;
    esac
    check "$tag: profile all starts $svc" in_profile "$svc" all
  done
  for p in payment notification analytics; do
    for svc in "$p" "$p-migrate" postgres redis; do
      check "$tag: profile $p starts $svc" in_profile "$svc" "$p"
    done
  done

  # --- dev or prod
  local app_env
  for svc in "${apps[@]}"; do
    app_env=$(env_of "$svc" APP_ENV)
    [ -n "$app_env" ] || app_env=$(envfile_get "$root/$envf" APP_ENV)
    if [ "$mode" = prod ]; then
      check "$tag: $svc runs with APP_ENV=production ('$app_env')" eq "$app_env" production
    else
      check "$tag: $svc runs with APP_ENV=development ('$app_env')" eq "$app_env" development
    fi
  done
  if [ "$mode" = prod ]; then
    for svc in postgres redis "${apps[@]}"; do
      check "$tag: $svc has a restart policy" matches "$(val "services/$svc/restart")" '^(always|unless-stopped|on-failure)'
      check "$tag: $svc has a memory limit" nonempty "$(val "services/$svc/deploy/resources/limits/memory")"
    done
    check "$tag: no NOTIFY_SINK_FILE (a dev setting)" not_matches_file 'NOTIFY_SINK_FILE' "$file"
    local jwt
    jwt=$(env_of gateway JWT_SECRET)
    check "$tag: gateway JWT_SECRET, when set here, comes from the environment ('$jwt')" \
      matches "$jwt" '^$|^\$\{JWT_SECRET[:?}-]'
  fi
}
not_matches_file() { ! grep -Eq -- "$1" "$2"; }  # ERE FILE

# ---------------------------------------------------------------------------
check_env_files() {
  local f="$root/env.prod"
  if [ ! -f "$f" ]; then
    bad "env.prod missing"
    return 0
  fi
  check "env.prod: APP_ENV=production" eq "$(envfile_get "$f" APP_ENV)" production
  check "env.prod: no NOTIFY_SINK_FILE (a dev setting)" \
    not_matches_file '^[[:space:]]*(export[[:space:]]+)?NOTIFY_SINK_FILE=' "$f"
  local secret
  secret=$(envfile_get "$f" JWT_SECRET)
  if [ -n "$secret" ]; then
    check "env.prod: JWT_SECRET placeholder has at least 32 bytes" test "${#secret}" -ge 32
    check "env.prod: JWT_SECRET is not the dev secret" ne "$secret" devsecret
    check "env.prod: a comment says to replace the placeholders" grep -Eqi '^#.*replace' "$f"
  else
    check "env.prod: JWT_PRIVATE_KEY_PEM set (no JWT_SECRET)" nonempty "$(envfile_get "$f" JWT_PRIVATE_KEY_PEM)"
    check "env.prod: JWT_PUBLIC_KEY_PEM set (no JWT_SECRET)" nonempty "$(envfile_get "$f" JWT_PUBLIC_KEY_PEM)"
  fi
  check "env.dev: APP_ENV=development" eq "$(envfile_get "$root/env.dev" APP_ENV)" development
}

# ---------------------------------------------------------------------------
check_package_json() {
  local f="$root/package.json"
  if [ ! -f "$f" ]; then
    bad "package.json missing"
    return 0
  fi
  local listing
  if command -v python3 >/dev/null; then
    listing=$(python3 - "$f" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("private=" + ("true" if d.get("private") is True else "false"))
print("deps=" + ",".join(k for k in ("dependencies", "devDependencies", "optionalDependencies", "peerDependencies") if d.get(k)))
for k, v in (d.get("scripts") or {}).items():
    print(f"script\t{k}\t{v}")
PY
    ) || {
      bad "package.json: not valid JSON"
      return 0
    }
  elif command -v jq >/dev/null; then
    listing=$(jq -r '"private=" + (if .private == true then "true" else "false" end),
      "deps=" + ([("dependencies", "devDependencies", "optionalDependencies", "peerDependencies") as $k
        | select((.[$k] // {}) | length > 0) | $k] | join(",")),
      ((.scripts // {}) | to_entries[] | "script\t\(.key)\t\(.value)")' "$f") || {
      bad "package.json: not valid JSON"
      return 0
    }
  else
    bad "package.json: neither python3 nor jq is there to read it"
    return 0
  fi
  ok "package.json parses"
  check "package.json: \"private\": true" line_in 'private=true' "$listing"
  check "package.json: no dependencies" line_in 'deps=' "$listing"
  local scripts name
  scripts=$(awk -F '\t' '$1 == "script" { print $2 }' <<<"$listing")
  for name in "${runbook_scripts[@]}"; do
    check "package.json: runbook script '$name' is defined" line_in "$name" "$scripts"
  done
  local key cmd prog mode sub arg
  while IFS=$'\t' read -r _ key cmd; do
    read -r prog mode sub arg _ <<<"$cmd"
    check "package.json: '$key' runs an executable file ($prog)" is_exec "$root/$prog"
    if [ "$prog" = scripts/compose ]; then
      check "package.json: '$key': '$mode' is dev or prod" in_list "$mode" dev prod
      check "package.json: '$key': '$sub' is a scripts/compose command" in_list "$sub" up down logs health ps build config
      if [ "$sub" = up ]; then
        check "package.json: '$key': profile '${arg:-all}' exists" in_list "${arg:-all}" "${profiles_required[@]}"
        case "$key" in
          compose:*:*) check "package.json: '$key' starts profile ${key##*:}" eq "${arg:-all}" "${key##*:}" ;;
        esac
      fi
    fi
  done < <(grep "^script$(printf '\t')" <<<"$listing")
}

# ---------------------------------------------------------------------------
check_scripts() {
  local s line
  for s in scripts/compose scripts/health scripts/dev-local; do
    check "$s exists and is executable" is_exec "$root/$s"
    [ -f "$root/$s" ] || continue
    check "$s: bash -n" bash -n "$root/$s"
    check "$s: set -euo pipefail" grep -q '^set -euo pipefail' "$root/$s"
    if command -v shellcheck >/dev/null; then
      if shellcheck -x "$root/$s" >"$tmp/shellcheck.out" 2>&1; then
        ok "$s: shellcheck"
      else
        bad "$s: shellcheck:"
        head -n 20 "$tmp/shellcheck.out"
      fi
    fi
  done
  # scripts/compose's lists must match the compose files' profiles and app services.
  if [ -f "$root/scripts/compose" ]; then
    line=$(grep -m1 '^profiles=(' "$root/scripts/compose" || true)
    check "scripts/compose: profiles=(${profiles_required[*]})" eq "$line" "profiles=(${profiles_required[*]})"
    line=$(grep -m1 '^app_services=(' "$root/scripts/compose" || true)
    check "scripts/compose: app_services=(${app_required[*]})" eq "$line" "app_services=(${app_required[*]})"
  fi
}

# ---------------------------------------------------------------------------
check_dockerfile() {
  local f="$root/Dockerfile"
  if [ ! -f "$f" ]; then
    bad "Dockerfile missing"
    return 0
  fi
  check "Dockerfile: two stages (build and runtime)" test "$(grep -Ec '^FROM ' "$f")" -ge 2
  check "Dockerfile: ENTRYPOINT [\"ecom\"]" grep -Eq '^ENTRYPOINT \["ecom"\]' "$f"
  local user
  user=$(awk '/^USER / { u = $2 } END { print u }' "$f")
  check "Dockerfile: runs as a non-root user ('$user')" matches "$user" '^[^0r]|^r[^o]|^ro[^o]'
  check "Dockerfile: installs curl for the healthchecks" grep -Eq '[[:space:]]curl([[:space:]]|$)' "$f"
  check "Dockerfile: copies scripts/health (ecom-health)" grep -q '^COPY scripts/health ' "$f"
  # Every source folder the build globs (CMakeLists.txt ecom_part) must be copied.
  local d
  for d in $(sed -n 's/^ecom_part([a-z_]*[[:space:]]*\([a-z-]*\)\/.*/\1/p' "$root/CMakeLists.txt" 2>/dev/null) cli cmake migrations; do
    check "Dockerfile: COPY $d/ (a folder the build reads)" grep -Eq "^COPY $d/? " "$f"
  done
}

# ---------------------------------------------------------------------------
check_config_doc() {
  local f="$root/docs/config.md"
  check "docs/config.md exists" is_file "$f"
  [ -f "$f" ] || return 0
  if [ ! -x "$bin_dir/ecom" ]; then
    echo "note: $bin_dir/ecom not built; docs/config.md not compared with 'ecom config-doc'"
    return 0
  fi
  sed -n '/^<!-- BEGIN ecom config-doc -->$/,/^<!-- END ecom config-doc -->$/p' "$f" | sed '1d;$d' >"$tmp/config.doc"
  "$bin_dir/ecom" config-doc >"$tmp/config.gen" 2>/dev/null || true
  if [ -s "$tmp/config.gen" ] && cmp -s "$tmp/config.doc" "$tmp/config.gen"; then
    ok "docs/config.md matches 'ecom config-doc'"
  else
    bad "docs/config.md differs from 'ecom config-doc'; regenerate it (the command is at the top of docs/config.md):"
    diff -u "$tmp/config.doc" "$tmp/config.gen" | head -n 20 || true
  fi
}

# ---------------------------------------------------------------------------
check_docker_compose_config() {
  if ! docker compose version >/dev/null 2>&1; then
    echo "note: no Docker Compose V2 plugin here; 'docker compose config' skipped"
    return 0
  fi
  local mode p
  for mode in dev prod; do
    for p in "${profiles_required[@]}"; do
      check "docker compose config: $mode, profile $p" \
        docker compose --project-directory "$root" -f "$root/docker-compose.$mode.yml" \
        --env-file "$root/env.$mode" --profile "$p" config --quiet
    done
  done
}

if [ "$have_pyyaml" = false ]; then
  echo "note: PyYAML not importable; the compose files are read with the awk fallback reader"
fi
check_compose dev
check_compose prod
check_env_files
check_package_json
check_scripts
check_dockerfile
check_config_doc
check_docker_compose_config

echo "compose_check: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
