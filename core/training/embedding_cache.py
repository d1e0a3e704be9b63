"""The pretrained features of photos, cached in the database so a retrain recomputes nothing it knows.

A row of the `embeddings` table per (photo content hash, recipe): the 128-d embedding and the
gender log-odds as 129 little-endian float32 (dim 129). The recipe (model_id) names the feature
path (core.verification.features.FEATURES_VERSION), the pretrained weights' hashes, and for an augmented view
the view ("...:blur.s7.0"), so a changed network or view never reads another's numbers. A photo
in which no face was found is remembered too (dim 0, the reason as text), so it is not decoded
and searched again on every retrain.

The 1:N search keeps its own 128-d rows in the same table under another model_id (core.workflows.search).

    PhotoRef(sha256, name, load)             a photo to featurise: its hash and how to read it
    model_id(view="") -> str                 the recipe key of the base features or a view
    lookup(session, shas, model_id) -> {sha: vector | reason}
    store(session, rows, model_id) -> int    insert-or-ignore, in bulk (the caller commits)
    featurise(refs, views, session_factory=None, progress=None, should_stop=None) -> Features
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.storage.schema import Embedding

VECTOR_DIM = 129  # 128-d embedding, then the gender log-odds
LOOKUP_CHUNK = 500  # hashes per IN (...) query
COMPUTE_CHUNK = 32  # photos located, then embedded, per step (progress and cancel between)
MAX_ID = 64  # the model_id column's width


@dataclass(frozen=True)
class PhotoRef:
    sha256: str
    name: str  # what messages call it (file name, or "result 12, verification photo")
    load: Callable[[], bytes] = field(compare=False, repr=False)


@dataclass
class Features:
    """Per view ("" is the photo itself): sha -> 129 floats; and the photos without a usable face.

    extra: the other identity networks' embeddings of the photos themselves, by network name.
    """

    vectors: dict[str, dict[str, np.ndarray]]
    failed: dict[str, str]  # sha -> reason
    extra: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    computed: int = 0  # photos that went through the networks in this call
    cached: int = 0  # photos whose every view came from the cache
    seconds: float = 0.0


@lru_cache(maxsize=1)
def base_model_id() -> str:
    from core.verification import features
    from core.verification.networks import dlib_resnet, gender_cydral

    weights = hashlib.sha256(
        (dlib_resnet.dlib_model_sha256() + gender_cydral.gender_weights_sha256()).encode()
    ).hexdigest()
    return f"{features.FEATURES_VERSION}#{weights[:8]}"


def network_model_id(name: str) -> str:
    """The recipe key of another identity network's embedding rows (the photo itself, no views)."""
    from core.verification.networks import network

    net = network(name)
    return f"{net.recipe[: MAX_ID - 18]}#{net.weights_sha256()[:8]}"


def model_id(view: str = "") -> str:
    base = base_model_id()
    key = f"{base}:{view}" if view else base
    if len(key) <= MAX_ID:
        return key
    return f"{base[: MAX_ID - 18]}#{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def lookup(
    session: Session, shas: Iterable[str], model_id: str, dim: int = VECTOR_DIM
) -> dict[str, np.ndarray | str]:
    """Cached rows of these photos: a vector of dim floats, or the reason no face was found."""
    shas = sorted(set(shas))
    out: dict[str, np.ndarray | str] = {}
    for first in range(0, len(shas), LOOKUP_CHUNK):
        chunk = shas[first : first + LOOKUP_CHUNK]
        rows = session.execute(
            select(Embedding.photo_sha256, Embedding.dim, Embedding.vector).where(
                Embedding.model_id == model_id, Embedding.photo_sha256.in_(chunk)
            )
        )
        for sha, stored, vector in rows:
            if stored == dim and len(vector) == dim * 4:
                out[sha] = np.frombuffer(vector, "<f4").astype(np.float32)
            elif stored == 0:
                out[sha] = bytes(vector).decode("utf-8", "replace") or "No usable face."
    return out


def store(session: Session, rows: dict[str, np.ndarray | str], model_id: str, dim: int = VECTOR_DIM) -> int:
    """Insert rows that are not there yet (vector of dim floats, or a no-face reason). The caller commits."""
    from core.storage.schema import utcnow

    if not rows:
        return 0
    records = []
    for sha, value in sorted(rows.items()):
        if isinstance(value, str):
            stored, blob = 0, value.encode("utf-8")[:1000]
        else:
            stored, blob = dim, np.asarray(value, "<f4").reshape(dim).tobytes()
        records.append(
            {"photo_sha256": sha, "model_id": model_id, "dim": stored, "vector": blob, "created_at": utcnow()}
        )
    session.execute(_insert_ignore(session), records)
    return len(records)


def _insert_ignore(session: Session):
    dialect = session.get_bind().dialect.name
    if dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert

        stmt = insert(Embedding)
        return stmt.on_duplicate_key_update(model_id=stmt.inserted.model_id)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(Embedding).on_conflict_do_nothing()


class Stopped(Exception):
    """should_stop() said so between two chunks."""


