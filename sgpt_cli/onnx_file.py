"""What an .onnx file must not do before ONNX Runtime opens it: point at data outside its folder.

What it holds: a minimal reader of protobuf's wire format (varints and length-delimited fields, no
schema library) and `external_data_escapes`, which walks a ModelProto's tensors (initializers,
sparse initializers, Constant-node and other attribute tensors, subgraphs, functions, training
graphs) and lists every external-data location that is absolute, climbs out with '..', or resolves
(symbolic links followed) outside the model's own folder. sgpt's own exports keep every weight inside
the one file; a model that reads `/etc/passwd` as weights is refused.

Why by hand: the inference path imports neither torch nor onnx, and ONNX Runtime offers no API to
list a model's external data (older releases read such paths without asking; see pyproject's floor).
The file is mapped, not read: only the structure is walked, weight bytes are skipped by length.

What it does not do: check shapes, operators or metadata (sgpt_cli.onnx_model does).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

# field numbers from onnx.proto (ONNX IR): message -> {field: message of that field}
_MODEL = "model"
_GRAPH, _NODE, _ATTR, _TENSOR, _SPARSE, _FUNCTION, _TRAINING = "graph", "node", "attr", "tensor", "sparse", "function", "training"
_CHILDREN = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},  # graph, training_info, functions
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},  # node, initializer, sparse_initializer
    _NODE: {5: _ATTR},  # attribute
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},  # t, g, tensors, graphs, sparse
    _SPARSE: {1: _TENSOR, 2: _TENSOR},  # values, indices
    _FUNCTION: {7: _NODE},  # node
    _TRAINING: {1: _GRAPH, 2: _GRAPH},  # initialization, algorithm
}
_EXTERNAL_DATA = 13  # TensorProto.external_data: repeated StringStringEntryProto (key 1, value 2)
_DATA_LOCATION = 14  # TensorProto.data_location: 1 = EXTERNAL
MAX_DEPTH = 64  # subgraphs nest (If/Loop bodies); a deeper file is a crafted one


class MalformedModel(ValueError):
    """The bytes are not a well-formed ModelProto."""


def _varint(buf, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise MalformedModel("a varint runs past its field")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, wire type, value) for each field in buf[start:end]; a length-delimited value
    is its (start, end) span, a varint its integer, fixed-width values None."""
    i = start
    while i < end:
        key, i = _varint(buf, i, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i, end)
            yield field, wire, value
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if i + n > end:
                raise MalformedModel("a field runs past the end of its message")
            yield field, wire, (i, i + n)
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 3:  # a group (proto2): not ONNX's, but protobuf parsers accept one, so skip it
            i = _skip_group(buf, i, end, field)
        else:
            raise MalformedModel(f"unexpected wire type {wire}")
        if i > end:
            raise MalformedModel("a fixed-width field runs past the end of its message")


def _skip_group(buf, i: int, end: int, field: int, depth: int = 0) -> int:
    """The index after the end-group tag matching `field`."""
    if depth > MAX_DEPTH:
        raise MalformedModel("groups nest too deep")
    while i < end:
        key, i = _varint(buf, i, end)
        f, wire = key >> 3, key & 7
        if wire == 4:
            if f != field:
                raise MalformedModel("a group ends with the wrong field")
            return i
        if wire == 0:
            _, i = _varint(buf, i, end)
        elif wire == 2:
            n, i = _varint(buf, i, end)
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 3:
            i = _skip_group(buf, i, end, f, depth + 1)
        else:
            raise MalformedModel(f"unexpected wire type {wire}")
    raise MalformedModel("a group runs past the end of its message")


def _external_locations(buf, start: int, end: int) -> list[str]:
    """The `location` entries of one TensorProto whose data lives outside the file."""
    locations, external = [], False
    for field, wire, value in _fields(buf, start, end):
        if field == _DATA_LOCATION and wire == 0:
            external = external or value == 1
        elif field == _EXTERNAL_DATA and wire == 2:
            key = loc = None
            for f, w, v in _fields(buf, *value):
                if w == 2 and f in (1, 2):
                    text = bytes(buf[v[0]:v[1]]).decode("utf-8", errors="replace")
                    key, loc = (text, loc) if f == 1 else (key, text)
            if key == "location":
                locations.append(loc or "")
                external = True
    if external and not locations:
        return [""]  # EXTERNAL without a location: nothing a reader may safely guess
    return locations


def _walk(buf, kind: str, start: int, end: int, depth: int, found: list[str]) -> None:
    if depth > MAX_DEPTH:
        raise MalformedModel(f"graphs nest more than {MAX_DEPTH} deep")
    if kind == _TENSOR:
        found.extend(_external_locations(buf, start, end) or [])
        return
    children = _CHILDREN[kind]
    for field, wire, value in _fields(buf, start, end):
        child = children.get(field)
        if child is not None and wire == 2:
            _walk(buf, child, *value, depth + 1, found)


def external_locations(path: Path) -> list[str]:
    """Every external-data location named by a tensor of the model file (usually none)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            # protobuf stores strings as they are: a file that never spells the key "location" names
            # no external file (EXTERNAL without a location is an error ONNX Runtime reports itself);
            # a C-speed search spares sgpt's own files the walk (35 ms for the shipped model)
            if buf.find(b"location") < 0:
                return []
            found: list[str] = []
            _walk(buf, _MODEL, 0, size, 0, found)
            return found


def escapes(location: str, folder: Path) -> bool:
    """True when `location` is absolute, climbs with '..', or resolves outside `folder`."""
    if not location or "\0" in location or os.path.isabs(location) or location.startswith(("/", "\\")):
        return True
    if ".." in Path(location.replace("\\", "/")).parts:
        return True
    base = os.path.realpath(folder)
    resolved = os.path.realpath(os.path.join(base, location))
    return os.path.commonpath([base, resolved]) != base


def external_data_escapes(path: Path) -> list[str]:
    """The external-data locations of the model at `path` that lie outside its folder."""
    folder = Path(path).resolve().parent
    return [loc for loc in external_locations(path) if escapes(loc, folder)]
