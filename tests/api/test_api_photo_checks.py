"""POST /v1/photo-checks over HTTP: findings with instructions in both languages, nothing stored."""

from __future__ import annotations

import base64

import cv2
import numpy as np
from test_api import api, counts, engine, photo  # noqa: F401  (fixtures)

from core.benchmarks import capture_variants as variants
from core.verification import faces, imaging


def _masked(name: str) -> bytes:
    rgb = imaging.decode_image(photo(name)).rgb
    found = faces.detect_faces(rgb)
    face = found[faces.main_face_index(found, rgb.shape[1], rgb.shape[0])]
    points = variants.landmarks68(rgb, faces.landmark_box(face))
    masked = variants.make_variant(rgb, points, face.box[2], "mask", np.random.default_rng(1))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(masked, cv2.COLOR_RGB2BGR))
    return buf.tobytes()


def test_photo_check_finds_a_mask_and_stores_nothing(api):  # noqa: F811
    before = counts(api)
    response = api.client.post(
        "/v1/photo-checks/upload",
        files={"photo": ("selfie.jpg", _masked("Adrien_Brody_0002"), "image/jpeg")},
        headers=api.headers(),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert not body["ok"] and not body["submit"]
    hidden = [f for f in body["findings"] if f["hides_face"]]
    assert hidden and hidden[0]["code"] in ("face_mask", "hand_over_face")
    assert hidden[0]["value"] > hidden[0]["limit"]
    assert set(hidden[0]["instruction"]) == {"ko", "en"}
    assert "마스크" in hidden[0]["instruction"]["ko"] or "손" in hidden[0]["instruction"]["ko"]

    plain = api.client.post(
        "/v1/photo-checks",
        json={"photo_base64": base64.b64encode(photo("Adrien_Brody_0002")).decode()},
        headers=api.headers(),
    )
    assert plain.status_code == 200, plain.text
    assert plain.json()["submit"] and not [f for f in plain.json()["findings"] if f["hides_face"]]
    assert plain.json()["timings_ms"]["capture"] > 0
    assert counts(api) == before  # no row of any table, no photo file, no audit entry


def test_photo_check_refuses_what_is_not_a_photo(api):  # noqa: F811
    before = counts(api)
    text = api.client.post(
        "/v1/photo-checks/upload",
        files={"photo": ("notes.jpg", b"just some text, not a photo", "image/jpeg")},
        headers=api.headers(),
    )
    assert text.status_code in (415, 422), text.text
    assert text.json()["error"] == "not_an_image"
    empty = api.client.post("/v1/photo-checks", json={"photo_base64": ""}, headers=api.headers())
    assert empty.status_code == 422 and empty.json()["error"] == "empty"
    assert counts(api) == before
    assert api.client.post("/v1/photo-checks", json={"photo_base64": "x"}).status_code == 401
    reader = api.client.post("/v1/photo-checks", json={"photo_base64": "eA=="}, headers=api.headers("reader"))
    assert reader.status_code == 403
