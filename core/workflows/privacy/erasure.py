"""Erasure on request: every photo, embedding and analysis of a member; decisions and the audit
log kept (see the package's docstring for what is removed and kept, and in which order).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import delete, null, select, update
from sqlalchemy.orm import sessionmaker

from core.storage import audit
from core.storage.photostore import PhotoStoreBackend
from core.storage.schema import (
    MEMBER_ERASED,
    Member,
    MemberErasure,
    Photo,
    ResultAnalysis,
    utcnow,
)
from core.storage.schema import VerificationResult as ResultRow
from core.workflows import search
from core.workflows.privacy import removal
from core.workflows.privacy.removal import (
    ERASE_MEMBER,
    REQUEST,
    Removed,
    UnknownMember,
)


@dataclass
class ErasureReport:
    member_id: str
    already_erased: bool  # nothing was left to remove
    removed: Removed
    erasure_id: int
    at: datetime

    def to_dict(self) -> dict:
        return {
            "member_id": self.member_id,
            "already_erased": self.already_erased,
            "removed": asdict(self.removed),
            "erasure_id": self.erasure_id,
            "at": self.at.isoformat() + "Z",
        }


def erase_member(
    session_factory: sessionmaker, store: PhotoStoreBackend, member_id: str, *, actor: str, via: str
) -> ErasureReport:
    """Erase a member's biometric data (see the module docstring). Raises UnknownMember."""
    member_id = (member_id or "").strip()
    with session_factory() as session:
        member = session.get(Member, member_id)
        if member is None:
            raise UnknownMember(f"There is no member {member_id!r}.")
        photos = list(session.scalars(select(Photo).where(Photo.member_id == member_id)))
        gone, shared = removal.unshared(session, photos)
        session.rollback()  # no snapshot or lock held while the files go

    files = removal.delete_files(store, gone)  # bytes first: see the module docstring

    now = utcnow()
    with session_factory() as session:
        member = session.get(Member, member_id, with_for_update=True)
        # Photos added meanwhile (a verification in flight) are erased as well.
        photos = list(session.scalars(select(Photo).where(Photo.member_id == member_id)))
        gone_now, shared = removal.unshared(session, photos)
        files += removal.delete_files(store, gone_now - gone)
        removed = removal.remove_photo_rows(session, photos, gone_now, clear_analyses=True)
        # Analyses of results no photo row led to (an earlier, interrupted erasure; removed photos).
        member_results = select(ResultRow.id).where(ResultRow.member_id == member_id)
        with_analysis = set(
            session.scalars(
                select(ResultAnalysis.result_id).where(ResultAnalysis.result_id.in_(member_results))
            )
        )
        with_checks = {
            rid
            for rid, checks in session.execute(
                select(ResultRow.id, ResultRow.checks).where(ResultRow.member_id == member_id)
            )
            if checks is not None
        }
        left = sorted(with_analysis | with_checks)
        if with_analysis:
            session.execute(
                delete(ResultAnalysis)
                .where(ResultAnalysis.result_id.in_(with_analysis))
                .execution_options(synchronize_session=False)
            )
        if left:
            session.execute(
                update(ResultRow)
                .where(ResultRow.id.in_(left))
                .values(checks=null(), version=ResultRow.version + 1)
                .execution_options(synchronize_session=False)
            )
        removed.results += len(left)
        removed.files = files
        removed.files_kept_shared = len(shared)
        already = member.status == MEMBER_ERASED and not any(
            (removed.photos, removed.files, removed.embeddings, removed.results)
        )
        member.status = MEMBER_ERASED
        member.updated_at = now
        record = MemberErasure(
            member_id=member_id,
            at=now,
            actor=actor[:64],
            reason=REQUEST,
            via=via[:32],
            detail=asdict(removed),
        )
        session.add(record)
        audit.log(
            session,
            actor,
            ERASE_MEMBER,
            "member",
            member_id,
            {"via": via, "already_erased": already, **asdict(removed)},
            at=now,
        )
        session.commit()
        erasure_id = record.id
        search.forget_member(session.get_bind(), member_id)
    return ErasureReport(member_id, already, removed, erasure_id, now)
