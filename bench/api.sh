#!/usr/bin/env bash
# Control-plane API benchmark.
#
#   bash bench/api.sh [sqlite|postgres|all]      (default: all)
#
# For each backend: starts a release `culvert server` on 127.0.0.1 (random
# port, fresh data dir; PostgreSQL: a fresh database, dropped at the end),
# seeds 10,000 tunnels, then measures with wrk, in the same run:
#   1. GET /client/v4/status                                  static answer, the ceiling
#   2. GET /client/v4/accounts/A/cfd_tunnel/ID                random seeded ID per request
#   3. GET /client/v4/accounts/A/cfd_tunnel?per_page=100&page=N   random N in 1..100
# and rewrites the `## Control-plane API` section of BENCHMARKS.md (only the
# subsections of the backends run). Raw wrk output: bench/results/api-<time>/.
#
# Knobs (environment; the defaults are the issue's): BENCH_TUNNELS=10000
# BENCH_CONNECTIONS=64 BENCH_THREADS=2 BENCH_DURATION=15s BENCH_WARMUP=3s;
# BENCH_NO_BUILD=1 skips the cargo build and uses target/release/culvert as is.
# PostgreSQL: BENCH_PG_HOST=127.0.0.1 BENCH_PG_PORT=5432 BENCH_PG_USER=postgres
# BENCH_PG_ADMIN_DB=test (the database CREATE/DROP DATABASE is run from).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LIB="$ROOT/bench/lib"

MODE="${1:-all}"
case "$MODE" in
    sqlite) BACKENDS=(sqlite) ;;
    postgres) BACKENDS=(postgres) ;;
    all) BACKENDS=(sqlite postgres) ;;
    -h | --help)
        sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: bash bench/api.sh [sqlite|postgres|all]" >&2
        exit 2
        ;;
esac

TUNNELS="${BENCH_TUNNELS:-10000}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
THREADS="${BENCH_THREADS:-2}"
DURATION="${BENCH_DURATION:-15s}"
WARMUP="${BENCH_WARMUP:-3s}"
PER_PAGE=100
PAGES=$(((TUNNELS + PER_PAGE - 1) / PER_PAGE))
PG_HOST="${BENCH_PG_HOST:-127.0.0.1}"
PG_PORT="${BENCH_PG_PORT:-5432}"
PG_USER="${BENCH_PG_USER:-postgres}"
PG_ADMIN_DB="${BENCH_PG_ADMIN_DB:-test}"

# The command as it should be re-typed, with any non-default knob.
COMMAND=""
for knob in BENCH_TUNNELS BENCH_CONNECTIONS BENCH_THREADS BENCH_DURATION BENCH_WARMUP BENCH_NO_BUILD; do
    if [[ -n "${!knob:-}" ]]; then COMMAND+="$knob=${!knob} "; fi
done
COMMAND+="bash bench/api.sh $MODE"

RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS="$ROOT/bench/results/api-$RUN_ID"
BIN="$ROOT/target/release/culvert"

