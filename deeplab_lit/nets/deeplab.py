"""DeepLab's shared network parts, V1 (VGG16-LargeFOV) and V2 (ASPP): backbone → head → logits, upsampled to the input
size. V3 and V3+: ``deeplabv3.py``.

Each ``forward`` returns ``{"out": (B, classes, H, W)}`` plus ``"aux"`` when the auxiliary head is on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .aspp import ASPPv2, AtrousFC, classifier_conv, scale_rates
from .backbones import Backbone, Features, VGG16Backbone, build_backbone
from .caffe_semantics import Interp, caffe_zoom, check_interp
from .weights import decimate_vgg_fc, load_checked


def upsample_to(x: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """Bilinear, ``align_corners=False`` (TF's ``True`` by switch): logits go to the label size, never the reverse."""
    return (
        x
        if tuple(x.shape[-2:]) == tuple(size)
        else F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
    )


class FCNHead(nn.Sequential):
    """Auxiliary classifier on the stride-16 stage (torchvision/mmsegmentation style)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        mid = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            classifier_conv(mid, num_classes),
        )


class DeepLabNet(nn.Module):
    """Shared parts: the backbone, the optional aux head, output-stride switching, the forward pass."""

    backbone: Backbone
    interp: Interp = "bilinear"  # "caffe": the Caffe releases' Interp layer (caffe_semantics.py)
    align_corners = False  # how logits are upsampled to the input size

    def _init_backbone(
        self,
        num_classes: int,
        backbone: str | Backbone,
        output_stride: int,
        multi_grid: Sequence[int] | None,
        backbone_weights: str | None,
        aux: bool,
    ) -> dict[str, Tensor]:
        if num_classes < 1:
            raise ConfigError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.backbone, rest = build_backbone(backbone, output_stride, multi_grid, backbone_weights)
        self.aux_classifier = FCNHead(self.backbone.mid_channels, num_classes) if aux else None
        self._output_stride = output_stride
        return rest

    def classifier_names(self) -> list[str]:
        """Module names of the layers that output class scores (main, per-rate and aux classifiers)."""
        return [name for name, m in self.named_modules() if getattr(m, "is_classifier", False)]

    @property
    def output_stride(self) -> int:
        return self._output_stride

    @property
    def logits_stride(self) -> int:
        """The stride of the logits before upsampling (the decoder's 4 in V3+, the output stride otherwise)."""
        return self.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Re-stride the built network (e.g. train at 16, evaluate at 8); head rates follow."""
        self.backbone.set_output_stride(output_stride)
        self._output_stride = output_stride

    def logits(self, feats: Features) -> Tensor:
        raise NotImplementedError

    def stride_logits(self, x: Tensor) -> Tensor:
        """Logits at the output stride, before any upsampling: (B, classes, H/OS, W/OS)."""
        return self.logits(self.backbone(x))

    def upsample(self, logits: Tensor, size: Sequence[int]) -> Tensor:
        """Logits to the input size: bilinear (``align_corners=False``, TF's ``True`` by switch), or Caffe's
        ``Interp`` zoom and crop."""
        if self.interp == "caffe":
            return caffe_zoom(logits, size, self.output_stride)
        return upsample_to(logits, size, self.align_corners)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        feats = self.backbone(x)
        out = {"out": self.upsample(self.logits(feats), size)}  # (B, classes, H, W)
        if self.aux_classifier is not None:
            out["aux"] = upsample_to(self.aux_classifier(feats["mid"]), size, self.align_corners)
        return out


def _init_fc_from_vgg(fc: AtrousFC, rest: dict[str, Tensor]) -> None:
    if "classifier.0.weight" in rest:
        state = decimate_vgg_fc(rest, fc.fc6.kernel_size[0], fc.fc6.out_channels)
        load_checked(fc, state, source="VGG16 fc6/fc7 (decimated)")


class DeepLabV1Net(DeepLabNet):
    """DeepLab-LargeFOV (V1): VGG16 at OS 8 → atrous fc6/fc7 → fc8, optionally with MSc features.

    ``fc_rate`` is given at OS 8. ``msc_features`` adds V1's multi-scale features: the input and
    pool1–pool4 each pass a 3x3 (128) and a 1x1 (128) conv, and the 640 channels join fc7's output.
    ``pool5_avg`` adds the released LargeFOV's 3x3 average pooling (stride 1) between pool5 and fc6;
    ``interp="caffe"`` upsamples as its ``Interp`` layer.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: str = "vgg16",
        output_stride: int = 8,
        fc_kernel: int = 3,
        fc_rate: int = 12,
        fc_channels: int = 1024,
        msc_features: bool = False,
        backbone_weights: str | None = None,
        aux: bool = False,
        pool5_avg: bool = False,
        interp: Interp = "bilinear",
    ) -> None:
        super().__init__()
        rest = self._init_backbone(num_classes, backbone, output_stride, None, backbone_weights, aux)
        self.interp = check_interp(interp)
        self.pool5a = nn.AvgPool2d(3, stride=1, padding=1) if pool5_avg else nn.Identity()
        if msc_features and not isinstance(self.backbone, VGG16Backbone):
            raise ConfigError(f"msc_features taps VGG16's pooling layers; backbone {backbone!r} has none")
        self.fc_rate = fc_rate
        self.fc = AtrousFC(
            self.backbone.out_channels, fc_channels, fc_kernel, scale_rates([fc_rate], 8, output_stride)[0]
        )
        _init_fc_from_vgg(self.fc, rest)
        self.msc = None
        if msc_features:
            taps = (3, 64, 128, 256, 512)  # input, pool1 … pool4
            self.msc = nn.ModuleList(
                nn.Sequential(
                    nn.Conv2d(c, 128, 3, padding=1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(128, 128, 1),
                    nn.ReLU(inplace=True),
                )
                for c in taps
            )
            self._set_msc_strides(output_stride)
        self.classifier = classifier_conv(fc_channels + (640 if msc_features else 0), num_classes)

    def _set_msc_strides(self, output_stride: int) -> None:
        # tap i sits at stride min(2**i, OS); its 3x3 conv strides the rest of the way to OS
        for i, branch in enumerate(self.msc):
            s = output_stride // min(2**i, output_stride)
            branch[0].stride = (s, s)

    def set_output_stride(self, output_stride: int) -> None:
        super().set_output_stride(output_stride)
        self.fc.set_rate(scale_rates([self.fc_rate], 8, output_stride)[0])
        if self.msc is not None:
            self._set_msc_strides(output_stride)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.msc is None:
            return super().forward(x)
        stages = self.backbone.stages(x)  # input, pool1 … pool5
        out = {"out": self.upsample(self._msc_logits(stages), x.shape[-2:])}  # (B, classes, H, W)
        if self.aux_classifier is not None:
            out["aux"] = upsample_to(self.aux_classifier(stages[4]), x.shape[-2:])
        return out

    def _msc_logits(self, stages: list[Tensor]) -> Tensor:
        y = self.fc(self.pool5a(stages[-1]))  # (B, 1024, H/8, W/8)
        y = torch.cat([y] + [branch(s) for branch, s in zip(self.msc, stages[:5], strict=True)], dim=1)
        return self.classifier(y)

    def stride_logits(self, x: Tensor) -> Tensor:
        return super().stride_logits(x) if self.msc is None else self._msc_logits(self.backbone.stages(x))

    def logits(self, feats: Features) -> Tensor:
        return self.classifier(self.fc(self.pool5a(feats["out"])))


class DeepLabV2Net(DeepLabNet):
    """DeepLab V2: VGG16 or ResNet-101 at OS 8 → ASPP (sum of per-rate classifiers).

    ``rates`` (at OS 8): ASPP-L (6, 12, 18, 24) by default, ASPP-S (2, 4, 8, 12), LargeFOV (12,).
    ``fc_channels``: None gives the paper's models (1024-channel fc6/fc7 per branch on VGG16, one
    3x3 classifier per rate on ResNet); 0 or a width chooses explicitly. ``interp="caffe"`` upsamples as
    the Caffe release's ``Interp`` layer (and makes ``MSC`` fuse as the release).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: str = "resnet101",
        output_stride: int = 8,
        rates: Sequence[int] = (6, 12, 18, 24),
        fc_channels: int | None = None,
        backbone_weights: str | None = None,
        aux: bool = False,
        interp: Interp = "bilinear",
    ) -> None:
        super().__init__()
        rest = self._init_backbone(num_classes, backbone, output_stride, None, backbone_weights, aux)
        self.interp = check_interp(interp)
        if fc_channels is None:
            fc_channels = 1024 if isinstance(self.backbone, VGG16Backbone) else 0
        self.aspp = ASPPv2(self.backbone.out_channels, num_classes, rates, fc_channels, 8, output_stride)
        if fc_channels:
            for branch in self.aspp.branches:
                _init_fc_from_vgg(branch[0], rest)

    def set_output_stride(self, output_stride: int) -> None:
        super().set_output_stride(output_stride)
        self.aspp.set_output_stride(output_stride)

    def logits(self, feats: Features) -> Tensor:
        return self.aspp(feats["out"])
