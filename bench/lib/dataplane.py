#!/usr/bin/env python3
"""Helpers of bench/dataplane.sh. Stdlib only; reuses report.py's wrk parser.

    dataplane.py ports N                     N distinct free 127.0.0.1 TCP ports, one a line
    dataplane.py port-free PORT              exit 0 when PORT can be bound on 0.0.0.0 and 127.0.0.1
    dataplane.py json FILE KEY[.KEY...]      print one value of a JSON file
    dataplane.py rss PID                     VmRSS of PID in KiB
    dataplane.py sample OUT LABEL=PID...     sample VmRSS every 100 ms until SIGTERM/SIGINT,
                                             then write {label: {peak_kb, last_kb, samples}} to OUT
    dataplane.py assemble DIR EXPECTED_BYTES OUT
                                             fold DIR's raw files (download-N.txt, idle.json,
                                             rss-download.json, rss-wrk.json, wrk.json) into OUT
    dataplane.py write RESULTS_DIR BENCHMARKS_MD
                                             rewrite the `## Data plane (QUIC and HTTP/2 transports)` section

`write` reads RESULTS_DIR/meta.json and RESULTS_DIR/<target>.json (targets:
direct, culvert, rathole, bore) and replaces only its own section of
BENCHMARKS_MD (appended at the end when missing); every other section is kept
byte for byte.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import FILE_HEADER, errors_cell, fmt_ms  # noqa: E402  (shared with api.sh)

SECTION = "## Data plane (QUIC and HTTP/2 transports)"
TARGETS = [
    ("direct", "direct to nginx"),
    ("culvert", "culvert (edge + connector, QUIC)"),
    ("culvert_h2", "culvert (edge + connector, HTTP/2 transport)"),
    ("rathole", "rathole (TCP transport)"),
    ("bore", "bore"),
]
# Processes whose memory is reported, with their rathole counterpart.
PROCESSES = [
    ("culvert", "server", "culvert server (edge + public listener)", ("rathole", "server")),
    ("culvert", "connector", "culvert connector (`culvert tunnel run`)", ("rathole", "client")),
    ("culvert_h2", "server", "culvert server, HTTP/2 transport", ("rathole", "server")),
    ("culvert_h2", "connector", "culvert connector, `--protocol http2`", ("rathole", "client")),
    ("rathole", "server", "rathole server", None),
    ("rathole", "client", "rathole client", None),
    ("bore", "server", "bore server", None),
    ("bore", "local", "bore local (client)", None),
]
DOWNLOAD_TARGET = 1.5  # culvert MB/s >= 1.5 x rathole's


# ---- small tools ------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """Binds n sockets at once (so the ports differ), then releases them."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(port: int) -> bool:
    for host in ("0.0.0.0", "127.0.0.1"):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def vm_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def sample(out: str, pairs: list[str]) -> int:
    pids = {}
    for p in pairs:
        label, _, pid = p.partition("=")
        pids[label] = int(pid)
    stats = {label: {"peak_kb": 0, "last_kb": None, "samples": 0} for label in pids}
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop:
        for label, pid in pids.items():
            kb = vm_rss_kb(pid)
            if kb is not None:
                st = stats[label]
                st["peak_kb"] = max(st["peak_kb"], kb)
                st["last_kb"] = kb
                st["samples"] += 1
        time.sleep(0.1)
    Path(out).write_text(json.dumps(stats, indent=2))
    return 0


def json_get(path: str, key: str) -> str:
    v = json.loads(Path(path).read_text())
    for k in key.split("."):
        v = v[int(k)] if isinstance(v, list) else v[k]
    return v if isinstance(v, str) else json.dumps(v)


def assemble(d: Path, expected: int, out: Path) -> int:
    """One target's JSON from the raw files the shell wrote."""
    res: dict = {}
    tries = []
    for f in sorted(d.glob("download-*.txt"), key=lambda p: int(p.stem.split("-")[1])):
        # curl -w '%{http_code} %{size_download} %{speed_download} %{time_total}', then curl's exit code
        parts = f.read_text().split()
        t = {"ok": False, "why": "no output"}
        if len(parts) >= 5:
            code, size, speed, total, rc = parts[:5]
            t = {"http_code": int(code), "bytes": int(float(size)), "speed_bps": float(speed),
                 "seconds": float(total), "curl_exit": int(rc)}
            if rc != "0":
                t.update(ok=False, why=f"curl exit {rc}")
            elif int(code) != 200:
                t.update(ok=False, why=f"HTTP {code}")
            elif t["bytes"] != expected:
                t.update(ok=False, why=f"{t['bytes']} of {expected} bytes")
            else:
                t["ok"] = True
        tries.append(t)
    if tries:
        ok = [t["speed_bps"] for t in tries if t["ok"]]
        res["download"] = {"tries": tries, "best_bps": max(ok) if ok else None}
    if (d / "wrk.json").exists():
        res["wrk"] = json.loads((d / "wrk.json").read_text())
    rss: dict = {}
    if (d / "idle.json").exists():
        for label, kb in json.loads((d / "idle.json").read_text()).items():
            rss.setdefault(label, {})["idle_kb"] = kb
    for phase in ("download", "wrk"):
        f = d / f"rss-{phase}.json"
        if f.exists():
            for label, st in json.loads(f.read_text()).items():
                rss.setdefault(label, {})[f"{phase}_peak_kb"] = st["peak_kb"] or None
    if rss:
        res["rss"] = rss
    out.write_text(json.dumps(res, indent=2))
    return 0 if all(t["ok"] for t in tries) else 3


