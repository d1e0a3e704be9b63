"""1:N face search over every enrolled member, and the duplicate-account check run on each verification.

An enrolled member is a member whose current gallery photo has a pretrained embedding in the
`embeddings` table. The index keeps, in memory, one row per such photo: the engine's projection of
that embedding (the Siamese tower's output for the loaded model version), as a float32 matrix. A
search is one matrix-vector product and an argpartition, so it costs about the time to read the
matrix once (100,000 members x 128 floats = 51 MB); `python -m core.benchmarks.search` measures it.

Scores are on the model's own similarity scale: the tower output of two photos, their Euclidean
distance, and PairSimilarity's sigmoid(scale * (offset - distance)), exactly what
core.verification.heads.similarity_from_projections gives the engine for a pair.

    pretrained_model_id() -> str                  model_id of embedding rows written here
    SearchIndex(dim, offset, scale, ...)          the matrix; add/remove/search, thread-safe
    register_engine(engine)                       lets the index project stored embeddings with it
    index_for(bind, model_version) -> SearchIndex the process-wide index of a database + model
    flag_possible_duplicates(session, row, result) -> list[Candidate]
        the hook the one storing path (core.workflows.batches.store_result) calls for every result
    search_photo(session, engine, data, k) -> PhotoSearch   search by photo (API, pages)
    enrol_missing(session_factory, engine, store)  embed current gallery photos that have none yet

Keeping several processes in step (the dashboard and the API write the same database): each
process adds what it commits itself at once (after the commit), picks up rows other processes
added with two primary-key range queries (at most every SYNC_INTERVAL_S), and compares a
fingerprint of the enrolled set (count and sum of photo ids) every VERIFY_INTERVAL_S; a
difference (a replaced, reactivated or deleted photo) reloads the whole index. Candidates are
checked against the database before they are stored, so a stale row can never be reported.

Command line:
    python -m core.workflows.search stats                 enrolled rows per model version
    python -m core.workflows.search enrol-missing [--limit N]   embed current gallery photos without one
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import re
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from sqlalchemy import event, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from core import config
from core.errors import FaceVerifyError, ModelError
from core.storage.schema import GALLERY, Embedding, Member, MemberErasure, Photo, PossibleDuplicate
from core.verification.networks import DEFAULT_NETWORKS, networks_of
from core.verification.result import FLAGGED, POSSIBLE_DUPLICATE, Flag

log = logging.getLogger(__name__)

EMBEDDING_DIM = 128  # a dlib-only model's; embedding_dim(networks) in general
MAX_CANDIDATES = 5  # possible duplicates stored per result (the closest ones)
SYNC_INTERVAL_S = 0.5  # pick up other processes' new rows at most this often
VERIFY_INTERVAL_S = 5.0  # compare the enrolled-set fingerprint at most this often
PROJECT_CHUNK = 16384  # embeddings per tower call when (re)loading
LOAD_CHUNK = 20000  # rows per database fetch when (re)loading

# Setting to override the duplicate threshold (a similarity, 0..1), e.g. after a calibration on
# the customer's own members.
DUPLICATE_THRESHOLD_SETTING = "DUPLICATE_THRESHOLD"


class SearchError(FaceVerifyError):
    code = "search_error"


class NoUsableFace(SearchError):
    """The photo given for a search has no face the engine can use."""

    code = "no_face"


@lru_cache(maxsize=8)
def pretrained_model_id(networks: tuple[str, ...] = DEFAULT_NETWORKS) -> str:
    """model_id of the rows written here: the feature recipe and the pretrained networks' weights.

    core.verification.features names the recipe (a model version records it too); "/emb<dim>"
    marks these embedding rows apart from core.training.embedding_cache's training rows, and the
    hash of the networks' weights keeps another network's vectors out. A model on dlib alone keeps
    the id it always had; one on several networks stores their embeddings concatenated.
    """
    from core.verification.features import FEATURES_VERSION
    from core.verification.networks import network, network_class

    if networks == DEFAULT_NETWORKS:
        from core.verification.networks import dlib_resnet

        return f"{FEATURES_VERSION[:44]}/emb128#{dlib_resnet.dlib_model_sha256()[:8]}"
    weights = hashlib.sha256("".join(network(n).weights_sha256() for n in networks).encode()).hexdigest()
    recipe = "+".join(network_class(n).recipe.split("/")[0] for n in networks)
    return f"{recipe[:40]}/emb{embedding_dim(networks)}#{weights[:8]}"


def embedding_dim(networks: tuple[str, ...] = DEFAULT_NETWORKS) -> int:
    """Length of the stored embedding of a model on these networks (the tower's input)."""
    from core.verification.networks import network_class

    return sum(network_class(n).dim for n in networks)


# ----------------------------------------------------------------------------------------------
# Similarity on the model's scale


def _similarity_from_sqdist(sqdist: np.ndarray, offset: float, scale: float) -> np.ndarray:
    """PairSimilarity from squared distances (the same +1e-12 as the engine's formula)."""
    distance = np.sqrt(np.maximum(sqdist, 0.0) + 1e-12)
    return 1.0 / (1.0 + np.exp(-scale * (offset - distance)))


def _sqdist_for_similarity(similarity: float, offset: float, scale: float) -> float:
    """The squared distance at which the similarity equals `similarity` (inverse of the above)."""
    similarity = min(max(similarity, 1e-12), 1 - 1e-12)
    distance = offset - math.log(similarity / (1 - similarity)) / scale
    return max(distance, 0.0) ** 2


# How a possible-duplicate flag names its candidates, and the parser the pages use to list them in
# their own language: both here so they cannot drift apart.
_CANDIDATE_FORMAT = "member {member} (similarity {similarity:.3f})"
_CANDIDATE_RE = re.compile(r"member (\S+) \(similarity ([0-9.]+)\)")


def candidates_in_reason(reason: str | None) -> list[tuple[str, float]]:
    """[(member_id, similarity)] named in a possible-duplicate flag's reason."""
    return [(member, float(similarity)) for member, similarity in _CANDIDATE_RE.findall(reason or "")]


# In the projection's distance units (dlib-like: same person ~0.4, verification threshold ~0.6).
DUPLICATE_DISTANCE = 0.434


def duplicate_threshold(
    threshold: float,
    band: tuple[float, float],
    metadata: dict | None = None,
    *,
    offset: float | None = None,
    scale: float | None = None,
) -> float:
    """Similarity at or above which another member's face is reported as a possible duplicate.

    Stricter than the verification threshold on purpose. One verification compares two photos, so
    a false match rate p costs p per verification; one 1:N search compares with N members, so it
    raises a false alarm with probability about N * p. The high edge of the model's uncertain band
    is where training found automatic same-person decisions safe enough for one pair (a small
    error rate on the holdout): fine for one pair, far too loose for 100,000.
    The default is a fixed projection distance, DUPLICATE_DISTANCE (similarity 0.999 on the
    shipped heads), so it does not move when training redefines the band: on the 24 sample people
    (6,891 different-person pairs) no different-person pair reaches it while 64% of same-person
    pairs do; the band edge of the first model (distance 0.514) let 12 different-person pairs
    through, 11 of them two East Asian women, where the pretrained network is known to be
    weakest, which matters for a Korean member base. The model may carry its own calibrated value
    as metadata["duplicate_threshold"], and the DUPLICATE_THRESHOLD setting overrides both
    (calibrate it on the customer's own members once there are many).
    """
    override = config.setting(DUPLICATE_THRESHOLD_SETTING)
    if override:
        value = float(override)
        if not 0.0 < value < 1.0:
            raise ValueError(f"{DUPLICATE_THRESHOLD_SETTING} must be between 0 and 1, not {override}")
        return value
    if metadata and metadata.get("duplicate_threshold") is not None:
        return float(metadata["duplicate_threshold"])
    high = min(max(float(threshold), float(band[1])), 1 - 1e-9)
    if offset is None or scale is None or scale <= 0:
        return high + 0.5 * (1.0 - high)  # no scale known: halfway from the band edge to 1
    edge_distance = math.sqrt(_sqdist_for_similarity(high, offset, scale))
    distance = min(DUPLICATE_DISTANCE, edge_distance)  # never looser than the band's own edge
    return float(_similarity_from_sqdist(np.array([distance * distance]), offset, scale)[0])


# ----------------------------------------------------------------------------------------------
# The index


@dataclass(frozen=True)
class Candidate:
    member_id: str
    similarity: float
    photo_id: int | None = None
    photo_sha256: str | None = None


@dataclass
class _Snapshot:
    matrix: np.ndarray
    sqnorm: np.ndarray
    n: int
    members: list
    photo_ids: np.ndarray
    shas: list


class SearchIndex:
    """Enrolled members' projections in one float32 matrix. Thread-safe.

    Rows are appended (the matrix grows by doubling) and removed by making their norm infinite, so
    a search that is running while rows change sees either the old or the new state of a row, never
    a half-written one; reload() replaces everything at once.
    """

    def __init__(
        self,
        dim: int = EMBEDDING_DIM,
        offset: float = 0.6,
        scale: float = 12.0,
        *,
        threshold: float = 0.5,
        band: tuple[float, float] = (0.4, 0.6),
        dup_threshold: float | None = None,
        model_version: str = "",
        capacity: int = 1024,
    ):
        if scale <= 0:
            raise ValueError("the similarity scale must be positive (similarity falls with distance)")
        self.dim = dim
        self.offset, self.scale = float(offset), float(scale)
        self.threshold, self.band = float(threshold), (float(band[0]), float(band[1]))
        self.duplicate_threshold = (
            float(dup_threshold)
            if dup_threshold is not None
            else duplicate_threshold(threshold, band, offset=offset, scale=scale)
        )
        self.model_version = model_version
        # The stored rows it loads (index_for sets them for the model's networks).
        self.stored_model_id = pretrained_model_id()
        self.stored_dim = EMBEDDING_DIM
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()  # one thread syncs with the database at a time
        self._empty(capacity)
        # Database bookkeeping (see sync()).
        self.last_photo_id = 0
        self.last_embedding_id = 0
        self.last_erasure_id = 0
        self.last_sync = 0.0
        self.last_verify = 0.0
        self.loaded_from_db = False
        self.reloads = 0

    def _empty(self, capacity: int) -> None:
        self._matrix = np.zeros((max(16, capacity), self.dim), np.float32)
        self._sqnorm = np.full(len(self._matrix), np.inf, np.float32)
        self._photo_ids = np.zeros(len(self._matrix), np.int64)
        self._members: list[str | None] = []
        self._shas: list[str | None] = []
        self._n = 0
        self._rows_of_member: dict[str, list[int]] = {}
        self._row_of_photo: dict[int, int] = {}
        self._live = 0
        self._photo_id_sum = 0

    # -- changes ---------------------------------------------------------------------------

    def _grow(self, need: int) -> None:
        cap = len(self._matrix)
        if need <= cap:
            return
        new_cap = max(need, cap * 2)
        matrix = np.zeros((new_cap, self.dim), np.float32)
        matrix[: self._n] = self._matrix[: self._n]
        sqnorm = np.full(new_cap, np.inf, np.float32)
        sqnorm[: self._n] = self._sqnorm[: self._n]
        photo_ids = np.zeros(new_cap, np.int64)
        photo_ids[: self._n] = self._photo_ids[: self._n]
        # Swap whole arrays: a running search keeps its reference to the old ones.
        self._matrix, self._sqnorm, self._photo_ids = matrix, sqnorm, photo_ids

    def add_many(
        self,
        member_ids: Iterable[str],
        vectors: np.ndarray,
        photo_ids: Iterable[int | None] | None = None,
        shas: Iterable[str | None] | None = None,
        *,
        replace_member: bool = True,
    ) -> None:
        """Add rows. With replace_member, a member's earlier rows go (one current gallery photo)."""
        member_ids = list(member_ids)
        vectors = np.asarray(vectors, np.float32).reshape(len(member_ids), self.dim)
        photo_ids = list(photo_ids) if photo_ids is not None else [None] * len(member_ids)
        shas = list(shas) if shas is not None else [None] * len(member_ids)
        with self._lock:
            self._grow(self._n + len(member_ids))
            for member_id, vector, photo_id, sha in zip(member_ids, vectors, photo_ids, shas, strict=True):
                if photo_id is not None and photo_id in self._row_of_photo:
                    old = self._row_of_photo[photo_id]
                    if self._members[old] == member_id:
                        continue  # already here
                    self._remove_row(old)
                if replace_member:
                    for row in list(self._rows_of_member.get(member_id, ())):
                        # Keep a newer photo the database already gave us.
                        if photo_id is None or self._photo_ids[row] <= photo_id:
                            self._remove_row(row)
                row = self._n
                self._matrix[row] = vector
                self._photo_ids[row] = photo_id or 0
                self._members.append(member_id)
                self._shas.append(sha)
                self._rows_of_member.setdefault(member_id, []).append(row)
                if photo_id is not None:
                    self._row_of_photo[photo_id] = row
                    self._photo_id_sum += photo_id
                self._live += 1
                # The norm goes last: until it is finite the row cannot be found.
                self._sqnorm[row] = float(np.dot(vector, vector))
                self._n = row + 1

    def add(self, member_id: str, vector: np.ndarray, photo_id: int | None = None, sha: str | None = None):
        self.add_many([member_id], np.asarray(vector)[None, :], [photo_id], [sha])

    def _remove_row(self, row: int) -> None:
        if self._members[row] is None:
            return
        self._sqnorm[row] = np.inf
        member_id = self._members[row]
        self._members[row] = None
        rows = self._rows_of_member.get(member_id, [])
        if row in rows:
            rows.remove(row)
        if not rows:
            self._rows_of_member.pop(member_id, None)
        photo_id = int(self._photo_ids[row])
        if photo_id and self._row_of_photo.get(photo_id) == row:
            del self._row_of_photo[photo_id]
            self._photo_id_sum -= photo_id
        self._live -= 1

    def remove_member(self, member_id: str) -> None:
        with self._lock:
            for row in list(self._rows_of_member.get(member_id, ())):
                self._remove_row(row)

    def replace_all(self, member_ids: list[str], vectors: np.ndarray, photo_ids=None, shas=None) -> None:
        """Swap in a complete new content (a reload) in one step."""
        fresh = SearchIndex(
            self.dim,
            self.offset,
            self.scale,
            threshold=self.threshold,
            band=self.band,
            dup_threshold=self.duplicate_threshold,
            capacity=max(16, int(len(member_ids) * 1.25)),
        )
        fresh.add_many(member_ids, vectors, photo_ids, shas, replace_member=False)
        with self._lock:
            for name in (
                "_matrix",
                "_sqnorm",
                "_photo_ids",
                "_members",
                "_shas",
                "_n",
                "_rows_of_member",
                "_row_of_photo",
                "_live",
                "_photo_id_sum",
            ):
                setattr(self, name, getattr(fresh, name))

    # -- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._live

    @property
    def member_count(self) -> int:
        return len(self._rows_of_member)

    def fingerprint(self) -> tuple[int, int]:
        """(rows with a photo id, sum of those photo ids): compared with the database's."""
        with self._lock:
            return len(self._row_of_photo), self._photo_id_sum

    def _snapshot(self) -> _Snapshot:
        with self._lock:
            return _Snapshot(self._matrix, self._sqnorm, self._n, self._members, self._photo_ids, self._shas)

    def similarity_of(self, a: np.ndarray, b: np.ndarray) -> float:
        d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
        return float(_similarity_from_sqdist(np.array([d @ d]), self.offset, self.scale)[0])

    def search(
        self,
        vector: np.ndarray,
        k: int = 10,
        exclude_member: str | None = None,
        min_similarity: float | None = None,
    ) -> list[tuple[str, float]]:
        """The k most similar members (best first) as (member_id, similarity)."""
        return [
            (c.member_id, c.similarity)
            for c in self.search_candidates(vector, k, exclude_member, min_similarity)
        ]

    def search_candidates(
        self,
        vector: np.ndarray,
        k: int = 10,
        exclude_member: str | None = None,
        min_similarity: float | None = None,
    ) -> list[Candidate]:
        """Like search(), with the photo each similarity came from. One member appears once."""
        snap = self._snapshot()
        if snap.n == 0 or k <= 0:
            return []
        q = np.asarray(vector, np.float32).reshape(self.dim)
        # -||a - q||^2 + ||q||^2 = 2 a.q - ||a||^2: one matrix-vector product ranks every row.
        scores = snap.matrix[: snap.n] @ q
        scores *= 2.0
        scores -= snap.sqnorm[: snap.n]  # removed rows have an infinite norm: -inf here
        excluded = 0
        if exclude_member is not None:
            rows = self._rows_of_member.get(exclude_member)
            if rows:
                rows = [r for r in list(rows) if r < snap.n]
                scores[rows] = -np.inf
                excluded = len(rows)
        qq = float(q @ q)
        if min_similarity is not None:
            # Similarity falls with distance, so a minimum similarity is a minimum score.
            floor = qq - _sqdist_for_similarity(min_similarity, self.offset, self.scale)
        else:
            floor = -np.inf
        # A member may have a few rows (a replaced photo not yet dropped): take some spare.
        want = min(snap.n, k * 2 + excluded + 8)
        if want < snap.n:
            top = np.argpartition(-scores, want - 1)[:want]
        else:
            top = np.arange(snap.n)
        top = top[np.argsort(-scores[top], kind="stable")]
        out: list[Candidate] = []
        seen: set[str] = set()
        for row in top:
            score = float(scores[row])
            if not np.isfinite(score) or score < floor:
                break
            member_id = snap.members[row] if row < len(snap.members) else None
            if member_id is None or member_id in seen or member_id == exclude_member:
                continue
            seen.add(member_id)
            similarity = float(_similarity_from_sqdist(np.array([qq - score]), self.offset, self.scale)[0])
            if min_similarity is not None and similarity < min_similarity:
                continue  # rounding at the edge
            photo_id = int(snap.photo_ids[row]) or None
            out.append(Candidate(member_id, similarity, photo_id, snap.shas[row]))
            if len(out) >= k:
                break
        return out

    # -- database ----------------------------------------------------------------------------

    def sync(self, bind: Engine | Connection, projector, *, force_verify: bool = False) -> None:
        """Bring the index up to date with the database (rate-limited; see the module doc).

        projector(embeddings N x 128) -> projections N x dim, for rows this process has not seen.
        Uses its own connection, never the caller's transaction.
        """
        now = time.monotonic()
        if self.loaded_from_db:
            # Not rate-limited: a member erased in any process is never found again (core.privacy).
            self._apply_erasures(bind)
        if not force_verify and self.loaded_from_db and now - self.last_sync < SYNC_INTERVAL_S:
            return
        if not self._sync_lock.acquire(blocking=not self.loaded_from_db):
            return  # another thread is syncing; the current content is good enough meanwhile
        try:
            with _connect(bind) as conn:
                if not self.loaded_from_db:
                    self._reload(conn, projector)
                else:
                    self._incremental(conn, projector)
                    if force_verify or now - self.last_verify >= VERIFY_INTERVAL_S:
                        if _db_fingerprint(conn, self.stored_model_id, self.stored_dim) != self.fingerprint():
                            self._reload(conn, projector)
                        self.last_verify = time.monotonic()
            self.last_sync = time.monotonic()
        finally:
            self._sync_lock.release()

    def _apply_erasures(self, bind) -> None:
        """Drop the rows of members erased since the last look: one primary-key query per call."""
        with _connect(bind) as conn:
            latest = conn.scalar(select(func.max(MemberErasure.id))) or 0
            if latest <= self.last_erasure_id:
                return
            erased = conn.scalars(
                select(MemberErasure.member_id).where(
                    MemberErasure.id > self.last_erasure_id, MemberErasure.id <= latest
                )
            ).all()
        for member_id in set(erased):
            self.remove_member(member_id)
        self.last_erasure_id = max(self.last_erasure_id, latest)

    def _reload(self, conn: Connection, projector) -> None:
        started = time.perf_counter()
        model_id, dim = self.stored_model_id, self.stored_dim
        # Read first: the rows loaded below already lack every member erased up to here.
        last_erasure = conn.scalar(select(func.max(MemberErasure.id))) or 0
        max_photo = conn.scalar(select(func.max(Photo.id))) or 0
        max_embedding = conn.scalar(select(func.max(Embedding.id))) or 0
        members: list[str] = []
        photo_ids: list[int] = []
        shas: list[str] = []
        chunks: list[np.ndarray] = []
        last = 0
        while True:  # keyset pages: bounded memory per fetch, no OFFSET scans
            rows = conn.execute(
                _enrolled_query(model_id, dim).where(Photo.id > last).order_by(Photo.id).limit(LOAD_CHUNK)
            ).all()
            if not rows:
                break
            vectors = np.empty((len(rows), dim), np.float32)
            for i, (photo_id, member_id, sha, _eid, vector) in enumerate(rows):
                vectors[i] = np.frombuffer(vector, "<f4", dim)
                members.append(member_id)
                photo_ids.append(photo_id)
                shas.append(sha)
            chunks.append(_project(projector, vectors))
            last = rows[-1][0]
            if len(rows) < LOAD_CHUNK:
                break
        matrix = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
        self.replace_all(members, matrix, photo_ids, shas)
        self.last_photo_id, self.last_embedding_id = max_photo, max_embedding
        self.last_erasure_id = max(self.last_erasure_id, last_erasure)
        self.loaded_from_db = True
        self.last_verify = time.monotonic()
        self.reloads += 1
        log.info(
            "search index %s: %d rows loaded in %.0f ms",
            self.model_version,
            len(members),
            (time.perf_counter() - started) * 1000,
        )

    def _incremental(self, conn: Connection, projector) -> None:
        model_id, dim = self.stored_model_id, self.stored_dim
        max_photo = conn.scalar(select(func.max(Photo.id))) or 0
        max_embedding = conn.scalar(select(func.max(Embedding.id))) or 0
        if max_photo == self.last_photo_id and max_embedding == self.last_embedding_id:
            return
        rows = []
        if max_photo > self.last_photo_id:
            rows += conn.execute(
                _enrolled_query(model_id, dim).where(Photo.id > self.last_photo_id, Photo.id <= max_photo)
            ).all()
        if max_embedding > self.last_embedding_id:
            rows += conn.execute(
                _enrolled_query(model_id, dim).where(
                    Embedding.id > self.last_embedding_id, Embedding.id <= max_embedding
                )
            ).all()
        unique = {row[0]: row for row in rows}
        if unique:
            ordered = [unique[k] for k in sorted(unique)]
            vectors = np.stack([np.frombuffer(r[4], "<f4", dim) for r in ordered])
            self.add_many(
                [r[1] for r in ordered],
                _project(projector, vectors),
                [r[0] for r in ordered],
                [r[2] for r in ordered],
            )
        self.last_photo_id, self.last_embedding_id = max_photo, max_embedding


def _connect(bind):
    if isinstance(bind, Connection):
        return _NoClose(bind)
    return bind.connect()


class _NoClose:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        return self.conn

    def __exit__(self, *exc):
        return False


def _enrolled_query(model_id: str, dim: int = EMBEDDING_DIM):
    return (
        select(Photo.id, Photo.member_id, Photo.sha256, Embedding.id, Embedding.vector)
        .join(Embedding, Embedding.photo_sha256 == Photo.sha256)
        .where(
            Photo.kind == GALLERY,
            Photo.current.is_(True),
            Embedding.model_id == model_id,
            Embedding.dim == dim,
        )
    )


def _db_fingerprint(
    conn: Connection, model_id: str | None = None, dim: int = EMBEDDING_DIM
) -> tuple[int, int]:
    model_id = model_id or pretrained_model_id()
    sub = _enrolled_query(model_id, dim).with_only_columns(Photo.id).subquery()
    count, total = conn.execute(select(func.count(), func.coalesce(func.sum(sub.c.id), 0))).one()
    return int(count or 0), int(total or 0)


def _project(projector, embeddings: np.ndarray) -> np.ndarray:
    out = [
        np.asarray(projector(embeddings[i : i + PROJECT_CHUNK]), np.float32)
        for i in range(0, len(embeddings), PROJECT_CHUNK)
    ]
    return np.concatenate(out) if out else np.zeros((0, EMBEDDING_DIM), np.float32)


# ----------------------------------------------------------------------------------------------
# Model context: the tower and the similarity scale of a model version


@dataclass
class _ModelContext:
    version: str
    offset: float
    scale: float
    threshold: float
    band: tuple[float, float]
    metadata: dict
    tower: object = field(repr=False, default=None)
    networks: tuple[str, ...] = DEFAULT_NETWORKS

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        return np.asarray(self.tower(np.asarray(embeddings, np.float32), training=False))


_contexts: dict[str, _ModelContext | None] = {}
_contexts_lock = threading.Lock()


def _context_from_model(model) -> _ModelContext:
    offset, scale = model.similarity_params()
    return _ModelContext(
        model.version,
        offset,
        scale,
        model.threshold,
        model.uncertain_band,
        dict(model.metadata),
        model.tower,
        networks_of(model.metadata),
    )


def register_engine(engine) -> None:
    """Use this loaded engine's heads for its model version (saves loading them again)."""
    context = _context_from_model(engine.model)
    with _contexts_lock:
        _contexts[context.version] = context


def _context(version: str) -> _ModelContext | None:
    with _contexts_lock:
        if version in _contexts:
            return _contexts[version]
    try:
        from core.verification.heads import load_version

        context = _context_from_model(load_version(version))
    except ModelError as exc:
        # Only a model that is not on disk (a test's untrained heads) gets here: a real engine
        # cannot have produced the result without its files.
        log.warning("duplicate search skipped for model %s: %s", version, exc)
        context = None
    with _contexts_lock:
        _contexts.setdefault(version, context)
        return _contexts[version]


# ----------------------------------------------------------------------------------------------
# Process-wide indexes, one per database and model version


_indexes: dict[tuple[str, str], SearchIndex] = {}
_indexes_lock = threading.Lock()


def _bind_key(bind) -> str:
    engine = bind.engine if isinstance(bind, Connection) else bind
    return engine.url.render_as_string(hide_password=False)


def index_for(bind: Engine | Connection, model_version: str, *, sync: bool = True) -> SearchIndex:
    """The process-wide index of this database and model version, synced with the database."""
    context = _context(model_version)
    if context is None:
        raise ModelError(f"Model version {model_version!r} is not loaded here and not on disk.")
    key = (_bind_key(bind), model_version)
    with _indexes_lock:
        index = _indexes.get(key)
        if index is None:
            index = _indexes[key] = SearchIndex(
                embedding_dim(context.networks),
                context.offset,
                context.scale,
                threshold=context.threshold,
                band=context.band,
                dup_threshold=duplicate_threshold(
                    context.threshold,
                    context.band,
                    context.metadata,
                    offset=context.offset,
                    scale=context.scale,
                ),
                model_version=model_version,
            )
            # Which stored rows the index reads: the embeddings of this model's networks.
            index.stored_model_id = pretrained_model_id(context.networks)
            index.stored_dim = embedding_dim(context.networks)
    if sync:
        index.sync(bind, context.project)
    return index


def forget_member(bind: Engine | Connection, member_id: str) -> None:
    """Drop a member from this process's indexes of this database at once (other processes drop
    them before their next search, from the member_erasures table)."""
    key = _bind_key(bind)
    with _indexes_lock:
        targets = [index for (url, _version), index in _indexes.items() if url == key]
    for index in targets:
        index.remove_member(member_id)


def reset_indexes() -> None:
    """Forget every in-memory index (tests that empty a database between cases)."""
    with _indexes_lock:
        _indexes.clear()


# ----------------------------------------------------------------------------------------------
# Embeddings table


def _vector_bytes(vector: np.ndarray, dim: int = EMBEDDING_DIM) -> bytes:
    return np.asarray(vector, "<f4").reshape(dim).tobytes()


def store_embeddings(
    session: Session, analyses: Iterable, networks: tuple[str, ...] = DEFAULT_NETWORKS
) -> int:
    """Insert the pretrained embedding of each analysed photo that has none yet (caller commits).

    Written with the database's insert-or-ignore, so two processes storing the same photo at the
    same moment cannot make the caller's transaction fail.
    """
    dim = embedding_dim(networks)
    vectors: dict[str, np.ndarray] = {}
    for analysis in analyses:
        emb = getattr(analysis, "embedding", None)
        sha = getattr(analysis, "sha256", "") or ""
        if emb is None or np.asarray(emb).size != dim or len(sha) != 64:
            continue
        vectors.setdefault(sha, emb)
    if not vectors:
        return 0
    model_id = pretrained_model_id(networks)
    have = set(
        session.scalars(
            select(Embedding.photo_sha256).where(
                Embedding.photo_sha256.in_(list(vectors)), Embedding.model_id == model_id
            )
        )
    )
    rows = [
        {
            "photo_sha256": sha,
            "model_id": model_id,
            "dim": dim,
            "vector": _vector_bytes(vec, dim),
            "created_at": _utcnow(),
        }
        for sha, vec in vectors.items()
        if sha not in have
    ]
    if rows:
        session.execute(_insert_ignore(session), rows)
    return len(rows)


def _utcnow():
    from core.storage.schema import utcnow

    return utcnow()


def _insert_ignore(session: Session):
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert

        return insert(Embedding).on_conflict_do_nothing()
    if dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert

        stmt = insert(Embedding)
        return stmt.on_duplicate_key_update(model_id=stmt.inserted.model_id)
    from sqlalchemy.dialects.postgresql import insert

    return insert(Embedding).on_conflict_do_nothing()


# ----------------------------------------------------------------------------------------------
# The hook on every stored result

# Rows already checked, so a caller that calls the hook after store_result (which may call it
# itself) never checks twice.
_checked_rows: weakref.WeakSet = weakref.WeakSet()
_PENDING_KEY = "faceverify.search.pending"


def was_checked(row) -> bool:
    return row in _checked_rows


def flag_possible_duplicates(session: Session, row, result) -> list[Candidate]:
    """Search the verification photo against every other enrolled member; flag near matches.

    Called by the storing path for every result, after the row is added to the session and before
    anything reads the result's status (the caller commits). It:
      - stores the pretrained embeddings of both photos (the index is built from them),
      - searches the verification photo's projection, excluding the member's own rows,
      - for candidates at or above the duplicate threshold: adds a POSSIBLE_DUPLICATE flag (naming
        them) to the result and the row, sets both to flagged (the review queue), and adds one
        possible_duplicates row per candidate (at most MAX_CANDIDATES),
      - after the commit, adds the member's gallery photo to this process's index.
    Results without projections (a stand-in engine, no face) are stored unchanged.
    """
    if row in _checked_rows:
        return []
    _checked_rows.add(row)
    gallery, verification = result.gallery, result.verification
    if getattr(verification, "projection", None) is None and getattr(gallery, "projection", None) is None:
        return []
    context = _context(result.model_version)
    store_embeddings(session, [gallery, verification], context.networks if context else DEFAULT_NETWORKS)
    if context is None:
        return []
    bind = session.get_bind()
    index = index_for(bind, result.model_version)
    member_id = row.member_id

    candidates: list[Candidate] = []
    if verification.projection is not None:
        found = index.search_candidates(
            verification.projection,
            MAX_CANDIDATES,
            exclude_member=member_id,
            min_similarity=index.duplicate_threshold,
        )
        candidates = _still_enrolled(session, found)
    if candidates:
        names = "; ".join(
            _CANDIDATE_FORMAT.format(member=c.member_id, similarity=c.similarity) for c in candidates
        )
        flag = Flag(
            POSSIBLE_DUPLICATE,
            f"{names} - at or above the duplicate threshold {index.duplicate_threshold:.3f}",
            "verification",
        )
        result.flags.append(flag)
        result.status = FLAGGED
        row.flags = list(row.flags or []) + [{"code": flag.code, "reason": flag.reason, "photo": flag.photo}]
        row.status = FLAGGED
        row.possible_duplicate = True
        for c in candidates:
            row.duplicates.append(PossibleDuplicate(candidate_member_id=c.member_id, similarity=c.similarity))

    if member_id is not None and gallery.projection is not None and row.gallery_photo_id is not None:
        session.info.setdefault(_PENDING_KEY, []).append(
            (index, member_id, int(row.gallery_photo_id), gallery.sha256, np.array(gallery.projection))
        )
    return candidates


def _still_enrolled(session: Session, found: list[Candidate]) -> list[Candidate]:
    """Keep candidates whose photo is still a current gallery photo of that member (not stale)."""
    if not found:
        return []
    ids = [c.photo_id for c in found if c.photo_id]
    current = set()
    if ids:
        current = set(
            session.execute(
                select(Photo.id, Photo.member_id).where(
                    Photo.id.in_(ids), Photo.current.is_(True), Photo.kind == GALLERY
                )
            ).all()
        )
    no_photo = [c.member_id for c in found if not c.photo_id]
    existing = set(session.scalars(select(Member.id).where(Member.id.in_(no_photo)))) if no_photo else set()
    return [
        c
        for c in found
        if (c.photo_id and (c.photo_id, c.member_id) in current)
        or (not c.photo_id and c.member_id in existing)
    ]


@event.listens_for(Session, "after_commit")
def _apply_pending(session: Session) -> None:
    pending = session.info.pop(_PENDING_KEY, None)
    for index, member_id, photo_id, sha, projection in pending or ():
        index.add(member_id, projection, photo_id, sha)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)


