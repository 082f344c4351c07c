"""The DeepLab V1/V2 Caffe releases: the .caffemodel reader, strict conversion, and output parity with reference
forward passes that follow the releases' prototxts (tests/caffe_reference.py), on files written in the real format.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from caffe_reference import (
    aspp_vgg_layers,
    aspp_vgg_reference,
    caffe_input,
    largefov_layers,
    largefov_reference,
    resnet_layers,
    resnet_msc_reference,
    write_caffemodel,
)
from test_voc import write_pair
from torchvision import tv_tensors

from deeplab_lit.data.transforms import EvalPreset
from deeplab_lit.errors import CheckpointError
from deeplab_lit.inference import V1_CRF, V2_CRF, CRFParams
from deeplab_lit.nets import MSC, DeepLabV1Net, DeepLabV2Net
from deeplab_lit.nets.caffe_convert import caffe_state_dict, load_caffemodel
from deeplab_lit.nets.caffe_model import read_caffemodel
from deeplab_lit.systems import DeepLabV2

OFFICIAL = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "official"
SIZES = [(65, 65), (97, 129)]


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _our_input(rgb: np.ndarray, config: str) -> torch.Tensor:
    """The image as our datamodule normalises it with the official config's mean and std."""
    data = yaml.safe_load((OFFICIAL / config).read_text())["data"]["init_args"]
    image = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
    return EvalPreset(data["mean"], data["std"])(tv_tensors.Image(image))[None]


def _check(net: torch.nn.Module, reference, layers: dict, config: str) -> float:
    worst = 0.0
    for h, w in SIZES:
        rgb = _image(h, w)
        with torch.no_grad():
            ours = net(_our_input(rgb, config))["out"].double()
        ref = reference(caffe_input(rgb), layers)[..., :h, :w]
        assert ours.shape == ref.shape
        worst = max(worst, (ours - ref).abs().max().item())
    return worst


def test_reader_both_formats_and_shapes(tmp_path):
    rng = np.random.default_rng(0)
    blobs = [("conv", "Convolution", [rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                                      rng.standard_normal(4).astype(np.float32)]), ("relu", "ReLU", [])]  # fmt: skip
    for legacy in (False, True):
        layers = read_caffemodel(write_caffemodel(tmp_path / f"m{legacy}.caffemodel", blobs, legacy))
        assert list(layers) == ["conv", "relu"] and layers["relu"] == []
        assert layers["conv"][0].shape == (4, 3, 3, 3)
        np.testing.assert_array_equal(layers["conv"][0], blobs[0][2][0])
        assert layers["conv"][1].shape == ((1, 1, 1, 4) if legacy else (4,))


def test_truncated_file_names_the_file(tmp_path):
    path = write_caffemodel(tmp_path / "m.caffemodel", largefov_layers(np.random.default_rng(0))[:3])
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"m\.caffemodel is truncated"):
        read_caffemodel(path)


@pytest.fixture(scope="module")
def largefov(tmp_path_factory):
    """The V1 release's layers with random blobs, written in the legacy ``layers`` format, and a network for them."""
    layers = largefov_layers(np.random.default_rng(1))
    path = write_caffemodel(tmp_path_factory.mktemp("v1") / "train2_iter_8000.caffemodel", layers, legacy=True)
    net = DeepLabV1Net(21, backbone="vgg16_caffe", pool5_avg=True, interp="caffe").eval()
    return path, {n: b for n, _, b in layers}, net


def test_largefov_parity(largefov):
    path, blobs, net = largefov
    load_caffemodel(net, path)
    assert _check(net, largefov_reference, blobs, "deeplabv1_largefov_caffe-voc12.yaml") < 1e-4


def _refused(layers: dict, net, arch: str = "deeplabv1_largefov") -> str:
    with pytest.raises(CheckpointError) as err:
        caffe_state_dict(layers, arch, net, "release.caffemodel")
    assert "release.caffemodel" in str(err.value)
    return str(err.value)


def test_bad_files_are_refused_with_the_layers_named(largefov):
    _, blobs, net = largefov
    small = [np.zeros((2, 2, 1, 1), np.float32)]
    assert "missing layers (1): conv3_2" in _refused({k: v for k, v in blobs.items() if k != "conv3_2"}, net)
    assert "unexpected layers (1): fc9" in _refused({**blobs, "fc9": small}, net)
    wrong = {**blobs, "fc8_voc12": [np.zeros((91, 1024, 1, 1), np.float32), np.zeros(91, np.float32)]}
    assert "fc8_voc12 has 91 classes, the network 21" in _refused(wrong, net)
    message = _refused({"conv1": small, "res4b22_branch2c": small}, net)  # another architecture's file
    assert "conv1_1" in message and "res4b22_branch2c" in message and "looks like a deeplabv2_resnet101" in message
    no_bias = {**blobs, "fc7": blobs["fc7"][:1]}
    assert "fc.fc7.bias of DeepLabV1Net gets no weight" in _refused(no_bias, net)


