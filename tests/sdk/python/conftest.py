"""Fixtures for the official-SDK compatibility suite.

Every test module gets one real `culvert server` per backend:

* the binary comes from ``CULVERT_BIN`` (the Rust test
  ``crates/culvert/tests/sdk_python.rs`` passes the one cargo built);
* it listens on ``127.0.0.1:0`` with a fresh temporary ``--data-dir``; the port
  is read from the ``culvert API listening on …`` line it prints, the
  credentials from ``DATA_DIR/bootstrap.json``;
* backends: ``sqlite`` always, ``postgres`` when ``CULVERT_TEST_POSTGRES_URL``
  names a server where a database may be created (a fresh database is created
  with ``psql`` for each server and dropped afterwards);
* teardown sends SIGTERM, waits, and fails if the server did not exit cleanly.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional
from urllib.parse import urlsplit, urlunsplit

import cloudflare
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
PG_ENV = "CULVERT_TEST_POSTGRES_URL"
PG_URL = os.environ.get(PG_ENV, "").strip()
LISTENING = re.compile(r"culvert API listening on (http://127\.0\.0\.1:(\d+)/client/v4)\s*$")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def culvert_bin() -> str:
    path = os.environ.get("CULVERT_BIN")
    if not path:
        default = REPO_ROOT / "target" / "debug" / "culvert"
        if default.is_file():
            return str(default)
        pytest.fail(
            "CULVERT_BIN is not set and target/debug/culvert does not exist: "
            "build it (cargo build -p culvert) or run `cargo test -p culvert --test sdk_python`",
            pytrace=False,
        )
    if not os.access(path, os.X_OK):
        pytest.fail(f"CULVERT_BIN={path!r} is not an executable file", pytrace=False)
    return path


# ---------------------------------------------------------------- PostgreSQL


def _psql(url: str, sql: str) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail(f"{PG_ENV} is set but psql is not installed", pytrace=False)
    r = subprocess.run(
        [psql, url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        raise RuntimeError(f"psql {sql!r} failed ({r.returncode}): {r.stderr.strip()}")


def _with_database(url: str, db: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + db, parts.query, parts.fragment))


class FreshPostgresDatabase:
    """CREATE DATABASE culvert_sdk_<random> on the server of PG_URL; DROP at close."""

    def __init__(self, admin_url: str):
        self.admin_url = admin_url
        self.name = f"culvert_sdk_{secrets.token_hex(6)}"
        _psql(admin_url, f'CREATE DATABASE "{self.name}"')
        self.url = _with_database(admin_url, self.name)

    def close(self) -> None:
        _psql(self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# ---------------------------------------------------------------- the server


@dataclass
class CulvertServer:
    backend: str
    binary: str
    data_dir: Path
    database_url: Optional[str]
    proc: subprocess.Popen
    api_url: str
    port: int
    account_id: str
    api_token: str
    stderr_path: Path
    stdout_lines: List[str] = field(default_factory=list)

    def client(self, *, api_token: Optional[str] = None, max_retries: int = 0, **kw) -> cloudflare.Cloudflare:
        return cloudflare.Cloudflare(
            api_token=api_token or self.api_token,
            base_url=self.api_url,
            max_retries=max_retries,
            timeout=20.0,
            **kw,
        )

    def admin(self, *args: str) -> str:
        """Runs `culvert admin` against this server's store; returns stdout."""
        cmd = [self.binary, "admin", "--data-dir", str(self.data_dir)]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        r = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"culvert admin {args} failed ({r.returncode}):\n{r.stderr}")
        return r.stdout

    def create_token(self, *permissions: str) -> str:
        args = ["token", "create", "--account", self.account_id]
        for p in permissions:
            args += ["--permission", p]
        out = self.admin(*args)
        line = [l for l in out.splitlines() if l.strip().startswith("{")][-1]
        return json.loads(line)["api_token"]

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


try:  # resolved before any fork, so the child only makes the call
    import ctypes

    _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except Exception:  # not glibc Linux: teardown still stops the server
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: have the kernel SIGTERM the server if pytest
    itself dies (PR_SET_PDEATHSIG), so even a killed test run leaks no server."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _drain(stream, q: "queue.Queue[Optional[str]]", sink: List[str]) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        q.put(line)
    q.put(None)


