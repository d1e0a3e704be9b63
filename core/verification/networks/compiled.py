"""The pretrained networks as the serving path runs them: each Keras port compiled once to
TensorFlow Lite and run by XNNPACK on one thread, one photo at a time.

    runner()  -> a context manager lending this thread one set of interpreters
    Runner.dlib(views) / .gender(views) / .sface(chip) / .occlusion(face, eyes)

Why: measured in one process on the 2-core machine (under load, same inputs, interleaved), one
photo's networks (dlib on face + mirror, SFace, gender on face + mirror, the occlusion CNN) took
27 ms on ONE core through TensorFlow Lite against 50 ms on BOTH cores for the pair's single
TensorFlow call (SFace's depthwise convolutions and PReLUs are where TensorFlow loses most:
2 chips 45 ms on two cores, 19 ms on one core in TensorFlow Lite). So each locate thread now
runs its own photo end to end, and the two photos of a pair use one core each. Outputs match the
Keras ports to 1e-5 (tests/unit/test_compiled.py; gender 4e-7, SFace's raw features 1e-5), except
dlib's, see QUANTISED.

The .tflite files are derived data: converted from the Keras ports (whose weights come from the
shipped files, hash-checked as before) on first use, in a child process, and cached under core.config.cache_dir(),
named by the source weights' sha256, the TensorFlow version and FORMAT, written atomically. A
process that finds them never builds the Keras models at all (less memory, faster start).
Multi-threaded XNNPACK (num_threads=2) is not used: on the shared machine its spinning workers
took 420 ms where one thread took 19.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from core import config
from core.verification.lending import Lending

# Bump when what a file holds changes (batch sizes, inputs, quantisation, the ports' code), so
# stale files are not used.
FORMAT = 2
# Networks compiled with 8-bit weights (dynamic-range quantisation: activations quantised per
# call, XNNPACK's int8 kernels). dlib's ResNet runs in 4.6 ms instead of 13 ms for a face and its
# mirror; its embedding stays within cosine 0.9997 of the float network's, and the shipped
# version's similarities on 5,061 held-out pairs moved by at most 0.010, three decisions changing
# (impostors sent to review instead of rejected). It stays the same recipe: stored embeddings and
# model versions remain comparable. SFace quantised the same way (7.3 ms a chip instead of 12.4)
# moved a version's similarities by up to 0.13 (37 decisions), so its 8-bit form is another
# network, "sface8", with its own recipe: a version is trained on one or the other.
QUANTISED = frozenset({"dlib", "sface8"})
# Interpreter sets per process: one per locate thread (core.verification.features.LOCATE_THREADS);
# a caller past that waits for one to be free (each set holds its own packed weights, ~130 MB).
POOL_SIZE = 2


def _source_sha256(name: str) -> str:
    if name == "dlib":
        from core.verification.networks import dlib_resnet

        return dlib_resnet.dlib_model_sha256()
    if name == "gender":
        from core.verification.networks import gender_cydral

        return gender_cydral.gender_weights_sha256()
    if name == "occlusion":
        from core.verification import capture

        return hashlib.sha256(capture.OCCLUSION_FILE.read_bytes()).hexdigest()
    from core.verification.networks import NETWORKS, network

    if name in NETWORKS:  # another identity network: its family's weights (sface8 is SFace in 8 bits)
        return network(name).weights_sha256()
    raise ValueError(f"no compiled form of {name!r}")


def _views() -> int:
    from core.verification.networks.dlib_resnet import TTA_ROTATIONS

    return 2 * len(TTA_ROTATIONS)  # each rotation and its mirror image


def _keras_model(name: str):
    """(the Keras port, fixed batch size) that the compiled file is made from."""
    if name == "dlib":
        from core.verification.networks import dlib_resnet

        return dlib_resnet.load_embedding_model(), _views()
    if name == "gender":
        from core.verification.networks import gender_cydral

        return gender_cydral.load_gender_network(), 2
    if name == "occlusion":
        import keras

        from core.verification import capture

        return keras.saving.load_model(capture.OCCLUSION_FILE, compile=False), 1
    from core.verification.networks import NETWORKS, network

    if name in NETWORKS:
        return network(name).model, 1
    raise ValueError(f"no compiled form of {name!r}")


def compiled_path(name: str) -> Path:
    import tensorflow as tf

    return config.cache_dir() / f"{name}_v{FORMAT}_tf{tf.__version__}_{_source_sha256(name)[:16]}.tflite"


def convert(name: str) -> bytes:
    """The TensorFlow Lite flatbuffer of a Keras port, batch size fixed (XNNPACK plans for it), its
    weights in 8 bits for the networks in QUANTISED."""
    import keras
    import tensorflow as tf

    model, batch = _keras_model(name)
    inputs = [keras.Input(tuple(i.shape[1:]), batch_size=batch, dtype="float32") for i in model.inputs]
    fixed = keras.Model(inputs, model(inputs if len(inputs) > 1 else inputs[0]))
    with warnings.catch_warnings():  # TF 2.19 (pinned) still ships tf.lite; the notice is for 2.20
        warnings.simplefilter("ignore")
        converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
        if name in QUANTISED:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: weights only
        return converter.convert()


_file_lock = threading.Lock()


def compiled_file(name: str) -> Path:
    """The cached .tflite of a network, converted now (in a child process) when missing."""
    return compiled_files((name,))[0]


def compiled_files(names: tuple[str, ...]) -> list[Path]:
    """The cached .tflite of each network; the missing ones converted together in one child."""
    with _file_lock:
        missing = [name for name in names if not compiled_path(name).exists()]
        if missing:
            _convert_in_child(missing)
    return [compiled_path(name) for name in names]


def _convert_in_child(names: list[str]) -> None:
    """Build the Keras port and convert it in a short-lived process: done in the serving process,
    the Keras model and the converter lifted a fresh install's first process to 1.6 GB resident
    (the limit is 1.5 GB); the cached file then serves every later start."""
    import subprocess
    import sys

    from core.errors import ModelError

    done = subprocess.run(
        [sys.executable, "-m", "core.verification.networks.compiled", *names],
        cwd=config.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode or not all(compiled_path(name).exists() for name in names):
        raise ModelError(f"Could not compile {', '.join(names)} for TensorFlow Lite: {done.stderr[-2000:]}")


def write_compiled(name: str) -> Path:
    """Convert a network and write its cached file atomically (another process never reads half)."""
    path = compiled_path(name)
    data = convert(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


class _Interpreter:
    """One single-threaded interpreter with its inputs in the Keras model's order."""

    def __init__(self, path: Path):
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._it = tf.lite.Interpreter(model_path=str(path), num_threads=1)
        self._it.allocate_tensors()
        details = self._it.get_input_details()
        self._inputs = [(d["index"], tuple(d["shape"])) for d in details]
        self._output = self._it.get_output_details()[0]["index"]

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        for array in arrays:
            array = np.ascontiguousarray(array, np.float32)
            # inputs are told apart by shape (the converter may reorder them)
            index = next(i for i, shape in self._inputs if shape == array.shape)
            self._it.set_tensor(index, array)
        self._it.invoke()  # releases the GIL: the two locate threads run side by side
        return self._it.get_tensor(self._output).copy()


