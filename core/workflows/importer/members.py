"""import_members: a whole table, row by row, with its report; load_sample_members."""

from __future__ import annotations

import collections
import unicodedata
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from core import config
from core.errors import FaceVerifyError
from core.i18n.notes import Note, note
from core.storage import audit
from core.storage.photostore import PhotoStoreBackend
from core.storage.stores import open_photo_store
from core.workflows import profiles
from core.workflows.importer.photos import (
    PhotoLoader,
    PhotoZip,
    fetch_url,
)
from core.workflows.importer.rows import (
    IMPORTED,
    PREFETCH_WORKERS,
    REJECTED,
    UNCHANGED,
    UPDATED,
    RowReport,
    _prefetch,
    _prepare,
    _write_with_retry,
)
from core.workflows.importer.table import (
    ImportFileError,
    _short,
    check_columns,
    read_table,
)


def import_members(
    session: Session,
    rows_source,
    zip_bytes: bytes | str | Path | None = None,
    base_dir: str | Path | None = None,
    actor: str = "system",
    *,
    filename: str | None = None,
    photo_store: PhotoStoreBackend | None = None,
    allow_local_files: bool | None = None,
    fetch: Callable[[str], tuple[bytes, str | None]] = fetch_url,
    workers: int = PREFETCH_WORKERS,
    progress: Callable[[int, int], None] | None = None,
    allow_outside: bool = False,
    engine=None,
) -> list[RowReport]:
    """Import members from a table; returns one RowReport per data row.

    rows_source: a path, bytes (with filename= to tell .csv from .xlsx) or an uploaded file object.
    zip_bytes: the photo ZIP (bytes or a path) for photos given as paths inside it.
    base_dir: folder for relative photo paths (default: the table's folder when it is a path).
    allow_outside: read local photo paths outside base_dir too (the command line's --allow-outside);
        by default ../ and absolute paths leading out of it are rejected.
    allow_local_files: read photo paths from this machine's disk. Default: only when the table is
        a path on disk (the command line); an uploaded table may name only ZIP entries and links,
        so nobody can read server files through an upload.
    engine: checks the profile photos a row adds to a member whose verification stands, against
        its verified face, as soon as the row is committed (core.workflows.profiles, the path
        photos added through the API take): an engine, or a function that loads one, called
        only when a photo needs it. Default: the active model version, loaded once per process.
    Raises ImportFileError for problems with the whole file (nothing is imported then).
    Commits row by row: a rejected row leaves no trace, earlier rows stay imported.
    """
    is_path = isinstance(rows_source, str | Path)
    if allow_local_files is None:
        allow_local_files = is_path or base_dir is not None
    if base_dir is None and is_path:
        base_dir = Path(rows_source).resolve().parent
    columns, table = read_table(rows_source, filename)
    source_name = _short(
        filename or (Path(rows_source).name if is_path else getattr(rows_source, "name", "upload")), 255
    )
    check_columns(columns)
    if not table:
        raise ImportFileError(note("import.file.no_rows"))

    ids = collections.defaultdict(list)
    for row_number, values in table:
        member_id = unicodedata.normalize("NFC", values.get("member_id", "")).strip()
        if member_id:
            ids[member_id].append(row_number)
    duplicate_rows = {k: v for k, v in ids.items() if len(v) > 1}

    photo_zip = PhotoZip(zip_bytes) if zip_bytes is not None else None
    loader = PhotoLoader(
        photo_zip, Path(base_dir) if base_dir else None, allow_local_files, fetch, allow_outside=allow_outside
    )
    store = photo_store or open_photo_store()
    reports: list[RowReport] = []
    try:
        work = ((row_number, values, loader, duplicate_rows, store) for row_number, values in table)
        for done, prepared in enumerate(_prefetch(work, _prepare, workers), start=1):
            if prepared.errors:
                reports.append(RowReport(prepared.row, prepared.member_id, REJECTED, list(prepared.errors)))
            else:
                report = _write_with_retry(session, prepared, actor, source_name)
                if prepared.to_check and report.status == UPDATED:
                    engine = _engine(engine, session)
                    report.notes.extend(_check_added(session, prepared, actor, store, engine))
                reports.append(report)
            if progress:
                progress(done, len(table))
    finally:
        if photo_zip is not None:
            photo_zip.close()

    counts = summarize(reports)
    audit.log(session, actor, audit.IMPORT_FILE, "import", source_name, counts)
    session.commit()
    return reports


def summarize(reports: list[RowReport]) -> dict[str, int]:
    counts = {IMPORTED: 0, UPDATED: 0, UNCHANGED: 0, REJECTED: 0}
    for report in reports:
        counts[report.status] += 1
    return counts


def format_report(reports: list[RowReport], only_problems: bool = False) -> str:
    shown = [r for r in reports if not only_problems or r.status == REJECTED or r.warnings]
    rows = [("row", "member_id", "status", "message")]
    for r in shown:
        message = r.message + "".join(f" [warning: {w}]" for w in r.warnings)
        rows.append((str(r.row), r.member_id or "", r.status, message))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:>{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows]
    lines.insert(1, "-" * min(120, sum(widths) + 6 + max(len(r[3]) for r in rows)))
    return "\n".join(lines)


def load_sample_members(
    session: Session, actor: str = "demo", photo_store: PhotoStoreBackend | None = None
) -> list[RowReport]:
    """Import the demo members of data/sample/members.csv (idempotent)."""
    return import_members(session, config.SAMPLE_DIR / "members.csv", actor=actor, photo_store=photo_store)


def _factory(session: Session) -> sessionmaker:
    bind = session.get_bind()
    return sessionmaker(bind=bind.engine if isinstance(bind, Connection) else bind)


def _engine(engine, session: Session):
    """The engine that checks added photos: given, loaded by the given function, or the model
    version active in this database (loaded once per process). An exception (no model) is kept,
    to be reported."""
    if engine is None:

        def engine():
            from core.jobs import resources

            return resources.engine(factory=_factory(session))

    if callable(engine) and not hasattr(engine, "analyze_faces"):
        try:
            return engine()
        except Exception as exc:  # no model trained yet, a broken one: the photos wait
            return exc
    return engine


def _check_added(session: Session, prepared, actor: str, store: PhotoStoreBackend, engine) -> list[Note]:
    """Each profile photo the row added to a member whose verification stands, checked against
    its verified face (profiles.check_profile_photo, the API's check); a note per photo."""
    if isinstance(engine, Exception):
        reason = _short(str(engine), 120)
        return [note("import.note.no_model", number=n, reason=reason) for _id, n in prepared.to_check]
    factory = _factory(session)
    notes = []
    for photo_id, number in prepared.to_check:
        try:
            done = profiles.check_profile_photo(
                factory, store, actor, prepared.member_id, photo_id, engine, via="import"
            )
        except FaceVerifyError as exc:  # no selfie to compare with, a file gone: it waits
            notes.append(note("import.note.check_waits", number=number, reason=_short(str(exc), 120)))
            continue
        if done.shown:
            notes.append(note("import.note.checked_shown", number=number))
        else:
            reason = done.photo.reason if done.photo else done.state
            notes.append(note("import.note.checked_review", number=number, reason=reason))
    return notes