# ---- writing BENCHMARKS.md --------------------------------------------------


def fmt_mb(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1e6:,.0f}" if bytes_per_s >= 100e6 else f"{bytes_per_s / 1e6:,.1f}"


def fmt_x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}×"


def fmt_mib(kb: int | None) -> str:
    if not kb:
        return "n/a"
    return f"{kb / 1024:.1f} MiB"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def download_table(meta: dict, res: dict[str, dict]) -> list[str]:
    lines = [
        f"### (a) One {meta['file_label']} download",
        "",
        f"`curl -o /dev/null -w '%{{speed_download}}'`, one connection, best of {meta['download_tries']}; "
        "MB/s = 10^6 bytes/s. The vs-rathole column divides by rathole's best.",
        "",
        "| Path | MB/s (best) | Every try (MB/s) | vs rathole |",
        "| --- | ---: | --- | ---: |",
    ]
    base = res.get("rathole", {}).get("download", {}).get("best_bps")
    for key, label in TARGETS:
        d = res.get(key, {}).get("download")
        if not d:
            lines.append(f"| {label} | n/a | not run | n/a |")
            continue
        tries = ", ".join(fmt_mb(t["speed_bps"]) if t["ok"] else f"failed ({t['why']})" for t in d["tries"])
        best = d.get("best_bps")
        lines.append(
            f"| {label} | {fmt_mb(best) if best else 'n/a'} | {tries} | {fmt_x(ratio(best, base))} |"
        )
    r = ratio(res.get("culvert", {}).get("download", {}).get("best_bps"), base)
    lines.append("")
    if r is not None:
        ok = "met" if r >= DOWNLOAD_TARGET else "NOT met"
        lines.append(f"culvert / rathole: **{r:.2f}×** (target ≥ {DOWNLOAD_TARGET}×: {ok}).")
    else:
        lines.append("culvert / rathole: n/a (one of them did not run).")
    lines.append("")
    return lines


