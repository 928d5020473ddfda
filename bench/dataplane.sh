#!/usr/bin/env bash
# Data-plane benchmark: culvert vs rathole vs bore vs direct, on loopback.
#
#   bash bench/dataplane.sh
#
# Starts nginx (Debian's package, generated config in a temp dir, port picked
# free) serving a 1 GiB file and a small static file, then, one path at a time:
#   direct   curl/wrk straight to nginx
#   culvert  release `culvert server` (API, QUIC edge, public HTTP listener on
#            127.0.0.1 port 0), a remotely managed tunnel routing a hostname to
#            nginx, `culvert tunnel run --token T`; requests go to the public
#            listener with that Host header
#   culvert_h2  the same with `culvert tunnel --protocol http2` (the HTTP/2
#            transport: TLS over TCP to the edge's port)
#   rathole  `rathole --server` / `rathole --client`, TCP forwarding of nginx
#   bore     `bore server` + `bore local` (control port 7835 is fixed by bore)
# and measures, for each: (a) one 1 GiB download, best of 3 (curl
# speed_download); (b) small GETs, wrk -t2 -c64 -d15s --latency after a warm-up;
# (c) VmRSS of the tunnel processes idle and peak during (a) and (b). Rewrites
# the `## Data plane (QUIC and HTTP/2 transports)` section of BENCHMARKS.md. Raw outputs:
# bench/results/dataplane-<time>/.
#
# Knobs (environment; defaults are the issue's): BENCH_TARGETS="direct culvert
# rathole bore" BENCH_CONNECTIONS=64 BENCH_THREADS=2 BENCH_DURATION=15s
# BENCH_WARMUP=3s BENCH_DOWNLOAD_TRIES=3 BENCH_FILE_MIB=1024 BENCH_SMALL_BYTES=1024
# BENCH_NO_BUILD=1 (use target/release/culvert as is) BENCH_NO_INSTALL=1 (never
# install wrk/nginx/rathole/bore). BENCH_PERF=1: after culvert's measured runs,
# perf-record the culvert server and connector (cpu-clock, DWARF call graphs)
# during one more wrk run and more downloads; culvert/perf/summary.txt has CPU
# per request, context switches and the samples grouped by subsystem.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LIB="$ROOT/bench/lib"
HELP="$LIB/dataplane.py"
export PYTHONDONTWRITEBYTECODE=1

case "${1:-}" in
    "") ;;
    -h | --help)
        awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *)
        echo "usage: bash bench/dataplane.sh   (knobs via environment; see --help)" >&2
        exit 2
        ;;
esac

read -r -a TARGETS <<<"${BENCH_TARGETS:-direct culvert culvert_h2 rathole bore}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
THREADS="${BENCH_THREADS:-2}"
DURATION="${BENCH_DURATION:-15s}"
WARMUP="${BENCH_WARMUP:-3s}"
TRIES="${BENCH_DOWNLOAD_TRIES:-3}"
FILE_MIB="${BENCH_FILE_MIB:-1024}"
SMALL_BYTES="${BENCH_SMALL_BYTES:-1024}"
FILE_BYTES=$((FILE_MIB * 1024 * 1024))
TUNNEL_HOST="bench.culvert.test"
BORE_CONTROL_PORT=7835 # fixed in bore (no flag to change it)
PERF_SECONDS=10

for t in "${TARGETS[@]}"; do
    case "$t" in
        direct | culvert | culvert_h2 | rathole | bore) ;;
        *)
            echo "BENCH_TARGETS: unknown path $t (direct culvert culvert_h2 rathole bore)" >&2
            exit 2
            ;;
    esac
done
want() { [[ " ${TARGETS[*]} " == *" $1 "* ]]; }

COMMAND=""
for knob in BENCH_TARGETS BENCH_CONNECTIONS BENCH_THREADS BENCH_DURATION BENCH_WARMUP \
    BENCH_DOWNLOAD_TRIES BENCH_FILE_MIB BENCH_SMALL_BYTES BENCH_NO_BUILD BENCH_NO_INSTALL BENCH_PERF; do
    if [[ -n "${!knob:-}" ]]; then COMMAND+="$knob=${!knob} "; fi
