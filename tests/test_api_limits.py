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


def test_a_client_sending_wrong_keys_is_slowed_and_locked(served, session_factory):
    server, key = served()
    statuses = []
    with httpx.Client(base_url=server.url) as client:
        for i in range(40):
            r = client.get("/v1/members/M1/verifications", headers={"X-API-Key": f"fvk_wrong{i}"})
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
        # The right key from the same client waits too: guessing must not pay off.
        assert client.get("/v1/members/M1/verifications", headers={"X-API-Key": key}).status_code == 429
    assert statuses[: throttle.FREE_FAILURES + 1] == [401] * (throttle.FREE_FAILURES + 1)
    assert 429 in statuses
    with session_factory() as session:
        row = session.scalar(
            select(throttle.AuthThrottle).where(throttle.AuthThrottle.kind == throttle.API_CLIENT)
        )
        assert row.subject == "127.0.0.1" and row.failures > throttle.FREE_FAILURES
        assert throttle.unlock(session, throttle.API_CLIENT, "127.0.0.1", actor="admin")
        session.commit()
    r = httpx.get(f"{server.url}/v1/members/M1/verifications", headers={"X-API-Key": key})
    assert r.status_code in (200, 404)


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
