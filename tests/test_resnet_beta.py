"""ResNet-v1-beta: the three-conv stem, strides in the last unit of a block, slim's rates and multi-grid."""

import pytest
import torch

from conftest import randomize_bn
from deeplab_lit.nets import DeepLabV3PlusNet, build_backbone, count_parameters
from deeplab_lit.nets.resnet_beta import ResNetBetaBackbone


def test_full_width_channels_stem_and_size() -> None:
    backbone, _ = build_backbone("resnet101_beta", 16)
    assert (backbone.low_level_channels, backbone.mid_channels, backbone.out_channels) == (256, 512, 2048)
    assert [len(b) for b in backbone.blocks] == [3, 4, 23, 3]
    stem = [backbone.conv1_1[0], backbone.conv1_2[0], backbone.conv1_3[0]]
    assert [(c.kernel_size, c.out_channels, c.stride) for c in stem] == [
        ((3, 3), 64, (2, 2)),
        ((3, 3), 64, (1, 1)),
        ((3, 3), 128, (1, 1)),
    ]
    assert count_parameters(backbone) == 42_623_936


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_feature_strides(output_stride) -> None:
    backbone = ResNetBetaBackbone("resnet50_beta", output_stride, base_depth=8).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))
    assert feats["out"].shape == (1, 256, 64 // output_stride, 96 // output_stride)
    assert feats["low_level"].shape == (1, 32, 16, 24)
    assert feats["mid"].shape == (1, 64, 64 // min(16, output_stride), 96 // min(16, output_stride))


def test_the_stride_sits_in_the_last_unit_and_rates_follow_stack_blocks_dense() -> None:
    backbone, _ = build_backbone("resnet50_beta", 8, multi_grid=(1, 2, 4))

    def geometry(block: int) -> list[tuple[int, int]]:
        return [(u.conv2[0].stride[0], u.conv2[0].dilation[0]) for u in backbone.blocks[block]]

    # slim: the unit that would pass OS 8 (block2's last) runs at stride 1 and the old rate; the rate doubles after
    assert geometry(0) == [(1, 1), (1, 1), (2, 1)]
    assert geometry(1) == [(1, 1)] * 3 + [(1, 1)]
    assert geometry(2) == [(1, 2)] * 6
    assert geometry(3) == [(1, 4), (1, 8), (1, 16)]
    backbone.set_output_stride(16)
    assert geometry(1)[-1] == (2, 1) and geometry(2) == [(1, 1)] * 6
    assert geometry(3) == [(1, 2), (1, 4), (1, 8)]
    assert backbone.blocks[1][0].shortcut is not None and backbone.blocks[1][-1].shortcut is None


def test_set_output_stride_equals_building_at_that_stride_and_v3plus_runs_on_it() -> None:
    a = ResNetBetaBackbone("resnet50_beta", 16, (1, 2, 4), base_depth=8)
    b = ResNetBetaBackbone("resnet50_beta", 8, (1, 2, 4), base_depth=8)
    randomize_bn(a)
    b.load_state_dict(a.state_dict())
    a.set_output_stride(8)
    a.eval(), b.eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        torch.testing.assert_close(a(x)["out"], b(x)["out"])
        net = DeepLabV3PlusNet(5, backbone="resnet50_beta", aux=True, aspp_channels=16, decoder_channels=16).eval()
        out = net(x[..., :33, :33])
    assert out["out"].shape == out["aux"].shape == (1, 5, 33, 33)


def test_multi_grid_needs_one_rate_per_unit_of_block4() -> None:
    with pytest.raises(ValueError, match="one rate per unit of block4"):
        build_backbone("resnet101_beta", 16, multi_grid=(1, 2))
