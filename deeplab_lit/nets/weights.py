"""Reading weights (torchvision/timm names or files), strict loading with clear errors, and converters."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError


def load_file(path: str | Path, what: str = "weights file") -> dict[str, Any]:
    """A checkpoint or state-dict file read on the CPU (tensors and plain data only, memory-mapped).

    A missing file, or one that is not a PyTorch file or is truncated, raises ``CheckpointError`` naming ``what``
    (the argument, e.g. ``--ckpt_path``) and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # torch raises anything from IndexError to UnpicklingError for a foreign file
        detail = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}" if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{what} {path} is not a PyTorch checkpoint, or is truncated ({detail}); pass a file written by "
            "torch.save or Lightning"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} {path} holds a {type(state).__name__}, not a checkpoint or a state dict")
    return state


def read_state_dict(weights: str | Path, arch: str, what: str = "weights file") -> dict[str, Tensor]:
    """A state dict from a file, or from a torchvision/timm weight name for the architecture ``arch``.

    Names: a torchvision enum entry (``"ResNet101_Weights.IMAGENET1K_V2"``), a tag of the architecture's
    torchvision weights (``"DEFAULT"``, ``"IMAGENET1K_V1"``), or a timm tag (``"tf_in1k"``). Names
    download into the user's cache; files are read on the CPU. ``what`` names the argument in errors.
    """
    path = Path(weights)
    if path.suffix in {".pt", ".pth", ".ckpt", ".bin"} or path.exists():
        state = load_file(path, what)
        if "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not all(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointError(f"{what} {path} does not hold a state dict of tensors")
        return state
    name = str(weights)
    if "." in name and "_Weights." in name:
        return torchvision.models.get_weight(name).get_state_dict(progress=True)
    try:
        tags = torchvision.models.get_model_weights(arch)
    except ValueError:
        tags = None
    if tags is not None:
        if name not in tags.__members__:
            raise ConfigError(f"unknown weights {name!r} for {arch}; choose from {list(tags.__members__)} or a file")
        return tags[name].get_state_dict(progress=True)
    import timm

    if not timm.is_model(arch):  # e.g. init_from, which takes files only
        raise CheckpointError(f"{what} {weights}: no such file")
    return timm.create_model(f"{arch}.{name}", pretrained=True).state_dict()


def load_checked(module: nn.Module, state: dict[str, Tensor], source: str | Path = "state dict") -> None:
    """Load ``state`` into ``module`` strictly; on any mismatch raise one error listing every problem."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = [
        f"{k}: expected {tuple(own[k].shape)}, got {tuple(v.shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if missing or unexpected or misshaped:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
            if keys
        ]
        raise CheckpointError(f"weights from {source} do not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state)


def decimate_vgg_fc(state: dict[str, Tensor], kernel_size: int, channels: int) -> dict[str, Tensor]:
    """VGG16's fc6/fc7 subsampled to a conv fc6 (``kernel_size``, ``channels``) and a 1x1 fc7 (V1 §4.1).

    fc6 is a 7x7x512 -> 4096 layer: keep every (4096/channels)-th filter and ``kernel_size`` evenly spaced
    taps of the 7x7 grid (7 -> 3 keeps taps 0, 3, 6); fc7 keeps the same rows and columns.
    """
    if 4096 % channels or kernel_size > 7:
        raise ConfigError(f"VGG16 fc layers cannot be decimated to {channels} channels with kernel {kernel_size}")
    step = 4096 // channels
    taps = torch.linspace(0, 6, kernel_size).round().long()
    fc6 = state["classifier.0.weight"].view(4096, 512, 7, 7)[::step][:, :, taps][:, :, :, taps]
    fc7 = state["classifier.3.weight"][::step, ::step]
    return {
        "fc6.weight": fc6.contiguous(),
        "fc6.bias": state["classifier.0.bias"][::step].clone(),
        "fc7.weight": fc7.reshape(channels, channels, 1, 1).clone(),
        "fc7.bias": state["classifier.3.bias"][::step].clone(),
    }


# torchvision DeepLabV3 ("classifier.0" = ASPP, "classifier.1/2" = 3x3 conv + BN, "classifier.4" = logits)
_TORCHVISION_RULES = [
    (r"^classifier\.0\.convs\.4\.(\d)\.", lambda m: f"aspp.pooling.{int(m[1]) - 1}."),
    (r"^classifier\.0\.convs\.", lambda m: "aspp.convs."),
    (r"^classifier\.0\.project\.", lambda m: "aspp.project."),
    (r"^classifier\.([12])\.", lambda m: f"head.0.{int(m[1]) - 1}."),
    (r"^classifier\.4\.", lambda m: "classifier."),
    (r"^aux_classifier\.", lambda m: "aux_classifier."),
]


def convert_torchvision_deeplabv3(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision ``deeplabv3_resnet50/101`` state dict to ``DeepLabV3Net``'s names.

    The target net must be built like torchvision's: ``output_stride=8, multi_grid=None,
    rates=(6, 12, 18)`` (12/24/36 at OS 8), ``head_convs=1``, ``aux=True`` if the state has the aux head.
    """
    out = {}
    for key, value in state.items():
        for pattern, repl in _TORCHVISION_RULES:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    return out
