"""Re-verification after a promotion: members run again on a model version, and two versions
compared on the same members.

    members_to_reverify(session, version, scope) -> [member_id]
        scope "all": every member with a current gallery and verification photo;
        "older": those whose latest result is from another version (or who have none yet)
    count_to_reverify(session, version) -> {scope: members}   the same, counted by the database
    create(session_factory, actor, version, scope) -> batch id
        one batch (source "reverify"); the caller hands it to core.jobs (submit_batch), which runs
        it on a queue worker or a thread of this process; progress is the batch's
    compare_versions(session, old, new) -> VersionComparison
        each member's latest result under each version, on the members that have both

A re-verification stores results like any batch (the one storing path): members' statuses follow
the new model's decisions, and what it flags goes to the review queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from core.storage import audit
from core.storage.schema import VerificationResult as ResultRow
from core.verification.result import AUTO_APPROVED, AUTO_REJECTED, FLAGGED
from core.workflows import batches

ALL, OLDER = "all", "older"
SCOPES = (ALL, OLDER)
SOURCE = "reverify"
START_REVERIFICATION = "start_reverification"


def _latest_per_member(session: Session, version: str | None = None):
    """member_id -> (status, similarity, model_version) of each member's latest result."""
    stmt = select(ResultRow.member_id, func.max(ResultRow.id).label("last")).where(
        ResultRow.member_id.is_not(None)
    )
    if version is not None:
        stmt = stmt.where(ResultRow.model_version == version)
    latest = stmt.group_by(ResultRow.member_id).subquery()
    # Joined on (member_id, id), so the index (member_id, id, model_version, status, similarity)
    # answers it alone, without reading the wide result rows.
    rows = session.execute(
        select(ResultRow.member_id, ResultRow.status, ResultRow.similarity, ResultRow.model_version).join(
            latest, and_(ResultRow.member_id == latest.c.member_id, ResultRow.id == latest.c.last)
        )
    )
    return {member: (status, similarity, model) for member, status, similarity, model in rows}


def members_to_reverify(session: Session, version: str, scope: str = OLDER) -> list[str]:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    members = [item.member_id for item in batches.items_for_members(session)]
    if scope == ALL:
        return members
    latest = _latest_per_member(session)
    return [m for m in members if m not in latest or latest[m][2] != version]


def count_to_reverify(session: Session, version: str) -> dict[str, int]:
    """{scope: how many members members_to_reverify would give}, counted by the database in one
    query (the Retrain page's choice), without reading the members: each member's newest result
    found by a look-up in the index (member_id, id, model_version, ...), the photos by the index
    (member_id, kind, current)."""
    items = batches.items_statement().subquery()
    newest = (
        select(ResultRow.model_version)
        .where(ResultRow.member_id == items.c.member_id)
        .order_by(ResultRow.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    older = func.coalesce(newest, "") != version  # none yet, or another version
    every, other = session.execute(
        select(func.count(), func.coalesce(func.sum(case((older, 1), else_=0)), 0)).select_from(items)
    ).one()
    return {ALL: int(every or 0), OLDER: int(other or 0)}


def create(session_factory, actor: str, version: str, scope: str = OLDER) -> int | None:
    """Create the re-verification batch (audited); None when no member needs it."""
    with session_factory() as session:
        members = members_to_reverify(session, version, scope)
        if not members:
            return None
        items = batches.items_for_members(session, members)
        batch = batches.create_batch(
            session, actor, items, version, source=SOURCE, name=f"re-verification on {version} ({scope})"
        )
        audit.log(
            session, actor, START_REVERIFICATION, "batch", batch.id, {"version": version, "scope": scope}
        )
        session.commit()
        return batch.id


@dataclass
class VersionStats:
    version: str
    approved: int = 0
    rejected: int = 0
    flagged: int = 0
    other: int = 0
    mean_similarity: float | None = None

    @property
    def n(self) -> int:
        return self.approved + self.rejected + self.flagged + self.other

    @property
    def automation(self) -> float | None:
        return (self.approved + self.rejected) / self.n if self.n else None


@dataclass
class VersionComparison:
    old: VersionStats
    new: VersionStats
    members: int  # with a result under both versions
    same_decision: int
    changed: list[tuple[str, str, str]] = field(default_factory=list)  # (member, old status, new status)

    @property
    def agreement(self) -> float | None:
        return self.same_decision / self.members if self.members else None


def compare_versions(session: Session, old: str, new: str) -> VersionComparison:
    """Both versions' latest decisions on the members that have a result under each."""
    before, after = _latest_per_member(session, old), _latest_per_member(session, new)
    shared = sorted(set(before) & set(after))
    stats = {old: VersionStats(old), new: VersionStats(new)}
    changed = []
    for version, latest in ((old, before), (new, after)):
        s, sims = stats[version], []
        for member in shared:
            status, similarity, _ = latest[member]
            if status == AUTO_APPROVED:
                s.approved += 1
            elif status == AUTO_REJECTED:
                s.rejected += 1
            elif status == FLAGGED:
                s.flagged += 1
            else:
                s.other += 1
            if similarity is not None:
                sims.append(float(similarity))
        s.mean_similarity = sum(sims) / len(sims) if sims else None
    for member in shared:
        if before[member][0] != after[member][0]:
            changed.append((member, before[member][0], after[member][0]))
    return VersionComparison(stats[old], stats[new], len(shared), len(shared) - len(changed), changed)
