"""Enrolment: embeddings for the enrolled photos that have none yet (current gallery photos, and
profile photos that show the member, checked before their embeddings were kept).

enrol_missing(session_factory, engine, store)  how many photos it embedded
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select

from core.storage.schema import GALLERY, Embedding, Photo, ProfilePhoto
from core.verification.networks import DEFAULT_NETWORKS
from core.workflows.search.embeddings import pretrained_model_id, store_embeddings
from core.workflows.search.enrolled import shows_the_member

log = logging.getLogger(__name__)


def enrol_missing(session_factory, engine, store=None, *, limit: int | None = None, chunk: int = 32) -> int:
    """Compute and store embeddings for current gallery photos that have none, then for the other
    profile photos that show the member (checked before their embeddings were kept). Returns how
    many. Bounded: at most `limit` photos of each kind (all when None), `chunk` per engine call.
    """
    from core.storage.photostore import PhotoNotFound
    from core.storage.stores import open_photo_store

    store = store or open_photo_store()
    networks = getattr(engine, "networks", DEFAULT_NETWORKS)
    model_id = pretrained_model_id(networks)
    done = 0
    with session_factory() as session:
        have = select(Embedding.photo_sha256).where(Embedding.model_id == model_id)
        todo = session.execute(
            select(Photo.sha256, func.min(Photo.stored_path))
            .where(Photo.kind == GALLERY, Photo.current.is_(True), Photo.sha256.not_in(have))
            .group_by(Photo.sha256)
            .order_by(Photo.sha256)
            .limit(limit if limit is not None else 10_000_000)
        ).all()
        session.rollback()
    for first in range(0, len(todo), chunk):
        datas = []
        for _sha, path in todo[first : first + chunk]:
            try:
                datas.append(store.read(path))
            except PhotoNotFound as exc:
                log.warning("enrol-missing: %s", exc)
        analyses = engine.analyze_many(datas) if datas else []
        with session_factory() as session:
            done += store_embeddings(session, analyses, networks)
            session.commit()
    return done + _enrol_profile_photos(session_factory, engine, store, networks, limit, chunk)


def _enrol_profile_photos(session_factory, engine, store, networks, limit, chunk) -> int:
    """Profile photos that show the member and have no embedding: the face the check named as the
    member's (its box), so a group photo's row is the member's face, not the largest one."""
    from core.storage.photostore import PhotoNotFound

    model_id = pretrained_model_id(networks)
    with session_factory() as session:
        have = select(Embedding.photo_sha256).where(Embedding.model_id == model_id)
        todo = session.execute(
            select(Photo.sha256, Photo.stored_path, ProfilePhoto.face_box)
            .join(ProfilePhoto, ProfilePhoto.photo_id == Photo.id)
            .where(Photo.kind == GALLERY, Photo.current.is_(False), shows_the_member())
            .where(Photo.sha256.not_in(have))
            .order_by(Photo.sha256)
            .limit(limit if limit is not None else 10_000_000)
        ).all()
        session.rollback()
    todo = list({sha: (sha, path, box) for sha, path, box in todo}.values())
    done = 0
    for first in range(0, len(todo), chunk):
        part, datas = [], []
        for _sha, path, box in todo[first : first + chunk]:
            try:
                datas.append(store.read(path))
                part.append(box)
            except PhotoNotFound as exc:
                log.warning("enrol-missing: %s", exc)
        chosen = []
        for box, faces in zip(part, engine.analyze_faces(datas) if datas else [], strict=True):
            usable = [a for a in faces if a.embedding is not None]
            named = [a for a in usable if box and _box(a) == list(box)]
            if named or len(usable) == 1:
                chosen.append((named or usable)[0])
        with session_factory() as session:
            done += store_embeddings(session, chosen, networks)
            session.commit()
    return done


def _box(analysis) -> list[int] | None:
    """The box of the face an analysis (one of Engine.analyze_faces') is about."""
    if analysis.main_face is None or not analysis.faces:
        return None
    return [int(v) for v in analysis.faces[analysis.main_face].box]
