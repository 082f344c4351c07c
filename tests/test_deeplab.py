"""The four generations end to end: shapes, gradients, parameter counts, output-stride switching, MSC."""

import pytest
import torch

from deeplab_lit.nets import (
    MSC,
    DeepLabV1Net,
    DeepLabV2Net,
    DeepLabV3Net,
    DeepLabV3PlusNet,
    build_net,
    count_parameters,
)

CASES = [
    ("v1", "vgg16", {}),
    ("v1", "vgg16", {"msc_features": True}),
    ("v2", "vgg16", {"rates": (2, 4, 8, 12)}),
    ("v2", "resnet101", {}),
    ("v3", "resnet18", {"multi_grid": (1, 2)}),
    ("v3", "resnet34", {"multi_grid": None, "image_pooling": False}),
    ("v3", "resnet50", {"aux": True}),
    ("v3", "resnet101", {"rates": (6, 12, 18, 24)}),
    ("v3", "mobilenet_v2", {"multi_grid": None}),
    ("v3", "resnet50", {"cascade_blocks": 3}),
    ("v3plus", "resnet50", {"separable": True}),
    ("v3plus", "xception65", {}),
    ("v3plus", "mobilenet_v2", {"decoder": False}),
]


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize(("generation", "backbone", "kwargs"), CASES, ids=lambda v: str(v))
def test_forward_backward(generation, backbone, kwargs, output_stride) -> None:
    net = build_net(generation, 5, backbone=backbone, output_stride=output_stride, **kwargs)
    x = torch.randn(2, 3, 64, 96)
    out = net(x)
    assert out["out"].shape == (2, 5, 64, 96)
    assert ("aux" in out) == kwargs.get("aux", False)
    loss = sum(o.square().mean() for o in out.values())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
    assert net.backbone(x)["out"].shape[-2:] == (64 // min(output_stride, 32), 96 // min(output_stride, 32))


def test_logits_match_odd_input_sizes() -> None:
    net = DeepLabV3PlusNet(4, backbone="resnet18").eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 67, 53))["out"].shape == (1, 4, 67, 53)


@pytest.mark.parametrize(
    ("kernel", "rate", "channels", "millions"),
    [(3, 12, 1024, 20.5), (7, 4, 4096, 134.3), (4, 4, 4096, 65.1), (4, 8, 4096, 65.1)],
)
def test_v1_parameter_counts_match_table_2(kernel, rate, channels, millions) -> None:
    net = DeepLabV1Net(21, fc_kernel=kernel, fc_rate=rate, fc_channels=channels)
    assert count_parameters(net) / 1e6 == pytest.approx(millions, abs=0.05)
    assert net.fc.fc6.dilation == (rate, rate)


def test_v1_msc_adds_640_channels_before_the_classifier() -> None:
    net = DeepLabV1Net(21, msc_features=True)
    assert net.classifier.in_channels == 1024 + 640
    assert [b[0].out_channels for b in net.msc] == [128] * 5
    with pytest.raises(ValueError, match="msc_features taps VGG16"):
        DeepLabV1Net(21, backbone="resnet50", msc_features=True)


def test_v2_defaults_follow_the_paper() -> None:
    vgg = DeepLabV2Net(21, backbone="vgg16")
    assert vgg.aspp.rates == (6, 12, 18, 24)
    assert all(b[0].fc6.out_channels == 1024 for b in vgg.aspp.branches)  # fc6–fc7–fc8 per rate
    resnet = DeepLabV2Net(21)
    assert resnet.output_stride == 8 and resnet.aspp.rates == (6, 12, 18, 24)
    assert all(b.out_channels == 21 for b in resnet.aspp.branches)  # one atrous classifier per rate


def test_v3_defaults_follow_the_paper() -> None:
    net = DeepLabV3Net(21)
    assert net.output_stride == 16 and net.aspp.rates == (6, 12, 18) and net.aspp.pooling is not None
    assert [b.conv2.dilation[0] for b in net.backbone.layer4] == [2, 4, 8]  # multi-grid (1, 2, 4)
    assert net.aspp.convs[0][0].out_channels == 256
    net8 = DeepLabV3Net(21, output_stride=8)
    assert net8.aspp.rates == (12, 24, 36)


def test_v3plus_defaults_follow_the_paper() -> None:
    net = DeepLabV3PlusNet(21)
    assert type(net.backbone).__name__ == "Xception65Backbone"
    assert net.decoder.reduce[0].out_channels == 48
    assert len(net.decoder.convs) == 2 and net.decoder.out_channels == 256
    assert DeepLabV3PlusNet(21, backbone="resnet50", decoder=False).decoder is None


@pytest.mark.parametrize("generation", ["v1", "v2", "v3", "v3plus"])
def test_set_output_stride_equals_building_at_that_stride(generation) -> None:
    kwargs = {"backbone": "resnet18", "multi_grid": (1, 2)} if generation in ("v3", "v3plus") else {}
    if generation == "v2":
        kwargs = {"backbone": "resnet18"}
    trained = build_net(generation, 3, output_stride=16, **kwargs).eval()
    fresh = build_net(generation, 3, output_stride=8, **kwargs).eval()
    fresh.load_state_dict(trained.state_dict())
    trained.set_output_stride(8)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(trained(x)["out"], fresh(x)["out"])
    assert trained.output_stride == 8


def test_msc_fuses_scales_by_max_and_returns_each() -> None:
    net = DeepLabV3PlusNet(3, backbone="resnet18").eval()
    msc = MSC(net, scales=(0.75, 0.5)).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        out = msc(x)
        assert len(out["scales"]) == 3
        torch.testing.assert_close(out["scales"][0], net(x)["out"])
        torch.testing.assert_close(out["out"], torch.stack(out["scales"]).amax(0))
        assert all(s.shape == (1, 3, 48, 48) for s in out["scales"])
    with pytest.raises(ValueError, match="MSC scales"):
        MSC(net, scales=(0.0,))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: build_net("v4", 21), "unknown DeepLab generation 'v4'"),
        (lambda: DeepLabV3Net(0), "num_classes must be positive"),
        (lambda: DeepLabV3Net(21, rates=(0,)), "atrous rates"),  # () is the 1x1 branch alone
        (lambda: DeepLabV3Net(21, backbone="resnet50", output_stride=64), "cannot give output stride 64"),
        (lambda: DeepLabV3Net(21, backbone="resnet50", cascade_blocks=1, output_stride=128), "output stride 128"),
        (lambda: DeepLabV3PlusNet(21, backbone="vgg19"), "unknown backbone 'vgg19'"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()
