"""Drives the official Cloudflare Python SDK (`cloudflare` 5.x) against a real
`culvert server` and checks every answer against /work/shared/spec/api.md and
sdk-clients.md (the section numbers below are api.md's unless said otherwise).

Every test works on tunnels whose names start with its own `prefix`, so the
tests share one server per backend without seeing each other's tunnels.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import string
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Tuple

import cloudflare
import httpx
import pytest
from cloudflare.types.shared import CloudflareTunnel

MAX_ITEMS = 200  # auto-pagination guard: a pager that never stops fails here
RFC3339_MICROS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NAME_CONFLICT_MESSAGE = (
    "You already have a tunnel with this name. Delete the existing tunnel, "
    "or choose a different name for your new tunnel"
)
# §14: the not-found code is not confirmed; mocks use 1000/1003, connectors 1004.
TUNNEL_NOT_FOUND_CODES = {1000, 1003}
CONNECTOR_NOT_FOUND_CODES = {1000, 1003, 1004}
# §1.4: a valid token lacking the permission: 10000 (sometimes 9109).
FORBIDDEN_CODES = {10000, 9109}

# sdk-clients.md §2 "Configuration body", exactly as it must reach the server.
FULL_CONFIG_WIRE: Dict[str, Any] = {
    "ingress": [
        {
            "hostname": "app.example.com",
            "service": "http://localhost:8000",
            "path": "/api",
            "originRequest": {
                "noTLSVerify": True,
                "connectTimeout": 10,
                "httpHostHeader": "x",
                "access": {"audTag": ["aud"], "teamName": "team", "required": True},
            },
        },
        {"service": "http_status:404"},
    ],
    "originRequest": {
        "keepAliveTimeout": 90,
        "matchSNItoHost": True,
        "noHappyEyeballs": False,
        "http2Origin": True,
        "disableChunkedEncoding": True,
        "caPool": "/p",
        "originServerName": "o",
        "proxyType": "",
        "tcpKeepAlive": 30,
        "tlsTimeout": 10,
        "keepAliveConnections": 100,
    },
}

# The same, as a Python caller writes it (snake_case keys the SDK renames).
FULL_CONFIG_PY: Dict[str, Any] = {
    "ingress": [
        {
            "hostname": "app.example.com",
            "service": "http://localhost:8000",
            "path": "/api",
            "origin_request": {
                "no_tls_verify": True,
                "connect_timeout": 10,
                "http_host_header": "x",
                "access": {"aud_tag": ["aud"], "team_name": "team", "required": True},
            },
        },
        {"service": "http_status:404"},  # the catch-all, without hostname (sdk-clients.md §2)
    ],
    "origin_request": {
        "keep_alive_timeout": 90,
        "match_sn_ito_host": True,
        "no_happy_eyeballs": False,
        "http2_origin": True,
        "disable_chunked_encoding": True,
        "ca_pool": "/p",
        "origin_server_name": "o",
        "proxy_type": "",
        "tcp_keep_alive": 30,
        "tls_timeout": 10,
        "keep_alive_connections": 100,
    },
}


# ------------------------------------------------------------------ helpers


def new_secret() -> Tuple[str, bytes]:
    raw = secrets.token_bytes(32)
    return base64.b64encode(raw).decode(), raw


def decode_tunnel_token(token: Any) -> Tuple[Dict[str, str], bytes]:
    """§10.2: padded standard base64 of compact JSON {"a","t","s"} in that order;
    `s` is padded standard base64 of the secret bytes. Returns (fields, secret)."""
    assert isinstance(token, str), f"token is {type(token).__name__}, expected str: {token!r}"
    assert len(token) % 4 == 0, f"token is not padded base64: {token!r}"
    assert token.startswith("eyJhIjoi"), f"token JSON does not start with the key a: {token!r}"
    raw = base64.b64decode(token, validate=True)  # rejects the URL-safe alphabet
    pairs = json.loads(raw, object_pairs_hook=list)
    assert [k for k, _ in pairs] == ["a", "t", "s"], f"token keys/order: {pairs!r}"
    fields = dict(pairs)
    assert raw == json.dumps(fields, separators=(",", ":")).encode(), f"token JSON is not compact: {raw!r}"
    s = fields["s"]
    assert len(s) % 4 == 0, f"token secret is not padded base64: {s!r}"
    secret = base64.b64decode(s, validate=True)
    assert len(secret) >= 32, f"token secret has {len(secret)} bytes, expected at least 32"
    return fields, secret


def b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def decode_jwt(token: Any) -> Tuple[Dict[str, Any], Dict[str, Any], bytes]:
    assert isinstance(token, str), f"management token is {type(token).__name__}: {token!r}"
    parts = token.split(".")
    assert len(parts) == 3, f"not a compact JWS: {token!r}"
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", p) for p in parts), f"not unpadded base64url: {token!r}"
    return json.loads(b64url(parts[0])), json.loads(b64url(parts[1])), b64url(parts[2])


def utc_z(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def assert_recent(dt: Any, what: str) -> None:
    assert isinstance(dt, datetime), f"{what} was not parsed as a datetime: {dt!r}"
    assert dt.tzinfo is not None, f"{what} has no time zone: {dt!r}"
    now = datetime.now(timezone.utc)
    assert now - timedelta(minutes=5) <= dt <= now + timedelta(minutes=1), f"{what} {dt} is not about now ({now})"


def assert_fresh_cfd(t: Any, *, account_id: str, name: str, config_src: str) -> None:
    """§4 "Response": the fields of a tunnel that was just created."""
    assert isinstance(t, CloudflareTunnel), type(t)
    assert t.id and UUID_RE.match(t.id), f"id {t.id!r} is not a lowercase hyphenated UUID"
    assert t.account_tag == account_id
    assert t.name == name
    assert t.tun_type == "cfd_tunnel"
    assert t.status == "inactive"
    assert t.config_src == config_src
    assert t.remote_config is (config_src == "cloudflare")
    assert t.deleted_at is None
    assert t.conns_active_at is None
    assert_recent(t.created_at, "created_at")
    assert t.conns_inactive_at == t.created_at, "§2.4: a never-run tunnel has conns_inactive_at = created_at"
    assert t.metadata == {}
    assert t.connections == []


def names(items) -> List[str]:
    return sorted(t.name for t in items)


def collect(paginator, limit: int = MAX_ITEMS) -> list:
    """Iterates an auto-paginating list, failing (instead of hanging) past `limit` items."""
    out = []
    for item in paginator:
        out.append(item)
        if len(out) > limit:
            pytest.fail(f"auto-pagination yielded more than {limit} items: the server never returned an empty page")
    return out


def expect_api_error(exc_type, fn, *args, **kwargs):
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    err = info.value
    assert err.response.headers.get("content-type") == "application/json"
    body = err.body
    assert isinstance(body, dict), f"error body is not JSON: {body!r}"
    assert body.get("success") is False, body
    assert body.get("result", "missing") is None, f"failure result must be null: {body!r}"
    assert body.get("messages") == [], body
    assert err.errors, f"errors[] is empty: {body!r}"
    for e in err.errors:
        assert isinstance(e.code, int) and e.code >= 1000, body
        assert isinstance(e.message, str) and e.message, body
    return err


class Recorder:
    """An httpx client that records every request the SDK sends."""

    def __init__(self) -> None:
        self.requests: List[httpx.Request] = []
        self.client = httpx.Client(event_hooks={"request": [self._hook]})

    def _hook(self, request: httpx.Request) -> None:
        self.requests.append(request)

    def json_bodies(self) -> List[Any]:
        return [json.loads(r.content) if r.content else None for r in self.requests]


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.api_url + "/", timeout=20.0,
                      headers={"Authorization": f"Bearer {server.api_token}"}) as c:
        yield c


@pytest.fixture(scope="module")
def read_only_token(server) -> str:
    return server.create_token("Cloudflare Tunnel Read")


# ------------------------------------------------------- cfd_tunnel lifecycle


def test_create_with_secret_local(cf, account_id, prefix):
    secret_b64, secret = new_secret()
    t = cf.zero_trust.tunnels.cloudflared.create(account_id=account_id, name=prefix + "local", tunnel_secret=secret_b64)
    assert_fresh_cfd(t, account_id=account_id, name=prefix + "local", config_src="local")
    # The token is not a typed field: it lands in model_extra (sdk-clients.md §5).
    fields, got_secret = decode_tunnel_token(t.model_extra.get("token"))
    assert fields == {"a": account_id, "t": t.id, "s": secret_b64}
    assert got_secret == secret
    creds = t.model_extra.get("credentials_file")
    if creds is not None:  # optional (§17 item 9), but when present it must be right
        assert creds == {"AccountTag": account_id, "TunnelID": t.id, "TunnelName": prefix + "local", "TunnelSecret": secret_b64}

    got = cf.zero_trust.tunnels.cloudflared.get(t.id, account_id=account_id)
    assert_fresh_cfd(got, account_id=account_id, name=prefix + "local", config_src="local")
    assert (got.id, got.created_at) == (t.id, t.created_at)
    assert "tunnel_secret" not in (got.model_extra or {}), "§4: the secret is never a field of the tunnel"

    # token.get gives the same token as the create response.
    assert cf.zero_trust.tunnels.cloudflared.token.get(t.id, account_id=account_id) == t.model_extra["token"]


def test_create_without_secret_remote(cf, account_id, prefix):
    t = cf.zero_trust.tunnels.cloudflared.create(account_id=account_id, name=prefix + "remote", config_src="cloudflare")
    assert_fresh_cfd(t, account_id=account_id, name=prefix + "remote", config_src="cloudflare")
    fields, secret = decode_tunnel_token(t.model_extra.get("token"))
    assert (fields["a"], fields["t"]) == (account_id, t.id)
    assert len(secret) >= 32, "§4: the generated secret has at least 32 bytes"

    token = cf.zero_trust.tunnels.cloudflared.token.get(t.id, account_id=account_id)
    assert isinstance(token, str)
    assert decode_tunnel_token(token) == (fields, secret)

    # Another tunnel without a secret gets a different one.
    other = cf.zero_trust.tunnels.cloudflared.create(account_id=account_id, name=prefix + "remote2", config_src="cloudflare")
    assert decode_tunnel_token(other.model_extra["token"])[1] != secret


def test_raw_tunnel_json_shape(server, http, account_id, prefix):
    """§1.1/§1.2/§2.1 on the wire: exact Content-Type, messages == [], RFC 3339
    microsecond timestamps with Z, unset timestamps as explicit null."""
    r = http.post(f"accounts/{account_id}/cfd_tunnel", json={"name": prefix + "raw"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["success"] is True and body["errors"] == [] and body["messages"] == []
    t = body["result"]
    assert RFC3339_MICROS_Z.match(t["created_at"]), t["created_at"]
    for key in ("deleted_at", "conns_active_at"):
        assert key in t and t[key] is None, f"{key} must be present and null: {t!r}"
    assert t["conns_inactive_at"] == t["created_at"]
    assert t["config_src"] == "local" and t["remote_config"] is False
    assert t["connections"] == [] and t["metadata"] == {}
    assert "result_info" not in body, "result_info is only for collections"


def test_list_filters(cf, account_id, prefix):
    tunnels = cf.zero_trust.tunnels.cloudflared
    alpha = tunnels.create(account_id=account_id, name=prefix + "alpha")
    beta = tunnels.create(account_id=account_id, name=prefix + "beta")
    alphabet = tunnels.create(account_id=account_id, name=prefix + "alphabet")
    gone = tunnels.create(account_id=account_id, name=prefix + "gone")
    gone = tunnels.delete(gone.id, account_id=account_id)
    assert gone.deleted_at is not None
    all4 = [prefix + n for n in ("alpha", "alphabet", "beta", "gone")]
    live3 = [prefix + n for n in ("alpha", "alphabet", "beta")]

    def ls(**kw):
        return names(collect(tunnels.list(account_id=account_id, **kw)))

    assert ls(include_prefix=prefix) == all4, "§3: absent is_deleted lists deleted tunnels too"
    assert ls(name=prefix + "alpha") == [prefix + "alpha"], "name is an exact match"
    assert ls(name=prefix + "alph") == []
    assert ls(include_prefix=prefix + "alpha") == [prefix + "alpha", prefix + "alphabet"]
    assert ls(include_prefix=prefix, exclude_prefix=prefix + "al") == [prefix + "beta", prefix + "gone"]
    assert ls(include_prefix=prefix, is_deleted=False) == live3
    assert ls(include_prefix=prefix, is_deleted=True) == [prefix + "gone"]
    assert ls(uuid=beta.id) == [prefix + "beta"]
    assert ls(uuid=str(uuid.uuid4())) == []

    # existed_at (a string; sent verbatim): created before it, not deleted at/before it.
    before_all = utc_z(alpha.created_at - timedelta(seconds=1))
    while_gone_lived = utc_z(gone.created_at + (gone.deleted_at - gone.created_at) / 2)
    after_delete = utc_z(gone.deleted_at + timedelta(milliseconds=1))
    assert ls(include_prefix=prefix, existed_at=before_all) == []
    assert ls(include_prefix=prefix, existed_at=while_gone_lived) == all4
    assert ls(include_prefix=prefix, existed_at=after_delete) == live3

    # status: nothing of ours ever ran.
    assert ls(include_prefix=prefix, is_deleted=False, status="inactive") == live3
    for status in ("healthy", "degraded", "down"):
        assert ls(include_prefix=prefix, status=status) == [], status

    # was_active_at with a timezone-aware datetime (sent as +00:00, sdk-clients.md §2).
    now = datetime.now(timezone.utc)
    assert ls(include_prefix=prefix, was_active_at=now) == [], "never-run tunnels were never active"
    assert ls(include_prefix=prefix, was_active_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)) == []
    assert ls(include_prefix=prefix, is_deleted=False, was_inactive_at=now) == live3

    # Filters combine with each other.
    assert ls(include_prefix=prefix, name=prefix + "beta", is_deleted=False, status="inactive", uuid=beta.id) == [prefix + "beta"]
    assert ls(include_prefix=prefix, name=prefix + "beta", uuid=alpha.id) == []
    # The cfd_tunnel list has only cfd tunnels.
    cf.zero_trust.tunnels.warp_connector.create(account_id=account_id, name=prefix + "warp")
    assert ls(include_prefix=prefix) == all4
    assert alphabet.id != alpha.id


def test_list_name_encoding(cf, account_id, prefix):
    """sdk-clients.md §2: a space goes out as `+`, a literal `+` as `%2B`."""
    tunnels = cf.zero_trust.tunnels.cloudflared
    odd = prefix + "my tunnel/ä"
    plus = prefix + "a+b"
    tunnels.create(account_id=account_id, name=odd)
    tunnels.create(account_id=account_id, name=plus)
    tunnels.create(account_id=account_id, name=prefix + "a b")
    assert names(collect(tunnels.list(account_id=account_id, name=odd))) == [odd]
    assert names(collect(tunnels.list(account_id=account_id, name=plus))) == [plus]
    assert names(collect(tunnels.list(account_id=account_id, include_prefix=prefix + "a+"))) == [plus]


def test_auto_pagination_stops(cf, account_id, prefix):
    tunnels = cf.zero_trust.tunnels.cloudflared
    created = [tunnels.create(account_id=account_id, name=f"{prefix}{i:02d}").id for i in range(45)]

    first = tunnels.list(account_id=account_id, include_prefix=prefix, per_page=10)
    assert len(first.result) == 10
    assert first.result_info is not None and (first.result_info.page, first.result_info.per_page) == (1, 10)
    extra = first.result_info.model_extra or {}
    assert (extra.get("count"), extra.get("total_count")) == (10, 45), extra

    items = collect(first)
    ids = [t.id for t in items]
    assert len(ids) == len(set(ids)) == 45, "every tunnel exactly once"
    assert set(ids) == set(created)

    # iter_pages: 5 full pages, then the empty page that stops the SDK.
    pages = []
    for p in tunnels.list(account_id=account_id, include_prefix=prefix, per_page=10).iter_pages():
        pages.append(p)
        if len(pages) > 10:
            pytest.fail("iter_pages did not stop")
    assert [len(p.result or []) for p in pages] == [10, 10, 10, 10, 5, 0]
    assert [p.result_info.page for p in pages] == [1, 2, 3, 4, 5, 6]

    # A page past the end is 200 with an empty result (never clamped).
    past = tunnels.list(account_id=account_id, include_prefix=prefix, per_page=10, page=99)
    assert past.result == []
    assert past.result_info.page == 99

    # The params are typed float; the SDK sends `2.0`.
    p2_float = tunnels.list(account_id=account_id, include_prefix=prefix, per_page=10.0, page=2.0)
    assert [t.id for t in p2_float.result] == [t.id for t in pages[1].result]


def test_edit_rename_and_rotate(cf, account_id, prefix):
    tunnels = cf.zero_trust.tunnels.cloudflared
    old_b64, _ = new_secret()
    t = tunnels.create(account_id=account_id, name=prefix + "before", tunnel_secret=old_b64)
    old_token = t.model_extra["token"]

    renamed = tunnels.edit(t.id, account_id=account_id, name=prefix + "after")
    assert isinstance(renamed, CloudflareTunnel)
    assert (renamed.id, renamed.name, renamed.created_at) == (t.id, prefix + "after", t.created_at)
    assert tunnels.get(t.id, account_id=account_id).name == prefix + "after"
    assert names(collect(tunnels.list(account_id=account_id, name=prefix + "before"))) == []
    assert tunnels.token.get(t.id, account_id=account_id) == old_token, "a rename keeps the secret"

    new_b64, new_raw = new_secret()
    rotated = tunnels.edit(t.id, account_id=account_id, tunnel_secret=new_b64)
    assert rotated.name == prefix + "after"
    fields, secret = decode_tunnel_token(rotated.model_extra.get("token"))
    assert fields == {"a": account_id, "t": t.id, "s": new_b64}, "§6: PATCH with a secret returns the new token"
    assert secret == new_raw
    token = tunnels.token.get(t.id, account_id=account_id)
    assert token == rotated.model_extra["token"] != old_token

    # Both at once.
    third_b64, _ = new_secret()
    both = tunnels.edit(t.id, account_id=account_id, name=prefix + "third", tunnel_secret=third_b64)
    assert both.name == prefix + "third"
    assert decode_tunnel_token(both.model_extra["token"])[0]["s"] == third_b64

    # A secret that is too short or not base64 is a 400.
    for bad in (base64.b64encode(b"short").decode(), "not base64!"):
        expect_api_error(cloudflare.BadRequestError, tunnels.edit, t.id, account_id=account_id, tunnel_secret=bad)
    assert tunnels.token.get(t.id, account_id=account_id) == both.model_extra["token"]


def test_rename_onto_live_name_conflicts(cf, account_id, prefix):
    """§6 / §17 item 4: renaming onto another live tunnel's name is 409/1013."""
    tunnels = cf.zero_trust.tunnels.cloudflared
    a = tunnels.create(account_id=account_id, name=prefix + "a")
    tunnels.create(account_id=account_id, name=prefix + "b")
    err = expect_api_error(cloudflare.ConflictError, tunnels.edit, a.id, account_id=account_id, name=prefix + "b")
    assert err.errors[0].code == 1013
    assert tunnels.get(a.id, account_id=account_id).name == prefix + "a"


