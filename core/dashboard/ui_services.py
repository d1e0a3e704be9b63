"""What the dashboard pages do, without Streamlit: the pages read input, call these, render.

Pages and roles      PAGES, can_open(role, page)
Sign-in expiry       session_expired(last_seen, now, idle)
Photos on screen     annotate_photo(...), chip_image(...), crop_from_analysis(...)
One pair             verify_pair(...)          engine + storage as a batch of one
Batches              check_batch_upload(...), BatchJobs (background runs), batch_results_frame(...)
Review queue         load_review_item(...)
KPIs                 kpi_frame(...), kpi_figure(...), today_summary(...), model_versions(...)
Members              members_frame(...), history frames

Everything here is callable from tests and scripts; nothing imports streamlit (core never does).
"""

from __future__ import annotations

import csv
import hashlib
import io
import threading
import time
import traceback
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import PurePosixPath
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.dashboard import kpi_targets
from core.errors import FaceVerifyError, ImageError
from core.i18n import flag_text, t
from core.storage import audit, queries
from core.storage.photostore import PhotoNotFound, PhotoStore
from core.storage.schema import (
    ADMIN,
    BATCH_COMPLETED,
    BATCH_RUNNING,
    DATA_SCIENTIST,
    GALLERY,
    MANAGER,
    ROLES,
    STAFF,
    VERIFICATION,
    Batch,
    BatchItem,
    Member,
    Photo,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow
from core.verification.imaging import decode_image
from core.verification.result import (
    BAD_IMAGE,
    GENDER_MISMATCH,
    LOW_QUALITY,
    POSSIBLE_DUPLICATE,
    SEVERAL_FACES,
    UNCERTAIN_GENDER,
    UNCERTAIN_SIMILARITY,
    Face,
    Flag,
    PhotoAnalysis,
    VerificationResult,
)
from core.workflows import batches, importer, search

DISPLAY_TZ = "Asia/Seoul"  # the staff work in Korea: days and times are shown in KST
SESSION_IDLE_MINUTES = 30
PHOTO_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]
MANIFEST_TYPES = ["csv", "xlsx"]
MAX_BATCH_PAIRS = 5000  # per page upload; bigger jobs go through the command line


# ----------------------------------------------------------------------------------------------
# Pages and roles


@dataclass(frozen=True)
class PageInfo:
    key: str  # i18n key "page.<key>" is its title
    path: str  # relative to the project root, for st.page_link / st.switch_page
    roles: tuple[str, ...]  # who may open it (admin may open everything)
    icon: str


PAGES = (
    PageInfo("home", "Home.py", ROLES, ":material/home:"),
    PageInfo("verify", "pages/1_Verify.py", (STAFF, ADMIN), ":material/fact_check:"),
    PageInfo("review", "pages/2_Review_Queue.py", (STAFF, ADMIN), ":material/rule:"),
    PageInfo("members", "pages/3_Members.py", (STAFF, ADMIN), ":material/group:"),
    PageInfo("kpis", "pages/4_KPIs.py", (MANAGER, DATA_SCIENTIST, ADMIN), ":material/monitoring:"),
    # Built by the retraining issue; listed here so navigation and the role check are ready.
    PageInfo("retrain", "pages/5_Retrain.py", (DATA_SCIENTIST, ADMIN), ":material/model_training:"),
)
PAGE_BY_KEY = {p.key: p for p in PAGES}


def can_open(role: str | None, page_key: str) -> bool:
    """Server-side role check of a page. Admins may open every page."""
    if role not in ROLES:
        return False
    return role == ADMIN or role in PAGE_BY_KEY[page_key].roles


def session_expired(last_seen: float | None, now: float, idle_minutes: float = SESSION_IDLE_MINUTES) -> bool:
    return last_seen is None or now - last_seen > idle_minutes * 60


def today_local(tz: str = DISPLAY_TZ) -> date:
    return datetime.now(ZoneInfo(tz)).date()


def local_time(value: datetime | None, tz: str = DISPLAY_TZ) -> str:
    """A stored naive-UTC timestamp as local 'YYYY-MM-DD HH:MM'."""
    if value is None:
        return ""
    return value.replace(tzinfo=UTC).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


# ----------------------------------------------------------------------------------------------
# Photos on screen

MAIN_BOX = (22, 163, 74)  # green: the face that was used
OTHER_BOX = (234, 88, 12)  # orange: other faces the detector found


