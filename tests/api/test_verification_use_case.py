"""One verification use case behind the Verify page and the API: the same cases through both, the
stored rows compared; a replayed selfie, the registered gender, a missing selfie and the pose
challenge rules, over real HTTP with the shipped model and real photos."""

from __future__ import annotations

import base64
from collections import Counter
from datetime import timedelta

from sqlalchemy import select
from test_api import BECKHAM, BRODY, api, engine, photo  # noqa: F401

from core.dashboard import verify as page
from core.storage.db import init_db, make_engine, session_factory
from core.storage.photostore import PhotoStore
from core.storage.schema import AuditEntry, Member, Photo, utcnow
from core.storage.schema import VerificationResult as ResultRow
from core.storage.schema_guards import Challenge
from core.workflows import batches

# Each case: (member, gender, gallery photo or None for the stored one, selfie or None for the
# stored one, i.e. an explicit re-check).
CASES = [
    ("enrol", "m-1", "M", BECKHAM[0], BECKHAM[1]),
    ("new selfie", "m-1", None, None, BECKHAM[2]),
    ("earlier selfie re-sent", "m-1", None, None, BECKHAM[1]),
    ("current selfie re-sent", "m-1", None, None, BECKHAM[2]),
    ("gender changed by a verification", "m-1", "F", None, BRODY[1]),
    ("another member's selfie", "m-2", "M", BRODY[0], BECKHAM[2]),
    ("re-check of the stored photos", "m-1", None, None, None),
]
SHARED_ACTIONS = {"import_member", "create_batch", "verify_member", "change_gender"}


def _through_api(api, member_id, gender, gallery, selfie) -> str:  # noqa: F811
    if selfie is None:
        response = api.client.post(f"/v1/members/{member_id}/reverifications", headers=api.headers())
    else:
        fields = {"registered_gender": gender, "enrol": True} if gender else {}
        response = api.upload(member_id, photo(gallery) if gallery else None, photo(selfie), **fields)
    if response.status_code == 201:
        return "stored"
    assert response.status_code in (404, 409, 422), response.text
    return response.json()["error"]


def _through_page(factory, store, engine, member_id, gender, gallery, selfie) -> str:  # noqa: F811
    try:
        page.verify_pair(
            factory,
            engine,
            store,
            "staff_user",
            member_id,
            registered_gender=gender,
            gallery_bytes=photo(gallery) if gallery else None,
            verification_bytes=photo(selfie) if selfie else None,
        )
    except page.PairInputError as exc:
        return exc.key
    return "stored"


def _stored(factory) -> dict:
    with factory() as s:
        shas = dict(s.execute(select(Photo.id, Photo.sha256)).all())
        return {
            "results": [
                (
                    r.member_id,
                    r.status,
                    sorted(f["code"] for f in r.flags or []),
                    round(r.similarity, 4) if r.similarity is not None else None,
                    r.registered_gender,
                    shas[r.gallery_photo_id],
                    shas[r.verification_photo_id],
                    (r.checks or {}).get("challenge_used"),
                    (r.checks or {}).get("challenge_required"),
                )
                for r in s.scalars(select(ResultRow).order_by(ResultRow.id))
            ],
            "photos": sorted((p.member_id, p.kind, p.sha256, p.current) for p in s.scalars(select(Photo))),
            "members": sorted((m.id, m.gender, m.status) for m in s.scalars(select(Member))),
            "audit": Counter(a for a in s.scalars(select(AuditEntry.action)) if a in SHARED_ACTIONS),
        }