def test_configurations(cf, account_id, prefix, http):
    rec = Recorder()
    client = cf.with_options(http_client=rec.client)
    configs = client.zero_trust.tunnels.cloudflared.configurations
    t = client.zero_trust.tunnels.cloudflared.create(account_id=account_id, name=prefix + "cfg", config_src="cloudflare")

    before = configs.get(t.id, account_id=account_id)
    before_version = before.version if before is not None and before.version is not None else 0
    if before is not None:
        assert before.tunnel_id == t.id

    body1 = dict(FULL_CONFIG_PY, **{"warp-routing": {"enabled": True}})
    up1 = configs.update(t.id, account_id=account_id, config=body1)
    # What went out is exactly sdk-clients.md's body (+ the unknown key, untouched).
    sent = rec.json_bodies()[-1]
    assert sent == {"config": dict(FULL_CONFIG_WIRE, **{"warp-routing": {"enabled": True}})}
    assert up1 is not None
    assert (up1.tunnel_id, up1.account_id, up1.source) == (t.id, account_id, "cloudflare")
    assert isinstance(up1.version, int) and up1.version > before_version
    assert_recent(up1.created_at, "configuration created_at")
    ing = up1.config.ingress
    assert [(r.hostname, r.service, r.path) for r in ing] == [
        ("app.example.com", "http://localhost:8000", "/api"),
        (None, "http_status:404", None),
    ]
    o = ing[0].origin_request
    assert (o.no_tls_verify, o.connect_timeout, o.http_host_header) == (True, 10, "x")
    assert (o.access.aud_tag, o.access.team_name, o.access.required) == (["aud"], "team", True)
    top = up1.config.origin_request
    assert (top.keep_alive_timeout, top.match_sn_ito_host, top.no_happy_eyeballs, top.http2_origin) == (90, True, False, True)
    assert (top.disable_chunked_encoding, top.ca_pool, top.origin_server_name, top.proxy_type) == (True, "/p", "o", "")
    assert (top.tcp_keep_alive, top.tls_timeout, top.keep_alive_connections) == (30, 10, 100)
    assert up1.config.model_extra.get("warp-routing") == {"enabled": True}, "unknown keys survive"

    got = configs.get(t.id, account_id=account_id)
    assert got.version == up1.version
    assert got.config.model_extra.get("warp-routing") == {"enabled": True}
    # On the wire, the stored config is what was sent, key for key.
    raw = http.get(f"accounts/{account_id}/cfd_tunnel/{t.id}/configurations").json()["result"]
    assert raw["config"] == sent["config"]
    assert raw["version"] == up1.version and raw["source"] == "cloudflare"

    # A second PUT replaces everything and bumps the version.
    up2 = configs.update(t.id, account_id=account_id, config={"ingress": [{"service": "hello_world"}]})
    assert up2.version > up1.version
    got2 = configs.get(t.id, account_id=account_id)
    assert got2.version == up2.version
    assert [r.service for r in got2.config.ingress] == ["hello_world"]
    assert got2.config.origin_request is None and "warp-routing" not in (got2.config.model_extra or {})

    # Invalid ingress: 400, code 1056, cloudflared's message; the version does not move.
    err = expect_api_error(
        cloudflare.BadRequestError, configs.update, t.id, account_id=account_id,
        config={"ingress": [{"hostname": "a.example.com", "service": "http://localhost:1"}]},
    )
    assert err.status_code == 400
    assert err.errors[0].code == 1056
    assert err.errors[0].message.startswith("Bad Configuration: Validation failed: ")
    assert "The last ingress rule must match all URLs" in err.errors[0].message
    assert configs.get(t.id, account_id=account_id).version == up2.version

    # Other cloudflared validation rules (§12).
    for bad, needle in [
        ([{"hostname": "*", "service": "http://a"}, {"service": "http_status:404"}], "Rule #1"),
        ([{"hostname": "a.example.com:8080", "service": "http://a"}, {"service": "http_status:404"}], "port"),
        ([{"service": "http_status:99"}], "status"),
    ]:
        err = expect_api_error(cloudflare.BadRequestError, configs.update, t.id, account_id=account_id, config={"ingress": bad})
        assert err.errors[0].code == 1056, bad
        assert err.errors[0].message.startswith("Bad Configuration: Validation failed: "), err.errors[0].message
        assert needle in err.errors[0].message, (needle, err.errors[0].message)


