"""Values and flags in the page's words: local times (Korea), target texts, flag sentences, CSV.

local_time(value), today_local(), target_text(target), describe_flags(result, lang), to_csv_bytes(frame)
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pandas as pd

from core.dashboard import kpi_targets
from core.dashboard.photos import faces_of
from core.i18n import flag_text, t
from core.storage.schema import GALLERY, VERIFICATION
from core.storage.schema import VerificationResult as ResultRow
from core.verification import capture
from core.verification.result import (
    BAD_IMAGE,
    GENDER_MISMATCH,
    LOW_QUALITY,
    POSSIBLE_DUPLICATE,
    SEVERAL_FACES,
    UNCERTAIN_GENDER,
    UNCERTAIN_SIMILARITY,
    Flag,
    PhotoAnalysis,
    VerificationResult,
)
from core.workflows import search, spreadsheets

DISPLAY_TZ = "Asia/Seoul"  # the staff work in Korea: days and times are shown in KST


def today_local(tz: str = DISPLAY_TZ) -> date:
    return datetime.now(ZoneInfo(tz)).date()


def local_time(value: datetime | None, tz: str = DISPLAY_TZ) -> str:
    """A stored naive-UTC timestamp as local 'YYYY-MM-DD HH:MM'."""
    if value is None:
        return ""
    return value.replace(tzinfo=UTC).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


def flag_params(flag: Flag | dict, similarity, band, registered, predicted, confidence, analyses) -> dict:
    """The figures a flag's sentence needs, taken from the result it belongs to."""
    code = flag.code if isinstance(flag, Flag) else flag["code"]
    photo = flag.photo if isinstance(flag, Flag) else flag.get("photo")
    reason = flag.reason if isinstance(flag, Flag) else flag.get("reason", "")
    params: dict = {"detail": reason}
    # Fraud flags carry their own figures (photo id, EXIF date, measured angle): None leaves the
    # sentence to fall back on the English reason.
    own = flag.params if isinstance(flag, Flag) else flag.get("params")
    params.update({k: v for k, v in (own or {}).items() if v is not None})
    analysis = analyses.get(photo) if photo else None
    if code == UNCERTAIN_SIMILARITY and similarity is not None:
        params.update(similarity=similarity, low=band[0], high=band[1])
    elif code in (GENDER_MISMATCH, UNCERTAIN_GENDER):
        params.update(registered=registered or "?", predicted=predicted or "?", confidence=confidence or 0.0)
    elif code == SEVERAL_FACES:
        faces, _ = faces_of(analysis)
        params.update(count=max(2, len(faces)))
    elif code == LOW_QUALITY:
        quality = analysis.quality if isinstance(analysis, PhotoAnalysis) else (analysis or {}).get("quality")
        params.update(quality=quality or 0.0)
    elif code == BAD_IMAGE:
        params.update(detail=reason)
    elif code == POSSIBLE_DUPLICATE:
        params.update(candidates=search.candidates_in_reason(reason))
    elif code in capture.FINDING_CODES:
        params.update(capture_figures(analysis, code))
    return params


def capture_figures(analysis: PhotoAnalysis | dict | None, code: str) -> dict:
    """{value, limit} of a capture finding, from a live analysis or a stored one ({} if absent)."""
    check = analysis.capture if isinstance(analysis, PhotoAnalysis) else (analysis or {}).get("capture")
    if check is None:
        return {}
    findings = check.findings if isinstance(check, capture.CaptureCheck) else check.get("findings", [])
    for finding in findings:
        found = finding if isinstance(finding, dict) else vars(finding)
        if found["code"] == code:
            return {"value": found["value"], "limit": found["limit"]}
    return {}


def describe_flags(result: VerificationResult | ResultRow, lang: str) -> list[dict]:
    """[{code, photo, title, text}] for a live result or a stored row, in the page's language."""
    if isinstance(result, VerificationResult):
        flags = result.flags
        similarity, band = result.similarity, result.uncertain_band
        registered, predicted, confidence = (
            result.registered_gender,
            result.predicted_gender,
            result.gender_confidence,
        )
        analyses = {GALLERY: result.gallery, VERIFICATION: result.verification}
    else:
        flags = result.flags or []
        similarity, band = result.similarity, (result.band_low, result.band_high)
        registered, predicted, confidence = (
            result.registered_gender,
            result.predicted_gender,
            result.gender_confidence,
        )
        analyses = {GALLERY: result.gallery_analysis, VERIFICATION: result.verification_analysis}
    described = []
    for flag in flags:
        code = flag.code if isinstance(flag, Flag) else flag["code"]
        photo = flag.photo if isinstance(flag, Flag) else flag.get("photo")
        params = flag_params(
            flag,
            similarity,
            band,
            t(f"gender.{registered}", lang) if registered else None,
            t(f"gender.{predicted}", lang) if predicted else None,
            confidence,
            analyses,
        )
        if params.get("challenge"):
            params["challenge_label"] = t(f"challenge.{params['challenge']}", lang)
        if params.get("candidates"):
            params["detail"] = ", ".join(
                t("flag.duplicate_candidate", lang, member=m, similarity=float(v))
                for m, v in params.pop("candidates")
            )
        described.append(
            {
                "code": code,
                "photo": photo,
                "title": t(f"flag.{code}", lang),
                "text": flag_text(code, lang, **params),
            }
        )
    return described


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    """UTF-8 with a byte-order mark, so Korean Excel opens it with the right encoding. Every text
    cell that a spreadsheet would run as a formula (= + - @ tab CR first) gets a leading ' (OWASP's
    rule), so a member id such as =HYPERLINK(...) imported earlier is shown, never run."""
    # CRLF rows, as Excel writes them; it also makes the csv writer quote a cell holding a lone CR.
    return spreadsheets.escape_frame(frame).to_csv(index=False, lineterminator="\r\n").encode("utf-8-sig")


def target_text(target: kpi_targets.Target) -> str:
    """'≥ 99%', '≤ 2,000 ms': a target as the pages and charts show it."""
    sign = "≥" if target.direction == kpi_targets.MIN else "≤"
    if target.unit == "ratio":
        return f"{sign} {target.value * 100:.0f}%"
    if target.unit == "ms":
        return f"{sign} {target.value:,.0f} ms"
    return f"{sign} {target.value:,.0f}"
