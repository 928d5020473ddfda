#!/usr/bin/env python3
"""Helpers of bench/api.sh: parse wrk output, write BENCHMARKS.md. Stdlib only.

    report.py parse WRK_OUTPUT            -> JSON on stdout
    report.py write RESULTS_DIR BENCHMARKS_MD BACKEND...

`write` reads RESULTS_DIR/meta.json and RESULTS_DIR/<backend>-<route>.json and
rewrites only the `## Control-plane API` section of BENCHMARKS_MD; inside it,
only the subsections of the backends given (a run of one backend keeps the
other backend's last figures). Everything outside the section is kept as is.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SECTION = "## Control-plane API"
BACKEND_TITLES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
ROUTES = [
    ("status", "`GET /client/v4/status` (static answer, ceiling)"),
    ("get", "`GET …/cfd_tunnel/{{id}}` (random id of {tunnels:,})"),
    ("list", "`GET …/cfd_tunnel?per_page=100&page=N` (random N)"),
]
TARGET_RATIO = 0.5

FILE_HEADER = """# Benchmarks

Figures measured by the scripts under `bench/`. Each section is rewritten by
the script it names; re-run that script to refresh it. Raw outputs land in
`bench/results/` (git-ignored).
"""

# ---- parsing wrk ----------------------------------------------------------

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def duration_ms(text: str) -> float:
    """wrk prints latencies as 812.00us, 1.03ms, 1.20s, 2.00m, 1.00h."""
    m = re.fullmatch(r"\s*([0-9.]+)(us|ms|s|m|h)\s*", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(text: str) -> dict:
    def need(pattern: str) -> re.Match:
        m = re.search(pattern, text, re.MULTILINE)
        if not m:
            raise ValueError(f"wrk output lacks {pattern!r}")
        return m

    out: dict = {"rps": float(need(r"^Requests/sec:\s+([0-9.]+)").group(1))}
    m = need(r"^\s*(\d+) requests in ([0-9.]+\w+),")
    out["requests"] = int(m.group(1))
    out["duration_ms"] = duration_ms(m.group(2))
    for pct in ("50", "75", "90", "99"):
        out[f"p{pct}_ms"] = duration_ms(need(rf"^\s+{pct}(?:\.0+)?%\s+(\S+)\s*$").group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = {k: int(v) for k, v in zip(("connect", "read", "write", "timeout"), m.groups())} if m else {}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    return out


# ---- writing BENCHMARKS.md --------------------------------------------------


def fmt_ms(ms: float) -> str:
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 100:
        return f"{ms:.1f} ms"
    return f"{ms:.0f} ms"


def fmt_ratio(x: float) -> str:
    return f"{x:.1%}" if x < 0.1 else f"{x:.0%}"


def errors_cell(r: dict) -> str:
    sock = sum(r.get("socket_errors", {}).values())
    parts = []
    if r.get("non_2xx"):
        parts.append(f"{r['non_2xx']} non-2xx")
    if sock:
        parts.append(f"{sock} socket ({', '.join(f'{k} {v}' for k, v in r['socket_errors'].items() if v)})")
    return "; ".join(parts) or "0"


def backend_subsection(backend: str, meta: dict, results: dict[str, dict]) -> str:
    lines = [f"### {BACKEND_TITLES[backend]}", ""]
    bmeta = meta.get("backends", {}).get(backend, {})
    lines += [
        f"- Date: {meta['date']}",
        f"- Machine: {meta['nproc']} CPUs (`nproc`), {meta['cpu_model']}, {meta['mem']}; "
        f"load average when the run started: {meta['loadavg']}",
        f"- Command: `{meta['command']}`",
        f"- Build: {meta.get('build', '`cargo build --release -p culvert`')} at {meta['commit']}",
        f"- Store: {bmeta.get('store', backend)}; {meta['tunnels']:,} tunnels seeded"
        + (f" in {bmeta['seed_seconds']} s" if bmeta.get("seed_seconds") else ""),
        f"- Load: `wrk -t{meta['threads']} -c{meta['connections']} -d{meta['duration']} --latency` per route, "
        f"after a {meta['warmup']} warm-up; wrk and the server share the machine",
        "",
        "| Route | Requests/s | p50 | p99 | Errors |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for key, label in ROUTES:
        label = label.format(tunnels=meta["tunnels"])
        r = results.get(key)
        if r is None:
            lines.append(f"| {label} | n/a | n/a | n/a | not run |")
            continue
        lines.append(
            f"| {label} | {r['rps']:,.0f} | {fmt_ms(r['p50_ms'])} | {fmt_ms(r['p99_ms'])} | {errors_cell(r)} |"
        )
    lines.append("")
    if "status" in results and "get" in results and results["status"]["rps"] > 0:
        ratio = results["get"]["rps"] / results["status"]["rps"]
        verdict = ""
        if backend == "sqlite":
            verdict = f" (target ≥ {TARGET_RATIO:.0%}: {'met' if ratio >= TARGET_RATIO else 'NOT met'})"
        lines.append(f"Ratio GET by id / static: **{fmt_ratio(ratio)}**{verdict}.")
        if "list" in results:
            lines.append(f"Ratio list page of 100 / static: {fmt_ratio(results['list']['rps'] / results['status']['rps'])}.")
        lines.append("")
    return "\n".join(lines)


def section_intro(meta: dict) -> str:
    return f"""{SECTION}