def test_management_token(cf, account_id, prefix):
    t = cf.zero_trust.tunnels.cloudflared.create(account_id=account_id, name=prefix + "mgmt")
    before = int(time.time())
    jwt = cf.zero_trust.tunnels.cloudflared.management.create(t.id, account_id=account_id, resources=["logs"])
    after = int(time.time())
    header, claims, sig = decode_jwt(jwt)
    assert header["alg"] == "ES256"
    assert header.get("typ", "JWT") == "JWT"
    assert len(sig) == 64, "ES256 signatures are r||s, 64 bytes"
    assert claims["tun"] == {"id": t.id, "account_tag": account_id}
    assert claims["res"] == ["logs"]
    assert claims["iss"] == "tunnelstore"
    assert claims["exp"] - claims["iat"] == 3600
    assert before - 5 <= claims["iat"] <= after + 5
    assert isinstance(claims["actor"]["id"], str) and claims["actor"]["id"], "cloudflared requires actor.id"
    assert claims["actor"]["support"] is False
    # Another call for the same tunnel names the same tunnel.
    again = cf.zero_trust.tunnels.cloudflared.management.create(t.id, account_id=account_id, resources=["logs"])
    assert decode_jwt(again)[1]["tun"] == claims["tun"]


def test_connections_and_connectors(cf, account_id, prefix):
    rec = Recorder()
    client = cf.with_options(http_client=rec.client)
    tunnels = client.zero_trust.tunnels.cloudflared
    t = tunnels.create(account_id=account_id, name=prefix + "conns")

    page = tunnels.connections.get(t.id, account_id=account_id)
    assert page.result == [], "a never-run tunnel has no connectors"
    assert list(page) == []

    assert tunnels.connections.delete(t.id, account_id=account_id) in (None, {})
    assert rec.requests[-1].method == "DELETE" and rec.requests[-1].url.query == b""
    cid = str(uuid.uuid4())
    assert tunnels.connections.delete(t.id, account_id=account_id, client_id=cid) in (None, {})
    assert rec.requests[-1].url.params.get("client_id") == cid
    assert tunnels.connections.get(t.id, account_id=account_id).result == []

    err = expect_api_error(cloudflare.NotFoundError, tunnels.connectors.get, str(uuid.uuid4()), account_id=account_id, tunnel_id=t.id)
    assert err.errors[0].code in CONNECTOR_NOT_FOUND_CODES, err.errors