def faces_of(analysis: PhotoAnalysis | dict | None) -> tuple[list[tuple[int, int, int, int]], int | None]:
    if analysis is None:
        return [], None
    if isinstance(analysis, PhotoAnalysis):
        return [tuple(f.box) for f in analysis.faces], analysis.main_face
    return [tuple(f["box"]) for f in analysis.get("faces") or []], analysis.get("main_face")


def annotate_photo(data: bytes, analysis: PhotoAnalysis | dict | None) -> Image.Image | None:
    """The photo as the engine saw it (EXIF-rotated, scaled) with the face boxes drawn on it.

    None when the bytes are not a usable photo (the flag says why).
    """
    try:
        decoded = decode_image(data)
    except ImageError:
        return None
    image = Image.fromarray(decoded.rgb)
    boxes, main = faces_of(analysis)
    if boxes:
        draw = ImageDraw.Draw(image)
        width = max(2, round(max(image.size) / 150))
        for i, (x, y, w, h) in enumerate(boxes):
            color = MAIN_BOX if i == main else OTHER_BOX
            draw.rectangle((x, y, x + w, y + h), outline=color, width=width)
    return image


def chip_image(chip: np.ndarray | None) -> Image.Image | None:
    return None if chip is None else Image.fromarray(np.asarray(chip, dtype=np.uint8))


def crop_from_analysis(data: bytes, analysis: dict | None) -> Image.Image | None:
    """Re-make the aligned chip of a stored result (chips are not stored) from its main face box."""
    if not analysis or analysis.get("main_face") is None or not analysis.get("faces"):
        return None
    from core.verification import faces as face_ops

    try:
        decoded = decode_image(data)
        raw = analysis["faces"][analysis["main_face"]]
        face = Face(box=tuple(raw["box"]), score=raw.get("score", 0.0), keypoints=raw.get("keypoints") or [])
        return chip_image(face_ops.align_face(decoded.rgb, face).chip)
    except (ImageError, IndexError, KeyError, RuntimeError):
        return None


def similarity_figure(similarity: float | None, threshold: float, band: tuple[float, float], lang: str):
    """A horizontal 0..1 bar: the similarity, the threshold and the uncertain band behind it."""
    import plotly.graph_objects as go

    value = similarity or 0.0
    same = similarity is not None and similarity >= threshold
    fig = go.Figure(
        go.Bar(
            x=[value],
            y=[""],
            orientation="h",
            marker_color="#16a34a" if same else "#dc2626",
            text=[f"{value:.3f}" if similarity is not None else "—"],
            textposition="inside",
            insidetextanchor="end",
            textfont={"size": 18, "color": "white"},
            hoverinfo="skip",
        )
    )
    fig.add_vrect(x0=band[0], x1=band[1], fillcolor="#facc15", opacity=0.25, line_width=0)
    fig.add_vline(
        x=threshold,
        line_width=3,
        line_color="#111827",
        annotation_text=t("verify.threshold_mark", lang, value=threshold),
        annotation_position="top",
    )
    fig.update_layout(
        height=120,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"range": [0, 1], "tickformat": ".1f"},
        showlegend=False,
    )
    return fig


# ----------------------------------------------------------------------------------------------
# Flags and decisions in words


def flag_params(flag: Flag | dict, similarity, band, registered, predicted, confidence, analyses) -> dict:
    """The figures a flag's sentence needs, taken from the result it belongs to."""
    code = flag.code if isinstance(flag, Flag) else flag["code"]
    photo = flag.photo if isinstance(flag, Flag) else flag.get("photo")
    reason = flag.reason if isinstance(flag, Flag) else flag.get("reason", "")
    params: dict = {"detail": reason}
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
    return params


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


def image_error_text(exc: ImageError, lang: str) -> str:
    return t(f"image_error.{exc.code}", lang, detail=str(exc))


# ----------------------------------------------------------------------------------------------
# One pair: verify, then store it as a batch of one


@dataclass
class PairOutcome:
    result: VerificationResult
    result_id: int
    batch_id: int
    member_id: str
    gallery_bytes: bytes
    verification_bytes: bytes
    seconds: float  # verify + store, what the page waited for
    import_note: str | None = None


class PairInputError(FaceVerifyError):
    """The pair cannot be verified as given (bad photo, missing member); nothing was saved."""

    code = "pair_input"

    def __init__(self, key: str, **params):
        self.key, self.params = key, params
        super().__init__(t(key, "en", **params))

    def text(self, lang: str) -> str:
        params = dict(self.params)
        if params.get("which") in (GALLERY, VERIFICATION):
            params["which"] = t(f"photo.{params['which']}", lang)
        return t(self.key, lang, **params)