def start_server(backend: str, workdir: Path, database_url: Optional[str]) -> CulvertServer:
    binary = culvert_bin()
    data_dir = workdir / "data"
    stderr_path = workdir / "server.log"
    cmd = [binary, "server", "--data-dir", str(data_dir), "--api-listen", "127.0.0.1:0",
           "--edge-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
    if database_url:
        cmd += ["--database-url", database_url]
    env = dict(os.environ)
    env.pop("CULVERT_DATABASE_URL", None)
    env.pop("CULVERT_DATA_DIR", None)
    env.pop("CULVERT_API_LISTEN", None)
    env.setdefault("CULVERT_LOG_LEVEL", "info")
    env["NO_COLOR"] = "1"  # the log is a file
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            preexec_fn=_die_with_parent,
        )
    lines: List[str] = []
    q: "queue.Queue[Optional[str]]" = queue.Queue()
    threading.Thread(target=_drain, args=(proc.stdout, q, lines), daemon=True).start()

    def fail(why: str) -> None:
        _stop(proc)
        log = stderr_path.read_text(errors="replace")[-4000:] if stderr_path.exists() else ""
        raise RuntimeError(f"culvert server ({backend}) {why}\nstdout:\n{''.join(lines)}\nstderr:\n{log}")

    deadline = time.monotonic() + START_TIMEOUT_S
    api_url = port = None
    while api_url is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            fail(f"did not print its listening line within {START_TIMEOUT_S:.0f} s")
        try:
            line = q.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            proc.wait(timeout=5)
            fail(f"exited with status {proc.returncode} before listening")
        m = LISTENING.search(line)
        if m:
            api_url, port = m.group(1), int(m.group(2))

    boot_path = data_dir / "bootstrap.json"
    if not boot_path.is_file():
        fail(f"listens on {api_url} but wrote no {boot_path}")
    mode = boot_path.stat().st_mode & 0o777
    if mode != 0o600:
        fail(f"{boot_path} has mode {mode:o}, expected 600")
    boot = json.loads(boot_path.read_text())
    if set(boot) != {"account_id", "api_token", "api_url"} or boot["api_url"] != api_url:
        fail(f"unexpected bootstrap.json {boot!r} (listening on {api_url})")
    return CulvertServer(
        backend=backend,
        binary=binary,
        data_dir=data_dir,
        database_url=database_url,
        proc=proc,
        api_url=api_url,
        port=port,
        account_id=boot["account_id"],
        api_token=boot["api_token"],
        stderr_path=stderr_path,
        stdout_lines=lines,
    )


def _stop(proc: subprocess.Popen) -> Optional[int]:
    """SIGTERM, wait; SIGKILL if it does not stop. Returns the exit status of the
    graceful stop, or None if it had to be killed."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request) -> Iterator[CulvertServer]:
    backend = request.param
    if backend == "postgres" and not PG_URL:
        pytest.skip(f"{PG_ENV} not set")
    workdir = Path(tempfile.mkdtemp(prefix=f"culvert-sdk-{backend}-"))
    db = srv = None
    try:
        db = FreshPostgresDatabase(PG_URL) if backend == "postgres" else None
        srv = start_server(backend, workdir, db.url if db else None)
        yield srv
    finally:
        status = _stop(srv.proc) if srv else 0
        log = srv.log_tail() if srv else ""
        keep = os.environ.get("CULVERT_SDK_LOG_DIR")
        if keep and srv:  # keep every server's log for later reading
            os.makedirs(keep, exist_ok=True)
            shutil.copy(srv.stderr_path, Path(keep) / f"{request.module.__name__}-{backend}-{srv.port}.log")
        if db:
            db.close()
        shutil.rmtree(workdir, ignore_errors=True)
    assert status == 0, (
        f"culvert server ({backend}) did not stop cleanly on SIGTERM "
        f"(status {status}; None = had to be killed)\n{log}"
    )


@pytest.fixture(scope="module")
def cf(server: CulvertServer) -> cloudflare.Cloudflare:
    return server.client()


@pytest.fixture(scope="module")
def account_id(server: CulvertServer) -> str:
    return server.account_id


@pytest.fixture
def prefix() -> str:
    """A name prefix no other test uses, so list filters see only this test's tunnels."""
    return f"sdk-{uuid.uuid4().hex[:10]}-"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, show the end of the server's log (one line per request)."""
    outcome = yield
    report = outcome.get_result()
    srv = getattr(item, "funcargs", {}).get("server")
    if report.failed and isinstance(srv, CulvertServer):
        report.sections.append((f"culvert server log, {srv.backend} (last lines)", srv.log_tail(40)))
