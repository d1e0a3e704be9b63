"""The service API over real HTTP: a uvicorn server started here on a free loopback port, the real
engine (the shipped model), a real
database (SQLite here, MariaDB in the test marked mysql) and real sample photos.

Covers: enrol and verify (multipart and JSON, stored photo references), the same result as the
dashboard's engine call, storage as a batch of one, the review queue, 1:N duplicates, search by
photo, status and history, every bad input with its status code and nothing stored half-way,
concurrent requests, property tests from the OpenAPI description (schemathesis), and the
`python -m core api` commands themselves.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from core.api import create_app, create_key, revoke_key
from core.storage.photostore import PhotoStore
from core.storage.schema import (
    AuditEntry,
    Batch,
    BatchItem,
    Embedding,
    Member,
    Photo,
    PossibleDuplicate,
)
from core.storage.schema import VerificationResult as ResultRow
from core.storage.schema_guards import ApiKey
from core.workflows import search

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "data" / "sample" / "images"


def photo(name: str) -> bytes:
    return (IMAGES / f"{name}.jpg").read_bytes()


def reencoded(name: str) -> bytes:
    """The same picture cropped by a few pixels and saved again: other bytes, the same face."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(photo(name)))
    w, h = image.size
    out = io.BytesIO()
    image.crop((3, 3, w - 3, h - 3)).save(out, "JPEG", quality=85)
    return out.getvalue()


# Two photos each of people in the sample set.
BRODY = ("Adrien_Brody_0001", "Adrien_Brody_0007", "Adrien_Brody_0010")
BECKHAM = ("David_Beckham_0005", "David_Beckham_0010", "David_Beckham_0017")
ARROYO = ("Gloria_Macapagal_Arroyo_0003",)


@pytest.fixture(scope="module")
def engine():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from core.verification.engine import Engine

    return Engine.load()


