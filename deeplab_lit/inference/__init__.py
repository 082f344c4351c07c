"""Inference: test-time augmentation (multi-scale, flip, sliding window, TF DeepLab's crop; PyTorch), the fully
connected CRF of DeepLab V1 and V2 (numpy) and exported ONNX / TorchScript files run as networks (``exported``).
No Lightning."""

from .crf import V1_CRF, V2_CRF, CRFParams, CRFPool, crf_batch, dense_crf

_TTA = ("TTA", "V3_SCALES", "check_scales", "check_window", "segment_probs", "sliding_window_logits", "tf_crop_probs")

__all__ = ["CRFParams", "CRFPool", "V1_CRF", "V2_CRF", "crf_batch", "dense_crf", *_TTA]


def __getattr__(name: str) -> object:
    # Imported on first use: the CRF's worker processes import this package and should not pay for torch.
    if name in _TTA:
        from . import tta

        return getattr(tta, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
