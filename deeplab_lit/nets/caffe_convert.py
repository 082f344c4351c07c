"""The DeepLab V1/V2 Caffe releases into our networks, by layer name, strictly.

Architectures (``CAFFE_ARCHS``) and the networks they load into:

- ``deeplabv1_largefov``: ``DeepLabV1Net(backbone="vgg16_caffe", pool5_avg=True, interp="caffe")``; layers
  conv1_1 … conv5_3, fc6, fc7, fc8_<dataset>.
- ``deeplabv2_vgg16``: ``DeepLabV2Net(backbone="vgg16_caffe", interp="caffe")`` (ASPP-L); conv1_1 … conv5_3 and
  fc6_<k>, fc7_<k>, fc8_<dataset>_<k> for the four rates.
- ``deeplabv2_resnet101``: ``DeepLabV2Net(backbone="resnet101_caffe", interp="caffe")`` under ``MSC`` (scales
  0.75, 0.5); conv1, bn_conv1/scale_conv1, res<stage><unit>_branch{1,2a,2b,2c} with their bn/scale layers, and
  fc1_<dataset>_c<k> (fc1_c<k> in the COCO-init model). The MSC copies of the shared layers (``*_res075``,
  ``*_res05``) must equal the scale-1 layers.

Every layer with blobs is used, or named in the error; so is every layer the network needs. conv1's input channels
are turned from BGR to RGB, so the network takes RGB with the mean pixel subtracted (``CAFFE_MEAN_RGB``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .caffe_model import read_caffemodel

CAFFE_ARCHS = ("deeplabv1_largefov", "deeplabv2_vgg16", "deeplabv2_resnet101")
_VGG_CONVS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2"] + [f"conv{s}_{i}" for s in (3, 4, 5) for i in (1, 2, 3)]
_VGG_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # their places in torchvision's vgg16.features
_RESNET_UNITS = {2: 3, 3: 4, 4: 23, 5: 3}
_MSC_COPY = re.compile(r"^(.+)_res0(75|5)$")
# the classifier layers; the dataset tag differs between releases (voc12, or none in the COCO-init model)
_CLASSIFIERS = {
    "deeplabv1_largefov": re.compile(r"^fc8(_[A-Za-z0-9]+)?$"),
    "deeplabv2_vgg16": re.compile(r"^fc8(_[A-Za-z0-9]+)?_([1-4])$"),
    "deeplabv2_resnet101": re.compile(r"^fc1(_[A-Za-z0-9]+)?_c([0-3])$"),
}


def _unit_name(stage: int, unit: int) -> str:
    if unit == 0:
        return "a"
    return chr(ord("a") + unit) if _RESNET_UNITS[stage] <= 3 else f"b{unit}"


def _layer_map(arch: str, classifiers: dict[str, str]) -> dict[str, tuple[str, str]]:
    """``{caffe layer: (kind, our module prefix)}``; kind is conv, bn (BatchNorm) or scale (Scale)."""
    if arch in ("deeplabv1_largefov", "deeplabv2_vgg16"):
        out = {c: ("conv", f"backbone.features.{i}") for c, i in zip(_VGG_CONVS, _VGG_INDICES, strict=True)}
        if arch == "deeplabv1_largefov":
            out.update({"fc6": ("conv", "fc.fc6"), "fc7": ("conv", "fc.fc7")})
        else:  # one fc6 -> fc7 -> fc8 stack per ASPP rate
            for k in range(1, 5):
                out.update({f"fc{i}_{k}": ("conv", f"aspp.branches.{k - 1}.0.fc{i}") for i in (6, 7)})
    else:
        out = {"conv1": ("conv", "backbone.conv1"), "bn_conv1": ("bn", "backbone.bn1")}
        out["scale_conv1"] = ("scale", "backbone.bn1")
        for stage, units in _RESNET_UNITS.items():
            for u in range(units):
                name, ours = f"{stage}{_unit_name(stage, u)}", f"backbone.layer{stage - 1}.{u}"
                branches = {"2a": ("conv1", "bn1"), "2b": ("conv2", "bn2"), "2c": ("conv3", "bn3")}
                if u == 0:
                    branches["1"] = ("downsample.0", "downsample.1")
                for b, (conv, bn) in branches.items():
                    out[f"res{name}_branch{b}"] = ("conv", f"{ours}.{conv}")
                    out[f"bn{name}_branch{b}"] = ("bn", f"{ours}.{bn}")
                    out[f"scale{name}_branch{b}"] = ("scale", f"{ours}.{bn}")
    out.update({layer: ("conv", prefix) for layer, prefix in classifiers.items()})
    return out


def _classifiers(arch: str, names: list[str]) -> dict[str, str]:
    """The file's classifier layers mapped to our modules (a dataset tag, if any, taken from the file)."""
    found = {name: _CLASSIFIERS[arch].match(name) for name in names}
    found = {name: m for name, m in found.items() if m}
    if arch == "deeplabv1_largefov":
        return {name: "classifier" for name in found}
    if arch == "deeplabv2_vgg16":
        return {name: f"aspp.branches.{int(m[2]) - 1}.1" for name, m in found.items()}
    return {name: f"aspp.branches.{int(m[2])}" for name, m in found.items()}