def test_soft_delete(cf, account_id, prefix):
    tunnels = cf.zero_trust.tunnels.cloudflared
    t = tunnels.create(account_id=account_id, name=prefix + "doomed")
    d = tunnels.delete(t.id, account_id=account_id)
    assert isinstance(d, CloudflareTunnel)
    assert d.id == t.id and d.name == prefix + "doomed"
    assert_recent(d.deleted_at, "deleted_at")
    assert d.deleted_at >= d.created_at

    got = tunnels.get(t.id, account_id=account_id)
    assert got.deleted_at == d.deleted_at, "§2.5: a deleted tunnel stays readable by id"
    assert names(collect(tunnels.list(account_id=account_id, include_prefix=prefix, is_deleted=False))) == []
    assert [x.id for x in collect(tunnels.list(account_id=account_id, include_prefix=prefix))] == [t.id]
    assert [x.id for x in collect(tunnels.list(account_id=account_id, include_prefix=prefix, is_deleted=True))] == [t.id]

    # The name is free again.
    again = tunnels.create(account_id=account_id, name=prefix + "doomed")
    assert again.id != t.id and again.deleted_at is None
    assert [x.id for x in collect(tunnels.list(account_id=account_id, name=prefix + "doomed", is_deleted=False))] == [again.id]


