"""Which photos are rows of the 1:N index, in SQL: a member's current gallery photo, and each
other photo of its profile that shows the member.

    shows_the_member()      the photo is in its member's profile and shows the member
    enrolled_photo()        a row of the index (given its embedding)
    _enrolled_query(...)    the rows the index loads: photo, member, hash, embedding, main or not
    _db_fingerprint(...)    (rows, sum of their photo ids): the index's consistency check
"""

from __future__ import annotations

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection

from core.storage.schema import GALLERY, Embedding, Photo, ProfilePhoto
from core.workflows import profile_rows
from core.workflows.search.embeddings import EMBEDDING_DIM, pretrained_model_id


def shows_the_member():
    """SQL: the photo is in its member's profile and shows the member: it matched the member's
    verified face and waits for no person, or a reviewer accepted it (a rejected one never)."""
    return (
        select(ProfilePhoto.id)
        .where(ProfilePhoto.photo_id == Photo.id, profile_rows.settled_sql())
        .correlate(Photo)  # only the photo: a query that joins profile_photos itself keeps its own
        .exists()
    )


def enrolled_photo():
    """SQL: a photo that is a row of the 1:N index (given its embedding): a current gallery photo,
    or another profile photo that shows the member."""
    return and_(Photo.kind == GALLERY, or_(Photo.current.is_(True), shows_the_member()))


def _enrolled_query(model_id: str, dim: int = EMBEDDING_DIM):
    return (
        select(Photo.id, Photo.member_id, Photo.sha256, Embedding.id, Embedding.vector, Photo.current)
        .join(Embedding, Embedding.photo_sha256 == Photo.sha256)
        .where(enrolled_photo(), Embedding.model_id == model_id, Embedding.dim == dim)
    )


def _db_fingerprint(
    conn: Connection, model_id: str | None = None, dim: int = EMBEDDING_DIM
) -> tuple[int, int]:
    model_id = model_id or pretrained_model_id()
    sub = _enrolled_query(model_id, dim).with_only_columns(Photo.id).subquery()
    count, total = conn.execute(select(func.count(), func.coalesce(func.sum(sub.c.id), 0))).one()
    return int(count or 0), int(total or 0)