def featurise(
    refs: list[PhotoRef],
    views: Iterable[str] = (),
    session_factory=None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    networks: tuple[str, ...] = ("dlib",),
) -> Features:
    """Base features of every photo plus the named augmented views, from the cache when there.

    With networks beyond dlib, each photo's embedding by each of them too (Features.extra), cached
    under the network's own key; augmented views are dlib's only.

    Photos missing anything are decoded, located and aligned once, then every missing view goes
    through the networks; each chunk is written to the cache and committed at once, so a cancelled
    or crashed run keeps what it computed. Without a session_factory nothing is cached.
    progress(done, total) after each chunk; should_stop() is asked between chunks.
    """
    start = time.perf_counter()
    views = ["", *sorted(set(views) - {""})]
    extra = [name for name in networks if name != "dlib"]
    # Another network's rows go through the same bookkeeping as a view of their own.
    views += [NETWORK_VIEW + name for name in extra]
    # Input order kept (first of each hash): the networks' float sums depend slightly on which
    # photos share a batch, and this order reproduces the features the shipped model saw.
    first_of: dict[str, PhotoRef] = {}
    for ref in refs:
        first_of.setdefault(ref.sha256, ref)
    refs = list(first_of.values())
    ids = {view: _view_id(view) for view in views}
    dims = {view: _view_dim(view) for view in views}
    vectors: dict[str, dict[str, np.ndarray]] = {view: {} for view in views}
    failed: dict[str, str] = {}
    if session_factory is not None:
        with session_factory() as session:
            for view in views:
                for sha, value in lookup(session, (r.sha256 for r in refs), ids[view], dims[view]).items():
                    if isinstance(value, str):
                        if view == "":
                            failed[sha] = value
                    else:
                        vectors[view][sha] = value
    todo = [r for r in refs if r.sha256 not in failed and any(r.sha256 not in vectors[v] for v in views)]
    cached = len(refs) - len(todo)
    if progress:
        progress(cached, len(refs))
    for first in range(0, len(todo), COMPUTE_CHUNK):
        if should_stop and should_stop():
            raise Stopped()
        chunk = todo[first : first + COMPUTE_CHUNK]
        new = _compute(
            chunk, [v for v in views if any(r.sha256 not in vectors[v] for r in chunk)], tuple(networks)
        )
        for view, rows in new.items():
            for sha, value in rows.items():
                if isinstance(value, str):
                    failed[sha] = value
                else:
                    vectors[view][sha] = value
        if session_factory is not None:
            with session_factory() as session:
                for view, rows in new.items():
                    store(session, rows, ids[view], dims[view])
                session.commit()
        if progress:
            progress(cached + first + len(chunk), len(refs))
    others = {name: vectors.pop(NETWORK_VIEW + name) for name in extra}
    return Features(
        vectors, failed, others, computed=len(todo), cached=cached, seconds=time.perf_counter() - start
    )


NETWORK_VIEW = "net:"  # internal name of another network's rows


def _view_id(view: str) -> str:
    if view.startswith(NETWORK_VIEW):
        return network_model_id(view[len(NETWORK_VIEW) :])
    return model_id(view)


def _view_dim(view: str) -> int:
    if view.startswith(NETWORK_VIEW):
        from core.verification.networks import network_class

        return network_class(view[len(NETWORK_VIEW) :]).dim
    return VECTOR_DIM


def _compute(
    chunk: list[PhotoRef], views: list[str], networks: tuple[str, ...] = ("dlib",)
) -> dict[str, dict[str, np.ndarray | str]]:
    """Locate each photo once, then every view of it through the pretrained networks."""
    from core.training import augment
    from core.verification import features

    out: dict[str, dict[str, np.ndarray | str]] = {view: {} for view in ["", *views]}
    located = []
    for ref in chunk:
        try:
            data = ref.load()
        except Exception as exc:  # a missing or unreadable file is this photo's problem only
            out[""][ref.sha256] = f"The photo cannot be read: {exc}"
            continue
        analysis = features.locate(data, check_capture=False, networks=networks)  # features only
        if analysis.crop is None:
            out[""][ref.sha256] = analysis.error or "No face was found in the photo."
            continue
        located.append((ref, analysis))
    if not located:
        return out
    from core.verification.networks import compiled

    with compiled.runner(networks) as run:  # the engine's networks, as it runs them
        for view in views:
            for ref, a in located:
                if view.startswith(NETWORK_VIEW):
                    name = view[len(NETWORK_VIEW) :]
                    out[view][ref.sha256] = features.network_embedding(run, name, a.chips[name])
                    continue
                chip, gender_chip = a.crop, a.gender_crop
                if view:
                    kind, rng = augment.view_kind(view), augment.view_rng(ref.sha256, view)
                    chip, gender_chip = augment.make_view(kind, a.crop, a.gender_crop, rng)
                embedding, logit = features.pretrained_features(run, chip, gender_chip)
                out[view][ref.sha256] = np.concatenate([embedding, [logit]]).astype(np.float32)
    return out


def split(vector: np.ndarray) -> tuple[np.ndarray, float]:
    """(128-d embedding, gender log-odds) of a cached row."""
    return vector[:128], float(vector[128])
