"""The pretrained identity networks behind one interface, one module each.

    dlib_resnet     dlib's face-recognition ResNet (128-d), ported to Keras; dlib's 5-point chip
    sface           OpenCV Zoo's SFace (128-d, unit length), ported to Keras; ArcFace 5-point chip
                    ("sface8": the same network served with 8-bit weights, its own recipe)
    onnx_file       reads an ONNX file's graph and weights (for the SFace port; no onnx package)
    compiled        the ports compiled to TensorFlow Lite, as the serving path runs them
    gender_cydral   Cydral's gender CNN, ported to Keras (not an identity network)

A model version names the identity networks its Siamese head was trained on (metadata
"networks", e.g. ["dlib", "sface"]; versions without the key are ["dlib"]). Its tower takes the
networks' embeddings concatenated in that order. dlib is always there: its chip also frames the
gender network, and its embedding also feeds the gender head. Adding a network is one module here
with one IdentityNetwork subclass and a line in NETWORKS.

    IdentityNetwork     name, family, dim, recipe, weights_sha256(), chip(rgb, face), embed(chips),
                        graph_embed(chips) (the same in TensorFlow), finish(raw) (after the
                        compiled copy the serving path runs: compiled.py)
    network_class(name) -> type            without loading any weights (name, dim, recipe)
    network(name) -> IdentityNetwork       the loaded network (once per process)
    networks_of(metadata) -> tuple[str]    the networks a model version was trained on
"""

from __future__ import annotations

import importlib
import threading
from functools import cache

import numpy as np

from core.errors import ModelError
from core.verification.result import Face

DEFAULT_NETWORKS = ("dlib",)


class IdentityNetwork:
    """A pretrained network: a face chip aligned its own way in, a fixed-length embedding out."""

    name: str = ""  # the key in a model version's metadata
    # The network whose weights it runs: variants of one network (SFace in float or with 8-bit
    # weights) share their family's weights file, tower scale and published threshold.
    family: str = ""
    dim: int = 0
    # What a change of would change the embedding: weights, alignment, test-time views. Part of
    # the features version a model version records and of the embedding cache's key.
    recipe: str = ""
    chip_size: int = 0

    def weights_sha256(self) -> str:
        raise NotImplementedError

    def chip(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """The aligned chip (uint8 RGB) of a face MediaPipe found in the photo."""
        raise NotImplementedError

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """N x dim float32 embeddings of N chips from chip()."""
        raise NotImplementedError

    def graph_embed(self, chips):
        """embed() as TensorFlow ops on an N x size x size x 3 uint8 tensor."""
        raise NotImplementedError

    def finish(self, raw: np.ndarray) -> np.ndarray:
        """What embed() does after the network, on the compiled network's raw N x dim output
        (core.verification.networks.compiled runs the network itself in the serving path)."""
        return np.asarray(raw, np.float32)


class DlibResNet(IdentityNetwork):
    """dlib's ResNet. Its chips come from core.verification.faces.align_face (dlib's own 5 points and
    get_face_chip); in the serving path it runs compiled to TensorFlow Lite (core.verification.networks.compiled), so embed() here is for
    other callers."""

    name = "dlib"
    family = "dlib"
    dim = 128
    chip_size = 150
    recipe = "dlib-rn-v1/boxfit/mirror"

    def weights_sha256(self) -> str:
        from core.verification.networks import dlib_resnet

        return dlib_resnet.dlib_model_sha256()

    def chip(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        raise ModelError("dlib's chip comes from core.verification.faces.align_face (dlib's own landmarks).")

    def embed(self, chips: np.ndarray) -> np.ndarray:
        from core.verification.networks import dlib_resnet

        return dlib_resnet.embed_chips(chips, mirror=True)


# name -> (module, class); imported only when asked, so a dlib-only process never loads SFace.
NETWORKS = {
    "dlib": ("core.verification.networks", "DlibResNet"),
    "sface": ("core.verification.networks.sface", "SFace"),
    "sface8": ("core.verification.networks.sface", "SFace8"),
}
_lock = threading.Lock()


def network_class(name: str) -> type[IdentityNetwork]:
    if name not in NETWORKS:
        raise ModelError(f"Unknown identity network {name!r}; known: {', '.join(NETWORKS)}.")
    module, cls = NETWORKS[name]
    return getattr(importlib.import_module(module), cls)


@cache
def _load(name: str) -> IdentityNetwork:
    return network_class(name)()


def network(name: str) -> IdentityNetwork:
    """The loaded network (its weights read and checked once per process)."""
    network_class(name)
    with _lock:
        return _load(name)


def networks_of(metadata: dict) -> tuple[str, ...]:
    """The identity networks of a model version, dlib first; ModelError for an unusable list."""
    names = tuple(metadata.get("networks") or DEFAULT_NETWORKS)
    unknown = [n for n in names if n not in NETWORKS]
    if unknown or not names or names[0] != "dlib" or len(set(names)) != len(names):
        raise ModelError(
            f"A model version's networks must start with dlib and be known ({', '.join(NETWORKS)}); "
            f"got {list(names)}."
        )
    return names
