"""Search by photo: the enrolled members most like the face in a photo (the API, the pages)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from core.errors import FaceVerifyError
from core.workflows.search.index import Candidate
from core.workflows.search.registry import index_for, register_engine


class SearchError(FaceVerifyError):
    code = "search_error"


class NoUsableFace(SearchError):
    """The photo given for a search has no face the engine can use."""

    code = "no_face"


@dataclass
class PhotoSearch:
    model_version: str
    duplicate_threshold: float
    analysis: object  # core.verification.result.PhotoAnalysis of the photo searched
    candidates: list[Candidate]
    enrolled: int  # rows searched
    search_ms: float


def search_photo(
    session: Session, engine, data: bytes, k: int = 10, exclude_member: str | None = None
) -> PhotoSearch:
    """The k enrolled members most similar to the face in the photo. Stores nothing.

    Raises NoUsableFace (with the engine's reason) when the photo has no usable face.
    """
    analysis = engine.analyze_many([data])[0]
    if analysis.projection is None:
        raise NoUsableFace(analysis.error or "No usable face was found in the photo.")
    register_engine(engine)
    index = index_for(session.get_bind(), engine.model_version)
    started = time.perf_counter()
    candidates = index.search_candidates(analysis.projection, k, exclude_member=exclude_member)
    elapsed = (time.perf_counter() - started) * 1000
    return PhotoSearch(
        engine.model_version, index.duplicate_threshold, analysis, candidates, len(index), elapsed
    )
