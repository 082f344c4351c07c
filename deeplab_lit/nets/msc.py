"""V2's multi-scale input (MSC): one network over several input scales, logits fused by pixel-wise max."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .caffe_semantics import caffe_multi_scale_forward
from .deeplab import upsample_to


def multi_scale_forward(net: nn.Module, x: Tensor, scales: Sequence[float]) -> dict[str, Tensor]:
    """``net`` at scale 1 and at ``scales``: ``"out"`` is the pixel-wise max (V2 §4.1, Table 4), ``"scales"``
    every scale's logits at the input size, so training can put a loss on each. A network with
    ``interp="caffe"`` resizes and fuses as the Caffe release instead.
    """
    if getattr(net, "interp", None) == "caffe":
        return caffe_multi_scale_forward(net, x, scales)
    out = dict(net(x))
    logits = [out["out"]]
    for s in scales:
        xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        logits.append(upsample_to(net(xs)["out"], x.shape[-2:]))
    out["scales"] = logits
    out["out"] = torch.stack(logits).amax(0)  # (B, classes, H, W)
    return out


def check_scales(scales: Sequence[float], name: str = "scales") -> tuple[float, ...]:
    """``scales`` as a tuple; ValueError naming ``name`` unless a non-empty sequence of finite positive numbers."""
    valid = (isinstance(s, Real) and not isinstance(s, bool) and math.isfinite(s) and s > 0 for s in scales)
    if not isinstance(scales, Sequence) or len(scales) == 0 or not all(valid):
        raise ConfigError(f"{name} must be a non-empty sequence of finite positive numbers, got {scales!r}")
    return tuple(scales)


class MSC(nn.Module):
    """A network wrapped in V2's multi-scale input: scale 1 plus ``scales``, logits fused by max."""

    def __init__(self, net: nn.Module, scales: Sequence[float] = (0.75, 0.5)) -> None:
        super().__init__()
        self.net, self.scales = net, check_scales(scales, "MSC scales")

    def set_output_stride(self, output_stride: int) -> None:
        self.net.set_output_stride(output_stride)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return multi_scale_forward(self.net, x, self.scales)
