"""The API's side of issue 12 over HTTP: the gallery swap refused, gallery photos added by their own
checked call, pose challenges single use and expiring."""

from __future__ import annotations

import base64
import io

from PIL import Image
from sqlalchemy import select
from test_api import BECKHAM, BRODY, api, engine, photo  # noqa: F401 - fixtures

from core.storage import challenges
from core.storage.schema import GALLERY, Member, Photo
from core.verification import fraud
from core.verification.result import CHALLENGE_FAILED, GALLERY_PHOTO_DIFFERS
from core.workflows import reviews


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _gallery(api, member_id):  # noqa: F811
    with api.factory() as session:
        rows = session.execute(
            select(Photo.sha256, Photo.current).where(Photo.member_id == member_id, Photo.kind == GALLERY)
        ).all()
        return {sha: current for sha, current in rows}, session.get(Member, member_id).status


def test_a_request_for_an_existing_member_cannot_swap_its_gallery(api):  # noqa: F811
    """The issue's attack: another person's gallery photo and selfie sent for an existing member."""
    first = api.enrol("m-swap", photo(BRODY[0]), photo(BRODY[1]))
    before = _gallery(api, "m-swap")
    swap = api.upload("m-swap", photo(BECKHAM[0]), photo(BECKHAM[1]))
    assert swap.status_code == 409, swap.text
    body = swap.json()
    assert body["error"] == "gallery_locked" and "/v1/members/m-swap/gallery-photos" in body["message"]
    as_json = api.client.post(
        "/v1/verifications",
        json={
            "member_id": "m-swap",
            "gallery_base64": _b64(photo(BECKHAM[0])),
            "verification_base64": _b64(photo(BECKHAM[1])),
        },
        headers=api.headers(),
    )
    assert as_json.status_code == 409 and as_json.json()["error"] == "gallery_locked"
    # nor by naming the member's own selfie as its gallery photo
    by_ref = api.client.post(
        "/v1/verifications",
        json={"member_id": "m-swap", "gallery_sha256": first["verification_photo_sha256"]},
        headers=api.headers(),
    )
    assert by_ref.status_code == 409
    assert _gallery(api, "m-swap") == before
    # the gallery photo it already has is fine, and so is a selfie alone
    same = api.upload("m-swap", photo(BRODY[0]), photo(BRODY[2]))
    assert same.status_code == 201, same.text
    assert same.json()["gallery_photo_sha256"] == first["gallery_photo_sha256"]


def test_adding_a_gallery_photo_is_compared_and_reviewed_when_it_differs(api):  # noqa: F811
    api.enrol("m-add", photo(BRODY[0]), photo(BRODY[1]))
    gallery_before, status_before = _gallery(api, "m-add")
    other = api.client.post(
        "/v1/members/m-add/gallery-photos",
        json={"photo_base64": _b64(photo(BECKHAM[0]))},
        headers=api.headers(),
    )
    assert other.status_code == 201, other.text
    out = other.json()
    assert out["accepted"] is False and out["verification"]["status"] == "flagged"
    assert GALLERY_PHOTO_DIFFERS in [f["code"] for f in out["verification"]["flags"]]
    gallery_now, status_now = _gallery(api, "m-add")
    assert {s for s, c in gallery_now.items() if c} == {s for s, c in gallery_before.items() if c}
    assert status_now == status_before  # an addition never verifies (or unverifies) the member
    # a verification still runs against the old gallery photo
    again = api.upload("m-add", verification=photo(BRODY[2]))
    assert again.json()["gallery_photo_sha256"] in {s for s, c in gallery_before.items() if c}

    same_person = api.client.post(
        "/v1/members/m-add/gallery-photos",
        json={"photo_base64": _b64(photo(BRODY[2]))},
        headers=api.headers(),
    ).json()
    if same_person["verification"]["status"] == "auto_approved":
        assert same_person["accepted"] and _gallery(api, "m-add")[0][same_person["photo_sha256"]] is True
    # the same photo again is refused, not queued twice
    dup = api.client.post(
        "/v1/members/m-add/gallery-photos",
        json={"photo_base64": _b64(photo(BECKHAM[0]))},
        headers=api.headers(),
    )
    assert dup.status_code == 409 and dup.json()["error"] == "already_in_gallery"

    # a reviewer approves the differing photo: it becomes the gallery photo, the member's status stays
    with api.factory() as session:
        status = session.get(Member, "m-add").status
        reviews.decide(session, out["verification"]["id"], "reviewer", "approve")
    gallery_after, status_after = _gallery(api, "m-add")
    assert gallery_after[out["photo_sha256"]] is True and status_after == status


