"""Profile photos over real HTTP with the shipped model and real photos: the page service and the
API give the same answer on the same profile; list, add, reorder, decide and remove."""

from __future__ import annotations

import base64

from test_api import api, engine, photo  # noqa: F401

from core.dashboard import profiles as page
from core.dashboard.verify import PairInputError

GEPHARDT = ["Richard_Gephardt_0003", "Richard_Gephardt_0005", "Howard_Dean_0001", "Richard_Gephardt_0007"]


def b64(name: str) -> str:
    return base64.b64encode(photo(name)).decode()


def _same(answer: dict) -> tuple:
    return (
        answer["profile_status"],
        answer["flagged_photos"],
        [(p["position"], p["state"], round(p["similarity"], 5), p["box"]) for p in answer["photos"]],
    )


def test_page_and_api_give_the_same_answer_on_the_same_profile(api):  # noqa: F811
    response = api.client.post(
        "/v1/members/api-1/profile/verifications",
        json={
            "verification_base64": b64("Richard_Gephardt_0001"),
            "profile_photos_base64": [b64(n) for n in GEPHARDT],
            "registered_gender": "M",
            "enrol": True,
        },
        headers=api.headers(),
    )
    assert response.status_code == 201, response.text
    through_api = response.json()
    assert through_api["flagged_photos"] == [3]
    assert through_api["photos"][2]["reason"].startswith("Photo 3 does not show this member")
    assert through_api["verification"]["id"] == through_api["result_id"]

    listed = api.client.get("/v1/members/api-1/profile-photos", headers=api.headers("reader")).json()
    assert [(p["position"], p["state"]) for p in listed["photos"]] == [
        (1, "matches"),
        (2, "matches"),
        (3, "does_not_match"),
        (4, "matches"),
    ]
    assert listed["badge"] is False and listed["max_photos"] == 9

    # A reviewer rejects photo 3: it leaves the public list and goes last.
    decided = api.client.post(
        "/v1/members/api-1/profile-photos/3/decision", json={"decision": "reject"}, headers=api.headers()
    )
    assert decided.status_code == 200, decided.text
    public = api.client.get("/v1/members/api-1/profile-photos?public=true", headers=api.headers()).json()
    assert len(public["photos"]) == 3 and all(p["state"] == "matches" for p in public["photos"])

    # A selfie against the profile now: the rejected photo is not compared; verified.
    again = api.client.post(
        "/v1/members/api-1/profile/verifications",
        json={"verification_base64": b64("Richard_Gephardt_0011")},
        headers=api.headers(),
    )
    assert again.status_code == 201, again.text
    assert len(again.json()["photos"]) == 3 and again.json()["status"] == "auto_approved", again.json()[
        "reasons"
    ]
    listed = api.client.get("/v1/members/api-1/profile-photos", headers=api.headers()).json()
    assert listed["badge"] is True

    with api.factory() as session:
        verified, members = page.verified_profile_share(session)
        assert (verified, members) == (1, 1)

    # The same profile through the Verify page's service: the same answer, photo by photo. (Its
    # stored status may add the duplicate-account flags: the same person is now enrolled twice.)
    through_page = page.verify_profile(
        api.factory,
        api.engine,
        api.store,
        "staff_user",
        "page-1",
        registered_gender="M",
        selfie_bytes=photo("Richard_Gephardt_0001"),
        profile_bytes=[photo(n) for n in GEPHARDT],
    )
    assert _same(through_page) == _same(through_api)

    # Reorder and remove; wrong orders and positions are clear errors.
    bad = api.client.put(
        "/v1/members/api-1/profile-photos/order", json={"order": [1, 1, 2, 3]}, headers=api.headers()
    )
    assert bad.status_code == 422 and bad.json()["error"] == "bad_order"
    moved = api.client.put(
        "/v1/members/api-1/profile-photos/order", json={"order": [2, 1, 3, 4]}, headers=api.headers()
    )
    assert moved.status_code == 200
    gone = api.client.delete("/v1/members/api-1/profile-photos/9", headers=api.headers())
    assert gone.status_code == 404 and gone.json()["error"] == "unknown_profile_photo"
    removed = api.client.delete("/v1/members/api-1/profile-photos/4", headers=api.headers())
    assert removed.status_code == 200 and len(removed.json()["photos"]) == 3


def test_adding_a_photo_and_errors(api):  # noqa: F811
    enrolled = api.client.post(
        "/v1/members/api-2/profile/verifications",
        json={
            "verification_base64": b64("Kofi_Annan_0014"),
            "profile_photos_base64": [b64("Kofi_Annan_0016")],
            "registered_gender": "M",
            "enrol": True,
        },
        headers=api.headers(),
    )
    assert enrolled.status_code == 201 and enrolled.json()["status"] == "auto_approved", enrolled.text
    added = api.client.post(
        "/v1/members/api-2/profile-photos",
        json={"photo_base64": b64("Kofi_Annan_0027")},
        headers=api.headers(),
    )
    assert added.status_code == 201 and added.json()["shown"] is True and added.json()["position"] == 2
    stranger = api.client.post(
        "/v1/members/api-2/profile-photos",
        json={"photo_base64": b64("Howard_Dean_0001")},
        headers=api.headers(),
    )
    body = stranger.json()
    assert body["shown"] is False and body["state"] == "does_not_match"
    assert any(f["code"] == "profile_photo" for f in body["flags"])
    listed = api.client.get("/v1/members/api-2/profile-photos", headers=api.headers()).json()
    assert listed["badge"] is False and listed["photos"][2]["waiting"] is True

    again = api.client.post(
        "/v1/members/api-2/profile-photos",
        json={"photo_base64": b64("Kofi_Annan_0027")},
        headers=api.headers(),
    )
    assert again.status_code == 409 and again.json()["error"] == "already_in_profile"
    unknown = api.client.post(
        "/v1/members/nobody/profile-photos",
        json={"photo_base64": b64("Kofi_Annan_0027")},
        headers=api.headers(),
    )
    assert unknown.status_code == 404
    locked = api.client.post(
        "/v1/members/api-2/profile/verifications",
        json={
            "verification_base64": b64("Kofi_Annan_0026"),
            "profile_photos_base64": [b64("Kofi_Annan_0026")],
        },
        headers=api.headers(),
    )
    assert locked.status_code == 409 and "profile-photos" in locked.json()["message"]
    too_many = api.client.post(
        "/v1/members/api-3/profile/verifications",
        json={
            "verification_base64": b64("Kofi_Annan_0014"),
            "profile_photos_base64": [b64("Kofi_Annan_0016")] * 2,
            "registered_gender": "M",
            "enrol": True,
        },
        headers=api.headers(),
    )
    assert too_many.status_code == 422 and too_many.json()["error"] == "same_photo_twice"
    try:
        page.verify_profile(
            api.factory, api.engine, api.store, "staff", "page-x", selfie_bytes=b"not a photo"
        )
    except PairInputError:
        pass
    else:
        raise AssertionError("an unusable selfie must be refused")
