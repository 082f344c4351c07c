"""TF model-zoo checkpoints in our networks: parity with a TF reference, strict conversion, TF semantics.

The fixtures (tests/fixtures/tf_zoo/make_fixtures.py) are checkpoints written by TensorFlow's saver with random
values, and the logits of a forward pass written with TF ops in float64 (TF DeepLab's graphs, narrowed).
"""

import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deeplab_lit.errors import CheckpointError, ConfigError
from deeplab_lit.nets import DeepLabV3Net, DeepLabV3PlusNet
from deeplab_lit.nets.backbones import MobileNetV2Backbone
from deeplab_lit.nets.resnet_beta import ResNetBetaBackbone
from deeplab_lit.nets.tf_zoo import backbone_plan, load_tf_checkpoint
from deeplab_lit.nets.xception_tf import Xception65Backbone

FIXTURES = Path(__file__).parent / "fixtures" / "tf_zoo"
DATA = "model.ckpt.data-00000-of-00001"


def mobilenet_v3(**changes) -> DeepLabV3Net:
    """mobilenetv2_coco_voc_trainaug's graph (no atrous branches, no decoder) at depth multiplier 0.5, 2 classes."""
    args = {"multi_grid": None, "rates": (), "aspp_channels": 32, "align_corners": True, "backbone_bn_eps": 1e-3}
    backbone = MobileNetV2Backbone(16, width_mult=0.5)
    return DeepLabV3Net(2, backbone=backbone, **(args | {"tf_same_padding": True} | changes))


def resnet_v3plus(**changes) -> DeepLabV3PlusNet:
    """A V3+ with separable ASPP (6, 12, 18) and decoder on ResNet-50-beta (base depth 4, multi-grid 1, 2, 4)."""
    args = {"aspp_channels": 16, "decoder_channels": 16, "separable": True, "align_corners": True}
    backbone = ResNetBetaBackbone("resnet50_beta", 16, (1, 2, 4), base_depth=4)
    return DeepLabV3PlusNet(2, backbone=backbone, **(args | {"tf_same_padding": True} | changes))


def xception_v3plus(num_classes: int = 2, **changes) -> DeepLabV3PlusNet:
    """xception65_coco_voc_trainaug's graph (separable ASPP and decoder on TF's end point), depths divided by 32."""
    args = {"aspp_channels": 16, "decoder_channels": 16, "separable": True, "align_corners": True}
    args |= {"backbone_bn_eps": 1e-3, "tf_decoder_end_point": True}
    return DeepLabV3PlusNet(num_classes, backbone=Xception65Backbone(16, width_divisor=32), **(args | changes))


NETS = {"mobilenetv2_dm05": mobilenet_v3, "resnet50_beta_v3plus": resnet_v3plus, "xception65_v3plus": xception_v3plus}
SAME_CASES = ["logits_65x65_os16", "logits_65x65_os8", "logits_97x129_os16", "logits_64x96_os16"]
CASES = {name: SAME_CASES for name in NETS} | {
    # Xception pads its strided convs explicitly (no SAME case on even sizes): both sizes at both strides
    "xception65_v3plus": ["logits_65x65_os16", "logits_65x65_os8", "logits_97x129_os16", "logits_97x129_os8"]
}