def _check_photo(data: bytes | None, which: str) -> None:
    if not data:
        raise PairInputError("verify.need_photo", which=which)
    try:
        decode_image(data)
    except ImageError as exc:
        raise PairInputError(f"image_error.{exc.code}", detail=str(exc), which=which) from None


def _ext_of(name: str | None) -> str:
    suffix = PurePosixPath(name or "photo.jpg").suffix.lower().lstrip(".")
    return suffix if suffix in PHOTO_TYPES else "jpg"


def _store_member_photos(
    session: Session,
    store: PhotoStore,
    actor: str,
    member_id: str,
    gender: str,
    gallery: bytes,
    verification: bytes,
    source: str,
) -> importer.RowReport:
    """Member and both photos through the member importer (one row, photos in an in-memory ZIP)."""
    names = ("gallery.jpg", "verification.jpg")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(names[0], gallery)
        zf.writestr(names[1], verification)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(importer.EXPECTED_COLUMNS)
    writer.writerow([member_id, gender, names[0], names[1]])
    reports = importer.import_members(
        session,
        table.getvalue().encode("utf-8"),
        zip_bytes=buffer.getvalue(),
        actor=actor,
        filename=source,
        photo_store=store,
        workers=1,
    )
    return reports[0]


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
    source: str = "verify_page",
) -> tuple[int, int]:
    """Store one computed result as a completed batch of one item: (batch id, result id).

    create_batch commits the batch and its item first; the result and the batch's final status
    then commit together. If that second commit fails, the batch stays pending with no result,
    and running it (core.workflows.batches.run_batch) finishes it: nothing is half saved.
    """
    spec = batches.BatchItemSpec(member_id, gallery_photo_id, verification_photo_id, registered_gender)
    batch = batches.create_batch(
        session, actor, [spec], result.model_version, source=source, name=f"{member_id} (1)"
    )
    item_id = session.scalar(select(BatchItem.id).where(BatchItem.batch_id == batch.id))
    now = utcnow()
    row = batches.store_result(
        session,
        result,
        batch_id=batch.id,
        batch_item_id=item_id,
        member_id=member_id,
        gallery_photo_id=gallery_photo_id,
        verification_photo_id=verification_photo_id,
    )
    batch = session.get(Batch, batch.id)
    batch.status, batch.started_at, batch.finished_at, batch.heartbeat_at = BATCH_COMPLETED, now, now, now
    session.commit()
    return batch.id, row.id


def verify_pair(
    session_factory: sessionmaker,
    engine,
    store: PhotoStore,
    actor: str,
    member_id: str,
    *,
    registered_gender: str | None = None,
    gallery_bytes: bytes | None = None,
    verification_bytes: bytes | None = None,
) -> PairOutcome:
    """Verify one member's pair and save it (member, photos, batch of one, result).

    Photos not given are the member's current stored ones. A new member needs the registered
    gender. Raises PairInputError (nothing saved) for unusable input.
    """
    started = time.perf_counter()
    member_id = (member_id or "").strip()
    if not member_id:
        raise PairInputError("verify.need_member")
    with session_factory() as session:
        member = session.get(Member, member_id)
        member_gender = member.gender if member is not None else None
        gender = registered_gender
        if gender:
            try:
                gender = importer.normalise_gender(gender)
            except ValueError:
                raise PairInputError("verify.bad_gender", value=gender) from None
        else:
            gender = member_gender
        if member is None and not gender:
            raise PairInputError("verify.new_member_needs_gender", member=member_id)
        stored: dict[str, tuple[str, str] | None] = {}  # kind -> (sha256, stored path)
        for kind in (GALLERY, VERIFICATION):
            photo = _current_photo(session, member_id, kind) if member is not None else None
            stored[kind] = None if photo is None else (photo.sha256, photo.stored_path)
    try:
        if gallery_bytes is None:
            if stored[GALLERY] is None:
                raise PairInputError("verify.need_photo", which=GALLERY)
            gallery_bytes = store.read(stored[GALLERY][1])
        if verification_bytes is None:
            if stored[VERIFICATION] is None:
                raise PairInputError("verify.need_photo", which=VERIFICATION)
            verification_bytes = store.read(stored[VERIFICATION][1])
    except PhotoNotFound as exc:
        raise PairInputError("verify.photo_missing", detail=str(exc)) from None

    _check_photo(gallery_bytes, GALLERY)
    _check_photo(verification_bytes, VERIFICATION)
    result = engine.verify(gallery_bytes, verification_bytes, gender)

    import_note = None
    with session_factory() as session:
        hashes = (hashlib.sha256(gallery_bytes).hexdigest(), hashlib.sha256(verification_bytes).hexdigest())
        same_as_stored = member_gender == gender and (
            stored[GALLERY] is not None
            and stored[VERIFICATION] is not None
            and (stored[GALLERY][0], stored[VERIFICATION][0]) == hashes
        )
        if not same_as_stored:
            report = _store_member_photos(
                session, store, actor, member_id, gender, gallery_bytes, verification_bytes, "verify-page"
            )
            if report.status == importer.REJECTED:
                raise PairInputError("verify.not_saved", detail=report.message)
            if report.warnings:
                import_note = "; ".join(report.warnings)
        gallery_photo = _current_photo(session, member_id, GALLERY)
        verification_photo = _current_photo(session, member_id, VERIFICATION)
        batch_id, result_id = record_single_result(
            session, actor, result, member_id, gallery_photo.id, verification_photo.id, gender
        )
    return PairOutcome(
        result,
        result_id,
        batch_id,
        member_id,
        gallery_bytes,
        verification_bytes,
        time.perf_counter() - started,
        import_note,
    )


