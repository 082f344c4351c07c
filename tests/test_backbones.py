"""Output strides, dilations and channel counts of every backbone."""

import pytest
import torch
import torchvision
from torch import nn

from conftest import randomize_bn
from deeplab_lit.nets import build_backbone
from deeplab_lit.nets.backbones import dilation_plan


def conv_geometry(module: nn.Module) -> list[tuple]:
    return [(m.stride, m.dilation, m.padding) for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_dilation_plan_turns_strides_into_rates_past_the_output_stride() -> None:
    assert dilation_plan([1, 2, 2, 2], 16, stride=4) == [(1, 1, 1), (2, 1, 1), (2, 1, 1), (1, 1, 2)]
    assert dilation_plan([1, 2, 2, 2], 8, stride=4) == [(1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4)]
    assert dilation_plan([1, 2, 2, 2], 32, stride=4) == [(1, 1, 1), (2, 1, 1), (2, 1, 1), (2, 1, 1)]


@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
@pytest.mark.parametrize(
    ("output_stride", "replace"), [(8, [False, True, True]), (16, [False, False, True]), (32, [False, False, False])]
)
def test_resnet_without_multigrid_matches_torchvision_dilated_resnet(name, output_stride, replace) -> None:
    backbone, _ = build_backbone(name, output_stride)
    ref = getattr(torchvision.models, name)(replace_stride_with_dilation=replace)
    for part in ("layer1", "layer2", "layer3", "layer4"):
        assert conv_geometry(backbone.get_submodule(part)) == conv_geometry(ref.get_submodule(part)), part


def test_basic_block_resnets_dilate_both_convs() -> None:
    # torchvision refuses dilation in BasicBlock; ours keeps the strided conv1 at the previous rate, conv2 at the new
    backbone, _ = build_backbone("resnet34", 8)
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in backbone.layer3] == [(1, 2)] + [(2, 2)] * 5
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in backbone.layer4] == [(2, 4), (4, 4), (4, 4)]
    assert backbone.layer3[0].conv1.stride == backbone.layer4[0].downsample[0].stride == (1, 1)


def test_multigrid_sets_unit_rates_in_the_last_block() -> None:
    backbone, _ = build_backbone("resnet50", 16, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in backbone.layer4] == [2, 4, 8]
    assert all(b.conv2.dilation[0] == 1 for b in backbone.layer3)
    backbone.set_output_stride(8)
    assert [b.conv2.dilation[0] for b in backbone.layer4] == [4, 8, 16]
    assert [b.conv2.dilation[0] for b in backbone.layer3] == [1, 2, 2, 2, 2, 2]
    assert backbone.layer4[0].downsample[0].stride == (1, 1)


BACKBONES = [
    ("vgg16", 512, 128),
    ("resnet18", 512, 64),
    ("resnet34", 512, 64),
    ("resnet50", 2048, 256),
    ("resnet101", 2048, 256),
    ("mobilenet_v2", 320, 24),
    ("xception65", 2048, 256),
    ("small_cnn", 128, 32),
]


@pytest.mark.parametrize(("name", "channels", "low_channels"), BACKBONES)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_feature_stride_equals_output_stride(name, channels, low_channels, output_stride) -> None:
    backbone, _ = build_backbone(name, output_stride)
    backbone.eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))
    assert feats["out"].shape == (1, channels, 64 // output_stride, 96 // output_stride)
    assert feats["low_level"].shape == (1, low_channels, 16, 24)
    assert feats["mid"].shape[1] == backbone.mid_channels
    assert backbone.out_channels == channels and backbone.low_level_channels == low_channels


@pytest.mark.parametrize("name", ["vgg16", "resnet34", "mobilenet_v2", "xception65", "small_cnn"])
def test_set_output_stride_equals_building_at_that_stride(name) -> None:
    a, _ = build_backbone(name, 16)
    b, _ = build_backbone(name, 8)
    b.load_state_dict(a.state_dict())
    a.set_output_stride(8)
    assert a.output_stride == 8
    x = torch.randn(1, 3, 48, 48)
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x)["out"], b(x)["out"])
    assert conv_geometry(a) == conv_geometry(b)


def test_vgg_trunk_is_deeplab_largefov() -> None:
    backbone, _ = build_backbone("vgg16", 8)
    pools = [m for m in backbone.features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(3, 2, 1)] * 3 + [(3, 1, 1)] * 2
    convs = [m for m in backbone.features if isinstance(m, nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1] * 10 + [2] * 3  # conv5 at rate 2


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_xception_restrides_like_timm_builds_it(output_stride) -> None:
    import timm

    backbone, _ = build_backbone("xception65", 16)
    params = list(backbone.parameters())
    backbone.set_output_stride(output_stride)
    ref = timm.create_model("xception65", features_only=True, output_stride=output_stride, out_indices=(1, 3, 4))
    assert conv_geometry(backbone.body) == conv_geometry(ref)
    assert all(a is b for a, b in zip(params, backbone.parameters(), strict=True))  # optimizers keep working


def test_xception_computes_timms_xception65_with_its_weights() -> None:
    """Our Xception-65 (xception_tf.py) holds timm's feature model's state dict and computes its features."""
    import timm

    ref = timm.create_model("xception65", features_only=True, output_stride=8, out_indices=(1, 3, 4)).eval()
    randomize_bn(ref)
    backbone, _ = build_backbone("xception65", 8)
    backbone.body.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        feats = backbone.eval()(x)
        for ours, theirs in zip((feats["low_level"], feats["mid"], feats["out"]), ref(x), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        backbone.tf_decoder_end_point = True  # TF DeepLab's end point: the same features before the ReLU
        low = backbone(x)["low_level"]
    assert low.min() < 0 and torch.equal(low.clamp(min=0), feats["low_level"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "resnet152", "output_stride": 16}, "unknown backbone 'resnet152'"),
        ({"name": "resnet50", "output_stride": 4}, "cannot give output stride 4; allowed: \\(8, 16, 32\\)"),
        ({"name": "vgg16", "output_stride": 12}, "cannot give output stride 12"),
        ({"name": "mobilenet_v2", "output_stride": 16, "multi_grid": (1, 2, 4)}, "ResNet backbones only"),
        ({"name": "resnet18", "output_stride": 16, "multi_grid": (1, 2, 4)}, "one rate per unit \\(2 units\\)"),
    ],
)
def test_bad_backbone_arguments_name_the_problem(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_backbone(**kwargs)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "small_cnn"])
def test_a_smaller_output_stride_computes_the_same_function_sampled_more_densely(name) -> None:
    """Removing a stride and dilating what follows keeps every output of the strided network, exactly."""
    backbone, _ = build_backbone(name, 32)
    randomize_bn(backbone)
    backbone.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = backbone(x)["out"]  # (1, C, 2, 2)
        for output_stride, step in ((16, 2), (8, 4)):
            backbone.set_output_stride(output_stride)
            dense = backbone(x)["out"]
            torch.testing.assert_close(dense[..., ::step, ::step], reference, rtol=1e-3, atol=1e-3)