def unpack(name: str, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The fixture as TF wrote it (its data file is stored compressed) and its reference inputs and logits."""
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(FIXTURES / name / "model.ckpt.index", folder)
    (folder / DATA).write_bytes(lzma.decompress((FIXTURES / name / f"{DATA}.xz").read_bytes()))
    return folder / "model.ckpt", dict(np.load(FIXTURES / name / "expected.npz"))


def logits(net: torch.nn.Module, image: np.ndarray, output_stride: int) -> torch.Tensor:
    x = torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255
    net.set_output_stride(output_stride)
    with torch.no_grad():
        return net.eval()((x - 0.5) / 0.5)["out"]  # TF DeepLab's [-1, 1]: a datamodule's mean 0.5, std 0.5


def max_diff(net: torch.nn.Module, expected: dict[str, np.ndarray], key: str) -> float:
    _, size, stride = key.split("_")
    out = logits(net, expected[f"image_{size}"], int(stride.removeprefix("os")))
    return float((out - torch.from_numpy(expected[key])).abs().max())


@pytest.mark.parametrize("name", list(NETS))
def test_converted_network_matches_the_tf_reference(name, tmp_path) -> None:
    prefix, expected = unpack(name, tmp_path)
    net = NETS[name]()
    load_tf_checkpoint(net, prefix)
    keys = [k for k in expected if k.startswith("logits_")]
    assert keys == CASES[name]
    for key in keys:
        assert max_diff(net, expected, key) < 1e-4, key


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "option", "key"),
    [
        ("mobilenetv2_dm05", {"align_corners": False}, "logits_65x65_os16"),
        ("mobilenetv2_dm05", {"tf_same_padding": False}, "logits_64x96_os16"),
        ("mobilenetv2_dm05", {"backbone_bn_eps": None}, "logits_65x65_os16"),
        ("resnet50_beta_v3plus", {"align_corners": False}, "logits_65x65_os16"),
        ("resnet50_beta_v3plus", {"tf_same_padding": False}, "logits_64x96_os16"),
        ("xception65_v3plus", {"align_corners": False}, "logits_65x65_os16"),
        ("xception65_v3plus", {"backbone_bn_eps": 1e-5}, "logits_65x65_os16"),
        ("xception65_v3plus", {"tf_decoder_end_point": False}, "logits_65x65_os16"),
    ],
)
def test_each_tf_semantic_is_needed(name, option, key, tmp_path) -> None:
    prefix, expected = unpack(name, tmp_path)
    net = NETS[name](**option)  # switched back to PyTorch's: the same weights give other logits
    load_tf_checkpoint(net, prefix)
    assert max_diff(net, expected, key) > 1e-2


def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_file_and_variables_and_nothing_is_loaded(
    tmp_path,
) -> None:
    prefix, _ = unpack("mobilenetv2_dm05", tmp_path)
    net = resnet_v3plus()  # another architecture
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"mobilenetv2_dm05/model\.ckpt does not fit DeepLabV3PlusNet") as err:
        load_tf_checkpoint(net, prefix)
    assert "lacks (330): aspp1_depthwise/... (5), " in str(err.value) and "resnet_v1_50/... (" in str(err.value)
    assert "no place for (255): MobilenetV2/... (255)" in str(err.value)
    with pytest.raises(CheckpointError, match=r"lacks \(5\): aspp1/BatchNorm/beta, .*, aspp1/weights \("):
        load_tf_checkpoint(mobilenet_v3(rates=(6,)), prefix)  # variables missing
    with pytest.raises(CheckpointError, match=r"no place for \(5\): image_pooling/BatchNorm/beta"):
        load_tf_checkpoint(mobilenet_v3(image_pooling=False), prefix)  # variables left over
    wrong_classes = DeepLabV3Net(21, backbone=MobileNetV2Backbone(16, 0.5), multi_grid=None, rates=(), aspp_channels=32)
    with pytest.raises(CheckpointError, match=r"mis-shaped \(2\): classifier\.weight: expected \(21, 32, 1, 1\)"):
        load_tf_checkpoint(wrong_classes, prefix)
    with pytest.raises(CheckpointError, match=r"our parameters no TF variable fills \(\d+\): aux_classifier"):
        load_tf_checkpoint(mobilenet_v3(aux=True), prefix)
    (prefix.parent / DATA).write_bytes((prefix.parent / DATA).read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=rf"{DATA} is truncated"):
        load_tf_checkpoint(mobilenet_v3(), prefix)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_tf_decoder_end_point_is_refused_where_tf_deeplab_has_none() -> None:
    with pytest.raises(ConfigError, match=r"not MobileNetV2Backbone; set tf_decoder_end_point: false"):
        DeepLabV3PlusNet(2, backbone=MobileNetV2Backbone(16, 0.5), tf_decoder_end_point=True)


def test_an_xception_checkpoint_that_does_not_fit_is_refused_naming_the_file_and_variables(tmp_path) -> None:
    prefix, _ = unpack("xception65_v3plus", tmp_path)
    net = xception_v3plus(rates=(6, 12, 18, 24))  # a variable scope missing from the checkpoint
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"xception65_v3plus/model\.ckpt does not fit DeepLabV3PlusNet") as err:
        load_tf_checkpoint(net, prefix)
    assert "lacks (10): aspp4_depthwise/... (5), aspp4_pointwise/... (5)" in str(err.value)
    with pytest.raises(CheckpointError, match=r"no place for \(5\): image_pooling/BatchNorm/beta"):
        load_tf_checkpoint(xception_v3plus(image_pooling=False), prefix)  # variables left over
    with pytest.raises(CheckpointError, match=r"mis-shaped \(2\): classifier\.weight: expected \(21, 16, 1, 1\)"):
        load_tf_checkpoint(xception_v3plus(21), prefix)
    with pytest.raises(CheckpointError, match=r"no place for \(\d+\): xception_65/\.\.\. \(660\)") as err:
        load_tf_checkpoint(resnet_v3plus(), prefix)  # another architecture
    assert "resnet_v1_50/... (" in str(err.value)
    mobilenet, _ = unpack("mobilenetv2_dm05", tmp_path)
    with pytest.raises(CheckpointError, match=r"lacks \(\d+\): .*xception_65/\.\.\. \(660\)"):
        load_tf_checkpoint(net, mobilenet)
    (prefix.parent / DATA).write_bytes((prefix.parent / DATA).read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=rf"xception65_v3plus/{DATA} is truncated"):
        load_tf_checkpoint(xception_v3plus(), prefix)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_backbone_weights_from_a_tf_checkpoint(tmp_path) -> None:
    prefix, _ = unpack("resnet50_beta_v3plus", tmp_path)
    net = resnet_v3plus()
    load_tf_checkpoint(net, prefix)
    backbone = ResNetBetaBackbone("resnet50_beta", 16, (1, 2, 4), base_depth=4)
    rest = backbone.load_imagenet(str(prefix), "resnet50_beta")  # what backbone_weights="…/model.ckpt" calls
    assert all(torch.equal(v, net.backbone.state_dict()[k]) for k, v in backbone.state_dict().items())
    assert "logits/semantic/weights" in rest and "aspp0/weights" in rest
    with pytest.raises(CheckpointError, match=r"lacks \(255\): MobilenetV2/\.\.\. \(255\)"):
        MobileNetV2Backbone(16, 0.5).load_imagenet(str(prefix), "mobilenet_v2")


def test_xception_backbone_weights_from_a_tf_checkpoint(tmp_path) -> None:
    prefix, _ = unpack("xception65_v3plus", tmp_path)
    net = xception_v3plus()
    load_tf_checkpoint(net, prefix)
    backbone = Xception65Backbone(16, width_divisor=32)
    rest = backbone.load_imagenet(str(prefix), "xception65")  # what backbone_weights="…/model.ckpt" calls
    assert all(torch.equal(v, net.backbone.state_dict()[k]) for k, v in backbone.state_dict().items())
    assert "logits/semantic/weights" in rest and "decoder/decoder_conv0_depthwise/depthwise_weights" in rest
    assert backbone_plan(backbone)[1] == ("xception_65/logits/",)  # the ImageNet classifier, left over too
    with pytest.raises(CheckpointError, match=r"lacks \(660\): xception_65/\.\.\. \(660\)"):
        backbone.load_imagenet(str(unpack("mobilenetv2_dm05", tmp_path)[0]), "xception65")


@pytest.mark.slow  # 30 s on a loaded 2-core machine, most of it importing Lightning
def test_init_from_takes_the_tf_checkpoint_prefix(tmp_path) -> None:
    from deeplab_lit.systems.segmentation import SegmentationModule

    prefix, expected = unpack("mobilenetv2_dm05", tmp_path)
    module = SegmentationModule(mobilenet_v3(), num_classes=2, init_from=str(prefix))
    assert max_diff(module.net, expected, "logits_65x65_os16") < 1e-4
    with pytest.raises(CheckpointError, match="does not fit DeepLabV3PlusNet"):
        SegmentationModule(resnet_v3plus(), num_classes=2, init_from=str(prefix))


def test_official_xception_command_refuses_a_checkpoint_of_another_width_in_one_line(tmp_path) -> None:
    """The documented command as a user types it, with a TF checkpoint prefix that is not the released network's."""
    prefix, _ = unpack("xception65_v3plus", tmp_path)  # the narrow fixture: the full-width config cannot take it
    config = Path(__file__).parents[1] / "experiments" / "configs" / "official" / "xception65_coco_voc_trainaug.yaml"
    args = ["--config", str(config), "--model.init_args.init_from", str(prefix), "--data.init_args.root", "VOCdevkit"]
    command = [sys.executable, "-m", "deeplab_lit", "test", *args]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert f"TF checkpoint {prefix}" in run.stderr and "mis-shaped" in run.stderr
    assert "backbone.body.stem_0.conv.weight: expected (32, 3, 3, 3), got (1, 3, 3, 3)" in run.stderr