def _tensors(kind: str, prefix: str, blobs: list[np.ndarray], layer: str) -> dict[str, np.ndarray]:
    expected = {"conv": (1, 2), "scale": (2,), "bn": (3,)}[kind]
    if len(blobs) not in expected:
        raise ValueError(f"{layer} ({kind}) has {len(blobs)} blobs, expected {' or '.join(map(str, expected))}")
    if kind == "bn":  # Caffe's BatchNorm stores sums scaled by a moving-average factor (blob 2)
        factor = float(blobs[2].reshape(-1)[0])
        factor = 0.0 if factor == 0 else 1.0 / factor
        return {f"{prefix}.running_mean": blobs[0] * factor, f"{prefix}.running_var": blobs[1] * factor}
    return {f"{prefix}.{n}": b for n, b in zip(("weight", "bias"), blobs, strict=False)}


def caffe_state_dict(
    layers: dict[str, list[np.ndarray]],
    arch: str,
    net: nn.Module,
    source: str | Path = "Caffe model",
    skip_classifiers: bool = False,
) -> dict[str, Tensor]:
    """Our state dict for ``net`` from a Caffe model's ``{layer: blobs}``; CheckpointError naming every problem.

    ``skip_classifiers`` leaves the classifier layers out (fine-tuning from a model with other classes).
    """
    if arch not in CAFFE_ARCHS:
        raise CheckpointError(f"unknown Caffe architecture {arch!r}; choose from {CAFFE_ARCHS}")
    with_blobs = [name for name, blobs in layers.items() if blobs]
    classifiers = _classifiers(arch, with_blobs)
    mapping = _layer_map(arch, classifiers)
    own = net.state_dict()
    classes = getattr(net, "num_classes", None)
    wrong = {c: layers[c][0].shape[0] for c in classifiers if layers[c][0].shape[0] != classes}
    problems = [] if skip_classifiers else [f"{c} has {n} classes, the network {classes}" for c, n in wrong.items()]
    skipped = set(classifiers) if skip_classifiers else set(wrong)
    state, unexpected = {}, []
    for name in with_blobs:
        copy = _MSC_COPY.match(name)
        if copy and copy[1] in mapping:  # MSC branch of a shared layer: must be the same weights
            ours, theirs = layers[name], layers[copy[1]]
            same = len(ours) == len(theirs) and all(
                a.shape == b.shape and np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)
            )
            if not same:
                problems.append(f"{name} differs from {copy[1]}, whose weights it shares")
            continue
        if name not in mapping:
            unexpected.append(name)
            continue
        if name in skipped:
            continue
        try:
            state.update(_tensors(*mapping[name], layers[name], name))
        except ValueError as err:
            problems.append(str(err))
    missing = sorted(layer for layer in mapping if not layers.get(layer))
    missing += [] if classifiers else [f"{_CLASSIFIERS[arch].pattern} (the classifier)"]
    for key, value in list(state.items()):
        if key not in own:
            problems.append(f"{key} has no place in {type(net).__name__}; build it for {arch}")
        elif own[key].numel() != value.size:
            layer = next(layer for layer, (_, p) in mapping.items() if key.startswith(p + "."))
            problems.append(f"{layer}: {tuple(value.shape)} does not fit {key} {tuple(own[key].shape)}")
        else:
            state[key] = torch.from_numpy(np.ascontiguousarray(value)).reshape(own[key].shape)
    heads = tuple(f"{classifiers[c]}." for c in skipped)
    left = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked") and not k.startswith(heads))
    problems += [f"{k} of {type(net).__name__} gets no weight from the file" for k in left]
    if missing or unexpected or problems:
        parts = [f"{label} ({len(v)}): {', '.join(v[:10])}{' ...' if len(v) > 10 else ''}"
                 for label, v in (("missing layers", missing), ("unexpected layers", unexpected),
                                  ("problems", problems)) if v]  # fmt: skip
        guess = guess_arch(layers)
        hint = f" It looks like a {guess} file." if guess and guess != arch else ""
        raise CheckpointError(f"Caffe model {source} does not fit {arch}: " + "; ".join(parts) + "." + hint)
    conv1 = _layer_map(arch, {})["conv1" if arch == "deeplabv2_resnet101" else "conv1_1"][1] + ".weight"
    state[conv1] = state[conv1].flip(1)  # Caffe's BGR input channels -> RGB
    for key, value in own.items():  # BatchNorm's counter is not a weight
        if key.endswith("num_batches_tracked"):
            state[key] = value.clone()
    return state