class LiveServer:
    """uvicorn serving an app on a free port of 127.0.0.1, in a thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        from core.api.server import limits

        # The production limits (h11, header size and time, connections), as `python -m core api serve` serves.
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", **{**limits(), "timeout_graceful_shutdown": 5}
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()


@dataclass
class Api:
    url: str
    client: httpx.Client
    keys: dict[str, str]
    factory: object
    store: PhotoStore
    engine: object

    def headers(self, role: str = "backend") -> dict:
        return {"X-API-Key": self.keys[role]}

    def upload(self, member_id: str, gallery=None, verification=None, role="backend", **fields):
        files = {}
        if gallery is not None:
            files["gallery"] = ("gallery.jpg", gallery, "image/jpeg")
        if verification is not None:
            files["verification"] = ("selfie.jpg", verification, "image/jpeg")
        data = {
            "member_id": member_id,
            **{k: str(v).lower() if isinstance(v, bool) else v for k, v in fields.items()},
        }
        return self.client.post(
            "/v1/verifications/upload", data=data, files=files or None, headers=self.headers(role)
        )

    def enrol(self, member_id: str, gallery: bytes, verification: bytes, gender: str = "M"):
        response = self.upload(member_id, gallery, verification, registered_gender=gender, enrol=True)
        assert response.status_code == 201, response.text
        return response.json()


def _start_api(engine, factory, store, tmp_path) -> tuple[Api, LiveServer]:
    search.reset_indexes()
    keys = {}
    with factory() as session:
        for role in ("backend", "reader"):
            keys[role], _ = create_key(session, f"{role}-key", role, actor="test")
    # Room for the concurrency tests' bursts (admission itself: tests/api/test_api_limits.py).
    server = LiveServer(create_app(factory, engine, photo_store=store, max_in_flight=32)).start()
    client = httpx.Client(base_url=server.url, timeout=120)
    return Api(server.url, client, keys, factory, store, engine), server


@pytest.fixture
def api(engine, tmp_path, monkeypatch):
    from core.storage.db import init_db, make_engine, session_factory

    # These tests are about what the engine decides; an automatic approval without a pose
    # challenge (the API's default) is tested on its own in tests/api/test_verification_use_case.py.
    monkeypatch.setenv("CHALLENGE_REQUIRED_API", "0")
    db = make_engine(f"sqlite:///{tmp_path / 'api.sqlite3'}")
    init_db(db)
    store = PhotoStore(tmp_path / "photos", fsync=False)
    api, server = _start_api(engine, session_factory(db), store, tmp_path)
    yield api
    api.client.close()
    server.stop()
    db.dispose()


def counts(api: Api) -> dict:
    with api.factory() as session:
        out = {
            model.__tablename__: session.scalar(select(func.count()).select_from(model))
            for model in (
                Member,
                Photo,
                Batch,
                BatchItem,
                ResultRow,
                PossibleDuplicate,
                Embedding,
                AuditEntry,
            )
        }
    out["photo_files"] = (
        sum(1 for p in api.store.root.rglob("*") if p.is_file()) if api.store.root.exists() else 0
    )
    return out


# ----------------------------------------------------------------------------------------------
# Health and description


def test_health_and_openapi(api):
    health = api.client.get("/health")
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["model_version"] == api.engine.model_version
    spec = api.client.get("/openapi.json").json()
    assert {
        "/v1/verifications",
        "/v1/verifications/upload",
        "/v1/verifications/{result_id}",
        "/v1/search",
    } <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    assert "413" in spec["paths"]["/v1/verifications/upload"]["post"]["responses"]


# ----------------------------------------------------------------------------------------------
# Verifications


def test_enrol_verify_read_and_history(api):
    gallery, selfie = photo(BECKHAM[0]), photo(BECKHAM[1])
    response = api.upload("m-100", gallery, selfie, registered_gender="male", enrol=True)
    assert response.status_code == 201, response.text
    out = response.json()
    assert response.headers["location"] == f"/v1/verifications/{out['id']}"

    # The same result as the dashboard's engine call on the same photos.
    expected = api.engine.verify(gallery, selfie, "M")
    assert out["similarity"] == pytest.approx(expected.similarity, abs=1e-6)
    assert out["same_person"] == expected.same_person
    assert out["status"] == expected.status
    assert [f["code"] for f in out["flags"]] == [f.code for f in expected.flags]
    assert out["predicted_gender"] == expected.predicted_gender
    assert out["registered_gender"] == "M" and out["member_id"] == "m-100"
    assert out["model_version"] == api.engine.model_version
    assert out["source"] == "api" and out["possible_duplicates"] == []
    assert out["gallery"]["sha256"] == out["gallery_photo_sha256"]

    # Stored as a batch of one with its member, photos and audit entry.
    with api.factory() as session:
        row = session.get(ResultRow, out["id"])
        assert row.member_id == "m-100" and row.batch.source == "api" and row.batch.status == "completed"
        assert row.batch.n_items == 1 and row.batch_item_id is not None
        member = session.get(Member, "m-100")
        assert member.gender == "M" and member.status in ("verified", "rejected", "in_review")
        assert {p.kind for p in member.photos if p.current} == {"gallery", "verification"}
        assert (
            session.scalar(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "verify_member")
            )
            == 1
        )

    # Read it back (reader key) and list the history.
    got = api.client.get(f"/v1/verifications/{out['id']}", headers=api.headers("reader"))
    assert got.status_code == 200 and got.json() == out
    # Nothing uploaded is not a verification (422 naming the field); re-checking the stored
    # photos is its own request.
    missing = api.client.post("/v1/verifications", json={"member_id": "m-100"}, headers=api.headers())
    assert missing.status_code == 422 and missing.json()["error"] == "verification_photo_required"
    again = api.client.post("/v1/members/m-100/reverifications", headers=api.headers())
    assert again.status_code == 201, again.text
    assert again.headers["location"] == f"/v1/verifications/{again.json()['id']}"
    assert again.json()["similarity"] == pytest.approx(out["similarity"], abs=1e-6)
    history = api.client.get("/v1/members/m-100/verifications", headers=api.headers("reader")).json()
    assert history["total"] == 2 and [i["id"] for i in history["items"]] == [again.json()["id"], out["id"]]
    page = api.client.get("/v1/members/m-100/verifications?limit=1&offset=1", headers=api.headers()).json()
    assert [i["id"] for i in page["items"]] == [out["id"]]


def test_json_base64_and_stored_references(api):
    first = api.enrol("m-200", photo(BRODY[0]), photo(BRODY[1]))
    # A new selfie as base64 against the stored gallery photo.
    selfie = photo(BRODY[2])
    out = api.client.post(
        "/v1/verifications",
        json={"member_id": "m-200", "verification_base64": base64.b64encode(selfie).decode()},
        headers=api.headers(),
    )
    assert out.status_code == 201, out.text
    body = out.json()
    assert body["gallery_photo_sha256"] == first["gallery_photo_sha256"]
    assert (
        body["verification"]["sha256"]
        == body["verification_photo_sha256"]
        != first["verification_photo_sha256"]
    )
    expected = api.engine.verify(photo(BRODY[0]), selfie, "M")
    assert body["similarity"] == pytest.approx(expected.similarity, abs=1e-6)
    # The new selfie is now the member's current verification photo; the old one stays for history.
    with api.factory() as session:
        kinds = session.execute(
            select(Photo.sha256, Photo.current).where(
                Photo.member_id == "m-200", Photo.kind == "verification"
            )
        ).all()
        assert dict(kinds) == {
            first["verification_photo_sha256"]: False,
            body["verification_photo_sha256"]: True,
        }
    # Stored photos by reference (the first selfie again, as the verification photo).
    ref = api.client.post(
        "/v1/verifications",
        json={"member_id": "m-200", "verification_sha256": first["verification_photo_sha256"]},
        headers=api.headers(),
    )
    assert ref.status_code == 201, ref.text
    assert ref.json()["verification_photo_sha256"] == first["verification_photo_sha256"]
    assert ref.json()["similarity"] == pytest.approx(first["similarity"], abs=1e-6)
    # A selfie already on file is a replay: flagged, never approved automatically.
    assert ref.json()["status"] == "flagged"
    assert "reused_photo" in [f["code"] for f in ref.json()["flags"]]


def test_photo_without_a_face_is_stored_flagged_like_the_dashboard(api):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (320, 320), (200, 180, 160)).save(buffer, "JPEG")
    out = api.upload("m-300", photo(BECKHAM[0]), buffer.getvalue(), registered_gender="M", enrol=True)
    assert out.status_code == 201, out.text
    body = out.json()
    assert body["status"] == "flagged" and body["similarity"] is None
    assert "no_face" in [f["code"] for f in body["flags"]]
    from core.storage.queries import review_queue

    with api.factory() as session:
        assert body["id"] in [item.result_id for item in review_queue(session)]


# ----------------------------------------------------------------------------------------------
# 1:N: duplicate accounts and search by photo


def test_second_account_of_the_same_face_is_flagged_as_possible_duplicate(api):
    first = api.enrol("alice", photo(BRODY[0]), photo(BRODY[1]))
    assert first["possible_duplicates"] == []
    other = api.enrol("bob", photo(BECKHAM[0]), photo(BECKHAM[1]))
    assert other["possible_duplicates"] == []
    # The same man opens a second account; his selfie is his first account's picture, re-saved.
    second = api.enrol("alice-2", photo(BRODY[2]), reencoded(BRODY[0]))
    assert second["status"] == "flagged"
    assert [d["member_id"] for d in second["possible_duplicates"]] == ["alice"]
    dup = next(f for f in second["flags"] if f["code"] == "possible_duplicate")
    assert "alice" in dup["reason"]
    health = api.client.get("/health").json()
    assert second["possible_duplicates"][0]["similarity"] >= health["duplicate_threshold"]
    assert health["enrolled"] == 3

    from core.storage.queries import review_queue

    with api.factory() as session:
        queue = review_queue(session)
        assert queue[0].result_id == second["id"] and queue[0].priority == 0
        stored = session.scalars(
            select(PossibleDuplicate).where(PossibleDuplicate.result_id == second["id"])
        ).all()
        assert [d.candidate_member_id for d in stored] == ["alice"]
        assert session.get(Member, "alice-2").status == "in_review"


def test_search_by_photo(api):
    api.enrol("alice", photo(BRODY[0]), photo(BRODY[1]))
    api.enrol("bob", photo(BECKHAM[0]), photo(BECKHAM[1]))
    api.enrol("carol", photo(ARROYO[0]), photo(ARROYO[0]), gender="F")
    before = counts(api)

    up = api.client.post(
        "/v1/search/upload",
        files={"photo": ("q.jpg", photo(BRODY[2]), "image/jpeg")},
        data={"k": "2"},
        headers=api.headers(),
    )
    assert up.status_code == 200, up.text
    body = up.json()
    assert body["enrolled"] == 3 and len(body["candidates"]) == 2
    assert body["candidates"][0]["member_id"] == "alice"
    assert body["candidates"][0]["similarity"] > body["candidates"][1]["similarity"]
    for candidate in body["candidates"]:
        assert candidate["possible_duplicate"] == (candidate["similarity"] >= body["duplicate_threshold"])
    assert body["face"]["main_face"] is not None

    by_json = api.client.post(
        "/v1/search",
        json={"photo_base64": base64.b64encode(photo(BECKHAM[2])).decode(), "k": 1},
        headers=api.headers(),
    ).json()
    assert [c["member_id"] for c in by_json["candidates"]] == ["bob"]
    with api.factory() as session:
        sha = session.scalar(select(Photo.sha256).where(Photo.member_id == "carol", Photo.kind == "gallery"))
    by_ref = api.client.post(
        "/v1/search", json={"photo_sha256": sha, "k": 3, "exclude_member": "carol"}, headers=api.headers()
    ).json()
    assert "carol" not in [c["member_id"] for c in by_ref["candidates"]]

    # Searching stores nothing but its audit entries.
    after = counts(api)
    assert after.pop("audit_log") == before.pop("audit_log") + 3
    assert after == before


# ----------------------------------------------------------------------------------------------
# Bad input: the right status code, a clear message, nothing stored


def _big(n: int) -> bytes:
    return os.urandom(n)


def test_bad_inputs_get_clear_errors_and_store_nothing(api):
    api.enrol("known", photo(BECKHAM[0]), photo(BECKHAM[1]))
    with api.factory() as session:
        revoked_key, _ = create_key(session, "old-key", "backend", actor="test")
        revoke_key(session, "old-key", actor="test")
    before = counts(api)
    c = api.client
    backend = api.headers()
    ok_json = {"member_id": "known"}
    cases = [
        # (name, response, status, error code, words in the message)
        ("no key", c.post("/v1/verifications", json=ok_json), 401, "missing_api_key", "X-API-Key"),
        (
            "wrong key",
            c.post("/v1/verifications", json=ok_json, headers={"X-API-Key": "fvk_wrong"}),
            401,
            "invalid_api_key",
            "not valid",
        ),
        (
            "revoked key",
            c.get("/v1/verifications/1", headers={"X-API-Key": revoked_key}),
            401,
            "invalid_api_key",
            "revoked",
        ),
        (
            "reader submits",
            c.post("/v1/verifications", json=ok_json, headers=api.headers("reader")),
            403,
            "forbidden",
            "backend",
        ),
        (
            "reader searches",
            c.post("/v1/search", json={"photo_sha256": "0" * 64}, headers=api.headers("reader")),
            403,
            "forbidden",
            "backend",
        ),
        (
            "malformed JSON",
            c.post(
                "/v1/verifications",
                content=b'{"member_id": "known",',
                headers={**backend, "content-type": "application/json"},
            ),
            400,
            "malformed_json",
            "not valid JSON",
        ),
        (
            "not JSON",
            c.post(
                "/v1/verifications",
                content=b"member_id=known",
                headers={**backend, "content-type": "text/plain"},
            ),
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "JSON to upload",
            c.post("/v1/verifications/upload", json=ok_json, headers=backend),
            415,
            "unsupported_media_type",
            "multipart",
        ),
        (
            "unknown field",
            c.post("/v1/verifications", json={**ok_json, "colour": "red"}, headers=backend),
            422,
            "invalid_request",
            "colour",
        ),
        (
            "missing member_id",
            c.post("/v1/verifications", json={}, headers=backend),
            422,
            "invalid_request",
            "member_id",
        ),
        (
            "blank member_id",
            c.post("/v1/verifications", json={"member_id": "  "}, headers=backend),
            422,
            "bad_member_id",
            "member_id",
        ),
        (
            "unknown member",
            c.post("/v1/verifications", json={"member_id": "nobody"}, headers=backend),
            404,
            "unknown_member",
            "enrol",
        ),
        (
            "unknown member, upload",
            api.upload("nobody", photo(BRODY[0]), photo(BRODY[1])),
            404,
            "unknown_member",
            "nobody",
        ),
        (
            "enrol without gender",
            api.upload("new-1", photo(BRODY[0]), photo(BRODY[1]), enrol=True),
            422,
            "enrol_incomplete",
            "registered_gender",
        ),
        (
            "enrol without selfie",
            api.upload("new-2", photo(BRODY[0]), registered_gender="M", enrol=True),
            422,
            "enrol_incomplete",
            "verification",
        ),
        (
            "bad gender",
            c.post("/v1/verifications", json={**ok_json, "registered_gender": "X"}, headers=backend),
            422,
            "bad_gender",
            "M or F",
        ),
        (
            "bad base64",
            c.post("/v1/verifications", json={**ok_json, "verification_base64": "***"}, headers=backend),
            422,
            "bad_base64",
            "base64",
        ),
        (
            "base64 and sha",
            c.post(
                "/v1/verifications",
                json={**ok_json, "gallery_base64": "AAAA", "gallery_sha256": "0" * 64},
                headers=backend,
            ),
            422,
            "invalid_request",
            "not both",
        ),
        (
            "unknown stored photo",
            c.post("/v1/verifications", json={**ok_json, "gallery_sha256": "0" * 64}, headers=backend),
            404,
            "unknown_photo",
            "000000000000",
        ),
        (
            "not an image",
            api.upload("known", verification=b"%PDF-1.7 this is a document"),
            415,
            "not_an_image",
            "PDF",
        ),
        (
            "text as image",
            api.upload("known", verification=b"hello, I am not a photo"),
            415,
            "not_an_image",
            "photo",
        ),
        ("empty photo", api.upload("known", verification=b""), 422, "empty", "empty"),
        (
            "corrupt JPEG",
            api.upload("known", verification=photo(BRODY[0])[:600]),
            422,
            "corrupt",
            "verification",
        ),
        (
            "photo too large",
            api.upload("known", verification=_big(26 * 1024 * 1024)),
            413,
            "too_large",
            "25 MB",
        ),
        (
            "body too large",
            api.upload("known", verification=_big(31 * 1024 * 1024)),
            413,
            "request_too_large",
            "30 MB",
        ),
        (
            "body too large, chunked",
            c.post(
                "/v1/verifications",
                content=iter([b"x" * (1 << 20)] * 31),
                headers={**backend, "content-type": "application/json"},
            ),
            413,
            "request_too_large",
            "30 MB",
        ),
        (
            "unknown result",
            c.get("/v1/verifications/999999", headers=backend),
            404,
            "unknown_verification",
            "999999",
        ),
        (
            "result id not a number",
            c.get("/v1/verifications/abc", headers=backend),
            422,
            "invalid_request",
            "result_id",
        ),
        (
            "unknown member history",
            c.get("/v1/members/nobody/verifications", headers=backend),
            404,
            "unknown_member",
            "nobody",
        ),
        (
            "history limit too big",
            c.get("/v1/members/known/verifications?limit=100000", headers=backend),
            422,
            "invalid_request",
            "limit",
        ),
        ("no such endpoint", c.get("/v1/nothing", headers=backend), 404, "not_found", "/openapi.json"),
        (
            "wrong method",
            c.delete("/v1/verifications/1", headers=backend),
            405,
            "method_not_allowed",
            "DELETE",
        ),
        (
            "search without photo",
            c.post("/v1/search", json={"k": 3}, headers=backend),
            422,
            "invalid_request",
            "photo_base64",
        ),
        (
            "search non-image",
            c.post(
                "/v1/search/upload", files={"photo": ("a.txt", b"just text", "text/plain")}, headers=backend
            ),
            415,
            "not_an_image",
            "photo",
        ),
    ]
    failures = []
    for name, response, status, code, words in cases:
        body = response.json()
        if (
            response.status_code != status
            or body.get("error") != code
            or words.lower() not in body.get("message", "").lower()
        ):
            failures.append(f"{name}: {response.status_code} {body}")
    assert not failures, "\n".join(failures)
    # A search photo without a face is unusable: 422 with the engine's reason.
    import io

    from PIL import Image

    blank = io.BytesIO()
    Image.new("RGB", (200, 200), (90, 90, 90)).save(blank, "PNG")
    no_face = c.post(
        "/v1/search/upload", files={"photo": ("b.png", blank.getvalue(), "image/png")}, headers=backend
    )
    assert no_face.status_code == 422 and no_face.json()["error"] == "no_usable_face"

    after = counts(api)
    # Nothing at all was stored: no member, photo (row or file), batch, result, embedding or audit entry.
    assert after == before


def test_concurrent_verifications_are_all_stored(api):
    names = [BRODY, BECKHAM]
    selfies = [reencoded(BRODY[0]), reencoded(BECKHAM[0])]
    jobs = [(f"c-{i}", photo(names[i % 2][0]), selfies[i % 2]) for i in range(10)]

    def send(job):
        member_id, g, v = job
        return api.upload(member_id, g, v, registered_gender="M", enrol=True)

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(send, jobs))
    assert [r.status_code for r in responses] == [201] * 10, [
        r.text for r in responses if r.status_code != 201
    ]
    ids = {r.json()["id"] for r in responses}
    with api.factory() as session:
        assert set(session.scalars(select(ResultRow.id))) == ids
        # Five accounts per face: every later one names at least one earlier account.
        assert (
            session.scalar(select(func.count(ResultRow.id)).where(ResultRow.possible_duplicate.is_(True)))
            >= 8
        )


# ----------------------------------------------------------------------------------------------
# Property tests from the OpenAPI description


OPENAPI_EXAMPLES = 12  # per operation and per mode: bounded, the engine runs for valid photos


def _property_test(strategy, api: Api, checks: list):
    from hypothesis import HealthCheck, given, settings

    @given(case=strategy)
    @settings(
        max_examples=OPENAPI_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case):
        case.call_and_validate(base_url=api.url, headers=api.headers(), checks=checks)

    return check


def test_openapi_properties(api, monkeypatch):
    """Generated from the live server's /openapi.json: schema-valid (positive) and schema-invalid
    (negative) requests for every operation, with the backend key. Checks: never a 5xx, status
    codes, content types, headers and bodies as described, invalid data rejected with 4xx, and
    the key enforced (the same request without it must get 401)."""
    from core.storage import throttle

    # Every accepted request is probed again with an invalid key, hundreds of times: here those
    # must answer 401, not the throttle's 429 (the throttle has its own tests in test_api_limits).
    monkeypatch.setattr(throttle, "FREE_FAILURES", 10**6)
    for kind in (throttle.API_CLIENT, throttle.API_KEY_PREFIX):
        monkeypatch.setitem(throttle.LOCK_AFTER, kind, None)
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        ignored_auth,
        negative_data_rejection,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    # Something to find: a member with a result, so reads hit real rows too.
    api.enrol("prop-1", photo(BECKHAM[0]), photo(BECKHAM[1]))
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        ignored_auth,
    ]
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            mode_checks = checks + ([negative_data_rejection] if mode == GenerationMode.NEGATIVE else [])
            try:
                _property_test(operation.as_strategy(generation_mode=mode), api, mode_checks)()
            except Unsatisfiable:
                # GET /health takes no input at all: there is nothing invalid to send it.
                assert mode == GenerationMode.NEGATIVE and operation.label == "GET /health", operation.label
                continue
            tried.append(f"{operation.label} {mode.value}")
    # 21 operations (incl. challenges, gallery photos, photo checks, privacy, the six profile
    # routes), both modes but one
    assert len(tried) == 2 * 22 - 1, tried
    assert api.client.get("/health").json()["status"] == "ok"  # still serving


# ----------------------------------------------------------------------------------------------
# MariaDB


@pytest.mark.parametrize("backend", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
def test_full_flow_on_mariadb(engine, db_engine, tmp_path):
    from core.storage.db import session_factory

    store = PhotoStore(tmp_path / "photos", fsync=False)
    api, server = _start_api(engine, session_factory(db_engine), store, tmp_path)
    try:
        first = api.enrol("maria-1", photo(BRODY[0]), photo(BRODY[1]))
        second = api.enrol("maria-2", photo(BRODY[2]), reencoded(BRODY[0]))
        assert [d["member_id"] for d in second["possible_duplicates"]] == ["maria-1"]
        assert (
            api.client.get(f"/v1/verifications/{first['id']}", headers=api.headers("reader")).json() == first
        )
        before = counts(api)
        bad = api.upload("maria-1", verification=b"not a photo at all")
        assert bad.status_code == 415
        unknown = api.client.post("/v1/verifications", json={"member_id": "nobody"}, headers=api.headers())
        assert unknown.status_code == 404
        assert counts(api) == before
        with ThreadPoolExecutor(max_workers=6) as pool:
            responses = list(
                pool.map(
                    lambda i: api.upload(
                        f"maria-c{i}", photo(BECKHAM[0]), photo(BECKHAM[1]), registered_gender="M", enrol=True
                    ),
                    range(6),
                )
            )
        assert [r.status_code for r in responses] == [201] * 6
        history = api.client.get("/v1/members/maria-1/verifications", headers=api.headers()).json()
        assert history["total"] == 1
    finally:
        api.client.close()
        server.stop()


# ----------------------------------------------------------------------------------------------
# The commands: python -m core api create-key | list-keys | serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_line_server(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.sqlite3'}",
        "PHOTO_STORE_DIR": str(tmp_path / "photos"),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    made = subprocess.run(
        [sys.executable, "-m", "core", "api", "create-key", "--name", "app-backend", "--role", "backend"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("fvk_") and "shown only now" in made.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "core", "api", "list-keys"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "app-backend" in listed.stdout and key not in listed.stdout

    from core.storage.db import make_engine

    db = make_engine(env["DATABASE_URL"])
    with db.connect() as conn:  # only the hash is stored
        stored = conn.execute(select(ApiKey.key_hash, ApiKey.key_prefix)).one()
    db.dispose()
    assert stored.key_hash != key and len(stored.key_hash) == 64 and key.startswith(stored.key_prefix)

    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", "api", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        health = None
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{url}/health", timeout=5)
                if health.json()["status"] != "starting":
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        assert health is not None, (tmp_path / "server.log").read_text()[-2000:]
        assert httpx.get(f"{url}/openapi.json", timeout=10).json()["info"]["title"]
        body = health.json()
        files = {"gallery": photo(BECKHAM[0]), "verification": photo(BECKHAM[1])}
        data = {"member_id": "cli-1", "registered_gender": "M", "enrol": "true"}
        response = httpx.post(
            f"{url}/v1/verifications/upload", data=data, files=files, headers={"X-API-Key": key}, timeout=120
        )
        if body["model_loaded"]:  # a shipped model: the whole path works from the command
            assert health.status_code == 200 and body["database"] == "ok"
            assert response.status_code == 201, response.text
        else:  # none shipped yet: it says so, and stores nothing
            assert health.status_code == 503 and body["model_error"]
            assert response.status_code == 503 and response.json()["error"] == "model_unavailable"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_dashboard_verification_runs_the_same_duplicate_check(api):
    """The Verify page's path (core.dashboard.verify.verify_pair -> core.workflows.batches.store_result) flags a
    second account against a member the API enrolled, and the API reads the page's result."""
    from core.dashboard.verify import verify_pair

    api.enrol("app-1", photo(BRODY[0]), photo(BRODY[1]))
    outcome = verify_pair(
        api.factory,
        api.engine,
        api.store,
        "staff_user",
        "page-1",
        registered_gender="M",
        gallery_bytes=photo(BRODY[2]),
        verification_bytes=reencoded(BRODY[0]),
    )
    got = api.client.get(f"/v1/verifications/{outcome.result_id}", headers=api.headers("reader")).json()
    assert got["status"] == "flagged" and got["source"] != "api"
    assert [d["member_id"] for d in got["possible_duplicates"]] == ["app-1"]
    # And the other way round: the API sees the page's member as enrolled.
    third = api.enrol("app-2", photo(BRODY[2]), reencoded(BRODY[2]))
    assert "page-1" in [d["member_id"] for d in third["possible_duplicates"]]


