"""Receptive fields of atrous convolution: theoretical size, valid taps, reach maps, effective RF, branches off."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Layer = tuple[int, int, int]  # (kernel, stride, dilation)


def stack_rf(layers: Sequence[Layer]) -> int:
    """Theoretical receptive field, in input pixels, of convs/pools applied in sequence."""
    rf, jump = 1, 1
    for kernel, stride, dilation in layers:
        rf += (kernel - 1) * dilation * jump
        jump *= stride
    return rf


def main_path_layers(module: nn.Module, skip: Sequence[str] = ("downsample",)) -> list[Layer]:
    """``(kernel, stride, dilation)`` of each conv and max-pool in registration order (the forward order in
    torchvision's ResNet, VGG, MobileNetV2), shortcuts (names in ``skip``) left out: ``stack_rf`` gives the RF.
    """
    layers = []
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d | nn.MaxPool2d) and not set(name.split(".")) & set(skip):
            k, s, d = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.dilation))
            layers.append((k, s, d))
    return layers


def tap_counts(size: int, rate: int, kernel: int = 3) -> np.ndarray:
    """For each position along one axis of length ``size``: how many of the kernel's taps fall inside."""
    offsets = (np.arange(kernel) - kernel // 2) * rate
    pos = np.arange(size)[:, None] + offsets[None, :]
    return ((pos >= 0) & (pos < size)).sum(1)


def valid_taps(size: int | tuple[int, int], rate: int, kernel: int = 3) -> dict[str, float]:
    """Exact statistics of a k×k atrous conv on a zero-padded map, over all output positions. ``valid``: mean
    fraction of taps inside the map; ``all``: share of positions with every tap inside; ``centre_only``: share of
    positions where only the centre tap is inside (the filter acts as a 1×1).
    """
    h, w = (size, size) if isinstance(size, int) else size
    per_position = np.outer(tap_counts(h, rate, kernel), tap_counts(w, rate, kernel))
    return {
        "valid": float(per_position.mean() / kernel**2),
        "all": float((per_position == kernel**2).mean()),
        "centre_only": float((per_position == 1).mean()),
    }


def reach_map(rates: Sequence[int], kernel: int = 3, margin: int = 2) -> Tensor:
    """Paths from each input pixel to the centre output of stacked k×k all-ones convs at ``rates``: nonzero
    entries reach that output, zeros inside the span are gridding holes.
    """
    half = sum(rates) * (kernel // 2) + margin
    x = torch.zeros(1, 1, 2 * half + 1, 2 * half + 1, dtype=torch.float64)
    x[..., half, half] = 1.0
    ones = torch.ones(1, 1, kernel, kernel, dtype=torch.float64)
    for rate in rates:  # the all-ones kernel is symmetric: spreading a delta forward equals the backward reach
        x = F.conv2d(x, ones, padding=rate * (kernel // 2), dilation=rate)
    return x[0, 0]


def effective_rf(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """|gradient| of the centre output pixel of ``fn(x)`` (B, C, h, w), summed over its channels, with respect
    to the input, summed over the batch and input channels: an (H, W) map.
    """
    y = fn(x := x.detach().clone().requires_grad_(True))
    y[:, :, y.shape[-2] // 2, y.shape[-1] // 2].sum().backward()
    return x.grad.abs().sum((0, 1))


def support_side(erf: Tensor) -> int:
    """Side of the bounding square of the nonzero gradient (the theoretical RF, clipped to the input)."""
    rows, cols = erf.nonzero(as_tuple=True)
    return int(max(rows.max() - rows.min(), cols.max() - cols.min())) + 1 if rows.numel() else 0


def mass_side(erf: Tensor, fraction: float = 0.5) -> int:
    """Side of the smallest square around the map's centre holding ``fraction`` of the gradient mass."""
    h, w = erf.shape
    ys, xs = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    radius = torch.maximum(ys.abs(), xs.abs()).flatten()
    mass = torch.bincount(radius, weights=erf.flatten().double()).cumsum(0)
    return 2 * int(torch.searchsorted(mass, fraction * mass[-1])) + 1


@contextmanager
def switched_off(*modules: nn.Module) -> Iterator[None]:
    """Within the block each module outputs zeros (a forward hook), e.g. one ASPP branch at inference."""
    handles = [m.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out)) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
