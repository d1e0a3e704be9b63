"""The pretrained embeddings the index is built from: their model id, length and table rows.

pretrained_model_id(networks) -> str    model_id of embedding rows written here
embedding_dim(networks) -> int          their length (the tower's input)
store_embeddings(session, analyses)     rows for analysed photos that have none (caller commits)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.storage.schema import Embedding
from core.verification.networks import DEFAULT_NETWORKS

log = logging.getLogger(__name__)

EMBEDDING_DIM = 128  # a dlib-only model's; embedding_dim(networks) in general


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
