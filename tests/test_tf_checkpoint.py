"""The TF checkpoint reader on files written by TensorFlow's own saver (tests/fixtures/tf_zoo/make_fixtures.py)."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from deeplab_lit.errors import CheckpointError
from deeplab_lit.nets.tf_checkpoint import TFCheckpoint, crc32c

FIXTURES = Path(__file__).parent / "fixtures" / "tf_zoo"
DATA = "model.ckpt.data-00000-of-00001"


@pytest.fixture
def reader_copy(tmp_path) -> Path:
    shutil.copytree(FIXTURES / "reader", tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_crc32c_matches_the_standard_check_value_and_a_bytewise_loop() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
    data = np.random.default_rng(0).integers(0, 256, 100_003, dtype=np.uint8).tobytes()
    reg = 0xFFFFFFFF
    for byte in data:  # the textbook bit-by-bit definition
        reg ^= byte
        for _ in range(8):
            reg = (reg >> 1) ^ (0x82F63B78 if reg & 1 else 0)
    assert crc32c(data) == reg ^ 0xFFFFFFFF


def test_every_variable_reads_back_with_its_dtype_shape_and_values() -> None:
    ckpt = TFCheckpoint(FIXTURES / "reader" / "model.ckpt")
    expected = np.load(FIXTURES / "reader" / "expected.npz")
    names = [k.removeprefix("var:") for k in expected.files if k.startswith("var:")]
    bulk = expected["bulk"]
    assert len(ckpt.shapes) == len(names) + len(bulk)  # the index spans several table blocks
    for name in names:
        value = ckpt[name].numpy()
        assert value.dtype == expected[f"var:{name}"].dtype and value.shape == expected[f"var:{name}"].shape, name
        np.testing.assert_array_equal(value, expected[f"var:{name}"])
    for i, row in enumerate(bulk):
        np.testing.assert_array_equal(ckpt[f"resnet_v1_101/block3/unit_{i}/bottleneck_v1/conv2/weights"].numpy(), row)
    assert ckpt.shapes["MobilenetV2/Conv/weights"] == (3, 3, 3, 8) and ckpt.shapes["global_step"] == ()
    assert TFCheckpoint(FIXTURES / "reader" / "model.ckpt.index").shapes == ckpt.shapes  # the .index path works too


@pytest.mark.parametrize("cut", [10, 2000])
def test_a_truncated_index_is_refused_with_its_name(reader_copy, cut) -> None:
    index = reader_copy / "model.ckpt.index"
    index.write_bytes(index.read_bytes()[:-cut])
    with pytest.raises(CheckpointError, match=r"model\.ckpt\.index is truncated or corrupt"):
        TFCheckpoint(reader_copy / "model.ckpt")


def test_a_flipped_byte_in_the_index_fails_its_block_checksum(reader_copy) -> None:
    index = reader_copy / "model.ckpt.index"
    data = bytearray(index.read_bytes())
    data[100] ^= 0x01
    index.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.ckpt\.index .*CRC32C"):
        TFCheckpoint(reader_copy / "model.ckpt")


def test_corrupt_truncated_or_missing_data_is_refused_naming_file_and_variable(reader_copy) -> None:
    ckpt = TFCheckpoint(reader_copy / "model.ckpt")
    data = reader_copy / DATA
    raw = bytearray(data.read_bytes())
    name = "MobilenetV2/Conv/weights"
    raw[ckpt._entries[name][3] + 5] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"{name} in TF checkpoint shard .*{DATA} fails its CRC32C"):
        ckpt[name]
    data.write_bytes(bytes(raw[:100]))
    with pytest.raises(CheckpointError, match=rf"{DATA} is truncated: {name}"):
        ckpt[name]
    data.unlink()
    with pytest.raises(CheckpointError, match=rf"shard .*{DATA} \(holding {name}\) does not exist"):
        ckpt[name]
    with pytest.raises(CheckpointError, match=r"nothing\.index does not exist"):
        TFCheckpoint(reader_copy / "nothing")