log() { printf '[api-bench] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---- cleanup: runs on every exit, success or not ----------------------------

SERVER_PID=""
CHILD_PID=""
PG_DB=""
FAILED_ROUTES=0
TMP_DIRS=()

psql_admin() {
    psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_ADMIN_DB" -v ON_ERROR_STOP=1 -qAt "$@"
}

stop_server() {
    local pid="$SERVER_PID"
    [[ -n "$pid" ]] || return 0
    SERVER_PID=""
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "server $pid ignored SIGTERM for 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

drop_database() {
    local db="$PG_DB"
    [[ -n "$db" ]] || return 0
    PG_DB=""
    psql_admin -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null ||
        log "warning: could not drop database $db"
}

# run_child CMD...: runs CMD in the background and waits for it, so that a
# signal reaches our trap at once instead of after a 15 s wrk run.
run_child() {
    "$@" &
    CHILD_PID=$!
    local rc=0
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    return "$rc"
}

cleanup() {
    local rc=$?
    if [[ -n "$CHILD_PID" ]]; then
        kill -TERM "$CHILD_PID" 2>/dev/null || true
        wait "$CHILD_PID" 2>/dev/null || true
    fi
    stop_server
    drop_database
    local d
    for d in "${TMP_DIRS[@]}"; do rm -rf -- "$d"; done
    TMP_DIRS=()
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- prerequisites ------------------------------------------------------------

ensure_wrk() {
    command -v wrk >/dev/null 2>&1 && return 0
    log "installing wrk from Debian"
    if [[ $(id -u) -ne 0 ]]; then die "wrk is missing; install it (apt-get install wrk) or run as root"; fi
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    command -v wrk >/dev/null 2>&1 || die "wrk did not install"
}

ensure_wrk
command -v python3 >/dev/null 2>&1 || die "python3 is required"
if [[ " ${BACKENDS[*]} " == *" postgres "* ]]; then
    command -v psql >/dev/null 2>&1 || die "psql is required for the PostgreSQL run"
    psql_admin -c "SELECT 1" >/dev/null || die "PostgreSQL is not reachable at $PG_HOST:$PG_PORT as $PG_USER (database $PG_ADMIN_DB)"
fi

if [[ -n "${BENCH_NO_BUILD:-}" ]]; then
    log "BENCH_NO_BUILD set: using the existing ${BIN#"$ROOT"/}"
else
    log "building: cargo build --release -p culvert"
    cargo build --release -p culvert
fi
[[ -x "$BIN" ]] || die "$BIN is missing (build it: cargo build --release -p culvert)"

mkdir -p "$RESULTS"
log "raw results: ${RESULTS#"$ROOT"/}"

# ---- run metadata -------------------------------------------------------------

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(GIT_OPTIONAL_LOCKS=0 git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    commit="$commit (with uncommitted changes)"
fi
META_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')" \
META_NPROC="$(nproc)" \
META_CPU="$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)" \
META_MEM="$(awk '/^MemTotal:/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo)" \
META_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)" \
META_BUILD="$([[ -n "${BENCH_NO_BUILD:-}" ]] && echo "existing target/release/culvert (not rebuilt)" || echo "\`cargo build --release -p culvert\`")" \
META_COMMIT="$commit" \
META_WRK="$(wrk --version 2>&1 | head -n 1 | cut -d' ' -f1-2 || true)" \
META_COMMAND="$COMMAND" \
    python3 - "$RESULTS/meta.json" "$TUNNELS" "$PAGES" "$CONNECTIONS" "$THREADS" "$DURATION" "$WARMUP" <<'PY'
import json, os, sys
out, tunnels, pages, conns, threads, duration, warmup = sys.argv[1:]
e = os.environ
json.dump({
    "date": e["META_DATE"], "nproc": int(e["META_NPROC"]), "cpu_model": e["META_CPU"] or "unknown CPU",
    "mem": e["META_MEM"], "loadavg": e["META_LOAD"], "commit": e["META_COMMIT"], "wrk": e["META_WRK"],
    "build": e["META_BUILD"],
    "command": e["META_COMMAND"], "tunnels": int(tunnels), "pages": int(pages),
    "connections": int(conns), "threads": int(threads), "duration": duration, "warmup": warmup,
    "backends": {},
}, open(out, "w"), indent=2)
PY

# meta_backend BACKEND KEY VALUE: records a per-backend fact in meta.json.
meta_backend() {
    python3 - "$RESULTS/meta.json" "$@" <<'PY'
import json, sys
path, backend, key, value = sys.argv[1:]
meta = json.load(open(path))
meta["backends"].setdefault(backend, {})[key] = value
json.dump(meta, open(path, "w"), indent=2)
PY
}

# ---- one backend -------------------------------------------------------------

start_server() { # BACKEND DATA_DIR OUT_FILE -> sets SERVER_PID, PORT
    local backend="$1" data_dir="$2" out="$3"
    local db_args=()
    if [[ "$backend" == postgres ]]; then
        PG_DB="culvert_bench_${RUN_ID,,}_$$"
        psql_admin -c "CREATE DATABASE \"$PG_DB\"" >/dev/null
        db_args=(--database-url "postgres://$PG_USER@$PG_HOST:$PG_PORT/$PG_DB")
    fi
    # Per-request info logs would dominate the measurement: warn only.
    "$BIN" server --log-level warn --data-dir "$data_dir" --api-listen 127.0.0.1:0 --edge-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 "${db_args[@]}" \
        >"$out" 2>"$RESULTS/$backend-server.log" &
    SERVER_PID=$!
    PORT=""
    for _ in $(seq 1 300); do
        PORT="$(sed -n 's|^culvert API listening on http://127\.0\.0\.1:\([0-9][0-9]*\)/client/v4$|\1|p' "$out")"
        [[ -n "$PORT" ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || {
            cat "$RESULTS/$backend-server.log" >&2
            die "the $backend server exited during start-up"
        }
        sleep 0.1
    done
    [[ -n "$PORT" ]] || die "the $backend server did not print its address within 30 s"
}

# run_wrk BACKEND ROUTE TOKEN ACCOUNT IDS_FILE
run_wrk() {
    local backend="$1" route="$2" token="$3" account="$4" ids="$5"
    local url="http://127.0.0.1:$PORT" raw="$RESULTS/$backend-$route.txt"
    local script_args=(-- "$route" "$token" "$account" "$ids" "$PAGES")
    run_child wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$LIB/api.lua" "$url" "${script_args[@]}" \
        >"$RESULTS/$backend-$route-warmup.txt" 2>&1 || die "wrk warm-up failed ($backend $route)"
    run_child wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$LIB/api.lua" "$url" "${script_args[@]}" \
        >"$raw" 2>&1 || {
        cat "$raw" >&2
        die "wrk failed ($backend $route)"
    }
    python3 "$LIB/report.py" parse "$raw" >"$RESULTS/$backend-$route.json" || {
        cat "$raw" >&2
        die "cannot parse wrk output ($backend $route)"
    }
    if python3 - "$RESULTS/$backend-$route.json" "$backend" "$route" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1]))
sock = sum(r["socket_errors"].values())
print(f"[api-bench] {sys.argv[2]:8} {sys.argv[3]:6} {r['rps']:10,.0f} req/s  p50 {r['p50_ms']:.3f} ms"
      f"  p99 {r['p99_ms']:.3f} ms  non-2xx {r['non_2xx']}  socket errors {sock}")
sys.exit(3 if r["non_2xx"] else 0)
PY
    then
        :
    else
        log "warning: $backend $route: the server answered non-2xx (see $raw)"
        FAILED_ROUTES=$((FAILED_ROUTES + 1))
    fi
}

run_backend() {
    local backend="$1"
    local tmp
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/culvert-api-bench.XXXXXX")"
    TMP_DIRS+=("$tmp")
    log "== $backend"
    start_server "$backend" "$tmp/data" "$tmp/server.out"
    log "server pid $SERVER_PID on 127.0.0.1:$PORT"

    local token account
    token="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api_token"])' "$tmp/data/bootstrap.json")"
    account="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["account_id"])' "$tmp/data/bootstrap.json")"

    local ids="$tmp/ids.txt" started seed_seconds
    log "seeding $TUNNELS tunnels"
    started=$(date +%s.%N)
    run_child python3 "$LIB/seed.py" --port "$PORT" --token "$token" --account "$account" \
        --count "$TUNNELS" --out "$ids" >&2 || die "seeding failed"
    seed_seconds=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$started" "$(date +%s.%N)")
    cp "$ids" "$RESULTS/$backend-ids.txt"

    if [[ "$backend" == postgres ]]; then
        local version
        version="$(psql_admin -c "SHOW server_version" | cut -d' ' -f1)"
        meta_backend "$backend" store "PostgreSQL $version on $PG_HOST:$PG_PORT (fresh database)"
    else
        meta_backend "$backend" store "SQLite (WAL), fresh file in ${TMPDIR:-/tmp}"
    fi
    meta_backend "$backend" seed_seconds "$seed_seconds"

    local route
    for route in status get list; do
        run_wrk "$backend" "$route" "$token" "$account" "$ids"
    done

    stop_server
    drop_database
    python3 "$LIB/report.py" write "$RESULTS" "$ROOT/BENCHMARKS.md" "$backend" >"$RESULTS/$backend-section.md"
    log "BENCHMARKS.md: $backend figures written"
}

for backend in "${BACKENDS[@]}"; do
    run_backend "$backend"
done

log "done; section as written:"
awk '/^## Control-plane API$/ {on = 1; print; next} on && /^## / {exit} on' "$ROOT/BENCHMARKS.md"
if ((FAILED_ROUTES > 0)); then
    die "$FAILED_ROUTES route run(s) had non-2xx answers; their figures are not valid (see $RESULTS)"
fi
