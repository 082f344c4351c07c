"""DeepLab augmentation invariants: labels stay in the label set, padding is 255, image and mask stay aligned."""

import pytest
import torch
from torchvision import tv_tensors

from deeplab_lit.data.transforms import EvalPreset, RandomScale, TrainPreset


def blocks(h: int = 40, w: int = 56) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """8x8 blocks of labels 0..6; the image's red channel encodes the label (label * 30)."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    labels = ((ys // 8) * 3 + (xs // 8)) % 7
    image = torch.stack([labels * 30, torch.full_like(labels, 7), torch.full_like(labels, 9)]).to(torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(labels)


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_image_and_mask_stay_aligned_and_padding_is_ignore(scale) -> None:
    torch.manual_seed(int(scale * 10))
    image, mask = blocks()
    preset = TrainPreset(crop_size=48, scale_range=(scale, scale), mean=(0, 0, 0), std=(1, 1, 1))
    for _ in range(5):
        x, y = preset(image, mask)
        assert x.shape == (3, 48, 48) and y.shape == (48, 48) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= set(range(7)) | {255}
        padded = y == 255
        assert (x[:, padded] == 0).all()  # image padding is 0 = the mean pixel after normalization
        # away from block edges (bilinear resize blends there) the red channel still encodes the label
        interior = (
            (~padded)
            & (torch.nn.functional.max_pool2d(y[None].float(), 3, 1, 1)[0] == y)
            & (-torch.nn.functional.max_pool2d(-y[None].float(), 3, 1, 1)[0] == y)
        )
        interior[[0, -1], :] = interior[:, [0, -1]] = False  # the crop border's outer neighbours are unseen
        assert interior.any()
        assert torch.equal((x[0][interior] * 255 / 30).round().long(), y[interior])


def test_small_scale_pads_and_large_scale_crops() -> None:
    image, mask = blocks()
    x, y = TrainPreset(crop_size=48, scale_range=(0.5, 0.5), hflip=0.0, mean=(0, 0, 0), std=(1, 1, 1))(image, mask)
    assert (y[20:] == 255).all() and (y[:, 28:] == 255).all() and (y[:20, :28] != 255).all()


def test_random_scale_draws_from_the_range_and_step_grid() -> None:
    image, mask = blocks(40, 40)
    sizes = {RandomScale((0.5, 2.0), step=0.25)(image, mask)[1].shape[0] for _ in range(60)}
    assert sizes <= {20, 30, 40, 50, 60, 70, 80} and len(sizes) >= 4
    with pytest.raises(ValueError, match="scale_range"):
        RandomScale((0.0, 1.0))


def test_eval_preset_keeps_the_full_mask() -> None:
    image, mask = blocks()
    x, y = EvalPreset()(image, mask)
    assert torch.equal(y, mask) and x.shape == (3, 40, 56) and x.dtype == torch.float32


def test_crop_then_pad_draws_the_windows_of_pad_then_crop() -> None:
    """Tall and narrow after scaling: rows are cropped at a random offset, columns kept whole and padded."""
    image, mask = blocks(80, 20)
    preset = TrainPreset(crop_size=48, scale_range=(1.0, 1.0), hflip=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    offsets = set()
    for seed in range(40):
        torch.manual_seed(seed)
        x, y = preset(image, mask)
        assert (y[:, 20:] == 255).all() and (y[:, :20] != 255).all()
        top = next(t for t in range(33) if torch.equal(y[:, :20], mask[t : t + 48]))
        offsets.add(top)
    assert min(offsets) <= 3 and max(offsets) >= 29  # offsets cover 0..32


def test_photometric_distortion_changes_colours_only() -> None:
    image, mask = blocks()
    plain = TrainPreset(crop_size=48, scale_range=(1.0, 1.0), hflip=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    jitter = TrainPreset(crop_size=48, scale_range=(1.0, 1.0), hflip=0.0, mean=(0, 0, 0), std=(1, 1, 1),
                         photometric=True)  # fmt: skip
    changed = 0
    for seed in range(10):
        torch.manual_seed(seed)
        x0, y0 = plain(image, mask)
        torch.manual_seed(seed)
        x1, y1 = jitter(image, mask)
        assert torch.equal(y0, y1) and x1.shape == x0.shape  # same geometry, same labels
        changed += not torch.allclose(x0, x1)
    assert changed >= 5  # each distortion applies with probability 0.5
