"""1:N face search over every enrolled member, and the duplicate-account check run on each verification.

An enrolled member is a member whose current gallery photo has a pretrained embedding in the
`embeddings` table; every other photo of its profile that shows the member (it matched the
verified face, or a reviewer accepted it) is a row of the member too, so a photo lifted from any
member's profile is found. The index keeps, in memory, one row per such photo: the engine's projection of
that embedding (the Siamese tower's output for the loaded model version), as a float16 matrix
(products in float32).

    thresholds   similarity on the model's scale; duplicate_threshold(...)
    embeddings   pretrained_model_id(), embedding_dim(), store_embeddings()
    enrolment    enrol_missing(): embeddings for enrolled photos that have none yet
    index        SearchIndex(dim, offset, scale, ...): the matrix; add/remove/search, thread-safe,
                 kept in step with the database and with other processes
    enrolled     which photos are rows, in SQL: a member's current gallery photo and each other
                 profile photo that shows the member (enrolled_photo(), shows_the_member())
    registry     register_engine(engine), index_for(bind, model_version), forget_member(),
                 refresh_after_commit(session, member_id), store_embeddings_of(),
                 reset_indexes(), index_stats()
    duplicates   flag_possible_duplicates(session, row, result): the hook the one storing path
                 (core.workflows.batches.store_result) calls for every result; candidates_of(flag)
    photo_search search_photo(session, engine, data, k) -> PhotoSearch (API, pages)

Command line (core.cli.search): faceverify search stats | enrol-missing [--limit N]
"""

from core.workflows.search.duplicates import (
    MAX_CANDIDATES,
    candidates_of,
    flag_possible_duplicates,
    was_checked,
)
from core.workflows.search.embeddings import (
    EMBEDDING_DIM,
    embedding_dim,
    pretrained_model_id,
    store_embeddings,
)
from core.workflows.search.enrolled import enrolled_photo, shows_the_member
from core.workflows.search.enrolment import enrol_missing
from core.workflows.search.index import (
    LOAD_CHUNK,
    PROJECT_CHUNK,
    SYNC_INTERVAL_S,
    VERIFY_INTERVAL_S,
    Candidate,
    SearchIndex,
)
from core.workflows.search.photo_search import NoUsableFace, PhotoSearch, SearchError, search_photo
from core.workflows.search.registry import (
    _context,
    _indexes,
    forget_member,
    index_for,
    index_stats,
    refresh_after_commit,
    register_engine,
    reset_indexes,
    store_embeddings_of,
)
from core.workflows.search.thresholds import (
    DUPLICATE_CEILING,
    DUPLICATE_FLOOR,
    DUPLICATE_MARGIN_LOGODDS,
    DUPLICATE_THRESHOLD_SETTING,
    _similarity_from_sqdist,
    _sqdist_for_similarity,
    duplicate_threshold,
)

__all__ = [
    "DUPLICATE_CEILING",
    "DUPLICATE_FLOOR",
    "DUPLICATE_MARGIN_LOGODDS",
    "DUPLICATE_THRESHOLD_SETTING",
    "EMBEDDING_DIM",
    "LOAD_CHUNK",
    "MAX_CANDIDATES",
    "PROJECT_CHUNK",
    "SYNC_INTERVAL_S",
    "VERIFY_INTERVAL_S",
    "Candidate",
    "NoUsableFace",
    "PhotoSearch",
    "SearchError",
    "SearchIndex",
    "_context",
    "_indexes",
    "_similarity_from_sqdist",
    "_sqdist_for_similarity",
    "candidates_of",
    "duplicate_threshold",
    "embedding_dim",
    "enrol_missing",
    "enrolled_photo",
    "flag_possible_duplicates",
    "forget_member",
    "index_for",
    "index_stats",
    "pretrained_model_id",
    "refresh_after_commit",
    "register_engine",
    "reset_indexes",
    "search_photo",
    "shows_the_member",
    "store_embeddings",
    "store_embeddings_of",
    "was_checked",
]
