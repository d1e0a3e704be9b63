"""The Keras port of dlib's face-recognition ResNet beside dlib itself: how long it takes to load,
and what one face costs in each.

run(calls) prints: import and load times (weights from the .npz cache or parsed from dlib's .dat,
the Keras model's build), then the fastest and median time of single calls, per face, for the
port's batches of 1, 2 and 4 and for dlib's compute_face_descriptor and HOG detector, on the first
sample photo where dlib finds a face; and the largest difference between the two embeddings of
that chip. Command line: `python -m core bench dlib-port [--calls N]`.
"""

from __future__ import annotations

import time

import numpy as np

from core import config
from core.verification.networks import dlib_resnet


def _bench_face():
    """(photo, dlib rectangle) of the first sample photo where dlib finds a face, else None."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    for photo in sorted((config.SAMPLE_DIR / "images").glob("*.jpg"))[:20]:
        img = dlib.load_rgb_image(str(photo))
        faces = detector(img, 1)
        if faces:
            return img, faces[0]
    return None


def _time_ms(fn, calls: int) -> tuple[float, float]:
    """(fastest, median) wall time of single calls in ms; the minimum shows the cost without
    interference from other processes on the shared 2-core box, the median what a user sees."""
    fn()  # warm-up: tracing for this batch size
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return min(times), float(np.median(times))


def run(calls: int = 30) -> None:
    """Print the load times, then per-face timings of the port (batches of 1, 2 and 4) beside
    dlib's own descriptor and detector, and how far the two embeddings of one chip are apart."""
    t0 = time.perf_counter()
    import dlib
    import face_recognition_models as frm
    import keras  # noqa: F401 - timed separately from the model build

    t1 = time.perf_counter()
    cached = dlib_resnet._cache_path(dlib_resnet.dlib_model_sha256()).exists()
    dlib_resnet.load_dlib_weights()
    t2 = time.perf_counter()
    dlib_resnet.load_embedding_model()
    t3 = time.perf_counter()
    data = dlib_resnet.dlib_model_path().read_bytes()
    t4 = time.perf_counter()
    dlib_resnet.parse_dlib_model(data)
    t5 = time.perf_counter()
    print(f"import tensorflow/keras/dlib  {1000 * (t1 - t0):7.0f} ms")
    print(f"weights from {'npz cache' if cached else '.dat (cache written)'}  {1000 * (t2 - t1):7.0f} ms")
    print(f"parse .dat without cache      {1000 * (t5 - t4):7.0f} ms")
    print(
        f"build Keras model             {1000 * (t3 - t2):7.0f} ms   (jit_compile={dlib_resnet._JIT_COMPILE})"
    )

    face = _bench_face()
    predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    if face is None:
        print("no sample photo with a face found: timing a synthetic chip")
        yy, xx = np.mgrid[0 : dlib_resnet.CHIP_SIZE, 0 : dlib_resnet.CHIP_SIZE]
        chip = np.stack([(xx + yy) % 256, (2 * xx) % 256, (3 * yy) % 256], axis=-1).astype(np.uint8)
    else:
        img, rect = face
        chip = dlib.get_face_chip(img, predictor(img, rect), size=dlib_resnet.CHIP_SIZE, padding=0.25)

    print(f"\n{'':44}{'fastest':>9}{'median':>9}   per face (median)")

    def row(label, fn, faces):
        fast, med = _time_ms(fn, calls)
        print(f"{label:<44}{fast:7.1f}ms{med:7.1f}ms   {med / faces:6.1f} ms")

    infer = dlib_resnet._inference_fn()
    for batch, label in (
        (1, "keras batch 1"),
        (2, "keras batch 2 (face + mirror)"),
        (4, "keras batch 4 (pair + mirrors)"),
    ):
        x = np.repeat(chip[None].astype(np.float32), batch, axis=0)
        row(label, lambda x=x: infer(x).numpy(), batch)
    pair = np.stack([chip, chip])
    row("keras embed_chips(pair, mirror=True)", lambda: dlib_resnet.embed_chips(pair, mirror=True), 2)

    net = dlib.face_recognition_model_v1(str(dlib_resnet.dlib_model_path()))
    row("dlib compute_face_descriptor(chip)", lambda: net.compute_face_descriptor(chip), 1)
    flipped = np.ascontiguousarray(chip[:, ::-1])
    row(
        "dlib compute_face_descriptor([chip, mirror])",
        lambda: net.compute_face_descriptor([chip, flipped]),
        2,
    )
    if face is not None:
        detector = dlib.get_frontal_face_detector()

        def detect_align():
            rects = detector(img, 1)
            return dlib.get_face_chip(img, predictor(img, rects[0]), size=dlib_resnet.CHIP_SIZE, padding=0.25)

        print(f"(photo {img.shape[1]}x{img.shape[0]}, HOG detector upsample 1)")
        row("dlib detect + 5 landmarks + chip, 1 photo", detect_align, 1)

    diff = np.abs(
        dlib_resnet.embed_chips(chip, mirror=False)[0] - np.array(net.compute_face_descriptor(chip))
    )
    print(f"\nmax |keras - dlib| on the bench chip: {diff.max():.2e}")
