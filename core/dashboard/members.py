"""The Members page: a page of members, one member's history and audit trail as tables.

members_frame(page), history_frame(history), audit_frame(entries): codes as stored; formatting.table shows them
table_key(page, filters), selected_member(frame, rows): the member opened by clicking its row
gallery_first(photos)
photos_for_view(session, store, photos, viewer) -> [(Photo, bytes | None)]   each one an audited view
access_frame(entries)   an administrator's view of who saw the member's data (core.workflows.privacy)
"""

from __future__ import annotations

import hashlib

import pandas as pd

from core.dashboard import downloads
from core.dashboard.formatting import local_time
from core.i18n import t
from core.storage import queries
from core.storage.photostore import PhotoNotFound
from core.storage.schema import GALLERY, VERIFICATION
from core.workflows import importer, privacy

PAGE = "page:members"  # why, in the audit entry of each photo shown


WRAP_ROW_HEIGHT = 80  # px: over Streamlit's 4rem, so long notes wrap onto 2-3 lines


def table_key(page_number: int, filters) -> str:
    """The members table's widget key for this page of these filters."""
    digest = hashlib.sha256(repr((page_number, filters)).encode("utf-8")).hexdigest()[:12]
    return f"members_table_{digest}"


def selected_member(frame: pd.DataFrame, rows) -> str | None:
    """The member ID of the clicked row (None when no row is selected or it is gone)."""
    rows = list(rows or [])
    if not rows or not 0 <= rows[0] < len(frame):
        return None
    return str(frame.iloc[rows[0]]["member_id"])


def gallery_first(photos: list) -> list:
    """Current photos as the page shows them: the gallery photo, then the verification photo."""
    order = {GALLERY: 0, VERIFICATION: 1}
    return sorted(photos, key=lambda p: order.get(p[0], 2))


def photos_for_view(session, store, photos, viewer: str) -> list:
    """The photos' bytes for the page to show (None: missing from the store), each an audited view."""
    out = []
    for photo in photos:
        try:
            out.append((photo, privacy.show_photo(session, store, photo, viewer, PAGE)))
        except PhotoNotFound:
            out.append((photo, None))
    return out


def access_frame(entries) -> pd.DataFrame:
    """Who viewed, downloaded or exported the member's data, when and where (page or endpoint)."""
    return pd.DataFrame(
        [
            {
                "at": local_time(e.at),
                "actor": e.actor,
                "action": e.action,
                "why": (e.detail or {}).get("why", ""),
                "photo": (e.detail or {}).get("kind", ""),
            }
            for e in entries
        ],
        columns=["at", "actor", "action", "why", "photo"],
    )


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
                "similarity": m.latest_similarity,  # shown by formatting.similarity_text, 3 decimals
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
                "similarity": r.similarity,
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
            {
                "at": local_time(e.at),
                "actor": e.actor,
                "action": e.action,
                "detail": e.detail or None,  # a dict: formatting.detail_text writes it out
            }
            for e in entries
        ],
        columns=["at", "actor", "action", "detail"],
    )


# ----------------------------------------------------------------------------------------------
# What the pages ask of the data and privacy layers


def find_members(session, search: str | None = None, page_size: int = 50) -> list:
    """Members whose id contains `search` (all when None), first page_size of them: id, gender, status."""
    return queries.list_members(session, search=search or None, page_size=page_size).items


def list_page(session, *, search, gender, status, created_from, created_to, page: int, page_size: int):
    """One page of the member list under the filters (dates in the deployment's time zone)."""
    from core.dashboard.formatting import DISPLAY_TZ

    return queries.list_members(
        session,
        search=search or None,
        gender=gender or None,
        status=status or None,
        created_from=created_from,
        created_to=created_to,
        page=page,
        page_size=page_size,
        tz=DISPLAY_TZ,
    )


def member_detail(session, member_id: str, viewer: str):
    """The member's history as the Members page opens it (the view is audited)."""
    return queries.member_history(session, member_id, viewer=viewer, why=PAGE)


def access_history(session, member_id: str) -> pd.DataFrame:
    return access_frame(privacy.access_history(session, member_id))


ExportTooLarge = privacy.ExportTooLarge


def export_limit_mb() -> int:
    """The export size cap (PRIVACY_EXPORT_MAX_MB) in whole MB, for the refusal's message."""
    return privacy.export.max_export_bytes() // 2**20


class NoSignIn(Exception):
    """The page's sign-in has no server-side row to bind a download to (sign in again)."""


def export_link(session, store, member_id: str, actor: str, sign_in: int | None) -> str:
    """The member's export built on disk (audited) and offered once to this sign-in: the address
    of its one-time download (core.dashboard.downloads), good for a few minutes."""
    if sign_in is None:
        raise NoSignIn()
    path = privacy.export_member_file(session, store, member_id, actor, why=PAGE)
    code = downloads.offer(path, f"member-{member_id}.zip", sign_in, actor, "members", member_id)
    return downloads.url(code)


def export_link_minutes() -> int:
    return max(1, round(downloads.LIFETIME_S / 60))


def erase(session_factory, store, member_id: str, actor: str):
    """Erases the member: rows, photos, index entries; the report says what was removed."""
    return privacy.erase_member(session_factory, store, member_id, actor=actor, via="page")


# The member import, as the Members page runs it (core.workflows.importer decides and writes)


def import_file(
    session,
    table: bytes,
    zip_bytes: bytes | None,
    actor: str,
    filename: str,
    store,
    progress=None,
    engine=None,
):
    """Imports a member table (and its photos ZIP); ImportFileError when the file as a whole is unusable.
    engine: the page's engine, or the function that loads it (photos added to a verified member
    are checked against its verified face at once)."""
    return importer.import_members(
        session,
        table,
        zip_bytes=zip_bytes,
        actor=actor,
        filename=filename,
        photo_store=store,
        progress=progress,
        engine=engine,
    )


def load_sample(session, actor: str, store) -> list:
    """The demo members imported (administrators, embedded database only: see home.demo_data_allowed)."""
    return importer.load_sample_members(session, actor=actor, photo_store=store)


def import_report(reports, lang: str) -> list[dict]:
    """The import's row reports as the page's table, every word in `lang` (column labels, status,
    message and warnings from the catalogs)."""
    return [
        {
            t("col.row", lang): r.row,
            t("col.member_id", lang): r.member_id,
            t("col.import_status", lang): t(f"import_status.{r.status}", lang),
            t("col.message", lang): r.message_in(lang) + "".join(f" ⚠ {w}" for w in r.warnings_in(lang)),
        }
        for r in reports
    ]


def import_problems(exc: importer.ImportFileError, lang: str) -> list[str]:
    """Why the whole file was refused, in `lang`."""
    return exc.texts(lang)


def import_counts(reports) -> dict[str, int]:
    return importer.summarize(reports)


ImportFileError = importer.ImportFileError
IMPORT_REJECTED = importer.REJECTED