Requests/s and latency of the REST API with {meta['tunnels']:,} tunnels in the
store, at {meta['connections']} concurrent connections: `GET
/client/v4/accounts/{{a}}/cfd_tunnel/{{id}}` with a random seeded tunnel per
request, and list pages of 100 (`…/cfd_tunnel?per_page=100&page=N`, random N in
1..{meta['pages']}), both with `Authorization: Bearer`. The static
`GET /client/v4/status` of the same server, measured in the same run, is the
ceiling. Target: GET by id at least {TARGET_RATIO:.0%} of the static route's
rate on SQLite. Written by `bench/api.sh [sqlite|postgres|all]`; the figures
depend on the machine and how busy it was (see the load average).
"""


def split_sections(text: str) -> tuple[str, str | None, str]:
    """(before, our section or None, after), split on level-2 headings."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.rstrip() == SECTION), None)
    if start is None:
        return text, None, ""
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^## ", lines[i])), len(lines))
    return "".join(lines[:start]), "".join(lines[start:end]), "".join(lines[end:])


def subsections(section: str) -> dict[str, str]:
    """Existing `### SQLite` / `### PostgreSQL` blocks of our section, by backend."""
    found: dict[str, str] = {}
    titles = {f"### {t}": b for b, t in BACKEND_TITLES.items()}
    current, buf = None, []
    for line in section.splitlines(keepends=True):
        if line.startswith("### "):
            if current:
                found[current] = "".join(buf).rstrip() + "\n"
            current, buf = titles.get(line.rstrip()), []
        if current:
            buf.append(line)
    if current:
        found[current] = "".join(buf).rstrip() + "\n"
    return found


def write(results_dir: Path, md_path: Path, backends: list[str]) -> str:
    meta = json.loads((results_dir / "meta.json").read_text())
    text = md_path.read_text() if md_path.exists() else FILE_HEADER
    before, old, after = split_sections(text)
    blocks = subsections(old) if old else {}
    for b in backends:
        results = {}
        for key, _ in ROUTES:
            f = results_dir / f"{b}-{key}.json"
            if f.exists():
                results[key] = json.loads(f.read_text())
        blocks[b] = backend_subsection(b, meta, results)
    section = section_intro(meta) + "".join(
        "\n" + blocks[b].rstrip() + "\n" for b in BACKEND_TITLES if b in blocks
    )
    if old is None:
        new = before.rstrip() + "\n\n" + section
    else:
        new = before + section + ("\n" + after if after else "")
    md_path.write_text(new)
    return section


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "parse":
        print(json.dumps(parse_wrk(Path(argv[1]).read_text())))
        return 0
    if len(argv) >= 4 and argv[0] == "write":
        for b in argv[3:]:
            if b not in BACKEND_TITLES:
                print(f"unknown backend {b}", file=sys.stderr)
                return 2
        print(write(Path(argv[1]), Path(argv[2]), argv[3:]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
