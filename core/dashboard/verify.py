"""The Verify page: one pair verified and stored in the day's batch of single verifications, the
recent batches and a batch's results.

    new_challenge(session_factory, member_id, actor) -> ChallengeView  a pose the next photo must show
    challenge_summary(result, lang) -> (shown, sentence with the measured angle) | None
    verify_pair(...) -> PairOutcome (PairInputError: nothing saved), through core.workflows.verification;
    record_single_result(...) stores an already computed result as the day batch's next item,
    input_key(mode, member_id, gender, source, gallery_bytes, verification_bytes): what a shown result came from
    recent_batches(session), resumable(...), batch_results_frame(session, batch_id), filter_results(...)
    stored_photos_for_view(session, store, member_id, kinds, viewer), record_pair_views(session, result_id, viewer)
        every member photo the page shows is an audited view (core.workflows.privacy)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.dashboard.formatting import batch_name, local_time
from core.dashboard.page_batches import SINGLE_SOURCE
from core.dashboard.photos import annotate_photo
from core.errors import FaceVerifyError, ImageError
from core.i18n import LANGUAGES, t
from core.i18n.notes import Note
from core.storage import challenges
from core.storage.photostore import PhotoNotFound, PhotoStoreBackend
from core.storage.schema import (
    BATCH_COMPLETED,
    BATCH_RUNNING,
    GALLERY,
    VERIFICATION,
    Batch,
    BatchItem,
    Member,
    Photo,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow
from core.verification import capture, features, fraud
from core.verification.imaging import decode_image
from core.verification.result import VerificationResult
from core.workflows import batches, importer, privacy, verification

PAGE = "page:verify"  # why, in the audit entry of each photo shown


@dataclass
class PairOutcome:
    result: VerificationResult
    result_id: int
    batch_id: int
    member_id: str
    gallery_bytes: bytes
    verification_bytes: bytes
    seconds: float  # verify + store, what the page waited for
    photo_warnings: list[Note] = field(default_factory=list)  # the same file twice, another member's file


@dataclass
class ChallengeView:
    """A pose challenge as the page shows it: the words in every language, used by one verification."""

    token: str
    member_id: str
    kind: str
    expires_at: datetime
    instructions: dict[str, str]  # language -> the words to read out


def new_challenge(session_factory: sessionmaker, member_id: str, actor: str) -> ChallengeView:
    """Issue a random pose challenge for the member (audited; single use, CHALLENGE_MINUTES; it
    cancels the member's open one). PairInputError when too many were issued in the last hour."""
    member_id = (member_id or "").strip()
    if not member_id:
        raise PairInputError("verify.need_member")
    with session_factory() as session:
        try:
            challenge = challenges.issue(session, member_id, actor)
        except challenges.ChallengeRateLimited as exc:
            raise PairInputError("verify.challenge_rate_limited", seconds=exc.retry_after_s) from None
        return ChallengeView(
            challenge.token,
            challenge.member_id,
            challenge.kind,
            challenge.expires_at,
            {lang: t(f"challenge.{challenge.kind}", lang) for lang in LANGUAGES},
        )


def challenge_summary(result: VerificationResult, lang: str) -> tuple[bool, str] | None:
    """(pose shown, the sentence with the measured angle) for a result verified with a challenge."""
    checked = (result.checks or {}).get("challenge")
    if not checked:
        return None
    kind = checked["kind"]
    label = t(f"challenge.{kind}", lang)
    if checked.get("angle") is None:
        return False, t("verify.challenge_unmeasured", lang, label=label)
    key = "verify.challenge_met" if checked.get("met") else "verify.challenge_not_met"
    return bool(checked.get("met")), t(
        key, lang, label=label, angle=float(checked["angle"]), needed=fraud.needed_angle(kind)
    )


# A challenge the storage refuses, as the page says it (the challenge's own message is English).
_CHALLENGE_ERRORS = {
    challenges.UnknownChallenge: "verify.challenge_unknown",
    challenges.ChallengeForAnotherMember: "verify.challenge_other_member",
    challenges.ChallengeUsed: "verify.challenge_used",
    challenges.ChallengeExpired: "verify.challenge_expired",
}


class PairInputError(FaceVerifyError):
    """The pair cannot be verified as given (bad photo, missing member); nothing was saved."""

    code = "pair_input"

    def __init__(self, key: str, **params):
        self.key, self.params = key, params
        super().__init__(t(key, "en", **{k: v for k, v in params.items() if not k.startswith("detail_")}))

    def text(self, lang: str) -> str:
        params = dict(self.params)
        detail_key, detail_params = params.pop("detail_key", None), params.pop("detail_params", None) or {}
        if detail_key:
            if "kind" in detail_params:
                detail_params = {**detail_params, "kind": t(f"image_kind.{detail_params['kind']}", lang)}
            params["detail"] = t(detail_key, lang, **detail_params)
        elif lang != "en" and "detail" in params:
            params["detail"] = ""  # the engine's English explanation has no translation: the sentence alone
        if params.get("which") in (GALLERY, VERIFICATION):
            params["which"] = t(f"photo.{params['which']}", lang)
        return t(self.key, lang, **params)


def input_key(
    mode: str,
    member_id: str | None,
    gender: str | None,
    source: str,
    gallery_bytes: bytes | None,
    verification_bytes: bytes | None,
) -> str:
    """Fingerprint of what a pair is verified from (mode, member, gender, photo source, the photos'
    bytes): the page shows a result only while the form still holds the input it came from."""
    digest = hashlib.sha256()
    for part in (mode, (member_id or "").strip(), gender or "", source):
        digest.update(part.encode("utf-8") + b"\0")
    for data in (gallery_bytes, verification_bytes):
        digest.update(b"-" if data is None else hashlib.sha256(data).digest())
    return digest.hexdigest()


def _check_photo(data: bytes | None, which: str) -> None:
    if not data:
        raise PairInputError("verify.need_photo", which=which)
    try:
        decode_image(data)
    except ImageError as exc:
        raise PairInputError(
            f"image_error.{exc.code}",
            detail=str(exc),
            which=which,
            detail_key=exc.key,
            detail_params=exc.params,
        ) from None


def _current_photo(session: Session, member_id: str, kind: str) -> Photo | None:
    return session.scalar(
        select(Photo)
        .where(Photo.member_id == member_id, Photo.kind == kind, Photo.current.is_(True))
        .order_by(Photo.id.desc())
    )


def record_single_result(
    session: Session,
    actor: str,
    result: VerificationResult,
    member_id: str,
    gallery_photo_id: int,
    verification_photo_id: int,
    registered_gender: str | None,
    source: str = SINGLE_SOURCE,
) -> tuple[int, int]:
    """Store one computed result as the next item of the day's Verify page batch: (batch id, result
    id); core.workflows.batches.store_single_result."""
    return batches.store_single_result(
        session, actor, result, member_id, gallery_photo_id, verification_photo_id, registered_gender, source
    )


# The use case's errors as the page says them: (i18n key, the params it takes from the error).
def _page_error(exc: Exception, member_id: str) -> PairInputError:
    if isinstance(exc, challenges.ChallengeError):
        return PairInputError(_CHALLENGE_ERRORS.get(type(exc), "verify.challenge_unknown"))
    if isinstance(exc, verification.GalleryLocked):
        return PairInputError("verify.gallery_locked", member=member_id)
    if isinstance(exc, verification.BadMemberId):
        return PairInputError("verify.bad_member_id", detail=str(exc))
    if isinstance(exc, verification.EnrolIncomplete):
        if "registered_gender" in exc.params.get("missing", []):
            return PairInputError("verify.new_member_needs_gender", member=member_id)
        return PairInputError("verify.need_photo", which=exc.params["missing"][0])
    if isinstance(exc, verification.GenderDiffers):
        return PairInputError(
            "verify.gender_differs",
            member=member_id,
            registered=exc.params["registered"],
            given=exc.params["given"],
        )
    if isinstance(exc, verification.PhotoRequired | verification.SelfieRequired):
        return PairInputError("verify.need_photo", which=exc.params.get("which", VERIFICATION))
    if isinstance(exc, verification.PhotoMissing):
        return PairInputError("verify.photo_missing", detail=str(exc))
    return PairInputError("verify.not_saved", detail=str(exc))


def verify_pair(
    session_factory: sessionmaker,
    engine,
    store: PhotoStoreBackend,
    actor: str,
    member_id: str,
    *,
    registered_gender: str | None = None,
    gallery_bytes: bytes | None = None,
    verification_bytes: bytes | None = None,
    challenge_token: str | None = None,
) -> PairOutcome:
    """Verify one member's pair and save it (core.workflows.verification.verify_member, the same
    use case as the API's): member, photos, an item of the day's batch, result.

    Photos not given are the member's current stored ones (the page's explicit "stored photos"
    choice). A new member needs the registered gender; an existing member's registered gender is
    never changed here. With a challenge (new_challenge), the verification photo must show its
    pose. Raises PairInputError (nothing saved) for unusable input or a used, expired or unknown
    challenge.
    """
    member_id = (member_id or "").strip()
    if not member_id:
        raise PairInputError("verify.need_member")
    gender = registered_gender or None
    if gender:
        try:
            gender = importer.normalise_gender(gender)
        except ValueError:
            raise PairInputError("verify.bad_gender", value=gender) from None
    photos = {}
    for which, data in ((GALLERY, gallery_bytes), (VERIFICATION, verification_bytes)):
        if data is not None:
            _check_photo(data, which)
        photos[which] = verification.PhotoInput(which, data)
    with session_factory() as session:  # a new member needs both photos before anything else
        if session.get(Member, member_id) is None and gender:
            for which in (GALLERY, VERIFICATION):
                if photos[which].data is None:
                    raise PairInputError("verify.need_photo", which=which)

    def run_engine(gallery_data, verification_data, gender_on_file, challenge_kind):
        return engine.verify(gallery_data, verification_data, gender_on_file, challenge_kind)

    try:
        done = verification.verify_member(
            session_factory,
            store,
            actor,
            member_id,
            photos,
            run_engine,
            gender=gender,
            source=SINGLE_SOURCE,
            enrol=True,
            recheck_stored=verification_bytes is None,
            challenge_token=challenge_token or None,
        )
    except (verification.VerifyError, verification.GalleryLocked, challenges.ChallengeError) as exc:
        raise _page_error(exc, member_id) from None
    return PairOutcome(
        done.result,
        done.result_id,
        done.batch_id,
        member_id,
        done.gallery_bytes,
        done.verification_bytes,
        done.seconds,
        done.warnings,
    )


def recent_batches(session: Session, limit: int = 20, lang: str = "en") -> pd.DataFrame:
    """The newest batches; a day's single verifications named in `lang` (the other cells are codes,
    formatting.table shows them)."""
    rows = session.scalars(select(Batch).order_by(Batch.id.desc()).limit(limit)).all()
    return pd.DataFrame(
        [
            {
                "batch_id": b.id,
                "name": batch_name(b.name, b.group_key, lang),
                "source": b.source or "",
                "created_by": b.created_by,
                "created_at": local_time(b.created_at),
                "status": b.status,
                "items": b.n_items,
                "model_version": b.model_version,
            }
            for b in rows
        ],
        columns=[
            "batch_id",
            "name",
            "source",
            "created_by",
            "created_at",
            "status",
            "items",
            "model_version",
        ],
    )


def resumable(status: str, heartbeat_at: datetime | None, token_known: bool = False) -> bool:
    """A batch that stopped (interrupted, failed) or whose runner went quiet can be run again."""
    if status == BATCH_RUNNING:
        return token_known or heartbeat_at is None or utcnow() - heartbeat_at > batches.DEFAULT_STALE_AFTER
    return status != BATCH_COMPLETED


RESULT_COLUMNS = [
    "position",
    "member_id",
    "status",
    "similarity",
    "threshold",
    "same_person",
    "registered_gender",
    "predicted_gender",
    "gender_confidence",
    "flags",
    "reasons",
    "latency_ms",
    "result_id",
    "created_at",
]


def batch_results_frame(session: Session, batch_id: int) -> pd.DataFrame:
    """The results of a batch in item order, one row each, ready to show, filter and download."""
    stmt = (
        select(ResultRow, BatchItem.position)
        .join(BatchItem, BatchItem.id == ResultRow.batch_item_id, isouter=True)
        .where(ResultRow.batch_id == batch_id)
        .order_by(BatchItem.position, ResultRow.id)
    )
    rows = []
    for r, position in session.execute(stmt):
        rows.append(
            {
                "position": None if position is None else position + 1,
                "member_id": r.member_id,
                "status": r.status,
                "similarity": None if r.similarity is None else round(r.similarity, 4),
                "threshold": round(r.threshold, 4),
                "same_person": r.same_person,
                "registered_gender": r.registered_gender,
                "predicted_gender": r.predicted_gender,
                "gender_confidence": None if r.gender_confidence is None else round(r.gender_confidence, 3),
                "flags": " ".join(f["code"] for f in r.flags or []),
                "reasons": " | ".join(f.get("reason", "") for f in r.flags or []),
                "latency_ms": None if r.latency_ms is None else round(r.latency_ms, 1),
                "result_id": r.id,
                "created_at": local_time(r.created_at),
            }
        )
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def filter_results(
    frame: pd.DataFrame,
    statuses: Iterable[str] | None = None,
    flag_codes: Iterable[str] | None = None,
    member_search: str | None = None,
) -> pd.DataFrame:
    out = frame
    statuses = list(statuses or [])
    if statuses:
        out = out[out["status"].isin(statuses)]
    codes = list(flag_codes or [])
    if codes:
        out = out[out["flags"].apply(lambda text: any(c in (text or "").split() for c in codes))]
    if member_search:
        needle = member_search.strip().lower()
        out = out[out["member_id"].fillna("").str.lower().str.contains(needle, regex=False)]
    return out


# ----------------------------------------------------------------------------------------------
# Camera mode: the capture check on the photo just taken, before staff submit it


@dataclass
class CaptureView:
    image: object  # PIL image: the photo as the engine sees it, with the face box; None if unusable
    lines: list[dict]  # [{code, title, instruction, hides_face}], what to fix, most important first
    error: str | None = None  # the photo cannot be used at all

    @property
    def ok(self) -> bool:
        return not self.lines and self.error is None


def check_captured_photo(data: bytes, lang: str) -> CaptureView:
    """The same capture check the verification will run (features.locate), nothing stored."""
    analysis = features.locate(data)
    if analysis.width == 0:
        return CaptureView(image=None, lines=[], error=analysis.error)
    lines = [
        {
            "code": f["code"],
            "title": t(f"flag.{f['code']}", lang),
            "instruction": t(f["instruction_key"], lang),
            "hides_face": f["hides_face"],
        }
        for f in sorted(capture.photo_findings(analysis), key=lambda f: not f["hides_face"])
    ]
    return CaptureView(image=annotate_photo(data, analysis), lines=lines)


def stored_photos_for_view(
    session: Session, store: PhotoStoreBackend, member_id: str, kinds: Iterable[str], viewer: str
) -> dict[str, bytes | None]:
    """The member's current photos of these kinds for the page to show (None: missing), each an
    audited view."""
    out: dict[str, bytes | None] = {}
    for kind in kinds:
        photo = _current_photo(session, member_id, kind)
        if photo is None:
            continue
        try:
            out[kind] = privacy.show_photo(session, store, photo, viewer, PAGE)
        except PhotoNotFound:
            out[kind] = None
    return out


def record_pair_views(session: Session, result_id: int, viewer: str) -> None:
    """The two photos shown with a verified pair are the member's photos now: audited views."""
    row = session.get(ResultRow, result_id)
    for photo_id in (row.gallery_photo_id, row.verification_photo_id) if row is not None else ():
        photo = session.get(Photo, photo_id) if photo_id is not None else None
        if photo is not None:
            privacy.record_photo_view(session, viewer, photo, PAGE)
