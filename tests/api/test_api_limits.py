"""Request limits of the API over a real uvicorn server: headers, slow clients, admission, wrong keys,
and 120 concurrent verifications of one member on both databases, none lost or doubled."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select
from test_api import BECKHAM, BRODY, LiveServer, photo, reencoded

from core.api import create_app, create_key
from core.api import guard as guard_module
from core.api.server import LimitedH11Protocol
from core.storage import throttle
from core.storage.photostore import PhotoStore
from core.storage.schema import AuditEntry, BatchItem, Member, Photo
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import search


@pytest.fixture
def served(session_factory, tmp_path):
    """An API without an engine (limits come before it), on a free loopback port."""
    servers = []

    def start(engine=None, **kwargs):
        search.reset_indexes()
        app = create_app(
            session_factory,
            engine,
            photo_store=PhotoStore(tmp_path / "p", fsync=False),
            load_engine=False,
            **kwargs,
        )
        server = LiveServer(app).start()
        servers.append(server)
        with session_factory() as session:
            key, _ = create_key(session, f"k{len(servers)}", "backend", actor="test")
        return server, key

    yield start
    for s in servers:
        s.stop()


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may close before we are done sending: that is the point
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
        return b"".join(chunks)


def test_a_100_mb_api_key_header_is_refused_without_being_read(served):
    server, _ = served()
    header = b"GET /v1/verifications/1 HTTP/1.1\r\nHost: x\r\nX-API-Key: "
    answers = []

    def hostile():
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sent = 0
            try:
                sock.sendall(header)
                block = b"a" * (1024 * 1024)
                for _ in range(100):
                    sock.sendall(block)
                    sent += len(block)
            except OSError:
                pass
            try:
                answers.append((sent, sock.recv(4096)))
            except OSError:
                answers.append((sent, b""))

    thread = threading.Thread(target=hostile)
    thread.start()
    health = httpx.get(f"{server.url}/health", timeout=10)  # the service keeps answering meanwhile
    thread.join(60)
    assert health.status_code in (200, 503)  # 503: no engine in this test, but it answered
    sent, answer = answers[0]
    assert sent < 100 * 1024 * 1024, "the server read the whole 100 MB header"
    assert answer == b"" or answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer[:80]


def test_too_many_or_too_long_headers_get_431(served):
    server, key = served()
    many = {f"X-Extra-{i}": "x" for i in range(100)}
    r = httpx.get(f"{server.url}/v1/members/M1/verifications", headers={"X-API-Key": key, **many})
    assert r.status_code == 431 and r.json()["error"] == "headers_too_large"
    r = httpx.get(f"{server.url}/v1/members/M1/verifications", headers={"X-API-Key": "k" * 10_000})
    assert r.status_code == 431


def test_a_client_trickling_its_headers_is_cut_off(served, monkeypatch):
    monkeypatch.setattr(LimitedH11Protocol, "header_timeout_s", 1.0)
    server, _ = served()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server
        assert time.monotonic() - started < 15


def test_a_stalled_body_gets_408(served, monkeypatch):
    monkeypatch.setattr(guard_module, "BODY_CHUNK_TIMEOUT_S", 1.0)
    server, key = served()
    request = (
        "POST /v1/verifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f'X-API-Key: {key}\r\nContent-Length: 1000\r\n\r\n{{"member_id":'
    ).encode()
    answer = raw(server.port, request, timeout=20)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_photo_requests_beyond_the_limit_get_503_before_their_body_is_read(served, monkeypatch):
    monkeypatch.setattr(guard_module, "BODY_CHUNK_TIMEOUT_S", 20.0)
    server, key = served(max_in_flight=1)
    head = (
        "POST /v1/verifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {key}\r\nContent-Length: 5000000\r\n\r\n"
    ).encode()
    holder = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        holder.sendall(head + b'{"member_id": "M1", ')  # in flight, waiting for the rest of its body
        time.sleep(0.5)
        # The second announces 5 MB and sends none of it: the answer comes anyway, at once.
        answer = raw(server.port, head, timeout=10)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"retry-after: 2" in answer.lower() and b'"busy"' in answer
        # Reading is not limited: GETs pass.
        r = httpx.get(f"{server.url}/v1/members/M1/verifications", headers={"X-API-Key": key})
        assert r.status_code in (200, 404)
    finally:
        holder.close()


def test_every_photo_endpoint_goes_through_the_one_admission_gate(served, monkeypatch):
    """Photo checks and gallery photos used to bypass the gate: 40 at once were all decoded."""
    monkeypatch.setattr(guard_module, "BODY_CHUNK_TIMEOUT_S", 20.0)
    server, key = served(max_in_flight=1)
    head = (
        "POST /v1/photo-checks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {key}\r\nContent-Length: 5000000\r\n\r\n"
    ).encode()
    holder = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        holder.sendall(head + b'{"photo_base64": "')  # in flight, waiting for the rest of its body
        time.sleep(0.5)
        for path in (
            "/v1/photo-checks",
            "/v1/photo-checks/upload",
            "/v1/members/M1/gallery-photos",
            "/v1/verifications",
            "/v1/verifications/upload",
            "/v1/search",
        ):
            r = httpx.post(f"{server.url}{path}", json={"photo_base64": "AAAA"}, headers={"X-API-Key": key})
            assert r.status_code == 503 and r.json()["error"] == "busy", (path, r.text)
            assert r.headers["Retry-After"] == "2"
        # A challenge decodes no photo: not gated.
        r = httpx.post(f"{server.url}/v1/challenges", json={"member_id": "M1"}, headers={"X-API-Key": key})
        assert r.status_code != 503 or r.json()["error"] != "busy"
    finally:
        holder.close()


def test_bodies_admitted_together_are_limited_by_their_size(served, monkeypatch):
    monkeypatch.setattr(guard_module, "BODY_CHUNK_TIMEOUT_S", 20.0)
    server, key = served(max_in_flight=8, admission_bytes=20 * 1024 * 1024)
    head = (
        "POST /v1/photo-checks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {key}\r\nContent-Length: 6000000\r\n\r\n"
    ).encode()
    holder = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        holder.sendall(head + b'{"photo_base64": "')  # 6 MB of JSON holds about 16.5 MB
        time.sleep(0.5)
        answer = raw(server.port, head, timeout=10)  # a second one would pass 20 MB
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        small = httpx.post(
            f"{server.url}/v1/photo-checks", json={"photo_base64": "AAAA"}, headers={"X-API-Key": key}
        )
        assert small.status_code != 503, small.text  # a small one still fits
    finally:
        holder.close()


def wrong_key_attack(client, n, **headers):
    statuses = []
    for i in range(n):
        r = client.get("/v1/members/M1/verifications", headers={"X-API-Key": f"fvk_wrong{i}", **headers})
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
    return statuses


def test_wrong_keys_are_slowed_and_locked_but_the_right_key_always_passes(served, session_factory):
    """The attack: after 3 wrong keys from its address the real backend got 429 (96% refused over
    a minute). Wrong keys are still slowed and locked; the valid key is never refused."""
    server, key = served()
    with httpx.Client(base_url=server.url) as client:
        statuses = []
        for i in range(40):
            wrong = client.get("/v1/members/M1/verifications", headers={"X-API-Key": f"fvk_wrong{i}"})
            statuses.append(wrong.status_code)
            right = client.get("/v1/members/M1/verifications", headers={"X-API-Key": key})
            assert right.status_code in (200, 404), (i, right.status_code, right.text)
    assert statuses[: throttle.FREE_FAILURES + 1] == [401] * (throttle.FREE_FAILURES + 1)
    assert 429 in statuses
    with session_factory() as session:
        row = session.scalar(
            select(throttle.AuthThrottle).where(throttle.AuthThrottle.kind == throttle.API_CLIENT)
        )
        assert row.subject == "127.0.0.1" and row.failures > throttle.FREE_FAILURES
        assert throttle.unlock(session, throttle.API_CLIENT, "127.0.0.1", actor="admin")
        session.commit()
    r = httpx.get(f"{server.url}/v1/members/M1/verifications", headers={"X-API-Key": "fvk_wrong_again"})
    assert r.status_code == 401


def test_invented_forwarded_addresses_do_not_escape_the_throttle(served, session_factory):
    """By default no proxy is trusted: X-Forwarded-For from a local client is ignored."""
    server, _ = served()
    statuses = []
    with httpx.Client(base_url=server.url) as client:
        for i in range(12):
            statuses += wrong_key_attack(client, 1, **{"X-Forwarded-For": f"198.51.100.{i}"})
    assert 429 in statuses
    with session_factory() as session:
        subjects = set(
            session.scalars(
                select(throttle.AuthThrottle.subject).where(throttle.AuthThrottle.kind == throttle.API_CLIENT)
            )
        )
    assert subjects == {"127.0.0.1"}


def test_a_trusted_proxy_forwards_the_address_and_wrong_keys_count_per_prefix(
    served, session_factory, monkeypatch
):
    monkeypatch.setenv("TRUSTED_PROXIES", "127.0.0.1")
    server, key = served()
    with httpx.Client(base_url=server.url) as client:
        # The same key prefix from ever new addresses: the prefix is throttled.
        statuses = [
            client.get(
                "/v1/members/M1/verifications",
                headers={"X-API-Key": f"fvk_samepfx_{i}", "X-Forwarded-For": f"198.51.100.{i}"},
            ).status_code
            for i in range(10)
        ]
        right = client.get(
            "/v1/members/M1/verifications", headers={"X-API-Key": key, "X-Forwarded-For": "198.51.100.1"}
        )
    assert statuses[:4] == [401] * 4 and 429 in statuses
    assert right.status_code in (200, 404)
    with session_factory() as session:
        rows = {(r.kind, r.subject) for r in session.scalars(select(throttle.AuthThrottle))}
    assert (throttle.API_KEY_PREFIX, "fvk_samepfx_") in rows
    assert (throttle.API_CLIENT, "198.51.100.0") in rows and (throttle.API_CLIENT, "127.0.0.1") not in rows


@pytest.fixture(scope="module")
def engine():
    from core.verification.engine import Engine

    return Engine.load()


def test_120_concurrent_verifications_of_one_member_none_lost_or_doubled(served, session_factory, engine):
    """Every request for one member at once (MariaDB deadlocks on the member row are retried with
    backoff): each gets its own stored result, or an honest 503 busy; nothing half-written."""
    server, key = served(engine=engine, max_in_flight=200)
    gallery, selfies = photo(BRODY[0]), [reencoded(BRODY[1]), reencoded(BECKHAM[0])]
    first = httpx.post(
        f"{server.url}/v1/verifications/upload",
        headers={"X-API-Key": key},
        data={"member_id": "one", "registered_gender": "M", "enrol": "true"},
        files={
            "gallery": ("g.jpg", gallery, "image/jpeg"),
            "verification": ("v.jpg", selfies[0], "image/jpeg"),
        },
        timeout=120,
    )
    assert first.status_code == 201, first.text

    def send(i):
        with httpx.Client(base_url=server.url, timeout=300) as client:
            return client.post(
                "/v1/verifications/upload",
                headers={"X-API-Key": key},
                data={"member_id": "one", "registered_gender": "M"},
                files={"verification": ("v.jpg", selfies[i % 2], "image/jpeg")},
            )

    with ThreadPoolExecutor(max_workers=120) as pool:
        responses = list(pool.map(send, range(120)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {201, 503}, {
        r.status_code: r.text for r in responses if r.status_code not in (201, 503)
    }
    assert all(r.json()["error"] != "database_unavailable" for r in responses if r.status_code == 503)
    stored = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(stored) == codes.count(201) and codes.count(201) >= 100, codes
    with session_factory() as session:
        results = set(session.scalars(select(ResultRow.id).where(ResultRow.member_id == "one")))
        assert results == stored | {first.json()["id"]}  # none lost, none doubled
        assert session.scalar(select(func.count()).select_from(BatchItem)) == len(results)
        assert session.scalar(select(func.count()).select_from(Member)) == 1
        # Two different selfies: two verification photos, each stored once.
        assert (
            session.scalar(select(func.count()).select_from(Photo).where(Photo.kind == "verification")) == 2
        )
        audited = session.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "verify_member")
        )
        assert audited == len(results)
