"""Export a trained network to ONNX or TorchScript (``deeplab_lit.inference.exported`` runs the file).

python -m deeplab_lit.export --ckpt runs/best.ckpt --format onnx --output deeplab.onnx --output-stride 8

The exported graph takes a normalized image batch (B, 3, H, W) float32, normalized as the datamodules do
(ImageNet mean/std, ``deeplab_lit.data.transforms``), and returns one tensor: logits (B, classes, H, W).
Batch, height and width are dynamic in ONNX and in the traced TorchScript module. Both use the TorchScript
tracer (``torch.jit.trace``; ``torch.onnx.export(..., dynamo=False)``), deprecated in recent PyTorch but
simple, fast and exact here; its warnings are silenced: the one shape test it bakes in (``upsample_to``
skipping a same-size resize) has the same answer at every input size, since the logits are at stride >= 4.
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from . import systems
from .errors import CheckpointError, ConfigError, ShortArgumentParser, reported
from .inference.exported import ONNX_SUFFIXES, TORCHSCRIPT_SUFFIXES, ExportedSegmenter, load_exported, quiet_tracing
from .nets import upsample_to
from .nets.msc import MSC
from .nets.weights import load_file

# ExportedSegmenter and load_exported live in inference (systems runs them); kept importable from here.
__all__ = ["ExportedSegmenter", "Segmenter", "export_onnx", "export_torchscript", "load_exported", "load_module"]


class Segmenter(nn.Module):
    """A DeepLab network for deployment: normalized image (B, 3, H, W) → logits (B, classes, H, W).

    Args:
        net: a ``DeepLabNet`` (or an ``MSC``-wrapped one); only its ``"out"`` logits are kept.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return upsample_to(self.net(x)["out"], x.shape[-2:])  # bilinear, align_corners=False


def _prepare(net: nn.Module, height: int, width: int, output_stride: int | None) -> tuple[Segmenter, Tensor]:
    if output_stride is not None:
        net.set_output_stride(output_stride)
    net.eval()
    param = next(net.parameters())
    return Segmenter(net).eval(), torch.zeros(1, 3, height, width, device=param.device, dtype=param.dtype)


def export_onnx(
    net: nn.Module,
    path: str | Path,
    height: int,
    width: int,
    output_stride: int | None = None,
    opset: int = 17,
    dynamic: bool = True,
) -> Path:
    """Export ``Segmenter(net)`` to ONNX (input ``"image"``, output ``"logits"``).

    The network is put in eval mode and, with ``output_stride``, re-strided in place. ``height`` and ``width``
    are the example input's size; with ``dynamic`` batch, height and width are free (image pooling and every
    resize follow the input shape), otherwise the graph is fixed to (1, 3, height, width).
    """
    path = Path(path)
    seg, x = _prepare(net, height, width, output_stride)
    axes = {0: "batch", 2: "height", 3: "width"}
    dynamic_axes = {"image": axes, "logits": axes} if dynamic else None
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_tracing():
        torch.onnx.export(
            seg,
            (x,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_axes=dynamic_axes,
            dynamo=False,
        )
    return path


def export_torchscript(
    net: nn.Module, path: str | Path, height: int, width: int, output_stride: int | None = None
) -> Path:
    """Trace ``Segmenter(net)`` at (1, 3, height, width) and save it for ``torch.jit.load``; any input size works."""
    path = Path(path)
    seg, x = _prepare(net, height, width, output_stride)
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_tracing():
        torch.jit.trace(seg, (x,), check_trace=False).save(str(path))
    return path


def module_class(hparams: dict) -> type:
    """The ``SegmentationModule`` subclass of a checkpoint: its recorded ``_class_path`` (LightningCLI runs), else
    the one generation whose ``__init__`` arguments all appear in ``hparams``.
    """
    if "_class_path" in hparams:
        module, _, name = hparams["_class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        if not (isinstance(cls, type) and issubclass(cls, systems.SegmentationModule)):
            raise CheckpointError(f"{hparams['_class_path']} is not a SegmentationModule")
        return cls
    generations = (systems.DeepLabV1, systems.DeepLabV2, systems.DeepLabV3, systems.DeepLabV3Plus)
    found = [c for c in generations if set(inspect.signature(c).parameters) - {"kwargs"} <= set(hparams)]
    if len(found) != 1:
        raise CheckpointError(f"cannot tell the model class from the checkpoint's hyperparameters (matches: {found})")
    return found[0]


def load_module(ckpt: str | Path, what: str = "checkpoint") -> nn.Module:
    """A Lightning checkpoint of any generation as its ``SegmentationModule`` on the CPU (no weight downloads)."""
    hparams = load_file(ckpt, what).get("hyper_parameters", {})
    cls = module_class(hparams)
    return cls.load_from_checkpoint(ckpt, map_location="cpu", backbone_weights=None, init_from=None).eval()


def _check_output(output: str, suffixes: tuple[str, ...], fmt: str) -> None:
    path = Path(output)
    if path.suffix not in suffixes:
        raise ConfigError(f"--output {output} does not fit --format {fmt}: end its name in {' or '.join(suffixes)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--output {output}: cannot create its folder ({err}); choose a writable path") from None
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"--output {output}: the folder {path.parent} is not writable; choose a writable path")


def main(argv: list[str] | None = None) -> Path:
    """``python -m deeplab_lit.export``: export a checkpoint's network (with its MSC scales, if it uses them).

    A user error ends in a one-line ``error: ...`` and exit status 1 (``--debug`` shows its traceback).
    """
    parser = ShortArgumentParser(prog="python -m deeplab_lit.export", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt)")
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    parser.add_argument("--output", required=True, help="output file (.onnx, or .pt/.ts for TorchScript)")
    parser.add_argument("--output-stride", type=int, help="default: the checkpoint's eval_output_stride, if any")
    parser.add_argument("--size", type=int, nargs=2, default=(513, 513), metavar=("H", "W"), help="example input")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--static", action="store_true", help="ONNX: fix the input size to --size (batch 1)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    with reported(args.debug):
        onnx = args.format == "onnx"
        _check_output(args.output, ONNX_SUFFIXES if onnx else TORCHSCRIPT_SUFFIXES, args.format)
        module = load_module(args.ckpt, "--ckpt")
        stride = args.output_stride or module.hparams.get("eval_output_stride")
        net = MSC(module.net, module.msc_scales) if module.msc_scales else module.net
        kwargs = {"opset": args.opset, "dynamic": not args.static} if onnx else {}
        export = export_onnx if onnx else export_torchscript
        path = export(net, args.output, *args.size, output_stride=stride, **kwargs)
    print(path)
    return path


if __name__ == "__main__":
    main()