# ----------------------------------------------------------------------------------------------
# Batches from a ZIP and a manifest


@dataclass
class UploadCheck:
    """The result of checking a manifest and its ZIP before anything is written."""

    rows: int = 0
    problems: list[tuple[str, dict]] = field(default_factory=list)  # (i18n key, params)

    @property
    def ok(self) -> bool:
        return not self.problems and self.rows > 0


def check_batch_upload(manifest: bytes, manifest_name: str, zip_bytes: bytes | None) -> UploadCheck:
    """Every problem of the upload at once, writing nothing: an unreadable or empty ZIP, a
    manifest with wrong columns, duplicate or empty member IDs, unknown genders, photos named in
    the manifest but not in the ZIP, and ZIP entries that are not usable photos.
    """
    check = UploadCheck()
    if not zip_bytes:
        check.problems.append(("batch.zip_missing", {}))
        return check
    try:
        columns, table = importer.read_table(manifest, manifest_name)
        importer.check_columns(columns)
    except importer.ImportFileError as exc:
        check.problems.extend(("batch.manifest_problem", {"detail": p}) for p in exc.problems)
        return check
    if not table:
        check.problems.append(("batch.manifest_empty", {}))
        return check
    if len(table) > MAX_BATCH_PAIRS:
        check.problems.append(("batch.too_many", {"rows": len(table), "limit": MAX_BATCH_PAIRS}))
        return check
    check.rows = len(table)
    try:
        photo_zip = importer.PhotoZip(zip_bytes)
    except importer.ImportFileError as exc:
        check.problems.append(("batch.zip_unreadable", {"detail": str(exc)}))
        return check
    try:
        if not photo_zip.entries:
            check.problems.append(("batch.zip_empty", {}))
            return check
        seen: dict[str, int] = {}
        checked: dict[str, str | None] = {}
        for row_number, values in table:
            member_id = (values.get("member_id") or "").strip()
            if not member_id:
                check.problems.append(("batch.row_no_member", {"row": row_number}))
            elif member_id in seen:
                check.problems.append(
                    (
                        "batch.row_duplicate",
                        {"row": row_number, "member": member_id, "first": seen[member_id]},
                    )
                )
            else:
                seen[member_id] = row_number
            try:
                importer.normalise_gender(values.get("gender"))
            except ValueError:
                check.problems.append(
                    ("batch.row_gender", {"row": row_number, "value": values.get("gender", "")})
                )
            for column in importer.PHOTO_COLUMNS:
                reference = (values.get(column) or "").strip()
                if not reference:
                    check.problems.append(("batch.row_photo_empty", {"row": row_number, "column": column}))
                    continue
                try:
                    info = photo_zip.find(reference)
                except importer.PhotoRefError as exc:
                    check.problems.append(("batch.row_photo_bad", {"row": row_number, "detail": str(exc)}))
                    continue
                if info is None:
                    check.problems.append(("batch.row_photo_missing", {"row": row_number, "name": reference}))
                    continue
                if info.filename not in checked:
                    try:
                        decode_image(photo_zip.read(info, reference))
                        checked[info.filename] = None
                    except (ImageError, importer.PhotoRefError) as exc:
                        checked[info.filename] = str(exc)
                if checked[info.filename] is not None:
                    check.problems.append(
                        (
                            "batch.row_photo_unusable",
                            {"row": row_number, "name": reference, "detail": checked[info.filename]},
                        )
                    )
    finally:
        photo_zip.close()
    return check