# ----------------------------------------------------------------------------------------------
# Privacy: photo downloads audited, erasure on request (core.workflows.privacy)


def test_member_photo_download_is_audited(api):
    api.enrol("priv-1", photo(BRODY[0]), photo(BRODY[1]))
    got = api.client.get("/v1/members/priv-1/photos/gallery", headers=api.headers())
    assert got.status_code == 200, got.text
    assert got.content == photo(BRODY[0]) and got.headers["content-type"] == "image/jpeg"
    assert got.headers["cache-control"] == "no-store"
    assert api.client.get("/v1/members/priv-1/photos/verification", headers=api.headers()).content == photo(
        BRODY[1]
    )
    refused = api.client.get("/v1/members/priv-1/photos/gallery", headers=api.headers("reader"))
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert api.client.get("/v1/members/nobody/photos/gallery", headers=api.headers()).status_code == 404
    assert api.client.get("/v1/members/priv-1/photos/passport", headers=api.headers()).status_code == 422
    with api.factory() as session:
        downloads = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "download_photo").order_by(AuditEntry.id)
        ).all()
    assert [(e.actor, e.target_id, e.detail["kind"]) for e in downloads] == [
        ("api:backend-key", "priv-1", "gallery"),
        ("api:backend-key", "priv-1", "verification"),
    ]
    assert downloads[0].detail["why"] == "api:GET /v1/members/{member_id}/photos/{kind}"