def test_the_page_behaves_exactly_as_the_api(api, engine, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("CHALLENGE_REQUIRED_API", "1")
    monkeypatch.setenv("CHALLENGE_REQUIRED_PAGE", "1")
    db = make_engine(f"sqlite:///{tmp_path / 'page.sqlite3'}")
    init_db(db)
    factory = session_factory(db)
    store = PhotoStore(tmp_path / "page_photos", fsync=False)
    outcomes = []
    for name, member_id, gender, gallery, selfie in CASES:
        by_api = _through_api(api, member_id, gender, gallery, selfie)
        by_page = _through_page(factory, store, engine, member_id, gender, gallery, selfie)
        outcomes.append((name, by_api, by_page))
    assert [(n, a == "stored", p == "stored") for n, a, p in outcomes] == [
        (n, n != "gender changed by a verification", n != "gender changed by a verification")
        for n, *_ in CASES
    ], outcomes
    assert outcomes[4][1:] == ("gender_differs", "verify.gender_differs")

    by_api, by_page = _stored(api.factory), _stored(factory)
    for table in ("results", "photos", "members", "audit"):
        assert by_api[table] == by_page[table], table
    db.dispose()

    results = by_api["results"]
    # A replayed selfie, earlier or current, this member's or another's: flagged, never approved.
    for index in (2, 3, 4):
        assert results[index][1] == "flagged" and "reused_photo" in results[index][2], results[index]
    # The explicit re-check of stored photos is not a replay.
    assert "reused_photo" not in results[5][2]
    # Without a pose challenge nothing was approved automatically, and every result says so.
    assert all(r[1] != "auto_approved" and r[7] is False and r[8] is True for r in results)
    assert "no_challenge" in results[0][2] or results[0][1] != "flagged"
    # The verification that named another gender changed nothing; the member is still M.
    assert ("m-1", "M") in {(m, g) for m, g, _ in by_api["members"]}


def test_a_verification_without_its_selfie_is_422_naming_the_field(api):  # noqa: F811
    api.enrol("m-10", photo(BECKHAM[0]), photo(BECKHAM[1]))
    with api.factory() as s:
        before = len(s.scalars(select(ResultRow)).all())
    only_member = api.upload("m-10")
    wrong_name = api.client.post(
        "/v1/verifications/upload",
        data={"member_id": "m-10"},
        files={"selfie": ("selfie.jpg", photo(BECKHAM[2]), "image/jpeg")},
        headers=api.headers(),
    )
    json_form = api.client.post("/v1/verifications", json={"member_id": "m-10"}, headers=api.headers())
    json_wrong = api.client.post(
        "/v1/verifications",
        json={"member_id": "m-10", "selfie": base64.b64encode(photo(BECKHAM[2])).decode()},
        headers=api.headers(),
    )
    for response in (only_member, wrong_name, json_form):
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["error"] == "verification_photo_required"
        assert "'verification'" in body["message"] and "verification_base64" in body["message"]
    assert json_wrong.status_code == 422 and "selfie" in json_wrong.text
    with api.factory() as s:
        assert len(s.scalars(select(ResultRow)).all()) == before, "nothing stored"
    # The upload form documents the rule.
    schema = api.client.get("/openapi.json").json()
    form = schema["components"]["schemas"]["Body_submit_verification_upload_v1_verifications_upload_post"]
    assert "REQUIRED" in form["properties"]["verification"]["description"]
    assert all(p.get("description") for p in form["properties"].values())


def test_registered_gender_changes_only_through_its_own_audited_call(api):  # noqa: F811
    api.enrol("m-20", photo(BRODY[0]), photo(BRODY[1]), gender="M")
    refused = api.upload("m-20", None, photo(BRODY[2]), registered_gender="F")
    assert refused.status_code == 409 and refused.json()["error"] == "gender_differs", refused.text
    assert "PUT /v1/members/m-20/gender" in refused.json()["message"]
    with api.factory() as s:
        assert s.get(Member, "m-20").gender == "M"

    as_reader = api.client.put(
        "/v1/members/m-20/gender", json={"registered_gender": "F"}, headers=api.headers("reader")
    )
    assert as_reader.status_code == 403
    changed = api.client.put(
        "/v1/members/m-20/gender",
        json={"registered_gender": "female", "reason": "typed wrong at sign-up"},
        headers=api.headers(),
    )
    assert changed.status_code == 200, changed.text
    assert changed.json() == {"member_id": "m-20", "registered_gender": "F", "status": "pending"}
    with api.factory() as s:
        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "change_gender"))
        assert entry.target_id == "m-20" and entry.detail["from"] == "M" and entry.detail["to"] == "F"
    unknown = api.client.put(
        "/v1/members/nobody/gender", json={"registered_gender": "F"}, headers=api.headers()
    )
    assert unknown.status_code == 404


