"""The trainable Keras heads on top of the pretrained face network, and their saved versions.

Siamese head: one projection tower applied with the same weights to both photos' pretrained
embeddings; the distance between the two projections becomes a similarity in 0..1 through a
learned logistic (PairSimilarity). Gender head: a small classifier on the same embedding.

A model version is a folder under models/: siamese.keras, gender.keras and metadata.json
(threshold, uncertain band, metrics, training data summary, parameters, date); versions that
normalise their scores against a cohort of other faces also hold cohort.npz (metadata "cohort":
core.verification.cohort), and MODEL_CARD.md says what the version was trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from core import config
from core.errors import ModelError
from core.verification.cohort import Cohort
from core.verification.policy import OperatingPoints, operating_points

EMBEDDING_DIM = 128
# Weight of each network's distance in the tower's starting metric (see build_tower). SFace 1.3: on the
# training people of the shipped version (AUC / FNMR at FMR 0.1% of the untrained fusion), 1.3 kept
# most of the AUC gain at nearly the FNMR of 1.0 (1.0: 0.99980 / 0.39%, 1.3: 0.99986 / 0.40%,
# 1.6: 0.99989 / 0.44%).
NETWORK_SCALES = {"dlib": 1.0, "sface": 1.3}  # by network family
GENDERS = ("M", "F")  # index order of the gender head's output


@keras.saving.register_keras_serializable(package="faceverify")
class PairSimilarity(keras.layers.Layer):
    """sigmoid(scale * (offset - ||a - b||)): distance in, probability-like similarity out."""

    def __init__(self, initial_offset: float = 0.6, initial_scale: float = 12.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_offset = initial_offset
        self.initial_scale = initial_scale

    def build(self, input_shape):
        self.offset = self.add_weight(
            name="offset", shape=(), initializer=keras.initializers.Constant(self.initial_offset)
        )
        self.scale = self.add_weight(
            name="scale", shape=(), initializer=keras.initializers.Constant(self.initial_scale)
        )

    def call(self, inputs):
        a, b = inputs
        distance = keras.ops.sqrt(keras.ops.sum(keras.ops.square(a - b), axis=-1) + 1e-12)
        return keras.ops.sigmoid(self.scale * (self.offset - distance))

    def get_config(self):
        return {
            **super().get_config(),
            "initial_offset": self.initial_offset,
            "initial_scale": self.initial_scale,
        }


def build_tower(dim: int = EMBEDDING_DIM, scales: np.ndarray | None = None) -> keras.Model:
    """Linear projection starting at diag(scales) (default the identity: exactly dlib's metric).

    Over several networks' embeddings side by side, the starting distance of two photos is
    sqrt(sum of each network's squared distance times its scale squared): the score fusion of
    the networks, which training then refines. No unit normalisation of dlib's part: its raw
    Euclidean distance is what the network was trained for (normalising cost accuracy on
    lfw_dev); SFace's part comes unit length (cosine is its metric).
    """
    inp = keras.Input((dim,), name="embedding")
    layer = keras.layers.Dense(dim, kernel_initializer="identity", bias_initializer="zeros", name="project")
    tower = keras.Model(inp, layer(inp), name="tower")
    if scales is not None:
        layer.kernel.assign(np.diag(np.asarray(scales, np.float32)))
    return tower


def tower_scales(networks: tuple[str, ...]) -> np.ndarray:
    """The starting scale of each number of the tower's input: NETWORK_SCALES per network."""
    from core.verification.networks import network_class

    return np.concatenate(
        [np.full(network_class(n).dim, NETWORK_SCALES[network_class(n).family], np.float32) for n in networks]
    )


def build_siamese(tower: keras.Model, initial_offset: float = 0.6) -> keras.Model:
    """Two inputs through the same tower (shared weights), similarity out."""
    a = keras.Input((tower.input_shape[-1],), name="gallery")
    b = keras.Input((tower.input_shape[-1],), name="verification")
    sim = PairSimilarity(initial_offset=initial_offset, name="similarity")([tower(a), tower(b)])
    return keras.Model([a, b], sim, name="siamese")


GENDER_INPUT_DIM = 1 + EMBEDDING_DIM  # the pretrained gender log-odds, then dlib's embedding


def gender_input_dim(metadata: dict) -> int:
    """Numbers the gender head of a version takes: the log-odds, then every network's embedding."""
    from core.verification.networks import network_class, networks_of

    return 1 + sum(network_class(name).dim for name in networks_of(metadata))


def adapt_gender_head(gender: keras.Model, dim: int) -> keras.Model:
    """A gender head taking dim numbers ([log-odds, whole embedding]): the head itself when it does,
    else (versions trained on [log-odds, dlib's part]) a wrapper that hands it its first numbers."""
    width = int(gender.input_shape[-1])
    if width == dim:
        return gender
    if width > dim:
        raise ModelError(f"the gender head takes {width} numbers, its networks give only {dim}")
    inp = keras.Input((dim,), name="gender_input")
    return keras.Model(inp, gender(inp[:, :width]), name=f"{gender.name}_on_first_{width}")


def build_gender(
    dim: int = GENDER_INPUT_DIM,
    hidden: int = 0,
    l2: float = 1e-3,
    mean: np.ndarray | None = None,
    variance: np.ndarray | None = None,
) -> keras.Model:
    """Logistic layer (or one hidden layer) on [pretrained gender log-odds, face embedding].

    Measured by person on lfw_dev, extra capacity on the embedding overfits the few people we
    have, so the default is logistic with L2: it mostly recalibrates the pretrained network and
    lets the embedding correct it where the company's own reviewed data says so.
    mean, variance: standardise each input number first (fixed, part of the saved head), so the
    L2 weighs the log-odds and the embedding's numbers alike (core.training.gender).
    """
    inp = keras.Input((dim,), name="gender_input")
    x = inp
    if mean is not None:
        x = keras.layers.Normalization(mean=mean, variance=variance, name="standardise")(x)
    if hidden:
        x = keras.layers.Dense(hidden, activation="relu", name="hidden")(x)
    out = keras.layers.Dense(
        len(GENDERS), activation="softmax", kernel_regularizer=keras.regularizers.L2(l2), name="gender"
    )(x)
    return keras.Model(inp, out, name="gender_head")


@dataclass
class ModelVersion:
    """A loaded model version: the Keras heads plus the decision settings stored with them."""

    version: str
    siamese: keras.Model
    gender: keras.Model
    metadata: dict = field(default_factory=dict)
    cohort: Cohort | None = None  # the faces scores are normalised against (None: raw similarity)

    @property
    def cohort_calibration(self) -> tuple[float, float] | None:
        """(slope, intercept) of the probability on the cohort-normalised score, or None."""
        entry = self.metadata.get("cohort")
        if not entry or self.cohort is None:
            return None
        return float(entry["slope"]), float(entry["intercept"])

    @property
    def tower(self) -> keras.Model:
        return self.siamese.get_layer("tower")

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    @property
    def operating_points(self) -> OperatingPoints:
        """Automatic approval at or above approve_at, rejection below reject_below (core.verification.policy)."""
        return operating_points(self.metadata)

    @property
    def uncertain_band(self) -> tuple[float, float]:
        """The review band: the two operating points, (reject_below, approve_at)."""
        points = self.operating_points
        return points.reject_below, points.approve_at

    @property
    def gender_min_confidence(self) -> float:
        """The confidence from which a gender that differs from the registered one is flagged as a
        mismatch (below it: cannot be confirmed). Chosen at training (core.training.gender); 0.9
        for versions that predate the choice."""
        return float(self.metadata.get("gender_min_confidence", 0.9))

    def similarity_params(self) -> tuple[float, float]:
        layer = self.siamese.get_layer("similarity")
        return float(layer.offset.numpy()), float(layer.scale.numpy())


def similarity_from_projections(a: np.ndarray, b: np.ndarray, offset: float, scale: float) -> float:
    """The PairSimilarity formula on two projected embeddings (numpy, for the per-pair path)."""
    distance = float(np.sqrt(np.sum((a - b) ** 2) + 1e-12))
    return float(1.0 / (1.0 + np.exp(-scale * (offset - distance))))


def save_version(
    directory: Path,
    version: str,
    siamese: keras.Model,
    gender: keras.Model,
    metadata: dict,
    cohort: Cohort | None = None,
) -> Path:
    directory = Path(directory) / version
    directory.mkdir(parents=True, exist_ok=False)
    siamese.save(directory / "siamese.keras")
    gender.save(directory / "gender.keras")
    if cohort is not None:
        cohort.save(directory)
    (directory / "metadata.json").write_text(json.dumps({**metadata, "version": version}, indent=2))
    return directory


def default_version(models_dir: Path | None = None) -> str:
    """The version named in models/DEFAULT (the shipped model)."""
    path = Path(models_dir or config.models_dir()) / "DEFAULT"
    if not path.exists():
        raise ModelError(f"No model version given and {path} does not exist; train one with faceverify train")
    return path.read_text().strip()


def load_version(version: str | None = None, models_dir: Path | None = None) -> ModelVersion:
    models_dir = Path(models_dir or config.models_dir())
    version = version or default_version(models_dir)
    directory = models_dir / version
    try:
        metadata = json.loads((directory / "metadata.json").read_text())
        siamese = keras.saving.load_model(directory / "siamese.keras")
        gender = keras.saving.load_model(directory / "gender.keras")
        gender = adapt_gender_head(gender, gender_input_dim(metadata))
        cohort = Cohort.load(directory) if metadata.get("cohort") else None
    except (OSError, ValueError, KeyError, ModelError) as exc:
        raise ModelError(f"Model version {version!r} in {directory} cannot be loaded: {exc}") from exc
    return ModelVersion(version=version, siamese=siamese, gender=gender, metadata=metadata, cohort=cohort)
