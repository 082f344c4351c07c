"""DeepLab's augmentation as torchvision.transforms.v2 presets (images as ``tv_tensors.Image``, masks as ``Mask``).

Training: random relative scale (0.5–2.0) → random crop → horizontal flip → normalize and pad (image 0 = the mean
pixel after normalization, mask 255). Cropping before padding draws the same windows as DeepLab's pad-then-crop (a
side shorter than the crop is kept whole at offset 0 and padded right/bottom), and only the crop is normalized.
Evaluation: the full image, normalized; masks are never resized.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


class RandomScale(v2.Transform):
    """Resize by one random factor in ``scale_range`` (optionally on a grid of ``step``, as TF DeepLab's 0.25).

    Images are resized bilinearly with antialiasing, masks by nearest neighbour (v2's Mask kernel).
    """

    def __init__(self, scale_range: Sequence[float] = (0.5, 2.0), step: float | None = None) -> None:
        super().__init__()
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range must satisfy 0 < low <= high, got {tuple(scale_range)}")
        if step is not None and step <= 0:
            raise ConfigError(f"scale step must be positive, got {step}")
        self.scale_range, self.step = (lo, hi), step

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        lo, hi = self.scale_range
        if self.step:
            choices = torch.arange(lo, hi + self.step / 2, self.step)
            scale = float(choices[torch.randint(len(choices), ())])
        else:
            scale = float(torch.empty(()).uniform_(lo, hi))
        h, w = v2.query_size(flat_inputs)
        return {"size": [max(1, round(h * scale)), max(1, round(w * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.resize, inpt, size=params["size"], antialias=True)


class NormalizePad(v2.Transform):
    """uint8 image → ``(x / 255 − mean) / std`` as float32; masks → int64. With ``size``, both are padded right and
    bottom up to it: the image with 0 (the mean pixel after normalization), the mask with 255.

    One pass into one preallocated tensor (ToDtype + Normalize + pad would allocate three full-size float tensors).
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        size: int | Sequence[int] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(-1, 1, 1)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)).view(-1, 1, 1)
        self.size = (size, size) if isinstance(size, int) else size
        self.ignore_index = ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        return {"h": h, "w": w, "out": (max(h, self.size[0]), max(w, self.size[1])) if self.size else (h, w)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        h, w = params["h"], params["w"]
        if isinstance(inpt, tv_tensors.Mask):
            out = torch.full(params["out"], self.ignore_index, dtype=torch.int64)  # (H', W')
            out[:h, :w] = inpt
            return tv_tensors.wrap(out, like=inpt)
        if isinstance(inpt, tv_tensors.Image):
            out = torch.zeros(inpt.shape[0], *params["out"], dtype=torch.float32)  # (3, H', W')
            region = out[:, :h, :w]
            region.copy_(inpt).mul_(self.scale).sub_(self.shift)
            return tv_tensors.wrap(out, like=inpt)
        return inpt


class RandomCropAtMost(v2.Transform):
    """Random crop of ``min(size, image size)`` per side; a side shorter than ``size`` is kept whole."""

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ch, cw = min(h, self.size[0]), min(w, self.size[1])
        top = int(torch.randint(h - ch + 1, ()))
        left = int(torch.randint(w - cw + 1, ()))
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.crop, inpt, **params)


class TrainPreset(v2.Compose):
    """DeepLab training augmentation: scale 0.5–2.0, crop (513 VOC / 769 Cityscapes), flip, pad with ignore;
    ``photometric`` adds colour distortion (not in the papers; common in later recipes)."""

    def __init__(
        self,
        crop_size: int | Sequence[int],
        scale_range: Sequence[float] = (0.5, 2.0),
        scale_step: float | None = None,
        hflip: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = IGNORE_INDEX,
        photometric: bool = False,
    ) -> None:
        # mmsegmentation's PhotoMetricDistortion ranges (brightness ±32/255, contrast and saturation 0.5–1.5, hue
        # ±18°), each applied with probability 0.5; images only, masks pass through unchanged.
        distortion = [
            v2.RandomApply([v2.ColorJitter(brightness=32 / 255)]),
            v2.RandomApply([v2.ColorJitter(contrast=0.5)]),
            v2.RandomApply([v2.ColorJitter(saturation=0.5)]),
            v2.RandomApply([v2.ColorJitter(hue=0.05)]),
        ]
        super().__init__(
            [
                RandomScale(scale_range, scale_step),  # uint8
                RandomCropAtMost(crop_size),
                v2.RandomHorizontalFlip(hflip),  # on uint8, before padding (as torchvision's references)
                *(distortion if photometric else []),
                NormalizePad(mean, std, crop_size, ignore_index),  # float (3, crop), int64 (crop)
                v2.ToPureTensor(),
            ]
        )


class EvalPreset(v2.Compose):
    """Evaluation: the full image, normalized; the mask untouched."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__([NormalizePad(mean, std), v2.ToPureTensor()])