@pytest.mark.slow
def test_aspp_vgg16_parity(tmp_path):
    layers = aspp_vgg_layers(np.random.default_rng(2))
    path = write_caffemodel(tmp_path / "train2_iter_20000.caffemodel", layers)
    net = DeepLabV2Net(21, backbone="vgg16_caffe", interp="caffe").eval()
    load_caffemodel(net, path)
    blobs = {n: b for n, _, b in layers}
    assert _check(net, aspp_vgg_reference, blobs, "deeplabv2_vgg16-aspp-l_caffe-voc12.yaml") < 1e-4


@pytest.mark.slow
def test_resnet101_msc_parity(tmp_path):
    layers = resnet_layers(np.random.default_rng(3))
    # the MSC branches' copies of shared layers, as Caffe writes them
    copies = [(f"{n}_res{s}", t, b) for n, t, b in layers if n in ("conv1", "fc1_voc12_c0") for s in ("075", "05")]
    path = write_caffemodel(tmp_path / "train2_iter_20000.caffemodel", layers + copies)
    net = MSC(DeepLabV2Net(21, backbone="resnet101_caffe", interp="caffe"), scales=(0.75, 0.5)).eval()
    load_caffemodel(net, path)
    blobs = {n: b for n, _, b in layers}
    config = "deeplabv2_resnet101-msc_caffe-voc12.yaml"
    for h, w in SIZES:
        rgb = _image(h, w)
        with torch.no_grad():
            ours = net(_our_input(rgb, config))
        single, fused = resnet_msc_reference(caffe_input(rgb), blobs)
        assert (fused - single).abs().max() > 0.1  # the 0.75 and 0.5 scales win somewhere: their path is tested
        assert (ours["scales"][0].double() - single[..., :h, :w]).abs().max() < 1e-4
        assert (ours["out"].double() - fused[..., :h, :w]).abs().max() < 1e-4

    # a copy of a shared layer that differs from it is refused
    blobs["conv1_res05"] = [blobs["conv1"][0] + 1]
    with pytest.raises(CheckpointError, match="conv1_res05 differs from conv1"):
        caffe_state_dict(blobs, "deeplabv2_resnet101", net.net, path)


@pytest.mark.slow
def test_resnet101_coco_init_fine_tunes(tmp_path):
    """The COCO-init release (91 classes, classifiers fc1_c0..3) starts a 21-class DeepLabV2 with new classifiers."""
    path = write_caffemodel(tmp_path / "init.caffemodel", resnet_layers(np.random.default_rng(4), 91, tag=""))
    kwargs = {"backbone": "resnet101_caffe", "interp": "caffe", "init_from": str(path)}
    with pytest.raises(CheckpointError, match="fc1_c0 has 91 classes, the network 21"):
        DeepLabV2(**kwargs)
    model = DeepLabV2(**kwargs, reset_classifier=True)
    layers = read_caffemodel(path)
    torch.testing.assert_close(model.net.backbone.layer4[2].conv3.weight, torch.from_numpy(layers["res5c_branch2c"][0]))


def test_official_configs_use_the_released_crf():
    for config, default in (("deeplabv1_largefov_caffe-voc12.yaml", V1_CRF),
                            ("deeplabv2_resnet101-msc_caffe-voc12.yaml", V2_CRF)):  # fmt: skip
        crf = yaml.safe_load((OFFICIAL / config).read_text())["model"]["init_args"]["crf"]
        assert CRFParams(**crf) == default


@pytest.mark.slow
def test_official_command_reports_before_and_after_crf(largefov, tmp_path):
    """The documented command, as a user types it, on a tiny VOC tree: both mIoUs of the paper's pair."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n2007_000042\n")
    for name in ("2007_000033", "2007_000042"):
        write_pair(root, name, (40, 48), rng)
    config = OFFICIAL / "deeplabv1_largefov_caffe-voc12.yaml"
    args = ["--config", str(config), "--model.init_args.init_from", str(largefov[0]),
            "--data.init_args.root", str(tmp_path / "VOCdevkit"), "--data.init_args.num_workers", "0",
            "--model.init_args.crf_workers", "0", "--trainer.accelerator", "cpu"]  # fmt: skip
    command = [sys.executable, "-m", "deeplab_lit", "test", *args]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(next((tmp_path / "runs").rglob("metrics.csv"))) as f:
        logged = [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]
    logged = {k: float(v) for row in logged for k, v in row.items() if k.endswith("mIoU")}
    assert {"test/before_crf/mIoU", "test/mIoU"} <= set(logged)
    after = json.loads(next(tmp_path.rglob("test_metrics.json")).read_text())["mIoU"]
    assert after == pytest.approx(logged["test/mIoU"])
