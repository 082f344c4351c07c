"""Read a Caffe ``.caffemodel`` (a protobuf ``NetParameter``) without Caffe or protobuf.

Only the few fields that hold weights are decoded straight from the protobuf wire format: the layers (``layer``,
field 100, and the legacy ``layers``, field 2, of the DeepLab V1 release), each layer's name and its blobs
(``BlobProto``: ``shape`` or the legacy num/channels/height/width, and ``data`` or ``double_data``). Every other
field is skipped by its wire type. A truncated or corrupt file is reported with its name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

# field numbers in caffe.proto
_NET_LAYER, _NET_LAYERS_V1 = 100, 2
_LAYER_NAME, _LAYER_BLOBS = 1, 7  # LayerParameter
_V1_NAME, _V1_BLOBS = 4, 6  # V1LayerParameter
_BLOB_LEGACY = {1: 0, 2: 1, 3: 2, 4: 3}  # num, channels, height, width
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
_SHAPE_DIM = 1


class _Corrupt(Exception):
    """Raised inside the decoder; turned into a CheckpointError naming the file."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise _Corrupt("a varint runs past the end")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _Corrupt("a varint is longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """``(field number, wire type, value)`` for each field of a message; length-delimited values as views."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise _Corrupt(f"field {field} runs past the end")
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _Corrupt(f"field {field} ({size} bytes) runs past the end")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise _Corrupt(f"field {field} has wire type {wire}, which caffe.proto never uses")
        if field == 0:
            raise _Corrupt("field number 0")
        yield field, wire, value


def _packed_varints(value: int | memoryview, wire: int) -> list[int]:
    if wire == 0:
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def _blob(buf: memoryview) -> np.ndarray:
    legacy, dims, chunks, dtype = [1, 1, 1, 1], None, [], "<f4"
    for field, wire, value in _fields(buf):
        if field in _BLOB_LEGACY and wire == 0:
            legacy[_BLOB_LEGACY[field]] = value
        elif field == _BLOB_SHAPE and wire == 2:
            dims = [d for f, w, v in _fields(value) if f == _SHAPE_DIM for d in _packed_varints(v, w)]
        elif field in (_BLOB_DATA, _BLOB_DOUBLE_DATA) and wire in (1, 2, 5):
            dtype = "<f4" if field == _BLOB_DATA else "<f8"
            chunks.append(bytes(value))
    data = np.frombuffer(b"".join(chunks), dtype=dtype).astype(np.float32)
    shape = tuple(dims if dims is not None else legacy)
    if data.size != int(np.prod(shape)):
        raise _Corrupt(f"a blob of shape {shape} holds {data.size} values")
    return data.reshape(shape)


def _layer(buf: memoryview, name_field: int, blobs_field: int) -> tuple[str, list[np.ndarray]]:
    name, blobs = "", []
    for field, wire, value in _fields(buf):
        if field == name_field and wire == 2:
            name = bytes(value).decode("utf-8", errors="replace")
        elif field == blobs_field and wire == 2:
            blobs.append(_blob(value))
    return name, blobs


def parse_caffemodel(data: bytes) -> dict[str, list[np.ndarray]]:
    """``{layer name: [blobs]}`` of a serialized ``NetParameter``, in file order (layers with no blobs included)."""
    layers: dict[str, list[np.ndarray]] = {}
    for field, wire, value in _fields(memoryview(data)):
        if wire == 2 and field in (_NET_LAYER, _NET_LAYERS_V1):
            fields = (_LAYER_NAME, _LAYER_BLOBS) if field == _NET_LAYER else (_V1_NAME, _V1_BLOBS)
            name, blobs = _layer(value, *fields)
            if name in layers and layers[name]:
                raise _Corrupt(f"layer {name!r} appears twice")
            layers[name] = blobs
    return layers


def read_caffemodel(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Read a ``.caffemodel`` file: ``{layer name: [blob arrays]}``; CheckpointError naming the file if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Caffe model {path} does not exist; download the released .caffemodel and pass its path")
    try:
        layers = parse_caffemodel(path.read_bytes())
    except _Corrupt as err:
        raise CheckpointError(f"Caffe model {path} is truncated or not a .caffemodel: {err}") from None
    if not any(layers.values()):
        raise CheckpointError(f"Caffe model {path} holds no layer with weights; is it a .prototxt or another file?")
    return layers


__all__ = ["parse_caffemodel", "read_caffemodel"]