def guess_arch(layers: dict[str, list[np.ndarray]]) -> str | None:
    """Which released architecture a Caffe model's layer names look like, if any."""
    names = set(layers)
    if "res4b22_branch2c" in names:
        return "deeplabv2_resnet101"
    if "fc6_1" in names:
        return "deeplabv2_vgg16"
    if "fc6" in names and "conv5_3" in names:
        return "deeplabv1_largefov"
    return None


def caffe_arch(net: nn.Module) -> str:
    """The Caffe architecture a network built for one of the releases loads."""
    backbone = type(getattr(net, "backbone", None)).__name__
    kind = type(net).__name__
    if kind == "DeepLabV1Net" and backbone == "CaffeVGG16Backbone":
        return "deeplabv1_largefov"
    if kind == "DeepLabV2Net" and backbone == "CaffeVGG16Backbone":
        return "deeplabv2_vgg16"
    if kind == "DeepLabV2Net" and backbone == "CaffeResNetBackbone":
        return "deeplabv2_resnet101"
    raise CheckpointError(
        f"a .caffemodel loads into DeepLabV1/V2 built with backbone vgg16_caffe or resnet101_caffe, not {kind} "
        f"with {backbone}; see experiments/configs/official/"
    )


def read_caffe_state_dict(net: nn.Module, path: str | Path, skip_classifiers: bool = False) -> dict[str, Tensor]:
    """A released ``.caffemodel`` as a state dict for ``net`` (or the network an ``MSC`` wraps)."""
    target = getattr(net, "net", net)
    return caffe_state_dict(read_caffemodel(path), caffe_arch(target), target, path, skip_classifiers)


def load_caffemodel(net: nn.Module, path: str | Path) -> None:
    """Load a released ``.caffemodel`` into ``net``, whose build (``caffe_arch``) names the architecture."""
    getattr(net, "net", net).load_state_dict(read_caffe_state_dict(net, path))


__all__ = ["CAFFE_ARCHS", "caffe_arch", "caffe_state_dict", "guess_arch", "load_caffemodel", "read_caffe_state_dict"]
