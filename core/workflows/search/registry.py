"""Process-wide indexes, one per database and model version, and the model contexts they project with.

register_engine(engine)                       lets the index project stored embeddings with it
index_for(bind, model_version) -> SearchIndex the process-wide index of a database + model
forget_member(bind, member_id)                drop an erased member from this process's indexes
refresh_after_commit(session, member_id)      once the session commits, the member's rows in this
                                              process's indexes follow the database (its profile
                                              photos that show the member in, the others out)
store_embeddings_of(session, version, analyses)  the analysed photos' embeddings, for the networks
                                              of that model version (the index is built from them)
index_stats(bind) -> list[str]                enrolled rows and the duplicate threshold, for people
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from core.errors import ModelError
from core.verification.networks import DEFAULT_NETWORKS, networks_of
from core.workflows.search.embeddings import embedding_dim, pretrained_model_id, store_embeddings
from core.workflows.search.enrolled import _db_fingerprint
from core.workflows.search.index import SearchIndex
from core.workflows.search.thresholds import duplicate_threshold

log = logging.getLogger(__name__)


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


_REFRESH_KEY = "faceverify.search.refresh"


def refresh_after_commit(session: Session, member_id: str) -> None:
    """Once this session commits, this process's indexes of its database hold exactly the
    member's enrolled photos (core.workflows.search.enrolled); nothing on a rollback. Other
    processes follow at their next sync or consistency check."""
    if _REFRESH_KEY not in session.info:
        session.info[_REFRESH_KEY] = set()
        event.listen(session, "after_commit", _refresh_pending)
        event.listen(session, "after_rollback", _drop_refresh)
    session.info[_REFRESH_KEY].add(member_id)


def _drop_refresh(session: Session) -> None:
    if not session.in_nested_transaction():  # a savepoint rolled back leaves the rest to commit
        session.info.get(_REFRESH_KEY, set()).clear()


def _refresh_pending(session: Session) -> None:
    # after_commit also follows a savepoint's release (the audit chain takes one right before the
    # commit): only the outermost commit makes the rows visible to the index's own connection.
    if session.in_nested_transaction():
        return
    members = session.info.get(_REFRESH_KEY) or set()
    if not members:
        return
    pending, members = set(members), session.info[_REFRESH_KEY]
    members.clear()
    bind = session.get_bind()
    engine = bind.engine if isinstance(bind, Connection) else bind
    key = _bind_key(engine)
    with _indexes_lock:
        targets = [(version, index) for (url, version), index in _indexes.items() if url == key]
    for version, index in targets:
        context = _context(version)
        if context is None or not index.loaded_from_db:
            continue  # an index not loaded yet reads the database when it first is
        for member_id in sorted(pending):
            try:
                index.sync_member(engine, member_id, context.project)
            except Exception:  # the committed data stands; the next consistency check catches up
                log.exception("search index %s: member %s not refreshed", version, member_id)


def store_embeddings_of(session: Session, model_version: str, analyses) -> int:
    """Store the pretrained embeddings of these analysed photos (those without one), for the
    networks of this model version. In the caller's transaction."""
    context = _context(model_version)
    return store_embeddings(session, analyses, context.networks if context else DEFAULT_NETWORKS)


def reset_indexes() -> None:
    """Forget every in-memory index (tests that empty a database between cases)."""
    with _indexes_lock:
        _indexes.clear()


def index_stats(bind: Engine) -> list[str]:
    """What `faceverify search stats` prints: enrolled photos with an embedding, and the active
    model's thresholds (or why there is none)."""
    with bind.connect() as conn:
        count, _ = _db_fingerprint(conn)
    lines = [f"enrolled gallery photos with an embedding ({pretrained_model_id()}): {count}"]
    try:
        from core.verification.heads import load_version

        model = load_version()
    except ModelError as exc:
        return lines + [f"no model: {exc}"]
    ctx = _context_from_model(model)
    dup = duplicate_threshold(ctx.threshold, ctx.band, ctx.metadata, offset=ctx.offset, scale=ctx.scale)
    lines.append(
        f"model {model.version}: threshold {ctx.threshold:.3f}, band {ctx.band[0]:.3f}-{ctx.band[1]:.3f}, "
        f"duplicate threshold {dup:.4f}"
    )
    return lines