def upload_key(*parts: bytes | str) -> str:
    """Fingerprint of what a batch was made from: the same upload twice is the same batch."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


IMPORTING, RUNNING, DONE, FAILED = "importing", "running", "done", "failed"


class NothingToRun(FaceVerifyError):
    """No member of the selection has both photos (or, for pending only, all are verified)."""

    code = "nothing_to_run"


@dataclass
class Job:
    """One background batch: importing (for uploads), then running; then done or failed."""

    key: str
    actor: str
    phase: str = IMPORTING
    done: int = 0
    total: int = 0
    batch_id: int | None = None
    error: tuple[str, dict] | None = None  # i18n key and params
    rejected: list[importer.RowReport] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class BatchJobs:
    """Runs batches on background threads, one per process (the pages keep it in st.cache_resource).

    A Streamlit rerun (a second click, a change of page, a language switch) stops the script
    that is running, so a batch run inside the script would stop halfway. Here the run goes on
    while the pages only look at its progress. The same upload or member list started twice
    attaches to the job already running instead of making a second batch.
    """

    KEEP_FINISHED = 50

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        # Token of a run that lost its database: resuming with it needs no wait for a stale heartbeat.
        self._resume_tokens: dict[int, str] = {}

    def can_resume_now(self, batch_id: int) -> bool:
        with self._lock:
            return batch_id in self._resume_tokens

    def get(self, key: str) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def for_batch(self, batch_id: int) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs.values() if j.batch_id == batch_id), None)

    def _start(self, key: str, actor: str, work: Callable[[Job], None]) -> tuple[Job, bool]:
        """(job, started): started is False when the same work is already running."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and (job.alive or job.phase in (IMPORTING, RUNNING)):
                return job, False
            job = Job(key=key, actor=actor)
            self._jobs[key] = job
            finished = [k for k, j in self._jobs.items() if not j.alive and k != key]
            for old in finished[: max(0, len(self._jobs) - self.KEEP_FINISHED)]:
                self._jobs.pop(old, None)

        def target():
            try:
                work(job)
                job.phase = DONE
            except NothingToRun:
                job.error, job.phase = ("batch.nothing_to_run", {}), FAILED
            except batches.BatchAlreadyRunning as exc:
                job.error, job.phase = ("batch.already_running", {"detail": str(exc)}), FAILED
            except batches.BatchInterrupted as exc:
                with self._lock:
                    self._resume_tokens[exc.batch_id] = exc.token
                job.error, job.phase = ("batch.interrupted", {"detail": str(exc)}), FAILED
            except importer.ImportFileError as exc:
                job.error, job.phase = ("batch.manifest_problem", {"detail": str(exc)}), FAILED
            except FaceVerifyError as exc:
                job.error, job.phase = ("batch.failed", {"detail": str(exc)}), FAILED
            except Exception as exc:  # a background thread must report, never die silently
                traceback.print_exc()
                job.error, job.phase = ("batch.failed", {"detail": f"{type(exc).__name__}: {exc}"}), FAILED

        job.thread = threading.Thread(target=target, name=f"batch-{key[:8]}", daemon=True)
        job.thread.start()
        return job, True

    def _run(self, job: Job, session_factory, engine, store: PhotoStore, batch_id: int) -> None:
        job.batch_id, job.phase = batch_id, RUNNING

        def progress(done, total, _row):
            job.done, job.total = done, total

        batches.run_batch(session_factory, engine, batch_id, progress, photo_store=store, actor=job.actor)

    def start_upload(
        self,
        session_factory: sessionmaker,
        engine,
        store: PhotoStore,
        actor: str,
        manifest: bytes,
        manifest_name: str,
        zip_bytes: bytes,
        name: str | None = None,
    ) -> tuple[Job, bool]:
        """Import the manifest's members with their photos, make a batch of them, run it."""
        key = upload_key("upload", manifest, zip_bytes)

        def work(job: Job):
            def progress(done, total):
                job.done, job.total = done, total

            with session_factory() as session:
                reports = importer.import_members(
                    session,
                    manifest,
                    zip_bytes=zip_bytes,
                    actor=actor,
                    filename=manifest_name,
                    photo_store=store,
                    progress=progress,
                )
                job.rejected = [r for r in reports if r.status == importer.REJECTED]
                ids = [r.member_id for r in reports if r.status != importer.REJECTED and r.member_id]
                if not ids:
                    raise NothingToRun("no row of the manifest could be imported")
                items = batches.items_for_members(session, ids)
                batch = batches.create_batch(
                    session, actor, items, engine.model_version, source="upload", name=name or manifest_name
                )
            self._run(job, session_factory, engine, store, batch.id)

        return self._start(key, actor, work)

    def start_members(
        self,
        session_factory: sessionmaker,
        engine,
        store: PhotoStore,
        actor: str,
        member_ids: Iterable[str] | None,
        *,
        only_pending: bool = False,
        name: str | None = None,
        source: str = "members",
        before: Callable[[Session], list[str] | None] | None = None,
    ) -> tuple[Job, bool]:
        """A batch of members already in the database (their current photos), run in the background.

        member_ids None means every member (with only_pending: every member not verified yet).
        `before(session)` runs first on the job's thread (e.g. loading the sample members) and
        may return the member IDs to use.
        """
        ids = None if member_ids is None else sorted(set(member_ids))
        key = upload_key("members", source, str(only_pending), *(ids or ["<all>"]))

        def work(job: Job):
            chosen = ids
            with session_factory() as session:
                if before is not None:
                    chosen = before(session) or chosen
                items = batches.items_for_members(session, chosen, only_pending=only_pending)
                if not items:
                    raise NothingToRun("nothing to run")
                batch = batches.create_batch(
                    session, actor, items, engine.model_version, source=source, name=name
                )
                job.total = len(items)
            self._run(job, session_factory, engine, store, batch.id)

        return self._start(key, actor, work)

    def resume(
        self, session_factory: sessionmaker, engine, store: PhotoStore, actor: str, batch_id: int
    ) -> tuple[Job, bool]:
        """Run an interrupted batch again: only its items without a result are computed."""
        return self._start(
            upload_key("resume", str(batch_id)),
            actor,
            lambda job: self._run(job, session_factory, engine, store, batch_id),
        )


