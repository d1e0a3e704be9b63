"""The in-memory index: enrolled members' projections in one float16 matrix, kept in step with
the database.

An enrolled photo is a member's current gallery photo (the profile's main photo, the member's
"main" row) or another photo of its profile that shows the member (core.workflows.search.enrolled
says which, for the index, its consistency check and the duplicate check alike). A member has one
row per such photo.

A search is one matrix-vector product (in float32, a block of rows at a time) and an
argpartition, so it costs about the time to read the matrix once (100,000 members x 256 halves =
51 MB); `faceverify bench search` measures it. Half precision keeps a process's index at half the
memory (200,000 rows: 102 MB instead of 205 MB); each row's squared norm is taken from the stored
half vector, so the distances ranked are exact for what is stored.

Keeping several processes in step (the dashboard and the API write the same database): each
process adds what it commits itself at once (after the commit), picks up rows other processes
added with two primary-key range queries (at most every SYNC_INTERVAL_S), and compares a
fingerprint of the enrolled set (count and sum of photo ids) every VERIFY_INTERVAL_S; a
difference (a replaced, reactivated or deleted photo) reloads the whole index. That comparison
scans every current gallery photo, so it runs on a background thread, never inside a request:
a request that finds it due starts it and answers from the content already loaded; a reload
swaps the new content in at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from core import process_memory
from core.storage.schema import Embedding, MemberErasure, Photo
from core.workflows.search.embeddings import EMBEDDING_DIM, pretrained_model_id
from core.workflows.search.enrolled import _db_fingerprint, _enrolled_query
from core.workflows.search.thresholds import (
    _similarity_from_sqdist,
    _sqdist_for_similarity,
    duplicate_threshold,
)

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 0.5  # pick up other processes' new rows at most this often
VERIFY_INTERVAL_S = 5.0  # compare the enrolled-set fingerprint at most this often
PROJECT_CHUNK = 5000  # embeddings per tower call (TensorFlow keeps memory for its largest call)
LOAD_CHUNK = 5000  # rows per database fetch when (re)loading (held whole: about 3 kB a row)
STORED = np.float16  # the matrix's precision (products are computed in float32)
SCORE_BLOCK = 8192  # rows converted to float32 at a time in a search


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
    """Enrolled members' projections in one float16 matrix. Thread-safe.

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
        self.checks = 0  # consistency checks done (each off the request path unless forced)
        self._checker: threading.Thread | None = None

    def _empty(self, capacity: int) -> None:
        self._matrix = np.zeros((max(16, capacity), self.dim), STORED)
        self._sqnorm = np.full(len(self._matrix), np.inf, np.float32)
        self._photo_ids = np.zeros(len(self._matrix), np.int64)
        self._members: list[str | None] = []
        self._shas: list[str | None] = []
        self._mains: list[bool] = []  # the member's current gallery photo (not another profile photo)
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
        matrix = np.zeros((new_cap, self.dim), STORED)
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
        mains: Iterable[bool] | None = None,
    ) -> None:
        """Add rows. mains: whether each is the member's current gallery photo (default: all are);
        with replace_member, a main row replaces the member's earlier main row (one current gallery
        photo), while the member's other profile photos stay."""
        member_ids = list(member_ids)
        vectors = np.asarray(vectors)
        if vectors.dtype != STORED:  # rows already in half precision go in as they are (no copy)
            vectors = vectors.astype(np.float32, copy=False)
        vectors = vectors.reshape(len(member_ids), self.dim)
        photo_ids = list(photo_ids) if photo_ids is not None else [None] * len(member_ids)
        shas = list(shas) if shas is not None else [None] * len(member_ids)
        mains = [bool(m) for m in mains] if mains is not None else [True] * len(member_ids)
        with self._lock:
            self._grow(self._n + len(member_ids))
            rows_in = zip(member_ids, vectors, photo_ids, shas, mains, strict=True)
            for member_id, vector, photo_id, sha, main in rows_in:
                if photo_id is not None and photo_id in self._row_of_photo:
                    old = self._row_of_photo[photo_id]
                    if self._members[old] == member_id:
                        self._mains[old] = main  # already here (it may have become the main one)
                        continue
                    self._remove_row(old)
                if replace_member and main:
                    for row in list(self._rows_of_member.get(member_id, ())):
                        # Keep a newer photo the database already gave us, and the other photos.
                        if self._mains[row] and (photo_id is None or self._photo_ids[row] <= photo_id):
                            self._remove_row(row)
                row = self._n
                self._matrix[row] = vector  # rounded to half precision
                self._photo_ids[row] = photo_id or 0
                self._members.append(member_id)
                self._shas.append(sha)
                self._mains.append(main)
                self._rows_of_member.setdefault(member_id, []).append(row)
                if photo_id is not None:
                    self._row_of_photo[photo_id] = row
                    self._photo_id_sum += photo_id
                self._live += 1
                # The norm goes last: until it is finite the row cannot be found.
                stored = self._matrix[row].astype(np.float32)
                self._sqnorm[row] = float(np.dot(stored, stored))
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

    def remove_photos(self, photo_ids: Iterable[int]) -> None:
        with self._lock:
            for photo_id in photo_ids:
                row = self._row_of_photo.get(int(photo_id))
                if row is not None:
                    self._remove_row(row)

    def photos_of(self, member_id: str) -> dict[int, bool]:
        """The member's rows here: {photo id: whether it is the main one}."""
        with self._lock:
            return {
                int(self._photo_ids[row]): self._mains[row]
                for row in self._rows_of_member.get(member_id, ())
                if self._photo_ids[row]
            }

    def replace_all(
        self, member_ids: list[str], vectors: np.ndarray, photo_ids=None, shas=None, mains=None
    ) -> None:
        """Swap in a complete new content (a reload) in one step. vectors: one array, or a list of
        row blocks in order, emptied as they are copied in (never a joined copy of them all)."""
        blocks = vectors if isinstance(vectors, list) else [vectors]
        fresh = SearchIndex(
            self.dim,
            self.offset,
            self.scale,
            threshold=self.threshold,
            band=self.band,
            dup_threshold=self.duplicate_threshold,
            capacity=max(16, int(len(member_ids) * 1.25)),
        )
        start = 0
        while blocks:
            block = blocks.pop(0)
            stop = start + len(block)
            fresh.add_many(
                member_ids[start:stop],
                block,
                None if photo_ids is None else photo_ids[start:stop],
                None if shas is None else shas[start:stop],
                replace_member=False,
                mains=None if mains is None else mains[start:stop],
            )
            start = stop
        with self._lock:
            for name in (
                "_matrix",
                "_sqnorm",
                "_photo_ids",
                "_members",
                "_shas",
                "_mains",
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
        scores = _scores(snap.matrix, snap.n, q)
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
            if not force_verify and now - self.last_verify >= VERIFY_INTERVAL_S:
                self._check_in_background(bind, projector)
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
                    if force_verify:
                        self._check(conn, projector)
            self.last_sync = time.monotonic()
        finally:
            self._sync_lock.release()

    def _check(self, conn: Connection, projector) -> None:
        """Compare the enrolled-set fingerprint with the database's; reload on a difference.
        The caller holds _sync_lock, so no incremental sync moves the index meanwhile."""
        if _db_fingerprint(conn, self.stored_model_id, self.stored_dim) != self.fingerprint():
            self._reload(conn, projector)
        self.last_verify = time.monotonic()
        self.checks += 1

    def _check_in_background(self, bind, projector) -> None:
        """The consistency check (a scan of the enrolled photos) on a thread of its own: a request
        that finds it due starts it and goes on with the current content; one runs at a time."""
        with self._lock:
            if self._checker is not None and self._checker.is_alive():
                return
            self.last_verify = time.monotonic()  # not due again until this one is done and a while
            engine = bind.engine if isinstance(bind, Connection) else bind  # never the caller's connection
            self._checker = threading.Thread(
                target=self._background_check,
                args=(engine, projector),
                name="search-index-check",
                daemon=True,
            )
            self._checker.start()

    def _background_check(self, engine: Engine, projector) -> None:
        try:
            with self._sync_lock, engine.connect() as conn:
                self._incremental(conn, projector)
                self._check(conn, projector)
        except Exception:  # the next due check tries again; searches go on with what is loaded
            log.exception("search index %s: the consistency check failed", self.model_version)

    def wait_for_check(self, timeout: float | None = None) -> None:
        """Until a running background check has finished (for tests and benchmarks)."""
        checker = self._checker
        if checker is not None:
            checker.join(timeout)

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
        mains: list[bool] = []
        chunks: list[np.ndarray] = []
        last = 0
        while True:  # keyset pages: bounded memory per fetch, no OFFSET scans
            rows = conn.execute(
                _enrolled_query(model_id, dim).where(Photo.id > last).order_by(Photo.id).limit(LOAD_CHUNK)
            ).all()
            if not rows:
                break
            vectors = np.empty((len(rows), dim), np.float32)
            for i, (photo_id, member_id, sha, _eid, vector, current) in enumerate(rows):
                vectors[i] = np.frombuffer(vector, "<f4", dim)
                members.append(member_id)
                photo_ids.append(photo_id)
                shas.append(sha)
                mains.append(bool(current))
            chunks.append(_project(projector, vectors).astype(STORED))
            last = rows[-1][0]
            if len(rows) < LOAD_CHUNK:
                break
        self.replace_all(members, chunks, photo_ids, shas, mains)  # takes the blocks one by one
        process_memory.trim()  # the fetched rows' memory back to the system, not kept resident
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
                mains=[bool(r[5]) for r in ordered],
            )
        self.last_photo_id, self.last_embedding_id = max_photo, max_embedding

    def sync_member(self, bind: Engine | Connection, member_id: str, projector) -> None:
        """Bring one member's rows in step with the database at once: its enrolled photos in, the
        photos no longer enrolled (removed, rejected, no longer the main one) out. Called after a
        commit that changed which of the member's profile photos show the member; other processes
        see it at their next consistency check (or sooner, for a new photo)."""
        with _connect(bind) as conn:
            rows = conn.execute(
                _enrolled_query(self.stored_model_id, self.stored_dim).where(Photo.member_id == member_id)
            ).all()
        wanted = {r[0]: r for r in rows}
        with self._lock:
            have = self.photos_of(member_id)
            self.remove_photos(p for p in have if p not in wanted)
            for photo_id in have:
                if photo_id in wanted:
                    self._mains[self._row_of_photo[photo_id]] = bool(wanted[photo_id][5])
        new = [wanted[p] for p in sorted(wanted) if p not in have]
        if new:
            vectors = np.stack([np.frombuffer(r[4], "<f4", self.stored_dim) for r in new])
            self.add_many(
                [r[1] for r in new],
                _project(projector, vectors),
                [r[0] for r in new],
                [r[2] for r in new],
                replace_member=False,
                mains=[bool(r[5]) for r in new],
            )


def _scores(matrix: np.ndarray, n: int, q: np.ndarray) -> np.ndarray:
    """matrix[:n] @ q in float32, converting a block of half-precision rows at a time (numpy has
    no fast half-precision product; a block stays in the cache)."""
    scores = np.empty(n, np.float32)
    block = np.empty((min(SCORE_BLOCK, n), matrix.shape[1]), np.float32)
    for start in range(0, n, SCORE_BLOCK):
        stop = min(start + SCORE_BLOCK, n)
        rows = block[: stop - start]
        rows[...] = matrix[start:stop]
        np.dot(rows, q, out=scores[start:stop])
    return scores


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


def _project(projector, embeddings: np.ndarray) -> np.ndarray:
    out = [
        np.asarray(projector(embeddings[i : i + PROJECT_CHUNK]), np.float32)
        for i in range(0, len(embeddings), PROJECT_CHUNK)
    ]
    return np.concatenate(out) if out else np.zeros((0, EMBEDDING_DIM), np.float32)
