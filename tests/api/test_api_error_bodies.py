"""API error bodies never name server paths, modules or tracebacks: a generic message is sent and
the detail goes to the log. Real failures: a missing stored photo, a stored path the store cannot
read, a model folder with no model, bad input of every kind."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from core.api import create_app, create_key
from core.storage.photostore import PhotoStore
from core.storage.schema import Member, Photo
from core.workflows import search

LEAKS = ("/work", "/tmp", ".py", "site-packages", "Traceback", "/root", "/home", "Errno")


def assert_no_leak(response) -> None:
    text = response.text
    found = [marker for marker in LEAKS if marker in text]
    assert not found, (response.status_code, found, text[:500])


@pytest.fixture
def broken_api(session_factory, tmp_path, monkeypatch):
    """An API whose model folder is empty and whose photo store has a missing and an unreadable
    photo; the members rows point at them."""
    monkeypatch.setenv("MODELS_DIR", str(tmp_path / "no-models-here"))
    search.reset_indexes()
    store = PhotoStore(tmp_path / "photos", fsync=False)
    (tmp_path / "photos" / "ab" / "unreadable.jpg").mkdir(parents=True)  # a folder, not a file
    with session_factory() as session:
        for member_id, path in (("LEAK1", "cd/missing.jpg"), ("LEAK2", "ab/unreadable.jpg")):
            session.add(Member(id=member_id, gender="F", status="enrolled"))
            session.add(
                Photo(
                    member_id=member_id,
                    kind="gallery",
                    sha256="0" * 64,
                    stored_path=path,
                    size_bytes=10,
                    current=True,
                )
            )
        session.commit()
        key, _ = create_key(session, "leak-test", "backend", actor="test")
    app = create_app(session_factory, photo_store=store, load_engine=True)
    with TestClient(app, raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 120
        while client.get("/health").json()["status"] == "starting" and time.monotonic() < deadline:
            time.sleep(0.5)
        yield client, key


def test_no_error_body_names_a_server_path(broken_api):
    client, key = broken_api
    h = {"X-API-Key": key}
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["model_error"]  # the load failed ...
    responses = [
        health,  # ... and says so without the folder it looked in
        client.get("/v1/members/LEAK1/photos/gallery", headers=h),  # missing from the store
        client.get("/v1/members/LEAK2/photos/gallery", headers=h),  # unreadable in the store
        client.post("/v1/verifications", json={"member_id": "LEAK3"}, headers=h),  # no model
        client.post("/v1/members/LEAK1/gallery-photos", json={"photo_base64": "AAAA"}, headers=h),
        client.post("/v1/photo-checks", json={"photo_base64": "not base64!"}, headers=h),
        client.post(
            "/v1/photo-checks", content=b"{broken", headers={**h, "Content-Type": "application/json"}
        ),
        client.post("/v1/photo-checks", content=b"x", headers={**h, "Content-Type": "text/plain"}),
        client.post("/v1/search", json={"photo_sha256": "../../etc/passwd"}, headers=h),
        client.get("/work/core/api/app.py", headers=h),
        client.get("/v1/site-packages/x.py", headers=h),
        client.put("/health"),
        client.delete("/v1/members/NOBODY", headers=h),
        client.delete("/v1/members/%2Fwork%2Fx.py", headers=h),
        client.get("/v1/members/LEAK1/verifications?limit=-1", headers=h),
        client.get("/v1/verifications/999999", headers=h),
        client.get("/v1/members/LEAK1/verifications", headers={"X-API-Key": "fvk_/work/x.py"}),
    ]
    statuses = {r.status_code for r in responses}
    assert statuses >= {400, 404, 405, 415, 422, 500, 503}, statuses
    for response in responses:
        assert_no_leak(response)
    missing, unreadable = responses[1], responses[2]
    assert missing.status_code == 404 and missing.json()["error"] == "photo_missing"
    assert unreadable.status_code >= 500
    assert responses[3].json()["error"] == "model_unavailable"