def recent_batches(session: Session, limit: int = 20) -> pd.DataFrame:
    rows = session.scalars(select(Batch).order_by(Batch.id.desc()).limit(limit)).all()
    return pd.DataFrame(
        [
            {
                "batch_id": b.id,
                "name": b.name or "",
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


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    """UTF-8 with a byte-order mark, so Korean Excel opens it with the right encoding."""
    return frame.to_csv(index=False).encode("utf-8-sig")


def manifest_template() -> bytes:
    text = (
        ",".join(importer.EXPECTED_COLUMNS) + "\nM1001,F,photos/M1001_gallery.jpg,photos/M1001_verify.jpg\n"
    )
    return text.encode("utf-8-sig")


# ----------------------------------------------------------------------------------------------
# Review queue


@dataclass
class ReviewItem:
    row: ResultRow
    queue: queries.QueueItem
    gallery_bytes: bytes | None
    verification_bytes: bytes | None
    missing: list[str]


def load_review_item(session: Session, store: PhotoStore, item: queries.QueueItem) -> ReviewItem:
    row = session.get(ResultRow, item.result_id)
    photos: dict[str, bytes | None] = {}
    missing = []
    for kind, path in ((GALLERY, item.gallery_path), (VERIFICATION, item.verification_path)):
        photos[kind] = None
        if path:
            try:
                photos[kind] = store.read(path)
            except PhotoNotFound:
                missing.append(kind)
        else:
            missing.append(kind)
    return ReviewItem(row, item, photos[GALLERY], photos[VERIFICATION], missing)


def next_queue_item(session: Session, skipped: Iterable[int] = ()) -> tuple[queries.QueueItem | None, int]:
    """The first flagged pair in priority order that the reviewer has not skipped, and the backlog."""
    skipped = set(skipped)
    backlog = queries.backlog_count(session)
    offset = 0
    while True:
        page = queries.review_queue(session, limit=50, offset=offset)
        for item in page:
            if item.result_id not in skipped:
                return item, backlog
        if len(page) < 50:
            return None, backlog
        offset += 50


# ----------------------------------------------------------------------------------------------
# KPIs

KPI_COLUMNS = [
    "batch_id",
    "batch",
    "first_result",
    "n_results",
    "verification_accuracy",
    "n_verification_truth",
    "gender_accuracy",
    "n_gender_truth",
    "latency_p50_ms",
    "latency_p95_ms",
    "automation_rate",
    "backlog",
    "model_versions",
]

# chart id -> (columns plotted, target lines)
KPI_CHARTS = {
    "verification_accuracy": (["verification_accuracy"], [kpi_targets.VERIFICATION_ACCURACY]),
    "gender_accuracy": (["gender_accuracy"], [kpi_targets.GENDER_ACCURACY]),
    "latency": (
        ["latency_p50_ms", "latency_p95_ms"],
        [kpi_targets.LATENCY_CONTRACT_MS, kpi_targets.LATENCY_P95_MS],
    ),
    "automation_rate": (["automation_rate"], [kpi_targets.AUTOMATION_RATE]),
    "backlog": (["backlog"], [kpi_targets.BACKLOG]),
}
KPI_CHART_EXTRA = {
    "verification_accuracy": ["n_verification_truth"],
    "gender_accuracy": ["n_gender_truth"],
    "latency": ["n_results"],
    "automation_rate": ["n_results"],
    "backlog": ["n_results"],
}


def model_versions(session: Session) -> list[str]:
    return list(session.scalars(select(ResultRow.model_version).distinct().order_by(ResultRow.model_version)))


SINGLE_SOURCE = "verify_page"  # batches of one made by the Verify page


def kpi_frame(
    session: Session,
    date_from: date | None = None,
    date_to: date | None = None,
    model_version: str | None = None,
    *,
    per: str = "batch",
    include_single: bool = False,
    tz: str = DISPLAY_TZ,
) -> pd.DataFrame:
    """The figures behind all the KPI charts: one row per batch (oldest first) or per local day.

    Per batch, the one-pair batches of the Verify page are left out unless include_single (each
    would be a point of its own); per day, every result counts.
    """
    filters = {"date_from": date_from, "date_to": date_to, "model_version": model_version or None, "tz": tz}
    if per == "day":
        kpis = queries.kpis_per_day(session, **filters)
        labels = {k.key: (k.label, k.label) for k in kpis}
    else:
        kpis = queries.kpis_per_batch(session, **filters)
        ids = [k.key for k in kpis if k.key is not None]
        info = (
            {
                b_id: (created, source)
                for b_id, created, source in session.execute(
                    select(Batch.id, Batch.created_at, Batch.source).where(Batch.id.in_(ids))
                )
            }
            if ids
            else {}
        )
        if not include_single:
            kpis = [
                k for k in kpis if k.key is not None and info.get(k.key, (None, None))[1] != SINGLE_SOURCE
            ]
        labels = {}
        for k in kpis:
            created = info.get(k.key, (None, None))[0]
            if k.key is None:
                labels[k.key] = ("—", "")
            else:
                name = "" if k.label == f"Batch {k.key}" else f" {k.label}"
                labels[k.key] = (f"#{k.key}{name}", local_time(created))
    rows = []
    for k in kpis:
        label, when = labels[k.key]
        rows.append(
            {
                "batch_id": k.key if per != "day" else None,
                "batch": label,
                "first_result": when,
                "n_results": k.n_results,
                "verification_accuracy": k.verification_accuracy,
                "n_verification_truth": k.n_verification_truth,
                "gender_accuracy": k.gender_accuracy,
                "n_gender_truth": k.n_gender_truth,
                "latency_p50_ms": k.latency_p50_ms,
                "latency_p95_ms": k.latency_p95_ms,
                "automation_rate": k.automation_rate,
                "backlog": k.n_flagged_open,
                "model_versions": " ".join(k.model_versions),
            }
        )
    return pd.DataFrame(rows, columns=KPI_COLUMNS)


def chart_frame(frame: pd.DataFrame, chart: str) -> pd.DataFrame:
    """The figures behind one chart (for its download)."""
    columns, _ = KPI_CHARTS[chart]
    return frame[["batch_id", "batch", "first_result", *columns, *KPI_CHART_EXTRA[chart], "model_versions"]]


def kpi_figure(frame: pd.DataFrame, chart: str, lang: str, per: str = "batch"):
    """A plotly figure of one KPI per batch, with its target line(s)."""
    import plotly.graph_objects as go

    columns, targets = KPI_CHARTS[chart]
    ratio = targets[0].unit == "ratio"
    fig = go.Figure()
    x = frame["batch"].astype(str).tolist()
    for column in columns:
        values = frame[column].astype("float64")
        shown = values * 100 if ratio else values
        fig.add_trace(
            go.Scatter(
                x=x,
                y=shown,
                mode="lines+markers",
                marker={"size": 9},
                name=t(f"kpi.col.{column}", lang),
                connectgaps=False,
                hovertemplate="%{x}<br>%{y:.1f}"
                + ("%" if ratio else " ms" if "ms" in column else "")
                + "<extra></extra>",
            )
        )
    for target in targets:
        value = target.value * 100 if ratio else target.value
        fig.add_hline(
            y=value,
            line_dash="dash",
            line_color="#dc2626" if target.owner == "contract" else "#6b7280",
            annotation_text=t(
                "kpi.target_line",
                lang,
                owner=t(f"kpi.owner.{target.owner}", lang),
                value=_target_text(target),
            ),
            annotation_position="top left",
        )
    if frame[columns].isna().all().all():
        fig.add_annotation(
            text=t(f"kpi.no_points.{chart}", lang),
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            showarrow=False,
            font={"size": 14, "color": "#6b7280"},
        )
    y_title = {"ratio": "%", "ms": "ms", "count": t("kpi.count", lang)}[targets[0].unit]
    fig.update_layout(
        height=320,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis_title=y_title,
        xaxis_title=t("kpi.day_axis" if per == "day" else "kpi.batch_axis", lang),
        legend={"orientation": "h", "y": -0.25},
        xaxis={"type": "category"},
    )
    if ratio:
        fig.update_yaxes(range=[0, 101])
    return fig


def _target_text(target: kpi_targets.Target) -> str:
    sign = "≥" if target.direction == kpi_targets.MIN else "≤"
    if target.unit == "ratio":
        return f"{sign} {target.value * 100:.0f}%"
    if target.unit == "ms":
        return f"{sign} {target.value:,.0f} ms"
    return f"{sign} {target.value:,.0f}"


def target_text(target: kpi_targets.Target) -> str:
    return _target_text(target)


@dataclass
class TodaySummary:
    kpi: queries.Kpi
    backlog_total: int
    batches_today: int


def today_summary(session: Session, tz: str = DISPLAY_TZ) -> TodaySummary:
    today = today_local(tz)
    kpi = queries.kpi_totals(session, date_from=today, date_to=today, tz=tz)
    start = (
        datetime.combine(today, datetime.min.time(), tzinfo=ZoneInfo(tz)).astimezone(UTC).replace(tzinfo=None)
    )
    n_batches = len(
        session.scalars(
            select(Batch.id).where(Batch.created_at >= start, Batch.created_at < start + timedelta(days=1))
        ).all()
    )
    return TodaySummary(kpi, queries.backlog_count(session), n_batches)


# ----------------------------------------------------------------------------------------------
# Members


def members_frame(page: queries.Page) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "member_id": m.id,
                "gender": m.gender,
                "status": m.status,
                "registered_at": local_time(m.created_at),
                "last_verified_at": local_time(m.last_verified_at),
                "latest_result": m.latest_result_status or "",
                "similarity": None if m.latest_similarity is None else round(m.latest_similarity, 3),
            }
            for m in page.items
        ],
        columns=[
            "member_id",
            "gender",
            "status",
            "registered_at",
            "last_verified_at",
            "latest_result",
            "similarity",
        ],
    )


