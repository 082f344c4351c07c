"""predict writes every input's outputs under its own relative path, never over another's or silently over an earlier
run's; images are read as training reads them, 16-bit ones scaled to 8 bits."""

import json
import logging
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_lit.cli import main
from deeplab_lit.data import DataError
from deeplab_lit.data.folder import FolderSegmentation
from deeplab_lit.data.voc import read_image
from deeplab_lit.nets import DeepLabV3Net

RNG = np.random.default_rng(0)


def rgb(h: int, w: int) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))


def sixteen_bit(h: int = 20, w: int = 24) -> np.ndarray:
    values = RNG.integers(0, 65536, (h, w), dtype=np.uint16)
    values[0, :4] = (0, 128, 129, 65535)  # the rounding edges: 0, 0, 1, 255
    return values


def eight_bit(values: np.ndarray) -> np.ndarray:
    """The documented rule: value / 257, rounded; gray (H, W) repeated on 3 channels, alpha dropped."""
    values = values[..., None].repeat(3, axis=2) if values.ndim == 2 else values[..., :3]
    return np.round(values / 257).astype(np.uint8)


def save_png_16(path, values: np.ndarray) -> None:
    """A 16-bit RGB or RGBA PNG from (H, W, 3 or 4) uint16 (Pillow cannot write these)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, c = values.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)  # filter 0 on every row
    header = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "net.pt"
    torch.save(DeepLabV3Net(3, backbone="resnet18", multi_grid=(1, 2), aspp_channels=16).state_dict(), path)
    return path


def predict(weights, images, out, *extra: str) -> None:
    main(
        [
            "predict",
            "--model", "DeepLabV3",
            "--model.init_args.backbone", "resnet18",
            "--model.init_args.multi_grid", "[1, 2]",
            "--model.init_args.aspp_channels", "16",
            "--model.init_args.init_from", str(weights),
            "--data", "FolderDataModule",
            "--data.init_args.root", str(images),  # unused by predict
            "--data.init_args.class_names", "[a, b, c]",
            "--data.init_args.num_workers", "0",
            "--data.init_args.predict_path", str(images),
            "--prediction.output_dir", str(out),
            "--prediction.overlay_alpha", "0",  # the overlay is then the image as read
            "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(out.parent),
            *extra,
        ]
    )  # fmt: skip


def test_outputs_mirror_the_input_tree_and_an_earlier_run_is_counted(weights, tmp_path, caplog) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    for sub in ("a", "b"):
        (images / sub).mkdir(parents=True)
        rgb(20, 24).save(images / sub / "x.jpg")
    Image.fromarray(values := sixteen_bit()).save(images / "depth16.png")  # Pillow mode I;16
    save_png_16(images / "rgba16.png", rgba := np.stack([sixteen_bit() for _ in range(4)], axis=2))
    Image.fromarray(np.ones((8, 8), np.float32)).save(images / "float.tif")

    predict(weights, images, out)
    summary = json.loads((out / "predictions.json").read_text())
    inputs = ("a/x.jpg", "b/x.jpg", "depth16.png", "rgba16.png")
    assert sorted(summary["images"]) == [str(images / p) for p in inputs]
    assert (
        list(summary["failed"]) == [str(images / "float.tif")]
        and "floating-point" in summary["failed"][str(images / "float.tif")]
    )
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_overlay.png"))
    assert written == ["a/x_overlay.png", "b/x_overlay.png", "depth16_overlay.png", "rgba16_overlay.png"]
    assert (out / "a/x.png").is_file() and (out / "b/x.png").is_file()
    assert (np.asarray(Image.open(out / "depth16_overlay.png")) == eight_bit(values)).all()  # not clipped at 255
    assert (np.asarray(Image.open(out / "rgba16_overlay.png")) == eight_bit(rgba)).all()  # not the high byte

    (out / "notes.txt").write_text("kept")
    with caplog.at_level(logging.WARNING):
        predict(weights, images, out)
    assert f"{out} already holds 10 files of an earlier run: this run replaces 9 of them and leaves 1" in caplog.text

    single = tmp_path / "single"
    predict(weights, images / "a/x.jpg", single)
    assert sorted(p.name for p in single.iterdir()) == ["predictions.json", "x.png", "x_overlay.png"]


def test_two_inputs_with_one_output_name_are_refused_before_predicting(weights, tmp_path, capsys) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    (images / "sub").mkdir(parents=True)
    rgb(16, 16).save(images / "sub/x.jpg")
    rgb(16, 16).save(images / "sub/x.png")
    with pytest.raises(SystemExit) as stop:  # the CLI reports the DataError as one line, exit status 1
        predict(weights, images, out)
    assert stop.value.code == 1
    assert re.search(r"error: .*sub/x.jpg and .*sub/x.png would both be written as sub/x.png", capsys.readouterr().err)
    assert not out.exists() or not any(out.rglob("*.png"))


def test_training_reads_16_bit_images_with_the_same_rule(tmp_path) -> None:
    for folder in ("train/images", "train/masks"):
        (tmp_path / folder).mkdir(parents=True)
    values = sixteen_bit()
    Image.fromarray(values).save(tmp_path / "train/images/p.png")
    Image.fromarray(values).save(tmp_path / "train/images/t.tif")  # 16-bit TIFF, mode I;16
    for stem in ("p", "t"):
        Image.fromarray(np.zeros(values.shape, np.uint8)).save(tmp_path / f"train/masks/{stem}.png")
    dataset = FolderSegmentation(tmp_path, "train", num_classes=2)
    for index in range(2):
        assert (dataset[index][0].permute(1, 2, 0).numpy() == eight_bit(values)).all()

    save_png_16(tmp_path / "rgb16.png", rgb16 := np.stack([values, values[::-1], values[:, ::-1]], axis=2))
    assert (read_image(tmp_path / "rgb16.png") == eight_bit(rgb16)).all()
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "i32.tif")  # mode I, in the 16-bit range
    assert (read_image(tmp_path / "i32.tif") == eight_bit(values)).all()
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(DataError, match=r"big.tif has values in \[70000, 70000\], outside the 16-bit range"):
        read_image(tmp_path / "big.tif")
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"f.tif holds floating-point values \(mode F\)"):
        read_image(tmp_path / "f.tif")
