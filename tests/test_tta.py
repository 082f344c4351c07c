import gc

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_bn
from deeplab_lit.inference import TTA, V3_SCALES, check_scales, check_window, segment_probs, sliding_window_logits
from deeplab_lit.nets import DeepLabV3PlusNet
from deeplab_lit.nets.deeplab import upsample_to


@pytest.fixture(scope="module")
def net() -> DeepLabV3PlusNet:
    torch.manual_seed(0)
    net = DeepLabV3PlusNet(5, backbone="resnet18", aspp_channels=16, low_level_channels=8, decoder_channels=16)
    randomize_bn(net)
    torch.nn.init.normal_(net.classifier.weight, std=10.0)  # confident, varied probabilities, not all near 1/5
    return net.eval()


def conv1x1(classes: int = 4):
    """A purely local, translation-equivariant forward: padding and window borders cannot change its output."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, classes, 1)
    return lambda x: conv(x)


def probs(forward, x, size):
    return upsample_to(forward(x)["out"], size).softmax(1)


@torch.inference_mode()
def test_single_scale_is_softmax_of_upsampled_logits(net) -> None:
    x = torch.randn(2, 3, 41, 49)
    expected = upsample_to(net(x)["out"], (50, 60)).softmax(1)
    assert torch.equal(segment_probs(net, x, (50, 60)), expected)
    assert torch.equal(TTA()(lambda t: net(t)["out"], x, (50, 60)), expected)


@torch.inference_mode()
def test_flip_averages_with_the_unflipped_prediction_of_the_flipped_image(net) -> None:
    x = torch.randn(1, 3, 45, 53)
    size = x.shape[-2:]
    expected = (net(x)["out"].softmax(1) + net(x.flip(-1))["out"].flip(-1).softmax(1)) / 2
    assert torch.equal(segment_probs(net, x, size, flip=True), expected)
    assert not torch.allclose(segment_probs(net, x, size), expected, atol=1e-3)
    # whatever the network, the result is left-right equivariant (up to rounding in the softmax)
    flipped = segment_probs(net, x.flip(-1), size, flip=True).flip(-1)
    torch.testing.assert_close(flipped, expected, rtol=0, atol=1e-6)


@torch.inference_mode()
def test_multi_scale_averages_per_scale_probabilities(net) -> None:
    x = torch.randn(1, 3, 40, 48)  # every scale gives whole-pixel sizes: 20x24, 40x48, 60x72
    size = (43, 51)
    per_scale = [
        probs(net, x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False), size)
        for s in (0.5, 1.0, 1.5)
    ]
    expected = torch.stack(per_scale).mean(0)
    torch.testing.assert_close(TTA((0.5, 1.0, 1.5))(net, x, size), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(per_scale[0], per_scale[2], atol=1e-3)


@pytest.mark.parametrize("forward", ["net", "pooled"])
@torch.inference_mode()
def test_one_window_over_the_whole_image_is_the_plain_forward(net, forward) -> None:
    forward = (lambda x: net(x)["out"]) if forward == "net" else (lambda x: F.avg_pool2d(x, 4, ceil_mode=True))
    x = torch.randn(1, 3, 37, 45)
    assert torch.equal(sliding_window_logits(forward, x, (37, 45), 20), upsample_to(forward(x), (37, 45)))


@torch.inference_mode()
def test_windows_larger_than_the_image_pad_with_zeros_and_crop_them_off() -> None:
    x = torch.randn(1, 3, 30, 100)
    seen = []
    out = sliding_window_logits(lambda t: seen.append(t) or t, x, (64, 48), 32)  # taller than x, narrower
    assert torch.equal(out, x)
    assert [t.shape[-2:] for t in seen] == [(64, 48)] * 3  # columns at 0, 32 and flush at 52
    assert all(t[..., 30:, :].eq(0).all() for t in seen)
    out = sliding_window_logits(lambda t: seen.append(t) or t, x, 128)  # larger in both dimensions
    assert torch.equal(out, x) and seen[-1].shape[-2:] == (128, 128)


@pytest.mark.parametrize(
    ("height", "width", "window", "stride", "rows", "cols"),
    [
        (65, 65, 33, 22, [0, 22, 32], [0, 22, 32]),
        (65, 97, (33, 48), (11, 48), [0, 11, 22, 32], [0, 48, 49]),
        (40, 70, (64, 33), (64, 33), [0], [0, 33, 37]),
        (33, 33, 33, None, [0], [0]),
    ],
)
@torch.inference_mode()
def test_overlapping_windows_cover_every_pixel_and_average(height, width, window, stride, rows, cols) -> None:
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    x = torch.stack([ys, xs, ys * 0]).float()[None]  # channels hold each pixel's coordinates
    starts = []

    def ones(t):
        starts.append((int(t[0, 0, 0, 0]), int(t[0, 1, 0, 0])))
        return t.new_ones(1, 2, *t.shape[-2:])

    assert torch.equal(sliding_window_logits(ones, x, window, stride), torch.ones(1, 2, height, width))
    assert starts == [(r, c) for r in rows for c in cols]
    local, x = conv1x1(), torch.randn(1, 3, height, width)
    torch.testing.assert_close(sliding_window_logits(local, x, window, stride), local(x), rtol=0, atol=1e-6)


@torch.inference_mode()
def test_window_combines_with_scales_and_flip() -> None:
    local, x = conv1x1(), torch.randn(1, 3, 50, 70)
    expected = upsample_to(local(x), (25, 35)).softmax(1)
    tta = TTA((1.0, 2.0), flip=True, window=33, stride=22)
    torch.testing.assert_close(tta(local, x, (25, 35)), expected, rtol=0, atol=1e-6)


@torch.inference_mode()
def test_accumulator_does_not_grow_with_the_number_of_passes() -> None:
    size, live = (37, 41), []
    local = conv1x1(3)

    def counting(x):
        live.append(sum(type(o) is torch.Tensor and o.shape[-2:] == size for o in gc.get_objects()))
        return local(x)

    segment_probs(counting, torch.randn(1, 3, 24, 24), size, scales=V3_SCALES, flip=True)
    assert len(live) == 12 and max(live) <= 2  # the running sum and the last pass's probabilities


def test_default_stride_is_two_thirds_of_the_window() -> None:
    assert check_window(769, None) == ((769, 769), (513, 513))
    assert check_window((513, 1025), 342) == ((513, 1025), (342, 342))
    assert check_window((513, 1025), None) == ((513, 1025), (342, 683))
    assert check_window(None, None) is None
    assert check_scales([0.5, 1]) == (0.5, 1)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: check_scales(()), ValueError, "^scales must be a non-empty"),
        (lambda: TTA(scales=(1.0, -0.5)), ValueError, "^scales"),
        (lambda: segment_probs(conv1x1(), torch.zeros(1, 3, 8, 8), (8, 8), scales=(0.0,)), ValueError, "^scales"),
        (lambda: check_scales((1.0, float("nan"))), ValueError, "^scales"),
        (lambda: check_window(0, None), ValueError, "^window must be positive, got 0"),
        (lambda: check_window((33, -1), None), ValueError, "^window must be positive"),
        (lambda: check_window(33.0, None), TypeError, "^window must be an int"),
        (lambda: check_window(33, 0), ValueError, "^stride must be positive, got 0"),
        (lambda: check_window(33, (20, 34)), ValueError, "^stride .* must not exceed window"),
        (lambda: check_window(None, 20), ValueError, "^stride .* set but window is None"),
        (lambda: TTA(window=33, stride=34), ValueError, "^stride"),
        (lambda: sliding_window_logits(conv1x1(), torch.zeros(1, 3, 8, 8), 0), ValueError, "^window"),
    ],
)
def test_bad_arguments_name_the_argument(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()