done
COMMAND+="bash bench/dataplane.sh"

RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS="$ROOT/bench/results/dataplane-$RUN_ID"
BIN="$ROOT/target/release/culvert"

log() { printf '[dataplane] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---- cleanup: runs on every exit, success or not ----------------------------

# Every background process we start, as "label pid", stopped in reverse order.
PROCS=()
CHILD_PID=""
SAMPLER_PID=""
TMP=""
FAILED=0
INSTALL_NOTES=""
POLICY_ADDED="" # a policy-rc.d we created for an apt install, removed on exit

stop_pid() { # PID LABEL: SIGTERM, 10 s grace, then SIGKILL
    local pid="$1" label="$2"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$label ($pid) ignored SIGTERM for 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

# stop_procs [KEEP]: stops the processes started after the first KEEP ones.
stop_procs() {
    local keep="${1:-0}" i
    for ((i = ${#PROCS[@]} - 1; i >= keep; i--)); do
        stop_pid "${PROCS[i]##* }" "${PROCS[i]% *}"
        unset 'PROCS[i]'
    done
    PROCS=("${PROCS[@]}")
}

# spawn LABEL OUT ERR CMD...: starts CMD in the background; sets SPAWNED.
spawn() {
    local label="$1" out="$2" err="$3"
    shift 3
    "$@" >"$out" 2>"$err" &
    SPAWNED=$!
    PROCS+=("$label $SPAWNED")
}

# run_child CMD...: runs CMD in the background and waits for it, so that a
# signal reaches our trap at once instead of after a long curl or wrk run.
run_child() {
    "$@" &
    CHILD_PID=$!
    local rc=0
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    return "$rc"
}

stop_sampler() {
    local pid="$SAMPLER_PID"
    [[ -n "$pid" ]] || return 0
    SAMPLER_PID=""
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    if [[ -n "$CHILD_PID" ]]; then
        kill -TERM "$CHILD_PID" 2>/dev/null || true
        wait "$CHILD_PID" 2>/dev/null || true
    fi
    stop_sampler
    stop_procs 0
    if [[ -n "$TMP" ]]; then rm -rf -- "$TMP"; fi
    if [[ -n "$POLICY_ADDED" ]]; then rm -f -- "$POLICY_ADDED"; fi
    exit "$rc"
}
trap cleanup EXIT
# A command that fails outside die() (set -e) still says where.
set -E
trap 'log "error: command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- prerequisites ------------------------------------------------------------

apt_install() { # PACKAGE COMMAND
    command -v "$2" >/dev/null 2>&1 && return 0
    [[ -z "${BENCH_NO_INSTALL:-}" ]] || die "$2 is missing (apt-get install $1)"
    [[ $(id -u) -eq 0 ]] || die "$2 is missing; install it (apt-get install $1) or run as root"
    log "installing $1 from Debian"
    apt-get update -qq >/dev/null
    # Never let the package start a system-wide service (nginx would take
    # port 80): a policy-rc.d that denies starts, only while we install.
    local policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        POLICY_ADDED="$policy"
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null || rc=$?
    if [[ -n "$POLICY_ADDED" ]]; then
        rm -f -- "$POLICY_ADDED"
        POLICY_ADDED=""
    fi
    ((rc == 0)) || die "apt-get install $1 failed"
    command -v "$2" >/dev/null 2>&1 || die "$1 did not install $2"
}

cargo_install() { # CRATE COMMAND
    command -v "$2" >/dev/null 2>&1 && return 0
    [[ -z "${BENCH_NO_INSTALL:-}" ]] || die "$2 is missing (cargo install $1 --locked)"
    log "installing $1 from crates.io (cargo install $1 --locked)"
    if ! cargo install "$1" --locked; then
        # rathole 0.5.0's lock file pins time 0.3.x < 0.3.35, which current
        # rustc rejects (E0282): retry with semver-compatible newer deps.
        log "cargo install $1 --locked failed; retrying without --locked"
        cargo install "$1" || die "cargo install $1 failed"
        INSTALL_NOTES+="$1 installed without --locked (its lock file does not build with $(rustc --version | cut -d' ' -f1-2)); "
    fi
    command -v "$2" >/dev/null 2>&1 || die "$2 is not on PATH after cargo install (add ~/.cargo/bin)"
}

export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
command -v python3 >/dev/null 2>&1 || die "python3 is required"
apt_install curl curl
apt_install wrk wrk
apt_install nginx nginx
want rathole && cargo_install rathole rathole
want bore && cargo_install bore-cli bore
NGINX="$(command -v nginx)"

if want bore && ! python3 "$HELP" port-free "$BORE_CONTROL_PORT"; then
    die "bore's fixed control port $BORE_CONTROL_PORT is in use; free it or run without bore (BENCH_TARGETS=\"direct culvert rathole\")"
fi

if want culvert || want culvert_h2; then
    if [[ -n "${BENCH_NO_BUILD:-}" ]]; then
        log "BENCH_NO_BUILD set: using the existing ${BIN#"$ROOT"/}"
    else
        log "building: cargo build --release -p culvert"
        cargo build --release -p culvert
    fi
    [[ -x "$BIN" ]] || die "$BIN is missing (build it: cargo build --release -p culvert)"
fi
if [[ -n "${BENCH_PERF:-}" ]]; then
    command -v perf >/dev/null 2>&1 || die "BENCH_PERF needs perf (apt-get install linux-perf)"
fi

mkdir -p "$RESULTS"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/culvert-dataplane.XXXXXX")"
log "raw results: ${RESULTS#"$ROOT"/}; scratch: $TMP"

# ---- run metadata -------------------------------------------------------------

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(GIT_OPTIONAL_LOCKS=0 git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    commit="$commit (with uncommitted changes)"
fi
version_of() { "$@" 2>&1 | head -n 1 || true; }
META_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')" \
META_NPROC="$(nproc)" \
META_CPU="$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)" \
META_MEM="$(awk '/^MemTotal:/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo)" \
META_KERNEL="$(uname -r)" \
META_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)" \
META_BUILD="$([[ -n "${BENCH_NO_BUILD:-}" ]] && echo "existing target/release/culvert (not rebuilt)" || echo "\`cargo build --release -p culvert\`")" \
META_COMMIT="$commit" \
META_V_CULVERT="$(if want culvert || want culvert_h2; then version_of "$BIN" --version | sed 's/^culvert //'; else echo "not run"; fi), git $commit" \
META_V_RATHOLE="$(if want rathole; then echo "rathole $(rathole --version 2>&1 | sed -n 's/^Build Version: *//p' | head -n 1)"; else echo "rathole not run"; fi)" \
META_V_BORE="$(if want bore; then version_of bore --version; else echo "bore not run"; fi)" \
META_V_NGINX="$(version_of "$NGINX" -v | sed 's/^nginx version: //')" \
META_V_WRK="$(version_of wrk --version | cut -d' ' -f1-2)" \
META_V_CURL="$(version_of curl --version | cut -d' ' -f1-2)" \
META_COMMAND="$COMMAND" \
    python3 - "$RESULTS/meta.json" "$CONNECTIONS" "$THREADS" "$DURATION" "$WARMUP" "$TRIES" "$FILE_MIB" "$SMALL_BYTES" <<'PY'
import json, os, sys
out, conns, threads, duration, warmup, tries, mib, small = sys.argv[1:]
e = os.environ
mib = int(mib)
json.dump({
    "date": e["META_DATE"], "nproc": int(e["META_NPROC"]), "cpu_model": e["META_CPU"] or "unknown CPU",
    "mem": e["META_MEM"], "kernel": e["META_KERNEL"], "loadavg_start": e["META_LOAD"],
    "commit": e["META_COMMIT"], "build": e["META_BUILD"], "command": e["META_COMMAND"],
    "versions": {"culvert": e["META_V_CULVERT"], "rathole": e["META_V_RATHOLE"], "bore": e["META_V_BORE"],
                 "nginx": e["META_V_NGINX"], "wrk": e["META_V_WRK"], "curl": e["META_V_CURL"]},
    "connections": int(conns), "threads": int(threads), "duration": duration, "warmup": warmup,
    "download_tries": int(tries), "file_mib": mib,
    "file_label": f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB",
    "small_bytes": int(small), "nginx_workers": "auto", "ha_connections": 4, "exceptions": "",
}, open(out, "w"), indent=2)
PY

meta_set() { # KEY VALUE
    python3 - "$RESULTS/meta.json" "$@" <<'PY'
import json, sys
path, key, value = sys.argv[1:]
meta = json.load(open(path))
meta[key] = value
json.dump(meta, open(path, "w"), indent=2)
PY
}

# ---- helpers -----------------------------------------------------------------

free_ports() { python3 "$HELP" ports "$1"; }
jget() { python3 "$HELP" json "$1" "$2"; }

# wait_200 URL HOST WHAT PID...: polls until URL answers 200 (60 s), failing
# early when one of the PIDs exits.
wait_200() {
    local url="$1" host="$2" what="$3" code pid
    shift 3
    for _ in $(seq 1 600); do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H "Host: $host" "$url" || true)"
        [[ "$code" == 200 ]] && return 0
        for pid in "$@"; do
            kill -0 "$pid" 2>/dev/null || die "$what: process $pid exited before the path answered (see $RESULTS)"
        done
        sleep 0.1
    done
    die "$what: $url (Host: $host) did not answer 200 within 60 s (last: $code)"
}

# ---- nginx origin --------------------------------------------------------------

start_nginx() {
    local dir="$TMP/nginx"
    mkdir -p "$dir/www" "$dir/tmp"
    # Workers may run as nobody when we are root: let them read the files.
    chmod 0755 "$TMP" "$dir" "$dir/www"
    log "writing the origin files: ${FILE_MIB} MiB of random bytes, ${SMALL_BYTES}-byte small file"
    head -c "$FILE_BYTES" /dev/urandom >"$dir/www/big.bin"
    head -c "$SMALL_BYTES" /dev/zero | tr '\0' 'x' >"$dir/www/small.txt"
    chmod 0644 "$dir/www/big.bin" "$dir/www/small.txt"
    NGINX_PORT="$(free_ports 1)"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    types { text/plain txt; }
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $dir/www;
        location / { }
    }
}
EOF
    cp "$dir/nginx.conf" "$RESULTS/nginx.conf"
    "$NGINX" -t -p "$dir" -c "$dir/nginx.conf" >"$RESULTS/nginx-t.log" 2>&1 || {
        cat "$RESULTS/nginx-t.log" >&2
        die "nginx rejected the generated config"
    }
    spawn nginx "$RESULTS/nginx.out" "$RESULTS/nginx.err" "$NGINX" -p "$dir" -c "$dir/nginx.conf"
    wait_200 "http://127.0.0.1:$NGINX_PORT/small.txt" "127.0.0.1:$NGINX_PORT" nginx "$SPAWNED"
    log "nginx (pid $SPAWNED) on 127.0.0.1:$NGINX_PORT"
}

# ---- the paths -----------------------------------------------------------------
# Each start_* sets URL_BASE, HOST and RSS_PIDS ("label=pid" ...).

start_direct() {
    URL_BASE="http://127.0.0.1:$NGINX_PORT"
    HOST="127.0.0.1:$NGINX_PORT"
    RSS_PIDS=()
}

start_culvert() { # [TARGET PROTOCOL]
    local t="${1:-culvert}" protocol="${2:-quic}"
    local data="$TMP/$t-data" out="$RESULTS/$t/server.out"
    "$BIN" --version >/dev/null
    spawn culvert-server "$out" "$RESULTS/$t/server.log" \
        "$BIN" server --api-listen 127.0.0.1:0 --edge-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
        --log-level warn --data-dir "$data"
    local server_pid="$SPAWNED" line=""
    for _ in $(seq 1 300); do
        line="$(grep -m1 '^culvert edge listening on ' "$out" || true)"
        [[ -n "$line" ]] && break
        kill -0 "$server_pid" 2>/dev/null || {
            cat "$RESULTS/$t/server.log" >&2
            die "culvert server exited during start-up"
        }
        sleep 0.1
    done
    [[ -n "$line" ]] || die "culvert server did not print its addresses within 30 s"
    local api quic http
    api="$(sed -n 's|^culvert API listening on \(http://[^ ]*\)$|\1|p' "$out")"
    quic="$(sed -n 's|^culvert edge listening on \([^ ]*\) (QUIC), public HTTP on \([^ ]*\)$|\1|p' "$out")"
    http="$(sed -n 's|^culvert edge listening on \([^ ]*\) (QUIC), public HTTP on \([^ ]*\)$|\2|p' "$out")"
    [[ -n "$api" && -n "$quic" && -n "$http" ]] || die "cannot parse the server's addresses from $out"
    log "culvert server pid $server_pid: API $api, edge $quic (QUIC), public HTTP $http"

    local token account
    token="$(jget "$data/bootstrap.json" api_token)"
    account="$(jget "$data/bootstrap.json" account_id)"
    local auth=(-H "Authorization: Bearer $token" -H 'Content-Type: application/json')
    curl -sS --fail-with-body "${auth[@]}" -X POST "$api/accounts/$account/cfd_tunnel" \
        -d '{"name": "dataplane-bench", "config_src": "cloudflare"}' >"$RESULTS/$t/tunnel.json" ||
        die "creating the tunnel failed: $(cat "$RESULTS/$t/tunnel.json")"
    local tunnel_id tunnel_token
    tunnel_id="$(jget "$RESULTS/$t/tunnel.json" result.id)"
    tunnel_token="$(jget "$RESULTS/$t/tunnel.json" result.token)"
    curl -sS --fail-with-body "${auth[@]}" -X PUT "$api/accounts/$account/cfd_tunnel/$tunnel_id/configurations" \
        -d "{\"config\": {\"ingress\": [
              {\"hostname\": \"$TUNNEL_HOST\", \"service\": \"http://127.0.0.1:$NGINX_PORT\"},
              {\"service\": \"http_status:404\"}]}}" >"$RESULTS/$t/configuration.json" ||
        die "PUT configurations failed: $(cat "$RESULTS/$t/configuration.json")"

    local ca="$data/edge-ca.pem"
    if [[ ! -f "$ca" ]]; then
        ca="$(find "$data" -maxdepth 1 -name '*ca*.pem' ! -name '*key*' | head -n 1)"
        [[ -n "$ca" ]] || die "no edge CA (*ca*.pem) in the data dir $data"
        log "note: the edge CA is $(basename "$ca"), not edge-ca.pem"
    fi
    spawn culvert-connector "$RESULTS/$t/connector.out" "$RESULTS/$t/connector.log" \
        "$BIN" --log-level warn tunnel --protocol "$protocol" --edge "$quic" --cacert "$ca" run --token "$tunnel_token"
    local connector_pid="$SPAWNED"
    URL_BASE="http://$http"
    HOST="$TUNNEL_HOST"
    wait_200 "$URL_BASE/small.txt" "$HOST" "$t" "$server_pid" "$connector_pid"
    log "culvert connector pid $connector_pid; tunnel $tunnel_id answers through $http"
    RSS_PIDS=("server=$server_pid" "connector=$connector_pid")
    CULVERT_SERVER_PID="$server_pid"
    CULVERT_CONNECTOR_PID="$connector_pid"
}

start_culvert_h2() { start_culvert culvert_h2 http2; }

start_rathole() {
    local dir="$TMP/rathole" ctrl pub secret
    mkdir -p "$dir"
    { read -r ctrl && read -r pub; } < <(free_ports 2) || die "cannot pick free ports"
    secret="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    cat >"$dir/server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$ctrl"
default_token = "$secret"

[server.services.origin]
bind_addr = "127.0.0.1:$pub"
EOF
    cat >"$dir/client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$ctrl"
default_token = "$secret"

[client.services.origin]
local_addr = "127.0.0.1:$NGINX_PORT"
EOF
    sed "s/$secret/<random>/" "$dir/server.toml" >"$RESULTS/rathole/server.toml"
    sed "s/$secret/<random>/" "$dir/client.toml" >"$RESULTS/rathole/client.toml"
    spawn rathole-server "$RESULTS/rathole/server.out" "$RESULTS/rathole/server.log" rathole --server "$dir/server.toml"
    local server_pid="$SPAWNED"
    spawn rathole-client "$RESULTS/rathole/client.out" "$RESULTS/rathole/client.log" rathole --client "$dir/client.toml"
    local client_pid="$SPAWNED"
    URL_BASE="http://127.0.0.1:$pub"
    HOST="127.0.0.1:$pub"
    wait_200 "$URL_BASE/small.txt" "$HOST" rathole "$server_pid" "$client_pid"
    log "rathole server pid $server_pid (control 127.0.0.1:$ctrl), client pid $client_pid; public 127.0.0.1:$pub"
    RSS_PIDS=("server=$server_pid" "client=$client_pid")
}

start_bore() {
    local pub
    pub="$(free_ports 1)"
    python3 "$HELP" port-free "$BORE_CONTROL_PORT" || die "bore's control port $BORE_CONTROL_PORT is taken"
    # bore's control port is fixed at 7835; --bind-addr keeps it (and the
    # tunnel port) on loopback, when this bore has the flag.
    local bind=()
    if bore server --help 2>&1 | grep -q -- '--bind-addr'; then bind+=(--bind-addr 127.0.0.1); fi
    if bore server --help 2>&1 | grep -q -- '--bind-tunnels'; then bind+=(--bind-tunnels 127.0.0.1); fi
    # The secret goes through the environment (BORE_SECRET), not argv.
    BORE_SECRET="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    export BORE_SECRET
    spawn bore-server "$RESULTS/bore/server.out" "$RESULTS/bore/server.log" \
        bore server --min-port "$pub" --max-port "$pub" "${bind[@]}"
    local server_pid="$SPAWNED"
    for _ in $(seq 1 100); do
        python3 "$HELP" port-free "$BORE_CONTROL_PORT" || break
        sleep 0.1
    done
    spawn bore-local "$RESULTS/bore/local.out" "$RESULTS/bore/local.log" \
        bore local "$NGINX_PORT" --local-host 127.0.0.1 --to 127.0.0.1 --port "$pub"
    local local_pid="$SPAWNED"
    URL_BASE="http://127.0.0.1:$pub"
    HOST="127.0.0.1:$pub"
    wait_200 "$URL_BASE/small.txt" "$HOST" bore "$server_pid" "$local_pid"
    log "bore server pid $server_pid (control port $BORE_CONTROL_PORT${bind:+, ${bind[*]}}), local pid $local_pid; public 127.0.0.1:$pub"
    RSS_PIDS=("server=$server_pid" "local=$local_pid")
}

# ---- measuring -------------------------------------------------------------------

start_sampler() { # OUT
    if ((${#RSS_PIDS[@]} == 0)); then return 0; fi
    python3 "$HELP" sample "$1" "${RSS_PIDS[@]}" &
    SAMPLER_PID=$!
}

record_idle() { # OUT
    local pair label pid kb json="{"
    for pair in "${RSS_PIDS[@]}"; do
        label="${pair%%=*}"
        pid="${pair#*=}"
        kb="$(python3 "$HELP" rss "$pid")" || die "cannot read VmRSS of $label ($pid)"
        json+="\"$label\": $kb, "
    done
    json="${json%, }}"
    printf '%s\n' "$json" >"$1"
}

measure() { # TARGET
    local t="$1" dir="$RESULTS/$1" i rc
    record_idle "$dir/idle.json"

    log "$t: (a) ${FILE_MIB} MiB download x $TRIES"
    start_sampler "$dir/rss-download.json"
    for i in $(seq 1 "$TRIES"); do
        rc=0
        run_child curl -s -o /dev/null --max-time 900 -H "Host: $HOST" \
            -w '%{http_code} %{size_download} %{speed_download} %{time_total}' \
            "$URL_BASE/big.bin" >"$dir/download-$i.txt" 2>"$dir/download-$i.err" || rc=$?
        echo " $rc" >>"$dir/download-$i.txt"
        read -r code size speed _ <"$dir/download-$i.txt"
        log "$t:     try $i: HTTP $code, $size bytes, $(python3 -c "print(f'{float(\"${speed:-0}\") / 1e6:,.1f}')") MB/s (curl exit $rc)"
    done
    stop_sampler

    log "$t: (b) wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (after a $WARMUP warm-up)"
    local url="$URL_BASE/small.txt"
    run_child wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -H "Host: $HOST" "$url" \
        >"$dir/wrk-warmup.txt" 2>&1 || die "wrk warm-up failed ($t)"
    start_sampler "$dir/rss-wrk.json"
    run_child wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Host: $HOST" "$url" \
        >"$dir/wrk.txt" 2>&1 || {
        cat "$dir/wrk.txt" >&2
        die "wrk failed ($t)"
    }
    stop_sampler
    python3 "$LIB/report.py" parse "$dir/wrk.txt" >"$dir/wrk.json" || {
        cat "$dir/wrk.txt" >&2
        die "cannot parse wrk output ($t)"
    }
    python3 - "$dir/wrk.json" "$t" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1]))
sock = sum(r["socket_errors"].values())
print(f"[dataplane] {sys.argv[2]}:     {r['rps']:,.0f} req/s  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms"
      f"  non-2xx {r['non_2xx']}  socket errors {sock}")
PY

    rc=0
    python3 "$HELP" assemble "$dir" "$FILE_BYTES" "$RESULTS/$t.json" || rc=$?
    if ((rc != 0)); then
        log "warning: $t: a download failed or was short (see $dir)"
        FAILED=$((FAILED + 1))
    fi
    if [[ "$(jget "$dir/wrk.json" non_2xx)" != 0 ]]; then
        log "warning: $t: non-2xx answers under wrk (see $dir/wrk.txt)"
        FAILED=$((FAILED + 1))
    fi
}

# perf_culvert: profiles the culvert server and connector during one more wrk
# run and more downloads (not the measured ones: perf perturbs them). Call
# graphs are DWARF-unwound (release builds have no frame pointers); besides
# perf's own report, perf_summary.py groups the samples by subsystem, and
# perf stat counts CPU time and context switches per process.
perf_culvert() {
    local dir="$RESULTS/culvert/perf" phase who load_pid
    mkdir -p "$dir"
    for phase in wrk download; do
        log "culvert: perf ($phase, ${PERF_SECONDS} s) of the server and the connector"
        if [[ $phase == wrk ]]; then
            wrk -t"$THREADS" -c"$CONNECTIONS" -d"$((PERF_SECONDS + 3))s" --latency -H "Host: $HOST" \
                "$URL_BASE/small.txt" >"$dir/wrk.txt" 2>&1 &
        else
            timeout "$((PERF_SECONDS + 3))" bash -c 'while :; do curl -s -o /dev/null -H "Host: $1" \
                -w "%{speed_download}\n" "$2"; done' _ "$HOST" "$URL_BASE/big.bin" >"$dir/download.txt" 2>&1 &
        fi
        load_pid=$!
        CHILD_PID=$load_pid
        sleep 1
        local pids=()
        for who in server connector; do
            local pid="$CULVERT_SERVER_PID"
            [[ $who == connector ]] && pid="$CULVERT_CONNECTOR_PID"
            perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$pid" -o "$dir/$who-$phase.data" \
                -- sleep "$PERF_SECONDS" >"$dir/$who-$phase.record.log" 2>&1 &
            pids+=($!)
            perf stat -e task-clock,context-switches,cpu-migrations -p "$pid" -o "$dir/$who-$phase.stat.txt" \
                -- sleep "$PERF_SECONDS" >/dev/null 2>&1 &
            pids+=($!)
        done
        wait "${pids[@]}" || log "warning: perf failed (see $dir)"
        wait "$load_pid" || true
        CHILD_PID=""
        for who in server connector; do
            perf report -i "$dir/$who-$phase.data" --no-children --percent-limit 2 --stdio \
                >"$dir/$who-$phase.report.txt" 2>/dev/null || true
            perf script -i "$dir/$who-$phase.data" -F ip,sym 2>/dev/null |
                python3 "$LIB/perf_summary.py" >"$dir/$who-$phase.summary.txt" || true
        done
    done
    python3 - "$dir" "$PERF_SECONDS" <<'PY' >"$dir/summary.txt"
import re, sys
from pathlib import Path
d, secs = Path(sys.argv[1]), float(sys.argv[2])
wrk = (d / "wrk.txt").read_text() if (d / "wrk.txt").exists() else ""
m = re.search(r"^Requests/sec:\s+([0-9.]+)", wrk, re.M)
rps = float(m.group(1)) if m else None
for phase in ("wrk", "download"):
    for who in ("server", "connector"):
        st = (d / f"{who}-{phase}.stat.txt")
        text = st.read_text() if st.exists() else ""
        ms = re.search(r"([0-9.,]+)\s+msec task-clock", text)
        cs = re.search(r"([0-9,]+)\s+context-switches", text)
        cpu = float(ms.group(1).replace(",", "")) / 1000 / secs if ms else None
        ctx = int(cs.group(1).replace(",", "")) / secs if cs else None
        line = f"{phase:8} {who:9} CPU {cpu:.2f} cores" if cpu is not None else f"{phase:8} {who:9} CPU n/a"
        if ctx is not None:
            line += f", {ctx:,.0f} context switches/s"
        if phase == "wrk" and rps and cpu is not None:
            line += f", {cpu / rps * 1e6:.0f} µs CPU and {ctx / rps:.1f} context switches per request at {rps:,.0f} req/s"
        print(line)
for phase in ("wrk", "download"):
    for who in ("server", "connector"):
        f = d / f"{who}-{phase}.summary.txt"
        if f.exists():
            print(f"\n== {who}, {phase}: samples by subsystem")
            print(f.read_text().rstrip())
PY
    log "culvert: perf reports in ${dir#"$ROOT"/} (summary.txt first)"
}

# ---- the run ---------------------------------------------------------------------

start_nginx
NGINX_PROCS=${#PROCS[@]}

for t in direct culvert culvert_h2 rathole bore; do
    want "$t" || continue
    log "== $t"
    mkdir -p "$RESULTS/$t"
    "start_$t"
    measure "$t"
    if [[ $t == culvert && -n "${BENCH_PERF:-}" ]]; then perf_culvert; fi
    stop_procs "$NGINX_PROCS"
done
if want bore; then
    meta_set exceptions "bore's control port $BORE_CONTROL_PORT (fixed by bore; checked free before the run)"
fi
if [[ -n "$INSTALL_NOTES" ]]; then meta_set install_notes "${INSTALL_NOTES%; }"; fi
meta_set loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"

python3 "$HELP" write "$RESULTS" "$ROOT/BENCHMARKS.md" >"$RESULTS/section.md"
log "done; section as written:"
cat "$RESULTS/section.md"
if ((FAILED > 0)); then
    die "$FAILED measurement(s) had failed downloads or non-2xx answers; their figures are not valid (see $RESULTS)"
fi
