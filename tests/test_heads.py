"""Tiny-shape tests of the heads: branch counts, dilations, image pooling, V2's summed ASPP, decoder, cascade."""

import pytest
import torch
from torch import nn

from deeplab_lit.nets import ASPP, ASPPv2, AtrousFC, CascadedBlocks, Decoder


def test_aspp_branches_rates_and_image_pooling() -> None:
    aspp = ASPP(32, rates=(6, 12, 18), out_channels=16).eval()
    assert len(aspp.convs) == 4 and aspp.pooling is not None
    assert [c[0].kernel_size for c in aspp.convs] == [(1, 1)] + [(3, 3)] * 3
    assert aspp.rates == (6, 12, 18)
    assert aspp.project[0].in_channels == 5 * 16
    assert aspp(torch.randn(2, 32, 45, 45)).shape == (2, 16, 45, 45)


def test_image_pooling_off_removes_the_branch() -> None:
    on, off = ASPP(32, out_channels=16), ASPP(32, out_channels=16, image_pooling=False)
    assert off.pooling is None
    assert off.project[0].in_channels == 4 * 16
    assert not any("pooling" in name for name, _ in off.named_parameters())
    n_pool = sum(p.numel() for p in on.pooling.parameters()) + 16 * 16  # branch + its projection slice
    assert sum(p.numel() for p in on.parameters()) - sum(p.numel() for p in off.parameters()) == n_pool


def test_image_pooling_carries_global_context() -> None:
    # A change far away from a pixel reaches it through image pooling even when the atrous taps miss it.
    torch.manual_seed(0)
    aspp = ASPP(8, rates=(1,), out_channels=8, dropout=0.0).eval()
    x = torch.randn(1, 8, 40, 40)
    y = x.clone()
    y[..., 30:, 30:] += 5.0
    with torch.no_grad():
        assert not torch.allclose(aspp(x)[..., 0, 0], aspp(y)[..., 0, 0])
        aspp.pooling = None
        aspp.project[0] = nn.Conv2d(16, 8, 1, bias=False)
        torch.testing.assert_close(aspp(x)[..., 0, 0], aspp(y)[..., 0, 0])


@pytest.mark.parametrize(
    ("output_stride", "expected"), [(16, (6, 12, 18, 24)), (8, (12, 24, 36, 48)), (32, (3, 6, 9, 12))]
)
def test_aspp_rates_scale_with_output_stride(output_stride, expected) -> None:
    aspp = ASPP(8, rates=(6, 12, 18, 24), out_channels=8)
    aspp.set_output_stride(output_stride)
    assert aspp.rates == expected
    assert [c[0].padding[0] for c in aspp.convs[1:]] == list(expected)


def test_separable_aspp_uses_depthwise_convs() -> None:
    aspp = ASPP(16, out_channels=8, separable=True)
    depthwise = [m for m in aspp.modules() if isinstance(m, nn.Conv2d) and m.groups == 16]
    assert [m.dilation[0] for m in depthwise] == [6, 12, 18]
    assert sum(p.numel() for p in aspp.parameters()) < sum(p.numel() for p in ASPP(16, out_channels=8).parameters())


def test_aspp_v2_sums_one_classifier_per_rate() -> None:
    head = ASPPv2(16, 5, rates=(2, 4, 8, 12), fc_channels=8).eval()
    assert head.rates == (2, 4, 8, 12)
    x = torch.randn(1, 16, 21, 21)
    with torch.no_grad():
        torch.testing.assert_close(head(x), sum(branch(x) for branch in head.branches))
    direct = ASPPv2(16, 5, rates=(6, 12, 18, 24), fc_channels=0)
    assert [b.kernel_size for b in direct.branches] == [(3, 3)] * 4
    assert [b.out_channels for b in direct.branches] == [5] * 4
    direct.set_output_stride(16)
    assert direct.rates == (3, 6, 9, 12)


@pytest.mark.parametrize("rates", [(0, 6), (-1,), (6.5,)])
def test_bad_rates_are_rejected(rates) -> None:
    with pytest.raises(ValueError, match="atrous rates must be a non-empty list of positive integers"):
        ASPP(8, rates=rates)
    with pytest.raises(ValueError, match="atrous rates"):
        ASPPv2(8, 3, rates=rates)


def test_no_rates_leave_aspp_with_its_1x1_branch_and_v2_refuses_them() -> None:
    aspp = ASPP(8, rates=(), out_channels=4)  # TF DeepLab's MobileNetV2 head: 1x1 + image pooling
    assert len(aspp.convs) == 1 and aspp.project[0].in_channels == 8
    assert aspp(torch.randn(2, 8, 5, 5)).shape == (2, 4, 5, 5)
    with pytest.raises(ValueError, match="atrous rates"):
        ASPPv2(8, 3, rates=())


def test_atrous_fc_keeps_size_and_rejects_asymmetric_padding() -> None:
    fc = AtrousFC(8, 16, kernel_size=4, rate=4)
    assert fc(torch.randn(1, 8, 11, 11)).shape == (1, 16, 11, 11)
    with pytest.raises(ValueError, match="kernel 4 with rate 3"):
        AtrousFC(8, 16, kernel_size=4, rate=3)


def test_decoder_shapes_and_structure() -> None:
    dec = Decoder(32, 24, low_level_channels=12, channels=16, num_convs=2)
    assert dec.reduce[0].out_channels == 12
    assert [m.kernel_size for m in dec.convs.modules() if isinstance(m, nn.Conv2d)] == [(3, 3), (3, 3)]
    assert dec.convs[0][0].in_channels == 32 + 12
    out = dec(torch.randn(2, 32, 6, 6), torch.randn(2, 24, 23, 23))
    assert out.shape == (2, 16, 23, 23)
    with pytest.raises(ValueError, match="num_convs >= 1"):
        Decoder(32, 24, num_convs=0)


def test_cascade_doubles_rates_block_by_block() -> None:
    cascade = CascadedBlocks(3, channels=64, output_stride=16, multi_grid=(1, 2, 1))
    rates = [[u.conv2.dilation[0] for u in block] for block in cascade.blocks]
    assert rates == [[4, 8, 4], [8, 16, 8], [16, 32, 16]]
    assert cascade(torch.randn(1, 64, 9, 9)).shape == (1, 64, 9, 9)
    cascade.set_output_stride(256)  # V3 Table 1: going deeper without atrous convolution
    assert [block[0].conv2.stride[0] for block in cascade.blocks] == [2, 2, 2]
    assert cascade(torch.randn(1, 64, 16, 16)).shape == (1, 64, 2, 2)