# ----------------------------------------------------------------------------------------------
# Search by photo


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


# ----------------------------------------------------------------------------------------------
# Enrolling members that were imported but never analysed


def enrol_missing(session_factory, engine, store=None, *, limit: int | None = None, chunk: int = 32) -> int:
    """Compute and store embeddings for current gallery photos that have none. Returns how many.

    Bounded: at most `limit` photos (all when None), `chunk` photos per engine call.
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
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.workflows.search", description="1:N face search index."
    )
    parser.add_argument("--url", help="SQLAlchemy URL (default: DATABASE_URL setting)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("stats", help="enrolled photos with an embedding, and the duplicate threshold")
    enrol = sub.add_parser("enrol-missing", help="embed current gallery photos that have no embedding yet")
    enrol.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)

    from core.storage.db import init_db, session_factory

    db = init_db(args.url)
    factory = session_factory(db)
    if args.cmd == "stats":
        with db.connect() as conn:
            count, _ = _db_fingerprint(conn)
        print(f"enrolled gallery photos with an embedding ({pretrained_model_id()}): {count}")
        try:
            from core.verification.heads import load_version

            model = load_version()
            ctx = _context_from_model(model)
            print(
                f"model {model.version}: threshold {ctx.threshold:.3f}, band {ctx.band[0]:.3f}-{ctx.band[1]:.3f}, "
                f"duplicate threshold "
                f"{duplicate_threshold(ctx.threshold, ctx.band, ctx.metadata, offset=ctx.offset, scale=ctx.scale):.4f}"
            )
        except ModelError as exc:
            print(f"no model: {exc}")
        return 0
    from core.verification.engine import Engine

    engine = Engine.load()
    n = enrol_missing(factory, engine, limit=args.limit)
    print(f"stored {n} new embedding(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
