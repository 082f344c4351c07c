"""DeepLab's augmentation as torchvision.transforms.v2 presets (images as ``tv_tensors.Image``, masks as ``Mask``).

Training: random relative scale (0.5–2.0) → random crop → normalize → pad (image 0 = the mean pixel after
normalization, mask 255) → horizontal flip. Cropping before padding draws the same windows as DeepLab's pad-then-crop
(a side shorter than the crop is kept whole at offset 0 and padded right/bottom) while only the crop is normalized.
Evaluation: the full image, normalized; masks are never resized.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

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
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {tuple(scale_range)}")
        if step is not None and step <= 0:
            raise ValueError(f"scale step must be positive, got {step}")
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


class PadIfSmaller(v2.Transform):
    """Pad right and bottom up to ``size``: images with ``fill`` (0 after normalization), masks with 255."""

    def __init__(self, size: int | Sequence[int], fill: float = 0.0, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.fill, self.ignore_index = fill, ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(0, self.size[1] - w), max(0, self.size[0] - h)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.ignore_index if isinstance(inpt, tv_tensors.Mask) else self.fill
        return self._call_kernel(TF.pad, inpt, padding=params["padding"], fill=fill)


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


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
        v2.Normalize(mean, std),
    ]


class TrainPreset(v2.Compose):
    """DeepLab training augmentation: scale 0.5–2.0, crop (513 VOC / 769 Cityscapes), pad with ignore, flip."""

    def __init__(
        self,
        crop_size: int | Sequence[int],
        scale_range: Sequence[float] = (0.5, 2.0),
        scale_step: float | None = None,
        hflip: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(
            [
                RandomScale(scale_range, scale_step),  # uint8
                RandomCropAtMost(crop_size),
                *_normalize(mean, std),  # float, only the crop
                PadIfSmaller(crop_size, 0.0, ignore_index),
                v2.RandomHorizontalFlip(hflip),
                v2.ToPureTensor(),
            ]
        )


class EvalPreset(v2.Compose):
    """Evaluation: the full image, normalized; the mask untouched."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__([*_normalize(mean, std), v2.ToPureTensor()])