def _rotated(name: str, degrees: float) -> bytes:
    image = Image.open(io.BytesIO(photo(name))).convert("RGB")
    out = io.BytesIO()
    image.rotate(degrees, resample=Image.BICUBIC, fillcolor=(128, 128, 128)).save(out, "JPEG", quality=92)
    return out.getvalue()


def test_pose_challenges_are_checked_single_use_and_expire(api, monkeypatch):  # noqa: F811
    api.enrol("m-pose", photo(BRODY[0]), photo(BRODY[1]))
    issued = api.client.post("/v1/challenges", json={"member_id": "m-pose"}, headers=api.headers())
    assert issued.status_code == 201, issued.text
    body = issued.json()
    assert body["kind"] in fraud.CHALLENGES and body["instruction"]["ko"] and body["instruction"]["en"]
    assert (
        api.client.post(
            "/v1/challenges", json={"member_id": "m-pose"}, headers=api.headers("reader")
        ).status_code
        == 403
    )

    monkeypatch.setattr(challenges.secrets, "choice", lambda kinds: fraud.TILT)
    tilt = api.client.post("/v1/challenges", json={"member_id": "m-pose"}, headers=api.headers()).json()
    shown = api.upload("m-pose", verification=_rotated(BRODY[2], 25), challenge_id=tilt["challenge_id"])
    assert shown.status_code == 201, shown.text
    checks = shown.json()["checks"]["challenge"]
    assert checks["kind"] == fraud.TILT and checks["met"] and abs(checks["roll"]) >= fraud.MIN_TILT
    assert CHALLENGE_FAILED not in [f["code"] for f in shown.json()["flags"]]
    # used once: refused the second time, with nothing stored
    reused = api.upload("m-pose", verification=_rotated(BRODY[2], 25), challenge_id=tilt["challenge_id"])
    assert reused.status_code == 409 and reused.json()["error"] == "challenge_used"

    frontal = api.client.post("/v1/challenges", json={"member_id": "m-pose"}, headers=api.headers()).json()
    refused = api.upload("m-pose", verification=photo(BRODY[2]), challenge_id=frontal["challenge_id"])
    flag = next(f for f in refused.json()["flags"] if f["code"] == CHALLENGE_FAILED)
    assert refused.json()["status"] == "flagged" and "degrees" in flag["reason"]
    assert flag["params"]["angle"] < fraud.MIN_TILT

    elsewhere = api.client.post(
        "/v1/challenges", json={"member_id": "someone-else"}, headers=api.headers()
    ).json()
    wrong = api.upload("m-pose", verification=photo(BRODY[2]), challenge_id=elsewhere["challenge_id"])
    assert wrong.status_code == 422 and wrong.json()["error"] == "challenge_member_mismatch"
    unknown = api.upload("m-pose", verification=photo(BRODY[2]), challenge_id="no-such-challenge")
    assert unknown.status_code == 404

    monkeypatch.setenv("CHALLENGE_MINUTES", "0")  # expires as soon as it is issued
    stale = api.client.post("/v1/challenges", json={"member_id": "m-pose"}, headers=api.headers()).json()
    expired = api.upload("m-pose", verification=photo(BRODY[2]), challenge_id=stale["challenge_id"])
    assert expired.status_code == 410 and expired.json()["error"] == "challenge_expired"
