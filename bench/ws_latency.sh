#!/usr/bin/env bash
# WebSocket message round trip: through culvert (public listener → edge →
# QUIC → connector → origin) versus straight to the origin, in one run.
#
#   bash bench/ws_latency.sh
#
# Runs the measurement in crates/culvert/tests/ws_latency.rs in a release
# build (`cargo test --release -p culvert --test ws_latency -- --ignored`):
# a real server and connector in process, a tokio-tungstenite echo origin,
# 2,000 round trips of a 32-byte binary message on one WebSocket after 200
# warm-up rounds, per path. Rewrites the `## WebSocket round trip` section of
# BENCHMARKS.md; the raw output goes to bench/results/ws-latency-<time>.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p bench/results
RAW="bench/results/ws-latency-$(date -u +%Y%m%dT%H%M%SZ).txt"
cargo test --release -p culvert --test ws_latency -- --ignored --nocapture >"$RAW" 2>&1 || {
    cat "$RAW" >&2
    exit 1
}
python3 - "$RAW" "$ROOT/BENCHMARKS.md" <<'PY'
import re, sys, datetime, os
raw, md = sys.argv[1], sys.argv[2]
rows = []
for line in open(raw):
    m = re.match(r"^(direct|through the tunnel): (\d+) round trips, p50 (\S+), p90 (\S+), p99 (\S+), mean (\S+)$", line.strip())
    if m:
        rows.append(m.groups())
if len(rows) != 2:
    sys.exit(f"expected two result lines in {raw}")
load = open("/proc/loadavg").read().split()[:3]
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
section = ["## WebSocket round trip", "",
           f"`bash bench/ws_latency.sh` at {now} on {os.cpu_count()} CPUs (load average when the figures were written: {' '.join(load)}).",
           "One WebSocket, 2,000 round trips of a 32-byte binary message after 200 warm-up rounds,",
           "echoed by a tokio-tungstenite origin; the tunnel path is the public listener, the edge,",
           "QUIC to `culvert tunnel run` and the origin, all on loopback in one process.", "",
           "| Path | Round trips | p50 | p90 | p99 | mean |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
for name, n, p50, p90, p99, mean in rows:
    label = "direct to the origin" if name == "direct" else "through culvert (QUIC)"
    section.append(f"| {label} | {int(n):,} | {p50} | {p90} | {p99} | {mean} |")
section.append("")
text = open(md).read().splitlines()
start = next((i for i, l in enumerate(text) if l.rstrip() == "## WebSocket round trip"), None)
if start is None:
    text += [""] + section
else:
    end = next((i for i in range(start + 1, len(text)) if text[i].startswith("## ")), len(text))
    text[start:end] = section
open(md, "w").write("\n".join(text).rstrip("\n") + "\n")
print("\n".join(section))
PY
