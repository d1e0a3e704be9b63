"""The 1:N index keeps its rows in half precision: on the sample's real photos, projected as the
product projects them, every search finds the same members in the same order as an exact float32
search (neighbours closer than half precision resolves may trade places: one pair in the
sample, at the 9th and 10th place), at half the memory."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
from conftest import SAMPLE_IMAGES

from core.verification.engine import Engine
from core.workflows import search
from core.workflows.search.registry import _context_from_model


def test_half_precision_rows_rank_the_sample_like_float32():
    engine = Engine.load()
    photos = sorted(SAMPLE_IMAGES.glob("*.jpg"))
    analyses = engine.analyze_many([p.read_bytes() for p in photos])
    embeddings = [
        (p.name, a.embedding) for p, a in zip(photos, analyses, strict=True) if a.embedding is not None
    ]
    assert len(embeddings) >= 100
    context = _context_from_model(engine.model)  # what the index projects stored embeddings with
    vectors = np.asarray(context.project(np.stack([e for _, e in embeddings])), np.float32)
    names = [n for n, _ in embeddings]

    index = search.SearchIndex(
        vectors.shape[1], context.offset, context.scale, threshold=context.threshold, band=context.band
    )
    index.add_many(names, vectors, range(1, len(names) + 1))
    assert index._matrix.dtype == np.float16
    assert index._matrix[: len(names)].nbytes == len(names) * vectors.shape[1] * 2  # half of float32's

    k = 10
    changed = 0
    for i, query in enumerate(vectors):
        found = [m for m, _ in index.search(query, k=k, exclude_member=names[i])]
        distances = ((vectors - query) ** 2).sum(axis=1, dtype=np.float64)
        distances[i] = np.inf
        exact = [names[j] for j in np.argsort(distances, kind="stable")[:k]]
        if found == exact:
            continue
        # Half precision resolves similarities to about 1e-4: only neighbours closer than that
        # may trade places, and only among themselves.
        changed += 1
        similarity = dict(zip(names, similarity_from_sqdist(distances, context), strict=True))
        assert found[0] == exact[0], names[i]
        assert all(similarity[m] >= similarity[exact[-1]] - TIE for m in found), names[i]
        assert all(similarity[a] >= similarity[b] - TIE for a, b in pairwise(found)), names[i]
    # Measured: the same order for 118 of the 120 photos; the two swaps are of the 9th and 10th
    # neighbours, whose similarities differ by 3e-6 and 5e-6.
    assert changed <= 2


TIE = 1e-4


def similarity_from_sqdist(distances: np.ndarray, context) -> np.ndarray:
    from core.workflows.search.thresholds import _similarity_from_sqdist

    return _similarity_from_sqdist(distances, context.offset, context.scale)
