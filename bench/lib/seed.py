#!/usr/bin/env python3
"""Seed a running culvert server with N Cloudflare Tunnels, for bench/api.sh.

    seed.py --port PORT --token TOKEN --account ACCOUNT --count N --out IDS_FILE

POSTs /client/v4/accounts/{account}/cfd_tunnel {"name": "bench-N"} from a
thread pool, one keep-alive connection per thread, and writes the new tunnel
ids to IDS_FILE (one per line). Checks afterwards that the list endpoint
reports exactly N tunnels. Stdlib only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

_local = threading.local()


def _conn(port: int) -> http.client.HTTPConnection:
    c = getattr(_local, "conn", None)
    if c is None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        _local.conn = c
    return c


def _request(port: int, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    for attempt in range(3):
        conn = _conn(port)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
        except (ConnectionError, http.client.HTTPException, OSError):
            # A dropped keep-alive connection: reconnect and retry. (A POST
            # that reached the server is not retried blindly: the unique name
            # would answer with a conflict, reported below.)
            conn.close()
            _local.conn = None
            if attempt == 2:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--account", required=True)
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    path = f"/client/v4/accounts/{a.account}/cfd_tunnel"

    def create(n: int) -> str:
        status, body = _request(a.port, "POST", path, a.token, {"name": f"bench-{n}"})
        if status != 200 or not body.get("success"):
            raise RuntimeError(f"creating bench-{n}: HTTP {status}: {json.dumps(body)[:500]}")
        return body["result"]["id"]

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=a.workers) as pool:
        ids = list(pool.map(create, range(a.count)))
    elapsed = time.monotonic() - started

    status, body = _request(a.port, "GET", f"{path}?per_page=1", a.token)
    total = (body.get("result_info") or {}).get("total_count")
    if status != 200 or total != a.count:
        print(f"seed: expected {a.count} tunnels, the list reports {total} (HTTP {status})", file=sys.stderr)
        return 1
    if len(set(ids)) != a.count:
        print("seed: duplicate tunnel ids returned", file=sys.stderr)
        return 1

    with open(a.out, "w", encoding="ascii") as f:
        f.write("\n".join(ids) + "\n")
    print(f"seeded {a.count} tunnels in {elapsed:.1f}s ({a.count / elapsed:.0f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
