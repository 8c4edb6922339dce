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

The same walk refuses what sgpt never runs: a node whose attribute carries a subgraph (Loop, If,
Scan: control flow, which sgpt's export never writes and whose run need not end), a file that is a
PyTorch checkpoint (said so, with the export command), one over protobuf's 2 GiB, and a crafted one
of more than MAX_FIELDS fields or of zeros (field number 0), each in bounded time.

What it does not do: check shapes, other operators or metadata (sgpt_cli.infer.onnx_model does).
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
_SUBGRAPH_FIELDS = (6, 11)  # AttributeProto.g, .graphs: a body graph (Loop, If, Scan, SequenceMap, ...)
_OP_TYPE = 4  # NodeProto.op_type
_NAME = 3  # NodeProto.name
_EXTERNAL_DATA = 13  # TensorProto.external_data: repeated StringStringEntryProto (key 1, value 2)
_DATA_LOCATION = 14  # TensorProto.data_location: 1 = EXTERNAL
MAX_DEPTH = 64  # messages nest (graph > node > attribute > tensor); a deeper file is a crafted one
MAX_FIELDS = 200_000  # protobuf fields walked: the shipped model has 4,260; the walk of 200,000
# takes under half a second, so a crafted file of tiny fields is refused in bounded time
MAX_BYTES = (2 << 30) - 1  # protobuf's own limit for one message: a bigger file cannot be a model file
# what a file that is not ONNX starts with, when it is a file sgpt users have at hand
_OTHER_KINDS = ((b"PK\x03\x04", "a PyTorch checkpoint (a zip archive), not an ONNX file; export it with "
                                  "`sgpt export {name}` and pass the .onnx file it writes"),
                (b"\x80\x02", "a PyTorch checkpoint (a pickle), not an ONNX file; export it with "
                              "`sgpt export {name}` and pass the .onnx file it writes"))


class MalformedModel(ValueError):
    """The bytes are not a well-formed ModelProto."""


class Refused(MalformedModel):
    """A well-formed file sgpt will not run; the message says why, as a whole clause."""


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


class _Budget:
    """How many fields a walk may still read (MAX_FIELDS): the walk's cost is bounded by it."""

    def __init__(self, fields: int | None = None):
        self.limit = MAX_FIELDS if fields is None else fields
        self.left = self.limit

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise MalformedModel(f"it has more than {self.limit:,} protobuf fields, far more than any model "
                                 "sgpt writes")


_UNBOUNDED = _Budget(1 << 62)


def _fields(buf, start: int, end: int, budget: _Budget = _UNBOUNDED):
    """(field number, wire type, value) for each field in buf[start:end]; a length-delimited value
    is its (start, end) span, a varint its integer, fixed-width values None. Field number 0 (never
    valid: a run of zero bytes reads as it) ends the walk at once."""
    i = start
    while i < end:
        budget.spend()
        key, i = _varint(buf, i, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise MalformedModel("it holds field number 0, which protobuf never writes (zeros where a model "
                                 "should be?)")
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


def _text(buf, span) -> str:
    return bytes(buf[span[0]:span[1]][:200]).decode("utf-8", errors="replace")


def _control_flow(buf, start: int, end: int, budget: _Budget) -> str:
    """The node (op type and name) of an attribute that carries a graph, for the refusal."""
    op = name = ""
    for field, wire, value in _fields(buf, start, end, budget):
        if wire == 2 and field == _OP_TYPE:
            op = _text(buf, value)
        elif wire == 2 and field == _NAME:
            name = _text(buf, value)
    return f"{op or 'a'} node" + (f" {name!r}" if name else "")


def _walk(buf, kind: str, start: int, end: int, depth: int, found: list[str], budget: _Budget) -> None:
    if depth > MAX_DEPTH:
        raise MalformedModel(f"its messages nest more than {MAX_DEPTH} deep")
    if kind == _TENSOR:
        found.extend(_external_locations(buf, start, end) or [])
        return
    children = _CHILDREN[kind]
    for field, wire, value in _fields(buf, start, end, budget):
        if kind == _NODE and field == 5 and wire == 2 and _has_subgraph(buf, *value, budget):
            raise Refused(f"its {_control_flow(buf, start, end, budget)} carries a subgraph (control flow: "
                          "Loop, If, Scan ...), which sgpt's export never writes and whose run could "
                          "never end; give an .onnx file from `sgpt export`")
        child = children.get(field)
        if child is not None and wire == 2:
            _walk(buf, child, *value, depth + 1, found, budget)


def _has_subgraph(buf, start: int, end: int, budget: _Budget) -> bool:
    """An AttributeProto that holds a graph (`g`) or graphs (`graphs`)."""
    return any(wire == 2 and field in _SUBGRAPH_FIELDS for field, wire, _ in _fields(buf, start, end, budget))


def _other_kind(buf, name: str) -> str | None:
    head = bytes(buf[:4])
    for magic, what in _OTHER_KINDS:
        if head.startswith(magic):
            return what.format(name=name)
    return None


def check_structure(path: Path) -> list[str]:
    """Walk the model file once, in time linear in its fields (at most MAX_FIELDS), never in its
    bytes (weights are skipped by length): Refused for a file that is another known kind (a
    PyTorch checkpoint), larger than protobuf allows, or holding control flow (a node with a
    subgraph); MalformedModel for bytes that are not a ModelProto. Returns the external-data
    locations its tensors name (usually none)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return []
        if size > MAX_BYTES:
            raise Refused(f"it is {size / (1 << 30):.1f} GiB, more than one protobuf file can hold (2 GiB); "
                          "sgpt models are one file well below that")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            other = _other_kind(buf, str(path))
            if other:
                raise Refused(f"it is {other}")
            found: list[str] = []
            _walk(buf, _MODEL, 0, size, 0, found, _Budget())
            return found


def external_locations(path: Path) -> list[str]:
    """Every external-data location named by a tensor of the model file (usually none); the
    structure is checked on the way (check_structure)."""
    return check_structure(path)


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
