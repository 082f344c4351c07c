"""What a GPU run needs that a CPU run does not notice: cuDNN's autotuner off in evaluation, determinism checked."""

from __future__ import annotations

import torch

from ..errors import ConfigError


def set_cudnn_benchmark(on: bool) -> bool:
    """Set ``torch.backends.cudnn.benchmark``; returns the previous value, to restore it with."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    return previous


def check_deterministic(device: torch.device) -> None:
    """Refuse ``deterministic: true`` on CUDA before the first step, which would raise anyway: the upsampled
    cross-entropy (``nll_loss2d``), bilinear upsampling's backward and adaptive average pooling's backward have no
    deterministic CUDA kernel. ``"warn"`` runs those as they are and makes everything else deterministic.
    """
    strict = torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    if strict and device.type == "cuda":
        raise ConfigError(
            "--trainer.deterministic true cannot run on CUDA: nll_loss2d, bilinear upsampling's backward and "
            "adaptive average pooling's backward have no deterministic CUDA kernel; use --trainer.deterministic warn "
            "(deterministic cuDNN and cuBLAS, those three ops as they are; see the README)"
        )
