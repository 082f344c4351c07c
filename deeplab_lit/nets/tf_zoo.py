"""TF DeepLab model zoo (``research/deeplab``) → our networks: variable names, layouts, strict loading.

``load_tf_checkpoint(net, "model.ckpt")`` fills a ``DeepLabV3Net``/``DeepLabV3PlusNet`` from a zoo checkpoint
(every variable used, every parameter filled, or one error listing what was not); ``load_tf_backbone`` fills a
backbone from an ImageNet checkpoint (``backbone_weights="…/model.ckpt"``). The network must be built as the
released graph, with its semantics (``experiments/configs/official/`` per model). Backbones: MobileNetV2,
ResNet-v1-beta and Xception-65.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .backbones import Backbone, MobileNetV2Backbone
from .resnet_beta import ResNetBetaBackbone
from .tf_checkpoint import TFCheckpoint
from .weights import load_checked
from .xception_tf import Xception65Backbone

Plan = dict[str, tuple[str, Callable[[Tensor], Tensor]]]  # our state-dict key -> (TF variable, layout change)
BOOKKEEPING = ("global_step",)  # TF variables that are not weights
BOOKKEEPING_SUFFIXES = ("/Momentum", "/ExponentialMovingAverage")  # optimizer slots, if a checkpoint kept them
HEAD_SCOPES = ("image_pooling/", "aspp", "concat_projection/", "decoder/", "logits/")  # model.py's, not a backbone's


def _conv(w: Tensor) -> Tensor:
    return w.permute(3, 2, 0, 1).contiguous()  # (kh, kw, in, out) -> (out, in, kh, kw)


def _depthwise(w: Tensor) -> Tensor:
    return w.permute(2, 3, 0, 1).contiguous()  # (kh, kw, channels, 1) -> (channels, 1, kh, kw)


def _same(w: Tensor) -> Tensor:
    return w


def _conv_bn(plan: Plan, conv: str, bn: str, scope: str, depthwise: bool = False) -> None:
    """slim's conv (``weights`` or ``depthwise_weights``) and its ``BatchNorm`` under ``scope``."""
    plan[f"{conv}.weight"] = (f"{scope}/{'depthwise_' if depthwise else ''}weights", _depthwise if depthwise else _conv)
    for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean")):
        plan[f"{bn}.{ours}"] = (f"{scope}/BatchNorm/{theirs}", _same)
    plan[f"{bn}.running_var"] = (f"{scope}/BatchNorm/moving_variance", _same)


def _conv_bn_relu(plan: Plan, prefix: str, scope: str, separable: bool) -> None:
    """Our ``ConvBNReLU`` (plain, or depthwise → BN → ReLU → 1x1 → BN → ReLU) from TF's scope(s)."""
    if separable:
        _conv_bn(plan, f"{prefix}.0", f"{prefix}.1", f"{scope}_depthwise", depthwise=True)
        _conv_bn(plan, f"{prefix}.3", f"{prefix}.4", f"{scope}_pointwise")
    else:
        _conv_bn(plan, f"{prefix}.0", f"{prefix}.1", scope)


def backbone_plan(backbone: Backbone, prefix: str = "") -> tuple[Plan, tuple[str, ...]]:
    """Our backbone's keys from TF names; also the TF scopes of the ImageNet classifier it does not hold."""
    plan: Plan = {}
    if isinstance(backbone, MobileNetV2Backbone):
        f = f"{prefix}features"
        _conv_bn(plan, f"{f}.0.0", f"{f}.0.1", "MobilenetV2/Conv")
        for i, block in enumerate(backbone.features[1:], 1):
            scope = "MobilenetV2/expanded_conv" + (f"_{i - 1}" if i > 1 else "")
            layers = len(block.conv)  # 3 without the expansion conv (the first block), 4 with it
            if layers == 4:
                _conv_bn(plan, f"{f}.{i}.conv.0.0", f"{f}.{i}.conv.0.1", f"{scope}/expand")
            d = layers - 3
            _conv_bn(plan, f"{f}.{i}.conv.{d}.0", f"{f}.{i}.conv.{d}.1", f"{scope}/depthwise", depthwise=True)
            _conv_bn(plan, f"{f}.{i}.conv.{d + 1}", f"{f}.{i}.conv.{d + 2}", f"{scope}/project")
        return plan, ("MobilenetV2/Conv_1/", "MobilenetV2/Logits/")
    if isinstance(backbone, ResNetBetaBackbone):
        scope = f"resnet_v1_{50 if len(backbone.blocks[2]) == 6 else 101}"
        for name in ("conv1_1", "conv1_2", "conv1_3"):
            _conv_bn(plan, f"{prefix}{name}.0", f"{prefix}{name}.1", f"{scope}/{name}")
        for b, block in enumerate(backbone.blocks):
            for u, unit in enumerate(block):
                ours, theirs = f"{prefix}blocks.{b}.{u}", f"{scope}/block{b + 1}/unit_{u + 1}/bottleneck_v1"
                for part in ("conv1", "conv2", "conv3") + (("shortcut",) if unit.shortcut is not None else ()):
                    _conv_bn(plan, f"{ours}.{part}.0", f"{ours}.{part}.1", f"{theirs}/{part}")
        return plan, (f"{scope}/logits/",)
    if isinstance(backbone, Xception65Backbone):
        body = f"{prefix}body"
        for i, name in enumerate(("conv1_1", "conv1_2")):
            _conv_bn(plan, f"{body}.stem_{i}.conv", f"{body}.stem_{i}.bn", f"xception_65/entry_flow/{name}")
        for i, (unit, scope) in enumerate(zip(backbone.units(), backbone.tf_scopes, strict=True)):
            ours, theirs = f"{body}.blocks_{i}", f"xception_65/{scope}/xception_module"
            for k in (1, 2, 3):  # regularize_depthwise=False: split depthwise and pointwise scopes, a BN after each
                sep = f"{ours}.stack.conv{k}"
                _conv_bn(plan, f"{sep}.conv_dw", f"{sep}.bn_dw", f"{theirs}/separable_conv{k}_depthwise", True)
                _conv_bn(plan, f"{sep}.conv_pw", f"{sep}.bn_pw", f"{theirs}/separable_conv{k}_pointwise")
            if unit.shortcut is not None:
                _conv_bn(plan, f"{ours}.shortcut.conv", f"{ours}.shortcut.bn", f"{theirs}/shortcut")
        return plan, ("xception_65/logits/",)
    raise CheckpointError(f"no TF model-zoo names for a {type(backbone).__name__} backbone")