def wrk_table(meta: dict, res: dict[str, dict]) -> list[str]:
    lines = [
        f"### (b) Small GETs, {meta['connections']} connections",
        "",
        f"`wrk -t{meta['threads']} -c{meta['connections']} -d{meta['duration']} --latency` on the "
        f"{meta['small_bytes']}-byte static file, after a {meta['warmup']} warm-up (keep-alive connections).",
        "",
        "| Path | Requests/s | p50 | p99 | Errors | req/s vs rathole | p99 vs rathole |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    base = res.get("rathole", {}).get("wrk")
    for key, label in TARGETS:
        w = res.get(key, {}).get("wrk")
        if not w:
            lines.append(f"| {label} | n/a | n/a | n/a | not run | n/a | n/a |")
            continue
        lines.append(
            f"| {label} | {w['rps']:,.0f} | {fmt_ms(w['p50_ms'])} | {fmt_ms(w['p99_ms'])} | {errors_cell(w)} "
            f"| {fmt_x(ratio(w['rps'], base and base['rps']))} | {fmt_x(ratio(w['p99_ms'], base and base['p99_ms']))} |"
        )
    lines.append("")
    c = res.get("culvert", {}).get("wrk")
    if c and base:
        rr = c["rps"] / base["rps"] if base["rps"] else 0.0
        pr = c["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("inf")
        lines.append(
            f"culvert / rathole: **{rr:.2f}×** the requests/s (target ≥ 1×: {'met' if rr >= 1 else 'NOT met'}), "
            f"p99 **{fmt_ms(c['p99_ms'])}** vs {fmt_ms(base['p99_ms'])} "
            f"(target: no worse: {'met' if pr <= 1 else 'NOT met'})."
        )
        if c["non_2xx"] or sum(c.get("socket_errors", {}).values()):
            lines.append("culvert's run had errors (see the table): its figures are not valid.")
    else:
        lines.append("culvert / rathole: n/a (one of them did not run).")
    lines.append("")
    return lines


def rss_table(meta: dict, res: dict[str, dict]) -> list[str]:
    lines = [
        "### (c) Memory (VmRSS)",
        "",
        "`VmRSS` from `/proc/PID/status`: idle = once the path answered its first request, before any "
        "load; peaks sampled every 100 ms during the downloads of (a) and the wrk run of (b). "
        "The vs-rathole column compares the wrk peak with rathole's counterpart process.",
        "",
        "| Process | Idle | Peak during (a) | Peak during (b) | (b) vs rathole |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for target, proc, label, counterpart in PROCESSES:
        r = res.get(target, {}).get("rss", {}).get(proc)
        if not r:
            lines.append(f"| {label} | n/a | n/a | n/a | {'n/a' if counterpart else ''} |")
            continue
        cmp = ""
        if counterpart:
            other = res.get(counterpart[0], {}).get("rss", {}).get(counterpart[1], {})
            cmp = fmt_x(ratio(r.get("wrk_peak_kb"), other.get("wrk_peak_kb")))
        lines.append(
            f"| {label} | {fmt_mib(r.get('idle_kb'))} | {fmt_mib(r.get('download_peak_kb'))} "
            f"| {fmt_mib(r.get('wrk_peak_kb'))} | {cmp} |"
        )
    lines.append("")
    return lines


def section(meta: dict, res: dict[str, dict]) -> str:
    v = meta["versions"]
    ran = ", ".join(k for k, _ in TARGETS if k in res) or "none"
    lines = [
        SECTION,
        "",
        "Throughput, latency and memory of the tunnel data path on loopback, against a",
        "fast origin (nginx serving a large file and a small static file), measured in",
        "one run for five paths: direct to nginx; through culvert (`culvert server`'s",
        "public HTTP listener, Host-routed to a remotely managed tunnel, QUIC to a",
        "`culvert tunnel run` connector, then HTTP/1.1 to nginx); the same over the",
        "HTTP/2 transport (`--protocol http2`: TLS over TCP to the edge); through",
        "rathole (TCP forwarding); through bore. Targets from the issue: the 1 GiB download at",
        "least 1.5× rathole's MB/s; small GETs at least rathole's requests/s with a",
        "p99 no worse. Written by `bench/dataplane.sh`; raw outputs in",
        "`bench/results/dataplane-<time>/`.",
        "",
        "Caveat: load generator, origin, tunnel and client all share the machine",
        f"({meta['nproc']} CPUs); on a busy machine (see the load averages) the figures are noisy —",
        "compare ratios within one run, not across runs.",
        "",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['nproc']} CPUs (`nproc`), {meta['cpu_model']}, {meta['mem']}, Linux {meta['kernel']}; "
        f"load average at the start: {meta['loadavg_start']}, at the end: {meta.get('loadavg_end', 'n/a')}",
        f"- Command: `{meta['command']}`",
        f"- Build: {meta['build']} at {meta['commit']}",
        f"- Versions: culvert {v['culvert']}; {v['rathole']}; {v['bore']}; {v['nginx']}; {v['wrk']}; {v['curl']}",
        f"- Paths measured: {ran}",
        f"- Set-up: nginx `worker_processes {meta['nginx_workers']}`, `sendfile on`, access log off; culvert "
        f"server `--log-level warn`, connector with its default {meta['ha_connections']} QUIC connections; "
        "rathole `[server]`/`[client]` with a token, default TCP transport; bore server + `bore local` with a secret. "
        "Each path is started, measured and stopped before the next; nginx runs throughout.",
    ]
    if meta.get("install_notes"):
        lines.append(f"- Installs: {meta['install_notes']}")
    if meta.get("exceptions"):
        lines.append(f"- Fixed ports: {meta['exceptions']}")
    lines.append("")
    lines += download_table(meta, res)
    lines += wrk_table(meta, res)
    lines += rss_table(meta, res)
    return "\n".join(lines).rstrip() + "\n"


def split_sections(text: str) -> tuple[str, str | None, str]:
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.rstrip() == SECTION), None)
    if start is None:
        return text, None, ""
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^## ", lines[i])), len(lines))
    return "".join(lines[:start]), "".join(lines[start:end]), "".join(lines[end:])


def write(results_dir: Path, md_path: Path) -> str:
    meta = json.loads((results_dir / "meta.json").read_text())
    res = {}
    for key, _ in TARGETS:
        f = results_dir / f"{key}.json"
        if f.exists():
            res[key] = json.loads(f.read_text())
    text = md_path.read_text() if md_path.exists() else FILE_HEADER
    before, old, after = split_sections(text)
    sec = section(meta, res)
    if old is None:
        new = before.rstrip() + "\n\n" + sec
    else:
        new = before + sec + ("\n" + after if after else "")
    md_path.write_text(new)
    return sec


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "ports":
        print("\n".join(str(p) for p in free_ports(int(argv[1]))))
        return 0
    if len(argv) == 2 and argv[0] == "port-free":
        return 0 if port_free(int(argv[1])) else 1
    if len(argv) == 3 and argv[0] == "json":
        print(json_get(argv[1], argv[2]))
        return 0
    if len(argv) == 2 and argv[0] == "rss":
        kb = vm_rss_kb(int(argv[1]))
        if kb is None:
            return 1
        print(kb)
        return 0
    if len(argv) >= 3 and argv[0] == "sample":
        return sample(argv[1], argv[2:])
    if len(argv) == 4 and argv[0] == "assemble":
        return assemble(Path(argv[1]), int(argv[2]), Path(argv[3]))
    if len(argv) == 3 and argv[0] == "write":
        print(write(Path(argv[1]), Path(argv[2])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