# ------------------------------------------------------ all types / warp


def test_tunnels_list_tun_types(cf, account_id, prefix, http):
    cfd = cf.zero_trust.tunnels.cloudflared.create(account_id=account_id, name=prefix + "cfd")
    warp = cf.zero_trust.tunnels.warp_connector.create(account_id=account_id, name=prefix + "warp")

    def ls(**kw) -> List[Tuple[str, str]]:
        items = collect(cf.zero_trust.tunnels.list(account_id=account_id, include_prefix=prefix, **kw))
        return sorted((t.name, t.tun_type) for t in items)

    both = [(prefix + "cfd", "cfd_tunnel"), (prefix + "warp", "warp_connector")]
    assert ls() == both
    assert ls(tun_types=["cfd_tunnel", "warp_connector"]) == both
    assert ls(tun_types=["cfd_tunnel"]) == [(prefix + "cfd", "cfd_tunnel")]
    assert ls(tun_types=["warp_connector"]) == [(prefix + "warp", "warp_connector")]
    assert ls(tun_types=["ip_sec"]) == []

    # Both wire forms of tun_types (§13a): repeated (what the SDK sends) and comma-separated.
    for query in ("tun_types=cfd_tunnel&tun_types=warp_connector", "tun_types=cfd_tunnel,warp_connector", "tun_types=warp_connector"):
        r = http.get(f"accounts/{account_id}/tunnels?include_prefix={prefix}&{query}")
        assert r.status_code == 200, r.text
        got = sorted(t["id"] for t in r.json()["result"])
        want = sorted([cfd.id, warp.id] if "cfd" in query else [warp.id])
        assert got == want, query

    items = collect(cf.zero_trust.tunnels.list(account_id=account_id, include_prefix=prefix, tun_types=["warp_connector"]))
    assert [t.id for t in items] == [warp.id]