class Runner:
    """One set of interpreters, used by one thread at a time (lent by runner())."""

    def __init__(self, networks: tuple[str, ...]):
        self.networks = networks
        names = ("dlib", "gender", "occlusion", *(name for name in networks if name != "dlib"))
        self._nets = {
            name: _Interpreter(path) for name, path in zip(names, compiled_files(names), strict=True)
        }

    def dlib(self, views: np.ndarray) -> np.ndarray:
        """views x 128 embeddings of one face's views (as _views() counts them)."""
        return self._nets["dlib"](views)

    def gender(self, views: np.ndarray) -> np.ndarray:
        """2 x 2 probabilities [female, male] of a gender chip and its mirror."""
        return self._nets["gender"](views)

    def occlusion(self, face: np.ndarray, eyes: np.ndarray) -> np.ndarray:
        """1 x 4 sigmoid outputs of the capture check's occlusion CNN (its inputs as it makes them)."""
        return self._nets["occlusion"](face, eyes)

    def embed(self, name: str, chip: np.ndarray) -> np.ndarray:
        """The raw output of an extra identity network on one chip (1 x dim)."""
        return self._nets[name](chip[None])


_runners: dict[tuple[str, ...], Lending[Runner]] = {}
_runners_lock = threading.Lock()


def runner(networks: tuple[str, ...]) -> contextlib.AbstractContextManager[Runner]:
    """Lend this thread a set of interpreters for these networks (made on first need, at most
    POOL_SIZE per process and network list; a forked child makes its own)."""
    key = tuple(networks)
    with _runners_lock:
        if key not in _runners:
            _runners[key] = Lending(lambda: Runner(key), size=POOL_SIZE)
    return _runners[key].lend()


def warm(networks: tuple[str, ...]) -> None:
    """Convert what is missing and make the interpreter sets now, not on the first request."""
    with contextlib.ExitStack() as stack:
        for _ in range(POOL_SIZE):
            stack.enter_context(runner(networks))


if __name__ == "__main__":  # python -m core.verification.networks.compiled NAME...: what compiled_file runs
    import sys

    for network_name in sys.argv[1:]:
        write_compiled(network_name)
