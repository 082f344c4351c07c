"""An exported ONNX or TorchScript file run in place of a network (``--model.init_args.exported FILE``).

The file takes a normalized image batch (B, 3, H, W) float32 and returns logits (B, classes, H, W), as
``deeplab_lit.export`` writes it. No Lightning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError

ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".pt", ".ts")


@contextmanager
def quiet_tracing() -> Iterator[None]:
    """No grad, and no TorchScript tracer or deprecation warnings (tracing and loading traced files warn)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*(legacy TorchScript-based ONNX|is deprecated|will be removed)")
        yield


class ExportedSegmenter(nn.Module):
    """An exported file used like a network: ``forward(x)`` returns ``{"out": logits (B, classes, H, W)}``.

    ``.onnx`` runs on onnxruntime (``providers``; by default CUDA when onnxruntime-gpu offers it, else CPU; the
    input goes through host memory either way), ``.pt``/``.ts`` on ``torch.jit.load`` (a submodule: moved with this).
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        suffixes = ONNX_SUFFIXES + TORCHSCRIPT_SUFFIXES
        if self.path.suffix not in suffixes:
            raise ConfigError(f"exported={self.path}: unknown suffix; expected one of {suffixes}")
        if not self.path.is_file():
            raise ConfigError(f"exported={self.path}: exported model not found; write it with deeplab_lit.export")
        self.session = self.module = None
        if self.path.suffix in ONNX_SUFFIXES:
            import onnxruntime as ort

            providers = providers or [
                p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()
            ]
            self.session = ort.InferenceSession(str(self.path), providers=providers)
            self.input_name = self.session.get_inputs()[0].name
        else:
            with quiet_tracing():
                self.module = torch.jit.load(str(self.path), map_location="cpu")

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.module is not None:
            return {"out": self.module(x)}
        logits = self.session.run(None, {self.input_name: x.detach().float().cpu().numpy()})[0]
        return {"out": torch.from_numpy(logits).to(x.device)}


def load_exported(path: str | Path) -> ExportedSegmenter:
    """Load an exported ``.onnx``/``.pt``/``.ts`` file as an ``ExportedSegmenter``."""
    return ExportedSegmenter(path)