def test_warp_connector_lifecycle(cf, account_id, prefix, http):
    warp = cf.zero_trust.tunnels.warp_connector
    w = warp.create(account_id=account_id, name=prefix + "w1")
    assert w.id and UUID_RE.match(w.id)
    assert (w.account_tag, w.name, w.tun_type, w.status) == (account_id, prefix + "w1", "warp_connector", "inactive")
    assert w.deleted_at is None and w.conns_active_at is None
    assert_recent(w.created_at, "created_at")
    fields, _ = decode_tunnel_token(w.model_extra.get("token"))
    assert (fields["a"], fields["t"]) == (account_id, w.id)
    raw = http.get(f"accounts/{account_id}/warp_connector/{w.id}").json()["result"]
    assert "config_src" not in raw and "remote_config" not in raw, "§2.2: no config_src/remote_config on WARP connectors"

    ha = warp.create(account_id=account_id, name=prefix + "w-ha", ha=True)
    assert ha.tun_type == "warp_connector"

    listed = collect(warp.list(account_id=account_id, include_prefix=prefix))
    assert sorted(x.name for x in listed) == [prefix + "w-ha", prefix + "w1"]
    assert all(x.tun_type == "warp_connector" for x in listed)
    assert [x.id for x in collect(warp.list(account_id=account_id, name=prefix + "w1"))] == [w.id]

    got = warp.get(w.id, account_id=account_id)
    assert (got.id, got.name, got.created_at) == (w.id, prefix + "w1", w.created_at)

    token = warp.token.get(w.id, account_id=account_id)
    assert decode_tunnel_token(token)[0] == fields

    renamed = warp.edit(w.id, account_id=account_id, name=prefix + "w1-renamed")
    assert (renamed.id, renamed.name) == (w.id, prefix + "w1-renamed")
    new_b64, new_raw = new_secret()
    rotated = warp.edit(w.id, account_id=account_id, tunnel_secret=new_b64)
    assert decode_tunnel_token(rotated.model_extra.get("token")) == ({"a": account_id, "t": w.id, "s": new_b64}, new_raw)
    assert decode_tunnel_token(warp.token.get(w.id, account_id=account_id))[0]["s"] == new_b64

    err = expect_api_error(cloudflare.ConflictError, warp.create, account_id=account_id, name=prefix + "w-ha")
    assert err.errors[0].code == 1013

    d = warp.delete(w.id, account_id=account_id)
    assert d.id == w.id
    assert_recent(d.deleted_at, "deleted_at")
    assert warp.get(w.id, account_id=account_id).deleted_at == d.deleted_at
    assert [x.name for x in collect(warp.list(account_id=account_id, include_prefix=prefix, is_deleted=False))] == [prefix + "w-ha"]
    assert [x.id for x in collect(warp.list(account_id=account_id, include_prefix=prefix, is_deleted=True))] == [w.id]

    assert list(warp.connections.get(ha.id, account_id=account_id)) == []
    expect_api_error(cloudflare.NotFoundError, warp.connectors.get, str(uuid.uuid4()), account_id=account_id, tunnel_id=ha.id)


# ------------------------------------------------------------------ errors


def test_duplicate_name_is_409_without_retries(server, account_id, prefix):
    rec = Recorder()
    client = server.client(max_retries=2, http_client=rec.client)  # the SDK default
    tunnels = client.zero_trust.tunnels.cloudflared
    tunnels.create(account_id=account_id, name=prefix + "dup")
    n = len(rec.requests)
    err = expect_api_error(cloudflare.ConflictError, tunnels.create, account_id=account_id, name=prefix + "dup")
    assert err.status_code == 409
    assert err.errors[0].code == 1013
    assert err.errors[0].message == NAME_CONFLICT_MESSAGE
    assert err.response.headers.get("x-should-retry") == "false", "§1.1 [REC]: deterministic 409s carry x-should-retry: false"
    assert len(rec.requests) - n == 1, f"the SDK sent the 409 request {len(rec.requests) - n} times"
    assert err.response.request.headers.get("x-stainless-retry-count") == "0"
    # Only one tunnel of that name exists.
    assert len(collect(tunnels.list(account_id=account_id, name=prefix + "dup"))) == 1


