"""Read a TensorFlow checkpoint (``model.ckpt.index`` + ``model.ckpt.data-*``) without TensorFlow.

The index is a LevelDB table (uncompressed blocks of prefix-compressed key/value entries, a block index and a
48-byte footer) mapping each variable name to a ``BundleEntryProto`` (dtype, shape, shard, offset, size, CRC32C);
the data files hold the raw little-endian bytes. Every block and every tensor is checked against its CRC32C, so a
truncated or corrupted file is reported with its name instead of giving wrong weights.
"""

from __future__ import annotations

import struct
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
# tensorflow/core/framework/types.proto -> numpy dtype (strings and resources are never weights)
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 19: "<f2"}


@cache
def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):  # CRC-32C (Castagnoli), reflected polynomial
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


def _gf2_apply(matrix: list[int], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _zero_bytes_operator(n: int) -> list[int]:
    """The linear map a CRC register undergoes when ``n`` zero bytes are fed (as 32 column images)."""
    table = _crc_table()
    one = [int(table[(1 << j) & 0xFF]) ^ ((1 << j) >> 8) for j in range(32)]  # one zero byte
    result = [1 << j for j in range(32)]
    while n:
        if n & 1:
            result = [_gf2_apply(one, c) for c in result]
        one = [_gf2_apply(one, c) for c in one]
        n >>= 1
    return result


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data``: equal-length chunks run side by side in numpy, then are chained by GF(2) shifts."""
    table, buf = _crc_table(), np.frombuffer(data, dtype=np.uint8)
    length = max(64, int(len(buf) ** 0.5))
    rows = len(buf) // length
    reg = 0xFFFFFFFF
    if rows > 1:
        chunks = buf[: rows * length].reshape(rows, length).T.copy()  # (length, rows): one column per chunk
        partial = np.zeros(rows, dtype=np.uint32)
        for column in chunks:
            partial = table[(partial ^ column) & 0xFF] ^ (partial >> 8)
        shift = _zero_bytes_operator(length)
        for value in partial.tolist():  # the register after a chunk = shifted register before ^ chunk's own CRC
            reg = _gf2_apply(shift, reg) ^ value
        buf = buf[rows * length :]
    for byte in buf.tolist():
        reg = int(table[(reg ^ byte) & 0xFF]) ^ (reg >> 8)
    return reg ^ 0xFFFFFFFF


def _unmask(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF  # LevelDB/TF store CRCs masked this way
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """Protocol-buffer wire format -> [(field number, int or bytes)]."""
    fields, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.append((key >> 3, value))
    if pos != len(buf):
        raise ValueError("protobuf message runs past its end")
    return fields


class TFCheckpoint:
    """The variables of a TF checkpoint, read lazily: ``ckpt.shapes`` (name -> shape), ``ckpt[name]`` -> tensor.

    ``prefix`` is what TF calls the checkpoint: ``.../model.ckpt`` (the ``.index`` file beside it is also accepted).
    """

    def __init__(self, prefix: str | Path) -> None:
        prefix = Path(prefix)
        if prefix.suffix == ".index":
            prefix = prefix.with_suffix("")
        self.prefix, self.index_path = prefix, Path(f"{prefix}.index")
        if not self.index_path.is_file():
            raise CheckpointError(f"TF checkpoint index {self.index_path} does not exist (give the prefix model.ckpt)")
        try:
            self._entries = self._read_index(self.index_path.read_bytes())
        except (ValueError, IndexError, struct.error) as err:
            raise CheckpointError(f"TF checkpoint index {self.index_path} is truncated or corrupt: {err}") from err
        self.shapes = {name: entry[1] for name, entry in self._entries.items()}

    def _read_index(self, data: bytes) -> dict[str, tuple]:
        if len(data) < _FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC:
            raise ValueError("no table footer (the file is cut short or not a TF checkpoint index)")
        footer = data[-_FOOTER_SIZE:]
        _, pos = _varint(footer, 0)  # metaindex handle: TF writes no filter, nothing to read there
        _, pos = _varint(footer, pos)
        index_offset, pos = _varint(footer, pos)
        index_size, _ = _varint(footer, pos)
        entries, header = {}, None
        for _, handle in self._block(data, index_offset, index_size):
            offset, pos = _varint(handle, 0)
            size, _ = _varint(handle, pos)
            for key, value in self._block(data, offset, size):
                if key == b"":
                    header = dict(_proto_fields(value))
                else:
                    entries[key.decode()] = self._entry(value)
        if header is None:
            raise ValueError("no bundle header entry")
        if header.get(2, 0) != 0:  # BundleHeaderProto.endianness: 0 = little
            raise ValueError("big-endian checkpoints are not supported")
        self.num_shards = header.get(1, 1)
        return entries

    @staticmethod
    def _block(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
        block, trailer = data[offset : offset + size], data[offset + size : offset + size + 5]
        if len(block) != size or len(trailer) != 5:
            raise ValueError(f"block at byte {offset} runs past the end of the file")
        if trailer[0] != 0:
            raise ValueError(f"block at byte {offset} is compressed (type {trailer[0]}); TF writes them uncompressed")
        if _unmask(struct.unpack("<I", trailer[1:])[0]) != crc32c(block + trailer[:1]):
            raise ValueError(f"block at byte {offset} fails its CRC32C check")
        restarts = struct.unpack_from("<I", block, size - 4)[0]
        end, pos, key, out = size - 4 - 4 * restarts, 0, b"", []
        while pos < end:
            shared, pos = _varint(block, pos)
            unshared, pos = _varint(block, pos)
            value_size, pos = _varint(block, pos)
            key = key[:shared] + block[pos : pos + unshared]
            pos += unshared
            out.append((key, block[pos : pos + value_size]))
            pos += value_size
        return out

    @staticmethod
    def _entry(value: bytes) -> tuple:
        fields = _proto_fields(value)
        if any(f == 7 for f, _ in fields):
            raise ValueError("partitioned (sliced) variables are not supported")
        f = dict(fields)
        dims = [dict(_proto_fields(d)).get(1, 0) for n, d in _proto_fields(f.get(2, b"")) if n == 2]
        return f.get(1, 0), tuple(dims), f.get(3, 0), f.get(4, 0), f.get(5, 0), f.get(6, 0)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> Tensor:
        dtype, shape, shard, offset, size, crc = self._entries[name]
        path = Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")
        if dtype not in _DTYPES:
            raise CheckpointError(f"{name} in {self.index_path} has TF dtype {dtype}, which is not a numeric tensor")
        if not path.is_file():
            raise CheckpointError(f"TF checkpoint shard {path} (holding {name}) does not exist")
        with path.open("rb") as f:
            f.seek(offset)
            raw = f.read(size)
        if len(raw) != size:
            raise CheckpointError(
                f"TF checkpoint shard {path} is truncated: {name} needs bytes {offset}–{offset + size}"
            )
        if crc32c(raw) != _unmask(crc):
            raise CheckpointError(f"{name} in TF checkpoint shard {path} fails its CRC32C check (the file is corrupt)")
        array = np.frombuffer(raw, dtype=_DTYPES[dtype]).reshape(shape)
        return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))

    def read_all(self) -> dict[str, Tensor]:
        return {name: self[name] for name in self._entries}
