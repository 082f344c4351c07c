"""Receptive-field helpers used by notebooks/atrous_rates.ipynb."""

import pytest
import torch
import torchvision

from deeplab_lit.nets import build_backbone
from deeplab_lit.receptive_field import (
    effective_rf,
    main_path_layers,
    mass_side,
    reach_map,
    stack_rf,
    support_side,
    switched_off,
    valid_taps,
)


def test_receptive_field_arithmetic() -> None:
    assert stack_rf([(3, 1, 1)] * 3) == 7
    assert stack_rf([(3, 1, 1), (3, 1, 2), (3, 1, 4)]) == 15
    assert stack_rf([(7, 2, 1), (3, 2, 1), (3, 1, 1)]) == 7 + 2 * 2 + 2 * 4
    # DeepLabv3 Fig. 4 setting, exact counts: 65×65 rate 6 all-9 valid, 33×33 rate 24 centre only
    assert valid_taps(65, 6)["all"] == pytest.approx((53 / 65) ** 2)
    assert valid_taps(33, 24)["centre_only"] == pytest.approx((15 / 33) ** 2)
    assert valid_taps(33, 24)["all"] == 0.0
    assert valid_taps(6, 6) == {"valid": pytest.approx(1 / 9), "all": 0.0, "centre_only": 1.0}
    assert valid_taps(9, 1)["valid"] == pytest.approx((1 - 2 / 27) ** 2)


def test_reach_map_gridding() -> None:
    equal, multi_grid = reach_map((2, 2, 2)) > 0, reach_map((1, 2, 4)) > 0
    assert support_side(equal.double()) == 13 and int(equal.sum()) == 7 * 7  # only even offsets
    assert support_side(multi_grid.double()) == 15 and int(multi_grid.sum()) == 15 * 15


def test_effective_rf_of_a_conv_stack() -> None:
    net = torch.nn.Sequential(*(torch.nn.Conv2d(1, 1, 3, padding=d, dilation=d, bias=False) for d in (1, 2, 4)))
    for conv in net:
        torch.nn.init.constant_(conv.weight, 1.0)
    erf = effective_rf(net, torch.zeros(1, 1, 31, 31))
    assert support_side(erf) == 15
    assert torch.allclose(erf[8:23, 8:23], reach_map((1, 2, 4), margin=0).float())
    assert mass_side(erf, 1.0) == 15 and mass_side(erf, 0.0) == 1


def test_switched_off_zeroes_a_module_only_inside_the_block() -> None:
    branch = torch.nn.Conv2d(2, 2, 1)
    x = torch.randn(1, 2, 4, 4)
    with switched_off(branch):
        assert (branch(x) == 0).all()
    assert (branch(x) != 0).any()


def test_main_path_layers_give_known_receptive_fields() -> None:
    assert stack_rf(main_path_layers(torchvision.models.vgg16().features)) == 212  # VGG16 pool5
    backbone, _ = build_backbone("resnet18", 32)
    layers = main_path_layers(backbone)
    assert stack_rf(layers) == 435  # ResNet-18 at its native stride; shortcut 1×1 convs are left out
    assert len(layers) == 2 + 16


def test_small_cnn_sees_19_px_at_every_output_stride_far_less_than_the_cue_distances() -> None:
    """The context task's trunk: 3x3 convs up to stride 8, 1x1 after, so the head must reach the 48-192 px cues."""
    for output_stride in (8, 16, 32):
        backbone, _ = build_backbone("small_cnn", output_stride)
        assert stack_rf(main_path_layers(backbone)) == 19
    backbone.set_output_stride(8)
    erf = effective_rf(lambda x: backbone.eval()(x)["out"], torch.randn(4, 3, 97, 97))
    assert support_side(erf) == 19 and mass_side(erf, 0.5) < 19
