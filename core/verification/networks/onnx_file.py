"""Just enough of the ONNX file format to read a network's graph and weights, without the onnx package.

An .onnx file is one protobuf message (ModelProto). Protobuf's wire format is a list of
(field number, wire type, value) records; the few messages and fields read here are those of
onnx.proto (github.com/onnx/onnx, onnx/onnx.proto):

    ModelProto     7 graph
    GraphProto     1 node (repeated), 5 initializer (repeated)
    NodeProto      1 input, 2 output (repeated strings), 3 name, 4 op_type, 5 attribute (repeated)
    AttributeProto 1 name, 2 f, 3 i, 4 s, 7 floats, 8 ints
    TensorProto    1 dims, 2 data_type, 4 float_data, 7 int64_data, 8 name, 9 raw_data

read_graph(data) -> (nodes, tensors): the nodes in file order and the initializers as numpy
arrays. dequantize(...) applies DequantizeLinear (per block along one axis, as the int8bq files
of the OpenCV Zoo use it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from core.errors import ModelError

# TensorProto.DataType values read here
_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 11: np.float64}


@dataclass
class Node:
    op_type: str
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    name: str = ""
    attributes: dict = field(default_factory=dict)


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data):
            raise ModelError("ONNX file: truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _records(data: memoryview):
    """(field number, wire type, value) of each record of one message."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 2:
            length, i = _varint(data, i)
            value, i = data[i : i + length], i + length
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ModelError(f"ONNX file: unsupported protobuf wire type {wire}")
        yield number, wire, value


def _packed_varints(value, wire: int) -> list[int]:
    if wire == 0:
        return [value]
    out, i = [], 0
    while i < len(value):
        number, i = _varint(value, i)
        out.append(number)
    return out


def _signed(value: int) -> int:
    """int64 fields are two's complement in a varint."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _tensor(message: memoryview) -> tuple[str, np.ndarray]:
    name, dims, dtype, raw, floats, int64s = "", [], 1, None, [], []
    for number, wire, value in _records(message):
        if number == 1:
            dims += _packed_varints(value, wire)
        elif number == 2:
            dtype = value
        elif number == 4:
            floats.append(np.frombuffer(bytes(value), "<f4") if wire == 2 else struct.unpack("<f", value))
        elif number == 7:
            int64s += [_signed(v) for v in _packed_varints(value, wire)]
        elif number == 8:
            name = bytes(value).decode()
        elif number == 9:
            raw = bytes(value)
    if dtype not in _DTYPES:
        raise ModelError(f"ONNX file: tensor {name!r} has unsupported data type {dtype}")
    if raw is not None:
        array = np.frombuffer(raw, np.dtype(_DTYPES[dtype]).newbyteorder("<"))
    elif dtype == 1:
        array = np.concatenate(floats).astype(np.float32) if floats else np.zeros(0, np.float32)
    elif dtype == 7:
        array = np.array(int64s, np.int64)
    else:
        raise ModelError(f"ONNX file: tensor {name!r} keeps its values in a field not read here")
    return name, array.astype(_DTYPES[dtype]).reshape(dims)


def _attribute(message: memoryview) -> tuple[str, object]:
    name, value_of = "", {}
    for number, wire, value in _records(message):
        if number == 1:
            name = bytes(value).decode()
        elif number == 2:
            value_of["f"] = struct.unpack("<f", value)[0]
        elif number == 3:
            value_of["i"] = _signed(value)
        elif number == 4:
            value_of["s"] = bytes(value)
        elif number == 7:
            value_of.setdefault("floats", []).extend(np.frombuffer(bytes(value), "<f4").tolist())
        elif number == 8:
            value_of.setdefault("ints", []).extend(_signed(v) for v in _packed_varints(value, wire))
    for key in ("ints", "floats", "i", "f", "s"):
        if key in value_of:
            return name, value_of[key]
    return name, None


def _node(message: memoryview) -> Node:
    node = Node(op_type="")
    for number, _, value in _records(message):
        if number == 1:
            node.inputs.append(bytes(value).decode())
        elif number == 2:
            node.outputs.append(bytes(value).decode())
        elif number == 3:
            node.name = bytes(value).decode()
        elif number == 4:
            node.op_type = bytes(value).decode()
        elif number == 5:
            key, attribute = _attribute(value)
            node.attributes[key] = attribute
    return node


def read_graph(data: bytes) -> tuple[list[Node], dict[str, np.ndarray]]:
    """The graph's nodes (file order) and its initializers by name."""
    model = memoryview(data)
    graphs = [value for number, wire, value in _records(model) if number == 7 and wire == 2]
    if len(graphs) != 1:
        raise ModelError("ONNX file: expected one graph")
    nodes, tensors = [], {}
    for number, _, value in _records(graphs[0]):
        if number == 1:
            nodes.append(_node(value))
        elif number == 5:
            name, array = _tensor(value)
            tensors[name] = array
    return nodes, tensors


def dequantize(
    quantized: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, axis: int, block_size: int
):
    """ONNX DequantizeLinear with blocks: (q - zero point) * scale, one scale per block_size values
    along axis (block_size 0: one per index of axis, the per-axis form)."""
    q = quantized.astype(np.float32)
    if scales.ndim == 0 or scales.size == 1:
        return (q - zero_points.astype(np.float32).reshape(())) * scales.astype(np.float32).reshape(())
    if not block_size:
        shape = [1] * q.ndim
        shape[axis] = -1
        return (q - zero_points.reshape(shape).astype(np.float32)) * scales.reshape(shape).astype(np.float32)
    scale = np.repeat(scales.astype(np.float32), block_size, axis=axis)
    zero = np.repeat(zero_points.astype(np.float32), block_size, axis=axis)
    index = [slice(None)] * q.ndim
    index[axis] = slice(0, q.shape[axis])
    return (q - zero[tuple(index)]) * scale[tuple(index)]