def test_member_export_is_sent_from_disk_and_capped(api, monkeypatch, tmp_path):
    import io
    import json
    import tempfile
    import zipfile

    api.enrol("priv-1", photo(BRODY[0]), photo(BRODY[1]))
    # The temporary ZIP goes to its own folder here, so the test sees it made and removed.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = set(tmp_path.glob("member-export-*"))
    got = api.client.get("/v1/members/priv-1/export", headers=api.headers())
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/zip" and got.headers["cache-control"] == "no-store"
    assert 'filename="member-priv-1.zip"' in got.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(got.content))
    member = json.loads(archive.read("member.json"))
    assert sorted(archive.read(p["file"]) for p in member["photos"]) == sorted(
        [photo(BRODY[0]), photo(BRODY[1])]
    )
    for _ in range(100):  # removed by a background task just after the answer is sent
        if set(tmp_path.glob("member-export-*")) == before:
            break
        time.sleep(0.05)
    assert set(tmp_path.glob("member-export-*")) == before
    assert api.client.get("/v1/members/priv-1/export", headers=api.headers("reader")).status_code == 403
    missing = api.client.get("/v1/members/nobody/export", headers=api.headers())
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_member"
    monkeypatch.setenv("PRIVACY_EXPORT_MAX_MB", "0.01")
    refused = api.client.get("/v1/members/priv-1/export", headers=api.headers())
    assert refused.status_code == 409 and refused.json()["error"] == "export_too_large"
    assert "PRIVACY_EXPORT_MAX_MB" in refused.json()["message"]
    assert set(tmp_path.glob("member-export-*")) == before
    with api.factory() as session:
        exports = session.scalars(select(AuditEntry).where(AuditEntry.action == "export_member")).all()
    assert [(e.actor, e.target_id, e.detail["why"]) for e in exports] == [
        ("api:backend-key", "priv-1", "api")
    ]