def test_bad_request_classes(cf, account_id, prefix):
    tunnels = cf.zero_trust.tunnels.cloudflared
    for kw in ({"name": ""}, {"name": prefix + "x", "config_src": "elsewhere"}, {"name": prefix + "y", "tunnel_secret": "AAAA"}):
        err = expect_api_error(cloudflare.BadRequestError, tunnels.create, account_id=account_id, **kw)
        assert err.status_code == 400, kw
    assert collect(tunnels.list(account_id=account_id, include_prefix=prefix)) == []
    expect_api_error(cloudflare.BadRequestError, tunnels.list, account_id=account_id, status="sleepy")
    expect_api_error(cloudflare.BadRequestError, tunnels.list, account_id=account_id, per_page=1001)


def test_base_url_trailing_slash(server, account_id, prefix):
    """sdk-clients.md §1: a trailing `/` on base_url does no harm."""
    client = cloudflare.Cloudflare(api_token=server.api_token, base_url=server.api_url + "/", max_retries=0)
    t = client.zero_trust.tunnels.cloudflared.create(account_id=account_id, name=prefix + "slash")
    assert client.zero_trust.tunnels.cloudflared.get(t.id, account_id=account_id).name == prefix + "slash"


def test_unauthenticated_401(server, account_id):
    bogus = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))
    client = server.client(api_token=bogus)
    err = expect_api_error(cloudflare.AuthenticationError, client.zero_trust.tunnels.cloudflared.list, account_id=account_id)
    assert err.status_code == 401
    assert (err.errors[0].code, err.errors[0].message) == (10000, "Authentication error")
    expect_api_error(cloudflare.AuthenticationError, client.zero_trust.tunnels.cloudflared.create, account_id=account_id, name="nope")


def test_read_only_token_403(server, cf, account_id, prefix, read_only_token):
    t = cf.zero_trust.tunnels.cloudflared.create(account_id=account_id, name=prefix + "ro")
    # No connection reuse here: an early 403 can leave a pooled connection dead
    # (see test_keep_alive_after_early_auth_error, which checks that on its own).
    ro = server.client(api_token=read_only_token,
                       http_client=httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)))
    tunnels = ro.zero_trust.tunnels.cloudflared

    # Reads are allowed (§1.5).
    assert [x.id for x in collect(tunnels.list(account_id=account_id, include_prefix=prefix))] == [t.id]
    assert tunnels.get(t.id, account_id=account_id).name == prefix + "ro"
    assert list(tunnels.connections.get(t.id, account_id=account_id)) == []
    assert [x.id for x in collect(ro.zero_trust.tunnels.list(account_id=account_id, include_prefix=prefix))] == [t.id]

    # Writes, and GET …/token, need a Write group.
    calls = [
        (tunnels.create, (), {"name": prefix + "nope"}),
        (tunnels.token.get, (t.id,), {}),
        (tunnels.edit, (t.id,), {"name": prefix + "renamed"}),
        (tunnels.delete, (t.id,), {}),
        (tunnels.management.create, (t.id,), {"resources": ["logs"]}),
        (tunnels.configurations.update, (t.id,), {"config": {"ingress": [{"service": "http_status:404"}]}}),
        (tunnels.connections.delete, (t.id,), {}),
        # WARP connectors need WARP or Connectors groups, not "Cloudflare Tunnel Read".
        (ro.zero_trust.tunnels.warp_connector.list, (), {}),
    ]
    for fn, args, kw in calls:
        err = expect_api_error(cloudflare.PermissionDeniedError, fn, *args, account_id=account_id, **kw)
        assert err.status_code == 403
        assert err.errors[0].code in FORBIDDEN_CODES, (fn, err.errors)
    assert [x.name for x in collect(cf.zero_trust.tunnels.cloudflared.list(account_id=account_id, include_prefix=prefix))] == [prefix + "ro"]


def test_not_found_404(cf, account_id, prefix):
    tunnels = cf.zero_trust.tunnels.cloudflared
    unknown = str(uuid.uuid4())
    for fn, args, kw in [
        (tunnels.get, (unknown,), {}),
        (tunnels.edit, (unknown,), {"name": prefix + "x"}),
        (tunnels.delete, (unknown,), {}),
        (tunnels.token.get, (unknown,), {}),
        (tunnels.configurations.get, (unknown,), {}),
        (tunnels.connections.get, (unknown,), {}),
        (tunnels.management.create, (unknown,), {"resources": ["logs"]}),
        (cf.zero_trust.tunnels.warp_connector.get, (unknown,), {}),
    ]:
        err = expect_api_error(cloudflare.NotFoundError, fn, *args, account_id=account_id, **kw)
        assert err.status_code == 404
        assert err.errors[0].code in TUNNEL_NOT_FOUND_CODES, (fn, err.errors)

    # A warp connector is not a cfd_tunnel (and vice versa).
    w = cf.zero_trust.tunnels.warp_connector.create(account_id=account_id, name=prefix + "w")
    expect_api_error(cloudflare.NotFoundError, tunnels.get, w.id, account_id=account_id)

    # An id that is not a UUID is percent-encoded into one segment (sdk-clients.md §2).
    err = expect_api_error(cloudflare.APIStatusError, tunnels.get, "not a/uuid?x", account_id=account_id)
    assert err.status_code in (400, 404)


def test_unknown_account_7003(cf, server, account_id):
    unknown = "0" * 32 if account_id != "0" * 32 else "f" * 32
    with pytest.raises((cloudflare.NotFoundError, cloudflare.BadRequestError)) as info:
        cf.zero_trust.tunnels.cloudflared.list(account_id=unknown)
    assert info.value.errors[0].code == 7003, info.value.errors
    assert info.value.errors[0].message.startswith("Could not route to ")


# ------------------------------------------------------------- raw checks


