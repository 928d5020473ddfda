#!/usr/bin/env python3
"""Groups a perf profile's samples into subsystems. Stdlib only.

    perf script -i FILE.data -F ip,sym | perf_summary.py [--top N]

Expects call chains (`perf record -g` or `--call-graph dwarf`; dwarf gives
usable user-space chains for Rust release builds, which have no frame
pointers). Each sample is charged to one bucket:

- kernel leaf: by the system call the user-space side made (the first
  user frame: writev, sendmsg, recvmmsg, epoll_wait, futex via `syscall`,
  eventfd writes = tokio cross-thread wake-ups, …); page faults and
  interrupts/preemption that hit user code are buckets of their own;
- user leaf: crypto (ring/rustls), allocator (malloc/free), memcpy/memset,
  else the first frame that names a known crate (quinn, tokio, hyper/http,
  capnp/culvert_proto, culvert's own crates, …).

Prints one line per bucket: share of samples and the leaf symbols that
weigh most in it.
"""

from __future__ import annotations

import collections
import re
import sys

KERNEL_MIN = 0xFFFF800000000000

CRYPTO = re.compile(r"ring_core|aes_gcm|aes_hw|gcm_|chacha|poly1305|^ring::|rustls::|<ring::|<rustls::")
ALLOC = re.compile(
    r"^(_int_malloc|_int_free|_int_realloc|_int_memalign|_mid_memalign|malloc|cfree|free|calloc|realloc|"
    r"malloc_consolidate|unlink_chunk|sysmalloc|tcache_\w+|alloc_perturb|__libc_(malloc|free|calloc|realloc)|"
    r"__GI___libc_(malloc|free|realloc|calloc)|__posix_memalign|je_\w+|mi_\w+|_mi_\w+)"
)
MEMCPY = re.compile(r"^__mem(move|cpy|set)\w*|^__memcpy|^memcpy|^memmove|^memset")
CRATE_GROUPS = [
    (re.compile(r"^(quinn_proto|quinn_udp|quinn)$"), "QUIC protocol (quinn, quinn-proto, quinn-udp)"),
    (re.compile(r"^(tokio|tokio_util|mio|futures_util|futures_core|futures_channel|futures)$"), "async runtime (tokio, futures)"),
    (re.compile(r"^(hyper|hyper_util|http|httparse|http_body|http_body_util|h2)$"), "HTTP (hyper, http, httparse)"),
    (re.compile(r"^(capnp|capnp_rpc|culvert_proto)$"), "capnp / culvert_proto encode-decode"),
    (re.compile(r"^(culvert_edge|culvert_connector|culvert_ingress|culvert_store|culvert_api|culvert)$"), "culvert's own code"),
    (re.compile(r"^(tracing|tracing_core|tracing_subscriber)$"), "tracing"),
    (re.compile(r"^(bytes)$"), "bytes"),
    (re.compile(r"^(sqlx|sqlx_core|sqlx_sqlite|libsqlite3_sys)$"), "store (sqlx/SQLite)"),
]
SYSCALLS = [
    (re.compile(r"epoll_wait"), "syscall: epoll_wait (park / wake-up)"),
    (re.compile(r"^syscall$|futex|pthread_cond|__lll_lock|pthread_mutex"), "syscall: futex (thread park / unpark)"),
    (re.compile(r"sendmmsg|sendmsg"), "syscall: UDP send (sendmsg)"),
    (re.compile(r"recvmmsg|recvmsg"), "syscall: UDP receive (recvmmsg)"),
    (re.compile(r"writev|__libc_write|__GI___libc_write|^write$|sendto|__send\b"), "syscall: write/writev/sendto"),
    (re.compile(r"recvfrom|__libc_recv\b|^recv$|__libc_read|__GI___libc_read|^read$|readv"), "syscall: read/recv/recvfrom"),
    (re.compile(r"madvise|munmap|mmap|brk|mprotect"), "syscall: memory (madvise/mmap)"),
    (re.compile(r"getrandom"), "syscall: getrandom"),
    (re.compile(r"clock_gettime|clock_nanosleep|nanosleep"), "syscall: clocks/sleep"),
    (re.compile(r"^(__libc_)?(accept4?|connect|socket|setsockopt|getsockopt|close|__close|shutdown)$"), "syscall: socket set-up/tear-down"),
]
CRATE_RE = re.compile(r"^<?([a-z_][a-z0-9_]*)::")


def crate_of(sym: str) -> str | None:
    m = CRATE_RE.match(sym)
    return m.group(1) if m else None


def classify(frames: list[tuple[int, str]]) -> tuple[str, str]:
    """(bucket, detail) of one sample; frames leaf first."""
    addr, leaf = frames[0]
    if addr >= KERNEL_MIN:
        kernel = [s for a, s in frames if a >= KERNEL_MIN]
        user = next((s for a, s in frames if a < KERNEL_MIN and s and s != "[unknown]"), None)
        if user is None:
            return "kernel: interrupts / softirq (no syscall)", leaf
        if not any(s.startswith(("do_syscall_64", "entry_SYSCALL")) for s in kernel):
            if any(s.startswith(("exc_page_fault", "do_user_addr_fault")) for s in kernel):
                return "kernel: page faults", leaf
            return "kernel: interrupts / preemption in user code", leaf
        if any(s.startswith("eventfd_write") for s in kernel):
            return "syscall: eventfd write (tokio cross-thread wake-up)", leaf
        for rx, name in SYSCALLS:
            if rx.search(user):
                return name, leaf
        return f"syscall: other ({user[:40]})", leaf
    if CRYPTO.search(leaf):
        return "crypto (ring AES-GCM, rustls)", leaf
    if ALLOC.match(leaf):
        return "allocator (malloc/free)", leaf
    if MEMCPY.match(leaf):
        return "memcpy/memset", leaf
    for _, sym in frames:
        c = crate_of(sym)
        if c in (None, "core", "alloc", "std"):
            continue
        for rx, name in CRATE_GROUPS:
            if rx.match(c):
                if name.startswith("QUIC") and CRYPTO.search(sym):
                    return "crypto (ring AES-GCM, rustls)", leaf
                return name, leaf
        return f"other crate: {c}", leaf
    return "other (libc, unresolved)", leaf


def parse(lines) -> list[list[tuple[int, str]]]:
    samples, cur = [], []
    for line in lines:
        if not line.strip() or not line[:1].isspace():
            if cur:
                samples.append(cur)
            cur = []
            continue
        parts = line.strip().split(None, 1)
        try:
            addr = int(parts[0], 16)
        except ValueError:
            continue
        sym = re.sub(r" \([^()]*\)$", "", parts[1]) if len(parts) > 1 else "[unknown]"
        sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
        cur.append((addr, sym))
    if cur:
        samples.append(cur)
    return samples


def main(argv: list[str]) -> int:
    top = 4
    if len(argv) == 2 and argv[0] == "--top":
        top = int(argv[1])
    elif argv:
        print(__doc__, file=sys.stderr)
        return 2
    samples = parse(sys.stdin)
    if not samples:
        print("no samples")
        return 1
    buckets: collections.Counter = collections.Counter()
    detail: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for s in samples:
        b, d = classify(s)
        buckets[b] += 1
        detail[b][d[:70]] += 1
    n = len(samples)
    print(f"{n} samples")
    for b, k in buckets.most_common():
        if k * 1000 < n * 5:  # < 0.5 %
            continue
        leaves = ", ".join(f"{s} {c * 100 / n:.1f}%" for s, c in detail[b].most_common(top))
        print(f"{k * 100 / n:5.1f}%  {b:52}  [{leaves}]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
