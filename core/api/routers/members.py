"""A member's verification history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from core.api.deps import CallerKey, State, secured
from core.api.errors import ApiError, error_responses
from core.api.inputs import checked_member_id
from core.api.output import jsonable
from core.api.schemas import (
    MemberHistoryOut,
)
from core.storage.schema import Batch, Member
from core.storage.schema import VerificationResult as ResultRow

router = APIRouter(tags=["members"])


@router.get(
    "/v1/members/{member_id:path}/verifications",
    response_model=MemberHistoryOut,
    dependencies=secured,
    responses=error_responses(401, 403, 404, 422, 503),
)
def member_verifications(
    state: State,
    caller: CallerKey,
    member_id: Annotated[str, Path(min_length=1, max_length=64)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
):
    """A member's verifications, newest first."""
    member_id = checked_member_id(member_id)
    with state.factory() as session:
        member = session.get(Member, member_id)
        if member is None:
            raise ApiError(404, "unknown_member", f"There is no member {member_id!r}.")
        total = session.scalar(select(func.count(ResultRow.id)).where(ResultRow.member_id == member_id)) or 0
        rows = session.execute(
            select(ResultRow, Batch.source)
            .outerjoin(Batch, Batch.id == ResultRow.batch_id)
            .where(ResultRow.member_id == member_id)
            .order_by(ResultRow.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
        items = [
            {
                "id": r.id,
                "created_at": r.created_at,
                "status": r.status,
                "same_person": r.same_person,
                "similarity": r.similarity,
                "flags": [f.get("code", "") for f in (r.flags or [])],
                "possible_duplicate": bool(r.possible_duplicate),
                "decided_at": r.decided_at,
                "decided_by": r.decided_by,
                "batch_id": r.batch_id,
                "source": source,
                "model_version": r.model_version,
            }
            for r, source in rows
        ]
        out = {
            "member_id": member.id,
            "gender": member.gender,
            "status": member.status,
            "total": total,
            "limit": limit,
            "offset": offset,
            "items": items,
        }
        return JSONResponse(jsonable(out))