def test_raw_envelope_and_result_info(server, http, cf, account_id, prefix):
    for i in range(3):
        cf.zero_trust.tunnels.cloudflared.create(account_id=account_id, name=f"{prefix}{i}")
    base = f"accounts/{account_id}/cfd_tunnel?include_prefix={prefix}"

    def get(query: str) -> Dict[str, Any]:
        r = http.get(base + query)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["success"] is True and body["errors"] == [] and body["messages"] == []
        assert isinstance(body["result"], list)
        info = body["result_info"]
        for k in ("page", "per_page", "count", "total_count"):
            assert type(info[k]) is int, f"result_info.{k} = {info[k]!r} is not an integer literal"
        assert re.search(r'"total_count":\d+[,}]', r.text), "total_count is an integer literal"
        return body

    b = get("&per_page=2")
    assert {k: b["result_info"][k] for k in ("page", "per_page", "count", "total_count")} == {"page": 1, "per_page": 2, "count": 2, "total_count": 3}
    assert b["result_info"].get("total_pages", 2) == 2
    b = get("&per_page=2&page=2")
    assert (b["result_info"]["count"], len(b["result"])) == (1, 1)
    b = get("&per_page=2&page=3")
    assert b["result"] == [] and b["result_info"]["count"] == 0 and b["result_info"]["total_count"] == 3
    b = get("&page=2.0&per_page=2.0")  # the Python SDK's float encoding
    assert (b["result_info"]["page"], b["result_info"]["per_page"], b["result_info"]["count"]) == (2, 2, 1)
    b = get("")
    assert b["result_info"]["per_page"] in (20, 100) and b["result_info"]["count"] == 3

    # connections: a plain array, no paging.
    tid = b["result"][0]["id"]
    r = http.get(f"accounts/{account_id}/cfd_tunnel/{tid}/connections")
    assert r.headers["content-type"] == "application/json"
    assert r.json()["result"] == [] and r.json()["messages"] == []

    # DELETE answers 200 with a JSON envelope, never 204 (sdk-clients.md §3).
    r = http.delete(f"accounts/{account_id}/cfd_tunnel/{tid}/connections")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()["success"] is True and r.json()["result"] in (None, {})

    # Token endpoints: result is a JSON string.
    r = http.get(f"accounts/{account_id}/cfd_tunnel/{tid}/token")
    assert r.headers["content-type"] == "application/json"
    assert isinstance(r.json()["result"], str)


def test_raw_errors(server, http, account_id):
    def check(r: httpx.Response, status: int, code: int) -> Dict[str, Any]:
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["success"] is False and body["result"] is None and body["messages"] == []
        assert body["errors"][0]["code"] == code, body
        return body

    url = f"{server.api_url}/accounts/{account_id}/cfd_tunnel"
    # §1.4: no credentials at all.
    check(httpx.get(url, timeout=20), 400, 9106)
    # §1.4: a malformed Authorization header.
    body = check(httpx.get(url, headers={"Authorization": "Basic abc"}, timeout=20), 400, 6003)
    assert body["errors"][0].get("error_chain", [{}])[0].get("code") == 6111
    # §4: malformed JSON.
    body = check(http.post(f"accounts/{account_id}/cfd_tunnel", content=b"{not json", headers={"Content-Type": "application/json"}), 400, 1030)
    assert body["errors"][0]["message"].startswith("Could not parse input. Json deserialize error: ")
    # 409 carries x-should-retry: false.
    name = f"sdk-raw-{uuid.uuid4().hex[:8]}"
    assert http.post(f"accounts/{account_id}/cfd_tunnel", json={"name": name}).status_code == 200
    r = http.post(f"accounts/{account_id}/cfd_tunnel", json={"name": name})
    check(r, 409, 1013)
    assert r.headers.get("x-should-retry") == "false"


def _read_response(sock: socket.socket) -> Tuple[str, Dict[str, str], bytes]:
    """Reads one HTTP/1.1 response with a Content-Length body."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {buf!r}")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(body) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed in the body")
        body += chunk
    return lines[0], headers, body


def test_keep_alive_after_early_auth_error(server, cf, account_id, prefix, read_only_token):
    """A 401/403 that the server sends before it has read the request body must
    either say `Connection: close` or leave the connection usable. httpx (the
    SDK's transport) writes the headers and the body separately and reuses
    pooled connections, so a server that silently drops the connection after
    such an answer makes the *next* SDK call fail with APIConnectionError
    ("Server disconnected without sending a response") when max_retries=0."""
    t = cf.zero_trust.tunnels.cloudflared.create(account_id=account_id, name=prefix + "ka")
    body = json.dumps({"name": prefix + "nope"}).encode()
    cases = [
        ("403 read-only token", read_only_token, "POST", "cfd_tunnel"),
        ("403 read-only token", read_only_token, "PATCH", f"cfd_tunnel/{t.id}"),
        ("401 unknown token", "x" * 40, "POST", "cfd_tunnel"),
    ]
    failures = []
    for label, token, method, path in cases:
        for attempt in range(3):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(
                    f"{method} /client/v4/accounts/{account_id}/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                )
                status, headers, _ = _read_response(sock)  # answered before the body was sent
                assert status.split()[1] in ("401", "403"), status
                if headers.get("connection", "").lower() == "close":
                    continue  # the client knows not to reuse it
                try:
                    sock.sendall(body)
                    time.sleep(0.05)
                    sock.sendall(
                        f"GET /client/v4/accounts/{account_id}/cfd_tunnel/{t.id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        f"Authorization: Bearer {server.api_token}\r\n\r\n".encode()
                    )
                    status2, _, _ = _read_response(sock)
                    if " 200 " not in status2 + " ":
                        failures.append(f"{label} {method}: next request got {status2}")
                except OSError as e:
                    failures.append(f"{label} {method} (try {attempt + 1}): {status} without Connection: close, "
                                    f"then the server dropped the connection: {e!r}")
    assert not failures, "\n".join(failures)
