"""One row of the table: validated completely (_prepare, on worker threads), then written in its own
transaction (_write_row): the member and its photos, or nothing."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from core.i18n.notes import Note, joined, note
from core.storage import audit
from core.storage.photostore import PhotoStoreBackend
from core.storage.schema import GALLERY, MEMBER_PENDING, Member, Photo, ProfilePhoto, utcnow
from core.verification.genders import normalise_gender
from core.workflows import gallery, member_ids, member_photos, profile_rows, profiles, spreadsheets
from core.workflows.importer.photos import (
    PhotoLoader,
    PhotoRefError,
    _LoadedPhoto,
)
from core.workflows.importer.table import (
    PHOTO_COLUMNS,
    _short,
    gallery_references,
)

MAX_ID_LENGTH = spreadsheets.MAX_MEMBER_ID_LENGTH
PREFETCH_WORKERS = 4  # photo reading and decoding overlap with the database work of earlier rows

IMPORTED, UPDATED, UNCHANGED, REJECTED = "imported", "updated", "unchanged", "rejected"


@dataclass
class RowReport:
    """What happened to one row: its message's parts and its warnings as notes (catalog keys and
    values, core.i18n.notes); `message` and `warnings` are their English text."""

    row: int  # the row number a spreadsheet shows (header is row 1)
    member_id: str | None
    status: str  # imported / updated / unchanged / rejected
    notes: list[Note]
    warning_notes: list[Note] = field(default_factory=list)

    @property
    def message(self) -> str:
        return joined(self.notes)

    @property
    def warnings(self) -> list[str]:
        return [str(w) for w in self.warning_notes]

    def message_in(self, lang: str) -> str:
        return joined(self.notes, lang)

    def warnings_in(self, lang: str) -> list[str]:
        return [w.text(lang) for w in self.warning_notes]


@dataclass
class _PreparedRow:
    row: int
    member_id: str | None
    gender: str | None = None
    birth_year: int | None = None
    photos: list[_LoadedPhoto] = field(default_factory=list)
    errors: list[Note] = field(default_factory=list)
    photo_notes: list[Note] = field(default_factory=list)  # per profile photo: what happened
    # Profile photos added to a verified member, checked against its verified face once the row
    # is committed: (photo id, the photo's number in the row).
    to_check: list[tuple[int, int]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Values


class _Invalid(ValueError):
    def __init__(self, why: Note):
        self.note = why
        super().__init__(str(why))


def _status(status: str) -> Note:
    return Note(f"member_status.{status}", en=status)


def _gender_note(value, exc: ValueError) -> Note:
    shown = str(value).strip() if value is not None else ""
    if not shown:
        return Note("import.note.gender_empty", en=str(exc))
    return Note("import.note.gender_unknown", {"value": shown}, en=str(exc))


def _member_id_note(raw: str, exc: ValueError) -> Note:
    text = str(exc)
    if not raw.strip() or text == "member_id is empty":
        return Note("import.note.member_id_empty", en=text)
    return Note("import.note.member_id_invalid", {"value": _short(raw.strip(), 40)}, en=text)


def _birth_year(value) -> int | None:
    """The optional birth_year cell: empty, or a four-digit year between 1900 and this year."""
    text = str(value or "").strip()
    if not text:
        return None
    if text.endswith(".0"):  # a spreadsheet's number cell
        text = text[:-2]
    if not text.isdigit() or not 1900 <= int(text) <= utcnow().year:
        raise _Invalid(note("import.note.bad_birth_year", value=_short(text, 20), year=utcnow().year))
    return int(text)


def _check_member_id(value: str) -> str:
    """An identifier by core.workflows.spreadsheets.MEMBER_ID_RULE, else ValueError."""
    return member_ids.canonical_member_id(value)  # NFKC, no invisible or look-alike letters


# ----------------------------------------------------------------------------------------------
# Rows


def _prepare(
    row_number: int,
    values: dict,
    loader: PhotoLoader,
    duplicate_rows: dict[str, list[int]],
    store: PhotoStoreBackend,
) -> _PreparedRow:
    """Validate one row completely and put its photos in the store, outside any transaction.

    This is the slow part (download, decode, hash, fsync) and runs on worker threads. Photos are
    stored only when the whole row is valid. The file goes in before the database row: if the
    row's transaction fails later, an unreferenced file is harmless (the next import of the same
    photo reuses it), while a committed row without its file would not be.
    """
    raw_id = values.get("member_id", "")
    prepared = _PreparedRow(row_number, raw_id.strip() or None)
    try:
        prepared.member_id = _check_member_id(raw_id)
    except ValueError as exc:
        prepared.errors.append(_member_id_note(raw_id, exc))
    if prepared.member_id in duplicate_rows:
        rows = duplicate_rows[prepared.member_id]
        prepared.errors.append(
            note(
                "import.note.duplicate_id",
                member_id=prepared.member_id,
                count=len(rows),
                rows=", ".join(map(str, rows)),
            )
        )
        return prepared  # no point fetching photos of a row that cannot be imported
    try:
        prepared.gender = normalise_gender(values.get("gender"))
    except ValueError as exc:
        prepared.errors.append(_gender_note(values.get("gender"), exc))
    try:
        prepared.birth_year = _birth_year(values.get("birth_year"))
    except _Invalid as exc:
        prepared.errors.append(exc.note)
    for column, kind in PHOTO_COLUMNS.items():
        references = gallery_references(values) if kind == GALLERY else [values.get(column, "")]
        references = [r for r in references if r]
        if not references:
            prepared.errors.append(note("import.note.column_empty", column=column))
            continue
        if kind == GALLERY and len(references) > profile_rows.max_photos():
            prepared.errors.append(
                note(
                    "import.note.too_many_photos",
                    column=column,
                    count=len(references),
                    max=profile_rows.max_photos(),
                )
            )
            continue
        seen: set[str] = set()
        for position, reference in enumerate(references, start=1):
            try:
                loaded = loader.load(kind, reference)
            except PhotoRefError as exc:
                problem = exc.note
            except Exception as exc:  # one odd file must cost its photo (or row), not the whole import
                problem = note("import.note.unreadable", error=type(exc).__name__, detail=_short(str(exc)))
            else:
                if kind == GALLERY and loaded.sha256 in seen:
                    prepared.photo_notes.append(note("import.note.same_file_skipped", position=position))
                    continue
                seen.add(loaded.sha256)
                loaded.position = position if kind == GALLERY else 0
                prepared.photos.append(loaded)
                continue
            if kind == GALLERY and position > 1:
                # A later profile photo that cannot be read costs that photo, not the member.
                prepared.photo_notes.append(
                    note(
                        "import.note.photo_not_added",
                        position=position,
                        ref=_short(reference, 60),
                        problem=problem,
                    )
                )
            else:
                prepared.errors.append(
                    note(
                        "import.note.photo_problem", column=column, ref=_short(reference, 60), problem=problem
                    )
                )
    if not prepared.errors:
        try:
            for photo in prepared.photos:
                photo.stored_path = store.put(photo.data, photo.ext).relative_path
                photo.data = b""  # the bytes are on disk now; keep memory flat on large files
        except OSError as exc:
            prepared.errors.append(
                note("import.note.store_failed", reason=str(exc.strerror or type(exc).__name__))
            )
    return prepared


def _prefetch(items: Iterable, fn: Callable, workers: int) -> Iterator:
    """fn over items on a thread pool, results in order, at most 2*workers in flight (bounded memory)."""
    if workers <= 1:
        yield from (fn(*item) for item in items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="import") as pool:
        window: collections.deque[Future] = collections.deque()
        for item in items:
            window.append(pool.submit(fn, *item))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _add_profile_photos(
    session: Session, member_id: str, prepared: _PreparedRow, now
) -> tuple[list[tuple[int, int]], list[Note]]:
    """The row's later gallery photos join the member's profile after the ones it has, unchecked
    (checked once the row is committed, or by the member's next verification). ((photo id, its
    number in the row) of each photo added, a note per photo)."""
    later = [p for p in prepared.photos if p.kind == GALLERY and p.position > 1]
    if not later:
        return [], []
    rows = profile_rows.profile_of(session, member_id)
    have = {session.get(Photo, r.photo_id).sha256 for r in rows}
    top = max((r.position for r in rows), default=1)
    notes: list[Note] = []
    added: list[tuple[int, int]] = []
    for photo in later:
        if photo.sha256 in have:
            notes.append(note("import.note.already_in_profile", position=photo.position))
            continue
        if len(rows) + len(added) >= profile_rows.max_photos():
            notes.append(
                note("import.note.profile_full", position=photo.position, max=profile_rows.max_photos())
            )
            continue
        row = session.scalar(
            select(Photo).where(
                Photo.member_id == member_id, Photo.kind == GALLERY, Photo.sha256 == photo.sha256
            )
        )
        if row is None:
            row = Photo(
                member_id=member_id,
                kind=GALLERY,
                sha256=photo.sha256,
                stored_path=photo.stored_path,
                size_bytes=photo.size_bytes,
                source=_short(photo.reference, 2048),
                current=False,  # the member's current gallery photo is the main one
                created_at=now,
                width=photo.width,
                height=photo.height,
            )
            session.add(row)
            session.flush()
        top += 1
        added.append((row.id, photo.position))
        have.add(photo.sha256)
        session.add(ProfilePhoto(member_id=member_id, position=top, photo_id=row.id, created_at=now))
        notes.append(note("import.note.added_to_profile", position=photo.position, slot=top))
    session.flush()
    return added, notes


def _write_row(session: Session, prepared: _PreparedRow, actor: str, source_name: str) -> RowReport:
    """One transaction: member and both photos, or nothing."""
    prepared.to_check = []  # set again below (a retried row starts afresh)
    member_id = prepared.member_id
    now = utcnow()
    member = session.get(Member, member_id)
    is_new = member is None
    changes: list[Note] = []
    if is_new:
        member = Member(
            id=member_id,
            gender=prepared.gender,
            created_at=now,
            updated_at=now,
            source=source_name,
            birth_year=prepared.birth_year,
        )
        session.add(member)
    else:
        if member.gender != prepared.gender:
            changes.append(note("import.note.gender_changed", old=member.gender, new=prepared.gender))
        if prepared.birth_year is not None and member.birth_year != prepared.birth_year:
            changes.append(
                note("import.note.birth_year_changed", old=member.birth_year or "-", new=prepared.birth_year)
            )
            member.birth_year = prepared.birth_year
        # An import never replaces an existing member's main gallery photo: the row is refused whole.
        for photo in prepared.photos:
            if photo.kind == GALLERY and photo.position == 1:
                try:
                    gallery.check_not_replaced(session, member_id, photo.sha256)
                except gallery.GalleryLocked as exc:
                    session.rollback()
                    locked = Note("import.note.gallery_locked", {"member_id": member_id}, en=str(exc))
                    return RowReport(prepared.row, member_id, REJECTED, [locked])

    done = member_photos.set_current_photos(
        session,
        member_id,
        [
            member_photos.NewPhoto(
                photo.kind,
                photo.sha256,
                photo.stored_path,
                photo.size_bytes,
                _short(photo.reference, 2048),
                photo.width,
                photo.height,
            )
            for photo in prepared.photos
            if photo.kind != GALLERY or photo.position == 1
        ],
        now,
        is_new=is_new,
    )
    changes += [n for n in done.changes if n not in changes]
    warnings = list(done.warnings)
    added_photos, added_notes = _add_profile_photos(session, member_id, prepared, now)
    added = len(added_photos)
    if added:
        changes.append(note("import.note.profile_photos_added", count=added))

    if not is_new and not changes:
        session.rollback()
        return RowReport(
            prepared.row,
            member_id,
            UNCHANGED,
            [note("import.note.up_to_date"), *prepared.photo_notes, *added_notes],
            warnings,
        )
    member.gender = prepared.gender
    member.updated_at = now
    member.source = source_name
    # A birth year alone says nothing about the photos: the verification stands.
    photo_changes = [c for c in changes if c.key != "import.note.birth_year_changed"]
    if not is_new and added and photo_changes == [note("import.note.profile_photos_added", count=added)]:
        # Only profile photos added: the member's own verification still stands; the photos are
        # checked against its verified face as soon as the row is committed (the badge is off
        # until they are accepted), as photos added through the API are.
        profiles.refresh_badge(session, member_id)
        prepared.to_check = added_photos
    else:
        # The member's next verification checks them with the whole profile.
        added_notes = [note("import.note.waits_to_be_checked", note=n) for n in added_notes]
        if not is_new and member.status != MEMBER_PENDING and photo_changes:
            # New photos or a new gender: the earlier verification no longer speaks for this member.
            changes.append(
                note("import.note.status_changed", old=_status(member.status), new=_status(MEMBER_PENDING))
            )
            member.status = MEMBER_PENDING
    notes = prepared.photo_notes + added_notes
    status = IMPORTED if is_new else UPDATED
    message = [note("import.note.new_member")] if is_new else changes
    audit.log(
        session,
        actor,
        audit.IMPORT_MEMBER,
        "member",
        member_id,
        {"status": status, "file": source_name, "changes": [str(c) for c in changes]},
    )
    session.commit()
    return RowReport(prepared.row, member_id, status, [*message, *notes], warnings)


def _write_with_retry(session, prepared, actor, source_name) -> RowReport:
    for attempt in (1, 2):
        try:
            return _write_row(session, prepared, actor, source_name)
        except IntegrityError:
            session.rollback()
            if attempt == 2:
                break  # someone else keeps writing the same member; report it below
        except SQLAlchemyError as exc:
            session.rollback()
            return RowReport(
                prepared.row,
                prepared.member_id,
                REJECTED,
                [
                    note(
                        "import.note.database_error",
                        error=type(exc).__name__,
                        detail=_short(str(exc.orig if hasattr(exc, "orig") else exc), 200),
                    )
                ],
            )
    return RowReport(
        prepared.row,
        prepared.member_id,
        REJECTED,
        [note("import.note.changed_meanwhile")],
    )