def _pooling_last(channels: int) -> Callable[[Tensor], Tensor]:
    # TF concatenates [image pooling, aspp0, aspp1, ...]; our ASPP [aspp0, aspp1, ..., image pooling]
    def reorder(w: Tensor) -> Tensor:
        parts = list(_conv(w).split(channels, dim=1))
        return torch.cat(parts[1:] + parts[:1], dim=1)

    return reorder


def network_plan(net: nn.Module) -> Plan:
    """Our ``DeepLabV3Net``/``DeepLabV3PlusNet`` keys from the variable names of TF DeepLab's ``model.py``."""
    plan, _ = backbone_plan(net.backbone, "backbone.")
    aspp = net.aspp
    separable = any(conv[0].groups > 1 for conv in aspp.convs[1:])
    _conv_bn_relu(plan, "aspp.convs.0", "aspp0", False)
    for i in range(1, len(aspp.convs)):
        _conv_bn_relu(plan, f"aspp.convs.{i}", f"aspp{i}", separable)
    _conv_bn(plan, "aspp.project.0", "aspp.project.1", "concat_projection")
    if aspp.pooling is not None:
        _conv_bn_relu(plan, "aspp.pooling", "image_pooling", False)
        plan["aspp.project.0.weight"] = ("concat_projection/weights", _pooling_last(aspp.out_channels))
    decoder = getattr(net, "decoder", None)
    if decoder is not None:
        _conv_bn_relu(plan, "decoder.reduce", "decoder/feature_projection0", False)
        for j in range(len(decoder.convs)):
            dw = decoder.convs[j][0].groups > 1
            _conv_bn_relu(plan, f"decoder.convs.{j}", f"decoder/decoder_conv{j}", dw)
    plan["classifier.weight"] = ("logits/semantic/weights", _conv)
    plan["classifier.bias"] = ("logits/semantic/biases", _same)
    return plan


def _listing(names: list[str]) -> str:
    """Up to 8 names in full, more by their top scope with counts (another architecture differs in hundreds)."""
    if len(names) <= 8:
        return ", ".join(names)
    return ", ".join(f"{scope}/... ({n})" for scope, n in sorted(Counter(k.split("/")[0] for k in names).items()))


def _fill(module: nn.Module, ckpt: TFCheckpoint, plan: Plan, extra: tuple[str, ...]) -> dict[str, Tensor]:
    """Load ``plan`` from ``ckpt`` into ``module`` strictly; return the TF variables under the ``extra`` scopes."""
    wanted = {name for name, _ in plan.values()}
    absent = sorted(wanted - set(ckpt.shapes))
    spare = [n for n in ckpt.shapes if n not in wanted and n not in BOOKKEEPING]
    spare = [n for n in spare if not n.endswith(BOOKKEEPING_SUFFIXES)]
    rest = [n for n in spare if n.startswith(extra)]
    unused = sorted(set(spare) - set(rest))
    own = module.state_dict()
    unfilled = sorted(k for k in own if k not in plan and not k.endswith("num_batches_tracked"))
    if absent or unused or unfilled:
        parts = [
            f"{label} ({len(names)}): {_listing(names)}"
            for label, names in (
                ("TF variables our network needs but the checkpoint lacks", absent),
                ("TF variables our network has no place for", unused),
                ("our parameters no TF variable fills", unfilled),
            )
            if names
        ]
        raise CheckpointError(
            f"TF checkpoint {ckpt.prefix} does not fit {type(module).__name__}: " + "; ".join(parts)
            + " (is it another model, or the network built with other arguments?)"
        )  # fmt: skip
    state = {key: fn(ckpt[name]) for key, (name, fn) in plan.items()}
    state |= {k: v for k, v in own.items() if k.endswith("num_batches_tracked")}
    try:
        load_checked(module, state, source=f"TF checkpoint {ckpt.prefix}")
    except ValueError as err:  # mis-shaped: another width or class count; nothing was loaded
        raise CheckpointError(str(err)) from err
    return {n: ckpt[n] for n in rest}


def load_tf_checkpoint(net: nn.Module, prefix: str | Path) -> None:
    """Fill ``net`` from a TF DeepLab checkpoint (``.../model.ckpt``), every variable used, or raise."""
    _fill(net, TFCheckpoint(prefix), network_plan(net), ())


def load_tf_backbone(backbone: Backbone, prefix: str | Path) -> dict[str, Tensor]:
    """Fill a backbone from a TF ImageNet (or DeepLab) checkpoint; return the classifier or head variables left."""
    plan, extra = backbone_plan(backbone)
    return _fill(backbone, TFCheckpoint(prefix), plan, extra + HEAD_SCOPES)


def is_tf_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` names a TF checkpoint: its prefix (``model.ckpt``) or its ``.index`` file."""
    path = Path(path)
    return path.suffix == ".index" or Path(f"{path}.index").is_file()
