"""Photo checks: the app asks, before submitting, whether a photo will do and what to fix.

Photo in, findings out, nothing stored (no database row, no photo file, no audit entry: the
photo is not a decision and is forgotten when the answer is sent). The same capture check runs
inside every verification, so what this answers is what the verification will flag.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from fastapi.responses import JSONResponse

from core.api.deps import secured
from core.api.errors import error_responses
from core.api.inputs import checked_photo, decode_base64, upload_bytes
from core.api.output import jsonable
from core.api.schemas import PhotoCheckOut, PhotoCheckRequest
from core.i18n import LANGUAGES, t
from core.verification import capture, features

router = APIRouter(tags=["photo checks"])


def check_photo(data: bytes) -> dict:
    """Decode, detect, align and check one photo; the findings with instructions in both languages."""
    start = time.perf_counter()
    analysis = features.locate(data)
    if analysis.width == 0:  # not decodable: the same typed 4xx as every other endpoint gives
        checked_photo("photo", data)
    findings = capture.photo_findings(analysis)
    for finding in findings:
        key = finding.pop("instruction_key")
        finding["instruction"] = {lang: t(key, lang) for lang in LANGUAGES}
    main = analysis.faces[analysis.main_face] if analysis.main_face is not None else None
    return {
        "ok": not findings,
        "submit": not any(f["hides_face"] or f["code"] == "no_face" for f in findings),
        "width": analysis.width,
        "height": analysis.height,
        "faces": len(analysis.faces),
        "face_box": list(main.box) if main else None,
        "findings": findings,
        "measures": analysis.capture.to_dict()["measures"] if analysis.capture else {},
        "timings_ms": analysis.timings_ms | {"total": (time.perf_counter() - start) * 1000},
    }


@router.post(
    "/v1/photo-checks",
    response_model=PhotoCheckOut,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 413, 415, 422),
)
def photo_check(body: PhotoCheckRequest):
    """Check a photo (base64) before it is submitted: mask, hand, sunglasses, closed eyes, blur,
    light, face size and position, head pose. Nothing is stored."""
    return JSONResponse(jsonable(check_photo(decode_base64("photo", body.photo_base64))))


@router.post(
    "/v1/photo-checks/upload",
    response_model=PhotoCheckOut,
    dependencies=secured,
    responses=error_responses(400, 401, 403, 413, 415, 422),
)
def photo_check_upload(photo: Annotated[UploadFile, File(description="the photo to check")]):
    """POST /v1/photo-checks with the photo as a multipart file."""
    return JSONResponse(jsonable(check_photo(upload_bytes("photo", photo) or b"")))
