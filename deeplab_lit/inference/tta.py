"""Test-time inference: multi-scale inputs, left-right flips and sliding windows, fused as averaged probabilities.

V3/V3+ average softmax probabilities over scales and flips at the label resolution (V3 Table 6, V3+ Table 3); the
output-stride switch is the network's ``set_output_stride``. ``crop`` gives TF DeepLab's own evaluation instead
(``tf_crop_probs``), which the models of the TF model zoo were published with. ``forward`` is any callable from an
image batch to logits (B, C, h, w) at any stride, or to a dict holding them under ``"out"`` (so a DeepLab net can
be passed as is). Callers put the network in eval mode and run under ``torch.inference_mode()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..nets.deeplab import upsample_to
from ..nets.msc import check_scales

__all__ = [
    "TTA",
    "V3_SCALES",
    "check_scales",
    "check_window",
    "segment_probs",
    "sliding_window_logits",
    "tf_crop_probs",
]

Forward = Callable[[Tensor], Tensor | Mapping[str, Tensor]]
Size2 = int | tuple[int, int]

V3_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # V3 Table 6 / V3+ Table 3 evaluation scales


def _pair(value: object, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, Integral) else tuple(value) if isinstance(value, Sequence) else ()
    if len(pair) != 2 or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be an int or a pair (h, w) of ints, got {value!r}")
    if min(pair) <= 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")
    return int(pair[0]), int(pair[1])


def check_window(window: Size2 | None, stride: Size2 | None) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``(window, stride)`` as (h, w) pairs, or None without a window; ``stride`` defaults to 2/3 of the window.

    Raises TypeError / ValueError naming the argument for non-ints, values <= 0, stride > window or stride alone.
    """
    if window is None:
        if stride is not None:
            raise ConfigError(f"stride {stride!r} is set but window is None; set window too")
        return None
    window = _pair(window, "window")
    stride = tuple(max(1, round(2 * w / 3)) for w in window) if stride is None else _pair(stride, "stride")
    if stride[0] > window[0] or stride[1] > window[1]:
        raise ConfigError(f"stride {stride} must not exceed window {window}: windows would leave gaps")
    return window, stride


def _logits(forward: Forward, x: Tensor) -> Tensor:
    out = forward(x)
    return out["out"] if isinstance(out, Mapping) else out


def _starts(size: int, window: int, stride: int) -> list[int]:
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)  # flush with the bottom / right edge
    return starts


def sliding_window_logits(forward: Forward, x: Tensor, window: Size2, stride: Size2 | None = None) -> Tensor:
    """(B, C, H, W) logits of the normalised images ``x`` (B, 3, H, W), averaged over overlapping windows.

    Windows start every ``stride`` (int or (h, w); None: 2/3 of the window) plus one flush with the bottom / right
    edge. A dimension smaller than the window is padded with 0 (the mean pixel after normalisation) on the bottom /
    right, and the padded part is cropped off the logits, which are upsampled to the window size first.
    """
    (wh, ww), (sh, sw) = check_window(window, stride)
    height, width = x.shape[-2:]
    rows, cols = _starts(height, wh, sh), _starts(width, ww, sw)
    canvas, count = None, x.new_zeros(1, 1, height, width, dtype=torch.float32)
    for top in rows:
        for left in cols:
            crop = x[..., top : top + wh, left : left + ww]  # (B, 3, h, w), h <= wh, w <= ww
            h, w = crop.shape[-2:]
            crop = F.pad(crop, (0, ww - w, 0, wh - h))  # (B, 3, wh, ww)
            logits = upsample_to(_logits(forward, crop), (wh, ww))[..., :h, :w]  # (B, C, h, w)
            if canvas is None:
                canvas = logits.new_zeros((*logits.shape[:2], height, width))  # (B, C, H, W)
            canvas[..., top : top + h, left : left + w] += logits
            count[..., top : top + h, left : left + w] += 1
    return canvas.div_(count)


def segment_probs(
    forward: Forward,
    x: Tensor,
    out_size: Sequence[int],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: Size2 | None = None,
    stride: Size2 | None = None,
) -> Tensor:
    """Class probabilities averaged over input scales and flips, at ``out_size`` (the label resolution).

    Each scale resizes ``x`` (B, 3, H, W) bilinearly to ``round(scale * (H, W))``; each pass's logits (whole image,
    or :func:`sliding_window_logits` when ``window`` is set) are un-flipped, upsampled to ``out_size`` and
    soft-maxed, then added in place to one running sum, so memory does not grow with the number of passes.

    Returns:
        (B, C, *out_size) float32 probabilities.
    """
    scales, out_size = check_scales(scales), tuple(out_size)
    check_window(window, stride)
    total = None
    for scale in scales:
        size = [max(1, int(d * scale + 0.5)) for d in x.shape[-2:]]
        xs = x if scale == 1 else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            xi = xs.flip(-1) if flipped else xs
            logits = sliding_window_logits(forward, xi, window, stride) if window is not None else _logits(forward, xi)
            logits = logits.flip(-1) if flipped else logits  # (B, C, h, w)
            probs = F.softmax(upsample_to(logits, out_size), dim=1, dtype=torch.float32)  # (B, C, H_out, W_out)
            total = probs if total is None else total.add_(probs)
    return total.div_(len(scales) * (2 if flip else 1))


