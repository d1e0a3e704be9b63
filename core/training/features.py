"""Features: every photo through the pretrained networks (dlib, SFace, the gender network), from the
embedding cache where it has them (core.training.embedding_cache).

    FeatureSet                                       one row per photo with a usable face
    build_features(data, params, session_factory, ...) -> FeatureSet   cached pretrained features
    extract_features(table, ...) -> FeatureSet       a read_lfw_folder table's
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.training.data import LFW, LabelledPhoto, TrainingData, _file_ref, group_of
from core.training.embedding_cache import PhotoRef
from core.training.fitting import TrainParams


@dataclass
class FeatureSet:
    """Pretrained features of labelled photos: one row per photo with a usable face.

    Augmented views are extra rows (aug_*) pointing at their photo's row; explicit pairs are
    reviewed decisions as row index pairs. failed: photos without a usable face, by name.
    """

    names: np.ndarray  # file names (or photo hashes)
    people: np.ndarray
    genders: np.ndarray  # "M"/"F", "" unknown
    embeddings: np.ndarray  # N x 128, dlib's
    gender_logits: np.ndarray  # N
    failed: list[str]
    shas: np.ndarray | None = None
    sources: np.ndarray | None = None
    refs: list[PhotoRef] | None = None
    aug_of: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    aug_embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 128), np.float32))
    aug_logits: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    pair_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    pair_ids: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    computed: int = 0
    cached: int = 0
    others: dict[str, np.ndarray] = field(default_factory=dict)  # other networks' N x dim, by name
    age_bands: np.ndarray | None = None  # "45+" or "" per row

    def groups(self) -> np.ndarray:
        """Each row's group (group_of: source x gender x age band)."""
        sources = self.sources if self.sources is not None else np.full(len(self.people), LFW)
        bands = self.age_bands if self.age_bands is not None else np.full(len(self.people), "")
        return np.array([group_of(s, g, b) for s, g, b in zip(sources, self.genders, bands, strict=True)])

    def inputs(self, networks: tuple[str, ...] = ("dlib",)) -> np.ndarray:
        """The Siamese tower's input for a model on these networks: their embeddings side by side."""
        missing = [n for n in networks if n != "dlib" and n not in self.others]
        if missing:
            raise ValueError(f"These features have no embeddings of the network(s) {', '.join(missing)}.")
        return np.concatenate([self.embeddings, *(self.others[n] for n in networks if n != "dlib")], axis=1)


def build_features(
    data: TrainingData,
    params: TrainParams,
    session_factory=None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    networks: tuple[str, ...] | None = None,
) -> FeatureSet:
    """Features of every photo (and its augmented views) from the cache or the networks.

    networks: the identity networks to compute (default the run's own; a comparison with a model
    on other networks needs theirs too). Reviewed pairs whose photos have no usable face are
    reported in notes and left out.
    """
    from core.training import embedding_cache

    networks = tuple(networks or params.network_names())
    found = embedding_cache.featurise(
        [p.ref for p in data.photos],
        params.view_names(),
        session_factory,
        progress,
        should_stop,
        networks=networks,
    )
    base = {
        sha: vector
        for sha, vector in found.vectors[""].items()
        if all(sha in found.extra[name] for name in found.extra)
    }
    keep = [p for p in data.photos if p.ref.sha256 in base]
    row_of = {p.ref.sha256: k for k, p in enumerate(keep)}
    vectors = np.array([base[p.ref.sha256] for p in keep], np.float32).reshape(-1, 129)
    aug_of, aug_vectors = [], []
    for view in params.view_names():
        for k, photo in enumerate(keep):
            vector = found.vectors[view].get(photo.ref.sha256)
            if vector is not None:
                aug_of.append(k)
                aug_vectors.append(vector)
    aug = np.array(aug_vectors, np.float32).reshape(-1, 129)
    notes = list(data.notes)
    pairs, labels, ids = [], [], []
    for pair in data.pairs:
        missing = [
            (kind, found.failed.get(sha, "not read"))
            for kind, sha in (("gallery", pair.gallery), ("verification", pair.verification))
            if sha not in row_of
        ]
        if missing:
            why = "; ".join(f"the {kind} photo has no usable face ({reason})" for kind, reason in missing)
            who = f" (member {pair.member_id})" if pair.member_id else ""
            notes.append(f"Reviewed result {pair.result_id}{who} skipped: {why}.")
            continue
        pairs.append((row_of[pair.gallery], row_of[pair.verification]))
        labels.append(1.0 if pair.same else 0.0)
        ids.append(pair.result_id)
    if data.pairs and not pairs:
        raise ValueError(
            f"Cannot train on the reviewed decisions: none of the {len(data.pairs)} reviewed pairs has a "
            "usable face in both photos. " + " ".join(notes)
        )
    failed = sorted(p.ref.name for p in data.photos if p.ref.sha256 not in base)
    return FeatureSet(
        names=np.array([p.ref.name for p in keep]),
        people=np.array([p.person for p in keep]),
        genders=np.array([p.gender for p in keep]),
        embeddings=vectors[:, :128].copy(),
        gender_logits=vectors[:, 128].copy(),
        failed=failed,
        shas=np.array([p.ref.sha256 for p in keep]),
        sources=np.array([p.source for p in keep]),
        age_bands=np.array([p.age_band for p in keep]),
        refs=[p.ref for p in keep],
        aug_of=np.array(aug_of, np.int64),
        aug_embeddings=aug[:, :128].copy(),
        aug_logits=aug[:, 128].copy(),
        pairs=np.array(pairs, np.int64).reshape(-1, 2),
        pair_labels=np.array(labels, np.float32),
        pair_ids=ids,
        notes=notes,
        seconds=found.seconds,
        computed=found.computed,
        cached=found.cached,
        others={
            name: np.array([rows[p.ref.sha256] for p in keep], np.float32).reshape(len(keep), -1)
            for name, rows in found.extra.items()
        },
    )


def extract_features(table: pd.DataFrame, progress=None, session_factory=None) -> FeatureSet:
    """Features of a read_lfw_folder table (cached in the database when a factory is given)."""
    photos = [LabelledPhoto(_file_ref(r.path), r.person, r.gender, LFW) for r in table.itertuples()]
    return build_features(TrainingData(photos, []), TrainParams(), session_factory, progress)
