"""Values and flags in the page's words: local times (DISPLAY_TIMEZONE, Korea by default), target texts, flag sentences, CSV,
and every rate with what it rests on (its count and 95% Wilson interval).

local_time(value), today_local(), target_text(target), describe_flags(result, lang), to_csv_bytes(frame)
Rate(hits, n), rate_of(value, n), wilson_interval(hits, n), basis_text(rate, what, lang)
percent(value), number(value), milliseconds(value)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pandas as pd

from core import config
from core.dashboard import kpi_targets
from core.dashboard.photos import faces_of
from core.i18n import STRINGS, flag_text, t
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
from core.workflows import batches, search, spreadsheets

DISPLAY_TZ = config.DISPLAY_TZ


def today_local(tz: str | None = None) -> date:
    return datetime.now(ZoneInfo(tz or DISPLAY_TZ)).date()


def zone_label(when: datetime) -> str:
    """The zone of an aware time as people read it: KST, CET/CEST, UTC; UTC+05 where the zone
    has no abbreviation of its own (the tz database writes those as +05)."""
    name = when.strftime("%Z")
    return f"UTC{name}" if name[:1] in "+-" else name


def zone_name(tz: str | None = None) -> str:
    """The deployment's zone as the pages name it beside a day or a period: KST by default."""
    return zone_label(datetime.now(ZoneInfo(tz or DISPLAY_TZ)))


def local_time(value: datetime | None, tz: str | None = None) -> str:
    """A stored naive-UTC timestamp in the deployment's time zone (DISPLAY_TIMEZONE), with the
    zone named: '2026-12-06 18:10 KST'."""
    if value is None:
        return ""
    local = value.replace(tzinfo=UTC).astimezone(ZoneInfo(tz or DISPLAY_TZ))
    return f"{local:%Y-%m-%d %H:%M} {zone_label(local)}"


def batch_name(name: str | None, group_key: str | None, lang: str) -> str:
    """A batch's name in the page's language: a day's single verifications by source and day."""
    group = batches.parse_group_key(group_key)
    if group is None:
        return name or ""
    source, day = group
    return t(f"batch.group.{source}", lang, day=day) if source in batches.GROUP_SOURCES else name or ""


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
        params.update(candidates=search.candidates_of(flag))
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


# ----------------------------------------------------------------------------------------------
# Rates with their counts

MIN_COUNT = 30  # under this many decisions a rate is shown as "too few to judge"
Z_95 = 1.959964  # two-sided 95% of the normal distribution


