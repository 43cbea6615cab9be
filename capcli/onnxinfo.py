"""Read an ONNX model's input/output names and shapes straight from its protobuf bytes.

Bundle validation needs only the graph's signature (is the decoder's output as
wide as the vocabulary? does the attention grid match?).  The ``onnx`` package
is a training/export dependency, and building an onnxruntime session just to
look costs more, so this walks the few protobuf fields involved and skips the
rest (weights included) by length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

Dim = int | str | None  # a fixed size, a symbolic name ("batch"), or unknown
Shape = tuple[Dim, ...]

# Field numbers from onnx.proto
_MODEL_GRAPH, _MODEL_OPSET = 7, 8
_OPSET_DOMAIN, _OPSET_VERSION = 1, 2
_GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_INITIALIZER = 11, 12, 5
_TENSOR_NAME = 8  # TensorProto.name
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR, _TENSOR_SHAPE = 1, 2
_SHAPE_DIM, _DIM_VALUE, _DIM_PARAM = 1, 1, 2


@dataclass(frozen=True)
class Signature:
    inputs: dict[str, Shape]  # graph inputs that are not initializers, in order
    outputs: dict[str, Shape]
    opset: int | None  # default-domain opset version


def read_signature(data: bytes | memoryview) -> Signature:
    """Signature of a serialised ONNX ModelProto; ValueError when it is not one."""
    buf = memoryview(data)
    graph: memoryview | None = None
    opset = None
    for field, value in _fields(buf):
        if field == _MODEL_GRAPH and isinstance(value, memoryview):
            graph = value
        elif field == _MODEL_OPSET and isinstance(value, memoryview):
            entry = dict(_fields(value))
            domain = entry.get(_OPSET_DOMAIN, b"")
            if bytes(domain) in (b"", b"ai.onnx") and isinstance(entry.get(_OPSET_VERSION), int):
                opset = entry[_OPSET_VERSION]
    if graph is None:
        raise ValueError("no graph in the model")
    inputs: dict[str, Shape] = {}
    outputs: dict[str, Shape] = {}
    initializers: set[str] = set()
    for field, value in _fields(graph):
        if not isinstance(value, memoryview):
            continue
        if field in (_GRAPH_INPUT, _GRAPH_OUTPUT):
            name, shape = _value_info(value)
            (inputs if field == _GRAPH_INPUT else outputs)[name] = shape
        elif field == _GRAPH_INITIALIZER:
            name = next((bytes(v).decode() for f, v in _fields(value) if f == _TENSOR_NAME), None)
            if name:
                initializers.add(name)
    inputs = {k: v for k, v in inputs.items() if k not in initializers}
    return Signature(inputs, outputs, opset)


def _value_info(buf: memoryview) -> tuple[str, Shape]:
    name, shape = "", ()
    for field, value in _fields(buf):
        if field == _VALUE_NAME and isinstance(value, memoryview):
            name = bytes(value).decode()
        elif field == _VALUE_TYPE and isinstance(value, memoryview):
            tensor = _sub(value, _TYPE_TENSOR)
            dims = _sub(tensor, _TENSOR_SHAPE) if tensor is not None else None
            if dims is not None:
                shape = tuple(_dim(d) for f, d in _fields(dims) if f == _SHAPE_DIM and isinstance(d, memoryview))
    return name, shape


def _dim(buf: memoryview) -> Dim:
    for field, value in _fields(buf):
        if field == _DIM_VALUE and isinstance(value, int):
            return value
        if field == _DIM_PARAM and isinstance(value, memoryview):
            return bytes(value).decode()
    return None


def _sub(buf: memoryview, wanted: int) -> memoryview | None:
    for field, value in _fields(buf):
        if field == wanted and isinstance(value, memoryview):
            return value
    return None


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) pairs: ints for varints, memoryviews for the rest."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = buf[i : i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > n:
            raise ValueError("truncated protobuf data")
        yield field, value


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("bad varint in protobuf data")
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7