def test_the_api_approves_automatically_only_after_a_passed_challenge(api, monkeypatch):  # noqa: F811
    monkeypatch.delenv("CHALLENGE_REQUIRED_API")  # the default: required
    out = api.enrol("m-30", photo(BECKHAM[0]), photo(BECKHAM[1]))
    codes = [f["code"] for f in out["flags"]]
    assert out["status"] != "auto_approved" and out["checks"]["challenge_used"] is False
    assert out["checks"]["challenge_required"] is True
    assert "no_challenge" in codes or out["status"] == "auto_rejected"

    issued = api.client.post("/v1/challenges", json={"member_id": "m-30"}, headers=api.headers())
    assert issued.status_code == 201, issued.text
    with_challenge = api.upload(
        "m-30", None, photo(BECKHAM[2]), challenge_id=issued.json()["challenge_id"]
    ).json()
    assert with_challenge["checks"]["challenge_used"] is True
    assert "no_challenge" not in [f["code"] for f in with_challenge["flags"]]


def test_one_open_challenge_per_member_a_short_lifetime_and_rate_limits(api, monkeypatch):  # noqa: F811
    api.enrol("m-40", photo(BRODY[0]), photo(BRODY[1]))

    def issue(member_id):
        return api.client.post("/v1/challenges", json={"member_id": member_id}, headers=api.headers())

    first, second = issue("m-40").json(), issue("m-40").json()
    with api.factory() as s:
        row = s.scalar(select(Challenge).where(Challenge.token == second["challenge_id"]))
        assert timedelta(minutes=2) < row.expires_at - utcnow() <= timedelta(minutes=3)
    old = api.upload("m-40", None, photo(BRODY[2]), challenge_id=first["challenge_id"])
    assert old.status_code == 410 and "newer one" in old.json()["message"], old.text

    for _ in range(3):  # 5 an hour per member
        assert issue("m-40").status_code == 201
    limited = issue("m-40")
    assert limited.status_code == 429 and limited.json()["error"] == "challenge_rate_limited"
    assert 0 < int(limited.headers["retry-after"]) <= 3600

    monkeypatch.setenv("CHALLENGES_PER_CALLER_PER_HOUR", "6")  # this key issued 5 already
    assert issue("m-41").status_code == 201
    assert issue("m-42").status_code == 429


def test_results_of_imported_photos_say_no_challenge_was_used_or_required(engine, tmp_path):  # noqa: F811
    db = make_engine(f"sqlite:///{tmp_path / 'batch.sqlite3'}")
    init_db(db)
    factory = session_factory(db)
    store = PhotoStore(tmp_path / "photos", fsync=False)
    page.verify_pair(
        factory,
        engine,
        store,
        "staff_user",
        "m-50",
        registered_gender="M",
        gallery_bytes=photo(BECKHAM[0]),
        verification_bytes=photo(BECKHAM[1]),
    )
    with factory() as s:
        batch = batches.create_batch(s, "staff_user", batches.items_for_members(s), engine.model_version)
    batches.run_batch(factory, engine, batch.id, photo_store=store)
    with factory() as s:
        row = s.scalar(select(ResultRow).where(ResultRow.batch_id == batch.id))
        assert row.checks["challenge_used"] is False and row.checks["challenge_required"] is False
    db.dispose()