def test_erase_member_over_the_api(api):
    api.enrol("priv-1", photo(BRODY[0]), photo(BRODY[1]))
    api.enrol("priv-2", photo(BECKHAM[0]), photo(BECKHAM[1]))

    def found() -> list[str]:
        body = api.client.post(
            "/v1/search/upload",
            files={"photo": ("q.jpg", photo(BRODY[2]), "image/jpeg")},
            data={"k": "5"},
            headers=api.headers(),
        ).json()
        return [c["member_id"] for c in body["candidates"]]

    assert found()[0] == "priv-1"
    refused = api.client.delete("/v1/members/priv-1", headers=api.headers("reader"))
    assert refused.status_code == 403
    erased = api.client.delete("/v1/members/priv-1", headers=api.headers())
    assert erased.status_code == 200, erased.text
    body = erased.json()
    assert body["member_id"] == "priv-1" and not body["already_erased"]
    assert (
        body["removed"]["photos"] == 2
        and body["removed"]["files"] == 2
        and body["removed"]["embeddings"] == 2
    )
    assert "priv-1" not in found()
    assert api.client.get("/v1/members/priv-1/photos/gallery", headers=api.headers()).status_code == 404
    history = api.client.get("/v1/members/priv-1/verifications", headers=api.headers("reader")).json()
    assert history["status"] == "erased" and history["total"] == 1  # the decision is kept
    result = api.client.get(f"/v1/verifications/{history['items'][0]['id']}", headers=api.headers()).json()
    assert result["gallery"] is None and result["verification"] is None and result["status"]
    again = api.client.delete("/v1/members/priv-1", headers=api.headers())
    assert again.status_code == 200 and again.json()["already_erased"] is True
    assert api.client.delete("/v1/members/nobody", headers=api.headers()).status_code == 404
    with api.factory() as session:
        assert session.scalar(select(func.count()).select_from(Photo).where(Photo.member_id == "priv-1")) == 0
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "erase_member")).first()
        assert (entry.actor, entry.target_id, entry.detail["via"]) == ("api:backend-key", "priv-1", "api")
