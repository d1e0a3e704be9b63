"""Search by photo (1:N) over every enrolled member."""

from __future__ import annotations

import logging
import time

from sqlalchemy import select

from core.api.errors import ApiError
from core.api.inputs import checked_photo
from core.api.keys import Caller
from core.api.settings import API_SEARCH, ENGINE_TIMEOUT_S
from core.api.state import AppState, EngineJob
from core.storage import audit
from core.storage.photostore import PhotoNotFound
from core.storage.schema import (
    Photo,
)
from core.workflows import search

log = logging.getLogger(__name__)


def run_search(
    state: AppState, caller: Caller, data: bytes | None, sha: str | None, k: int, exclude: str | None
) -> dict:
    worker = state.require_engine()
    if sha is not None:
        with state.factory() as session:
            path = session.scalar(select(Photo.stored_path).where(Photo.sha256 == sha).limit(1))
            session.rollback()
        if path is None:
            raise ApiError(404, "unknown_photo", f"There is no stored photo {sha[:12]}….")
        try:
            data = state.store.read(path)
        except PhotoNotFound as exc:
            log.warning("%s", exc)  # names the store's location: for the log, not the caller
            raise ApiError(
                404, "photo_missing", "The stored photo is missing from the photo store."
            ) from None
    else:
        checked_photo("search", data)
    job = EngineJob([data], pair=False)
    analysis = worker.submit(job).result(timeout=ENGINE_TIMEOUT_S)
    if analysis.projection is None:
        raise ApiError(
            422, "no_usable_face", f"The photo cannot be searched: {analysis.error or 'no usable face'}"
        )
    with state.factory() as session:
        index = search.index_for(session.get_bind(), job.model_version)  # the version that analysed it
        started = time.perf_counter()
        found = index.search_candidates(analysis.projection, k, exclude_member=exclude)
        elapsed = (time.perf_counter() - started) * 1000
        audit.log(
            session,
            caller.actor,
            API_SEARCH,
            "photo",
            analysis.sha256,
            {"k": k, "candidates": [c.member_id for c in found][:10]},
        )
        session.commit()
    face = {
        "sha256": analysis.sha256,
        "width": analysis.width,
        "height": analysis.height,
        "faces": [
            {"box": list(f.box), "score": float(f.score), "keypoints": [list(p) for p in f.keypoints]}
            for f in analysis.faces
        ],
        "main_face": analysis.main_face,
        "quality": None if analysis.quality is None else float(analysis.quality),
        "error": analysis.error,
        "timings_ms": {k_: float(v) for k_, v in analysis.timings_ms.items()},
    }
    return {
        "model_version": job.model_version,
        "duplicate_threshold": index.duplicate_threshold,
        "enrolled": len(index),
        "search_ms": elapsed,
        "face": face,
        "candidates": [
            {
                "member_id": c.member_id,
                "similarity": c.similarity,
                "possible_duplicate": c.similarity >= index.duplicate_threshold,
            }
            for c in found
        ],
    }