def history_frame(history: queries.MemberHistory) -> pd.DataFrame:
    rows = []
    for r in history.results:
        review = r.review
        rows.append(
            {
                "result_id": r.id,
                "batch_id": r.batch_id,
                "created_at": local_time(r.created_at),
                "status": r.status,
                "similarity": None if r.similarity is None else round(r.similarity, 3),
                "predicted_gender": r.predicted_gender,
                "flags": " ".join(f["code"] for f in r.flags or []),
                "reviewer": review.reviewer if review else "",
                "decided_at": local_time(review.decided_at) if review else "",
                "note": (review.note or "") if review else "",
                "model_version": r.model_version,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "result_id",
            "batch_id",
            "created_at",
            "status",
            "similarity",
            "predicted_gender",
            "flags",
            "reviewer",
            "decided_at",
            "note",
            "model_version",
        ],
    )


def audit_frame(entries) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"at": local_time(e.at), "actor": e.actor, "action": e.action, "detail": e.detail or ""}
            for e in entries
        ],
        columns=["at", "actor", "action", "detail"],
    )


def log_refusal(session: Session, username: str | None, page_key: str, role: str | None) -> None:
    """A refused page view goes to the audit log (who tried what)."""
    audit.log(session, username or "anonymous", "access_denied", "page", page_key, {"role": role})
    session.commit()


def log_event(session: Session, username: str, action: str, detail: dict | None = None) -> None:
    audit.log(session, username, action, "user", username, detail)
    session.commit()