def wilson_interval(hits: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a share hits/n (None without any decision). Unlike the
    normal approximation it stays inside 0..1 and is honest for small n and rates near 100%."""
    if n <= 0:
        return None
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """A share with what it rests on: hits of n decisions, its interval, whether n is enough."""

    hits: int
    n: int

    @property
    def value(self) -> float | None:
        return self.hits / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.hits, self.n)

    @property
    def enough(self) -> bool:
        return self.n >= MIN_COUNT


def rate_of(value: float | None, n: int | None) -> Rate:
    """A Rate from a stored share and its count (hits are whole decisions)."""
    n = int(n or 0)
    if value is None or n == 0 or (isinstance(value, float) and math.isnan(value)):
        return Rate(0, n if value is not None else 0)
    return Rate(round(value * n), n)


def percent(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value * 100:.{digits}f}%"


def number(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def milliseconds(value: float | None) -> str:
    shown = number(value)
    return shown if shown == "—" else f"{shown} ms"


def interval_text(rate: Rate) -> str:
    """'9.5–90.5%'; '—' without decisions."""
    interval = rate.interval
    if interval is None:
        return "—"
    return f"{interval[0] * 100:.1f}–{interval[1] * 100:.1f}%"


def basis_text(rate: Rate, what: str, lang: str, say_too_few: bool = True) -> str:
    """What a rate rests on: "1 of 2 reviewed pairs · 95% interval 9.5–90.5% · too few to judge
    (fewer than 30)". `what` names the decisions (an i18n key under figure.what.)."""
    noun = t(f"figure.what.{what}", lang)
    if rate.n == 0:
        return t("figure.none", lang, what=noun)
    text = t("figure.basis", lang, hits=rate.hits, n=rate.n, what=noun, interval=interval_text(rate))
    if say_too_few and not rate.enough:
        text += " · " + t("figure.too_few", lang, min=MIN_COUNT)
    return text


# ----------------------------------------------------------------------------------------------
# Tables: every cell and heading in the page's words, never a stored code (issue 15)

RESULT_ICON = {"auto_approved": "✓", "auto_rejected": "✗", "flagged": "⚠", "approved": "✓", "rejected": "✗"}
# Actors that are not people: the shipped model, the system's own jobs, the first-run form.
MACHINE_ACTORS = ("shipped", "system", "first-run", "sample", "test")


def _known(key: str) -> bool:
    return key in STRINGS["en"]


def _humane(code: str) -> str:
    """A code without a label yet, made readable: 'import_member' -> 'import member'."""
    return str(code).replace("_", " ").replace("-", " ")


def label(prefix: str, code, lang: str) -> str:
    """The label of a stored code (prefix.code in the catalogs), '' for none; an unknown code is
    shown readable, not as its raw identifier."""
    if code is None or (isinstance(code, float) and math.isnan(code)) or code == "":
        return ""
    key = f"{prefix}.{code}"
    return t(key, lang) if _known(key) else _humane(code)


def result_status(code, lang: str) -> str:
    text = label("status", code, lang)
    return f"{RESULT_ICON.get(code, '')} {text}".strip() if text else ""


def yes_no(value, lang: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return t("users.yes" if bool(value) else "users.no", lang)


def similarity_text(value) -> str:
    """Three decimals everywhere (so 1.000 stands beside 0.999, never a bare 1)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{float(value):.3f}"


def actor_text(actor, lang: str) -> str:
    if actor in MACHINE_ACTORS:
        return t(f"actor.{actor}", lang)
    return "" if actor is None else str(actor)


def why_text(why, lang: str) -> str:
    """Where a photo was seen: 'page:members' -> the Members page; 'api:...' -> the API."""
    if not why:
        return ""
    where, _, rest = str(why).partition(":")
    if where == "page" and _known(f"page.{rest}"):
        return t("why.page", lang, page=t(f"page.{rest}", lang))
    if where == "api":
        return t("why.api", lang, endpoint=rest) if rest else t("why.api_only", lang)
    return label("why", why, lang)


_DETAIL_VALUES = {
    "role": "role",
    "from": "role",
    "to": "role",
    "status": "status",
    "kind": "photo",
    "which": "photo",
    "source": "batch_source",
    "decision": "status",
}


def _detail_value(key: str, value, lang: str) -> str:
    if isinstance(value, dict):
        return "(" + detail_text(value, lang) + ")"
    if isinstance(value, list | tuple):
        return ", ".join(_detail_value(key, v, lang) for v in value)
    if isinstance(value, bool):
        return yes_no(value, lang)
    if isinstance(value, float):
        return f"{value:.3f}"
    if key == "why":
        return why_text(value, lang)
    prefix = _DETAIL_VALUES.get(key)
    if prefix and isinstance(value, str) and _known(f"{prefix}.{value}"):
        return t(f"{prefix}.{value}", lang)
    return str(value)


def detail_text(detail, lang: str) -> str:
    """An audit entry's detail as 'label: value · label: value', not a Python or JSON dict."""
    if not detail:
        return ""
    if not isinstance(detail, dict):
        return str(detail)
    parts = []
    for key, value in detail.items():
        name = t(f"detail.{key}", lang) if _known(f"detail.{key}") else _humane(key)
        parts.append(f"{name}: {_detail_value(key, value, lang)}")
    return " · ".join(parts)


def flags_text(codes, lang: str) -> str:
    """'gender_mismatch low_quality' (or a list) -> the flags' names, comma separated."""
    if isinstance(codes, str):
        codes = codes.split()
    return ", ".join(label("flag", c, lang) for c in codes or [])


def _gender(code, lang: str) -> str:
    return label("gender", code, lang)


# How each column's cells are shown, by column name; a page names its own for a column whose
# codes depend on the table (the "status" of a member is not the "status" of a result).
CELL_FORMATS = {
    "status": result_status,
    "latest_result": result_status,
    "gender": _gender,
    "registered_gender": _gender,
    "predicted_gender": _gender,
    "flags": flags_text,
    "same_person": yes_no,
    "active": yes_no,
    "must_change_password": yes_no,
    "similarity": lambda v, _lang: similarity_text(v),
    "threshold": lambda v, _lang: similarity_text(v),
    "gender_confidence": lambda v, _lang: percent(v, 0),
    "source": lambda v, lang: label("batch_source", v, lang),
    "action": lambda v, lang: label("audit_action", v, lang),
    "actor": actor_text,
    "created_by": actor_text,
    "reviewer": actor_text,
    "why": why_text,
    "detail": detail_text,
    "photo": lambda v, lang: label("photo", v, lang),
    "role": lambda v, lang: label("role", v, lang),
    "import_status": lambda v, lang: label("import_status", v, lang),
}
CELL_KINDS = {
    "member_status": lambda v, lang: label("member_status", v, lang),
    "batch_status": lambda v, lang: label("batch_status", v, lang),
}


def table(
    frame: pd.DataFrame, lang: str, *, formats: dict | None = None, heading: str = "col"
) -> pd.DataFrame:
    """A frame as a page shows it: every coded column through its label function (CELL_FORMATS,
    or `formats`: column -> function or a CELL_KINDS name), headings from `heading`.<column>."""
    shown = frame.copy()
    own = {c: CELL_KINDS.get(f, f) for c, f in (formats or {}).items()}
    for column in shown.columns:
        format_cell = own.get(column) or CELL_FORMATS.get(column)
        if format_cell is not None:
            shown[column] = [format_cell(v, lang) for v in shown[column]]
    return shown.rename(columns=lambda c: t(f"{heading}.{c}", lang))


def similarity_in_words(similarity: float | None, lang: str) -> str | None:
    """The calibrated similarity as words staff can read ("Very likely the same person", ...)."""
    from core.verification.result import similarity_words

    key = similarity_words(similarity)
    return None if key is None else t(key, lang)