def scale_dimension(dim: int, scale: float) -> int:
    """TF DeepLab's ``scale_dimension``: a dimension scaled with corners aligned, ``int((dim - 1) * scale + 1)``."""
    return int((dim - 1.0) * scale + 1.0)


def tf_crop_probs(
    forward: Forward,
    x: Tensor,
    out_size: Sequence[int],
    crop: Size2,
    logits_stride: int,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> Tensor:
    """TF DeepLab's evaluation (``model.predict_labels_multi_scale`` on ``eval_crop_size`` inputs), probabilities
    (B, C, *out_size) of the images ``x`` (B, 3, H, W).

    The image is padded at the bottom / right to ``crop`` with the mean pixel (0 after normalisation); each scale
    resizes the padded crop to ``scale_dimension(crop, scale)`` with corners aligned; each pass's logits are resized
    (corners aligned) to TF's logits grid, ``scale_dimension(crop, max(1, scale) / logits_stride)``, then to the
    crop, soft-maxed and averaged; the padding is cropped off. ``forward`` returns logits at its input's size,
    upsampled with corners aligned (a network with ``align_corners=True``): that equals TF's resizing of the
    stride-``logits_stride`` logits when ``(crop - 1) * scale`` is a multiple of the stride, as with the released
    crops (513, 1025 x 2049) and scales (multiples of 0.25).
    """
    (ch, cw), (height, width) = _pair(crop, "crop (--model.init_args.tf_eval_crop)"), x.shape[-2:]
    if height > ch or width > cw:
        raise ConfigError(
            f"an image of {height}x{width} does not fit the evaluation crop {ch}x{cw} "
            "(--model.init_args.tf_eval_crop): TF DeepLab's crop must cover every image"
        )
    padded = F.pad(x, (0, cw - width, 0, ch - height))  # (B, 3, ch, cw)
    total = None
    for scale in check_scales(scales):
        size = (scale_dimension(ch, scale), scale_dimension(cw, scale))
        xs = padded if scale == 1 else F.interpolate(padded, size=size, mode="bilinear", align_corners=True)
        grid = (
            scale_dimension(ch, max(1.0, scale) / logits_stride),
            scale_dimension(cw, max(1.0, scale) / logits_stride),
        )
        for flipped in (False, True) if flip else (False,):
            logits = _logits(forward, xs.flip(-1) if flipped else xs)  # (B, C, *size)
            logits = upsample_to(logits.flip(-1) if flipped else logits, grid, align_corners=True)
            logits = upsample_to(logits, (ch, cw), align_corners=True)[..., :height, :width]  # (B, C, H, W)
            probs = F.softmax(upsample_to(logits, out_size), dim=1, dtype=torch.float32)
            total = probs if total is None else total.add_(probs)
    return total.div_(len(scales) * (2 if flip else 1))


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation settings; ``TTA(V3_SCALES, flip=True)(net, x, y.shape[-2:])`` is V3's MS + Flip,
    ``TTA(crop=513)`` TF DeepLab's evaluation (:func:`tf_crop_probs`)."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: Size2 | None = None
    stride: Size2 | None = None
    crop: Size2 | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", check_scales(self.scales, "scales (--model.init_args.eval_scales)"))
        check_window(self.window, self.stride)
        if self.crop is not None:
            _pair(self.crop, "crop (--model.init_args.tf_eval_crop)")
            if self.window is not None:
                raise ConfigError("tf_eval_crop and sliding_window exclude each other: TF's evaluation has no windows")

    def __call__(self, forward: Forward, x: Tensor, out_size: Sequence[int], logits_stride: int = 1) -> Tensor:
        """(B, C, *out_size) float32 probabilities of the images ``x`` (B, 3, H, W); ``logits_stride`` (the
        network's, before upsampling) is used by TF's evaluation only."""
        if self.crop is not None:
            return tf_crop_probs(forward, x, out_size, self.crop, logits_stride, self.scales, self.flip)
        return segment_probs(forward, x, out_size, self.scales, self.flip, self.window, self.stride)
