"""DeepLab V3 and V3+: ASPP with image pooling (or the cascaded "going deeper" model), multi-grid, output stride 8/16,
and the V3+ encoder-decoder; with the TF model zoo's semantics as switches (``tf_semantics.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import ConfigError
from .aspp import ASPP, ConvBNReLU, classifier_conv
from .backbones import Backbone, Features
from .cascade import CascadedBlocks
from .decoder import Decoder
from .deeplab import DeepLabNet
from .tf_semantics import set_bn_eps, use_tf_decoder_end_point, use_tf_same_padding


class DeepLabV3Net(DeepLabNet):
    """DeepLab V3: ResNet with multi-grid → ASPP with image pooling, or the cascaded "going deeper" model.

    ``rates`` are given at OS 16 and scale with the output stride ((12, 24, 36) at OS 8).
    ``cascade_blocks > 0`` replaces ASPP with block5… (V3 Tables 1–3). ``head_convs`` adds 3x3 convs after
    ASPP (torchvision's DeepLabHead has one); ``aux`` adds the auxiliary head on the stride-16 stage.
    ``rates=()`` keeps only ASPP's 1x1 branch and image pooling (TF DeepLab's MobileNetV2 models).

    TF semantics, which a network converted from the TF model zoo turns on (``deeplab_lit.nets.tf_zoo``):
    ``align_corners`` for every bilinear resize, ``backbone_bn_eps`` (1e-3 in TF's Xception and MobileNetV2;
    None keeps the backbone's own: PyTorch's 1e-5, TF's 1e-3 in Xception-65) and ``tf_same_padding`` (TF's
    ``SAME`` where the TF backbone uses it).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: str | Backbone = "resnet101",
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = (1, 2, 4),
        rates: Sequence[int] = (6, 12, 18),
        image_pooling: bool = True,
        aspp_channels: int = 256,
        separable: bool = False,
        head_convs: int = 0,
        dropout: float = 0.1,
        cascade_blocks: int = 0,
        backbone_weights: str | None = None,
        aux: bool = False,
        align_corners: bool = False,
        backbone_bn_eps: float | None = None,
        tf_same_padding: bool = False,
    ) -> None:
        super().__init__()
        if cascade_blocks and output_stride not in [2**k for k in range(3, 6 + cascade_blocks)]:
            raise ConfigError(f"output stride {output_stride} is not a power of 2 in 8…{32 * 2**cascade_blocks}")
        # the cascade takes the output stride past the backbone's 32
        self._init_backbone(
            num_classes,
            backbone,
            min(output_stride, 32) if cascade_blocks else output_stride,
            multi_grid,
            backbone_weights,
            aux,
        )
        self._output_stride = output_stride
        self.align_corners = align_corners
        if backbone_bn_eps is not None:
            set_bn_eps(self.backbone, backbone_bn_eps)
        if tf_same_padding:
            use_tf_same_padding(self.backbone)
        channels = self.backbone.out_channels
        self.aspp = self.cascade = None
        if cascade_blocks:
            self.cascade = CascadedBlocks(cascade_blocks, channels, output_stride, multi_grid)
        else:
            self.aspp = ASPP(
                channels, rates, aspp_channels, image_pooling, separable, dropout, 16, output_stride, align_corners
            )
            channels = aspp_channels
        self.head = nn.Sequential(*(ConvBNReLU(channels, channels, 3, separable=separable) for _ in range(head_convs)))
        self.encoder_channels = channels
        self.classifier = classifier_conv(channels, num_classes)

    def set_output_stride(self, output_stride: int) -> None:
        self.backbone.set_output_stride(min(output_stride, 32))
        self._output_stride = output_stride
        if self.cascade is not None:
            self.cascade.set_output_stride(output_stride)
        else:
            self.aspp.set_output_stride(output_stride)

    def encode(self, feats: Features) -> Tensor:
        x = self.cascade(feats["out"]) if self.cascade is not None else self.aspp(feats["out"])
        return self.head(x)  # (B, 256, H/OS, W/OS) with ASPP

    def logits(self, feats: Features) -> Tensor:
        return self.classifier(self.encode(feats))


class DeepLabV3PlusNet(DeepLabV3Net):
    """DeepLab V3+: V3's encoder + a decoder on stride-4 features; ``decoder=False`` is V3 for ablations.

    Defaults follow the paper's main model: aligned Xception-65, OS 16, no multi-grid. The TF switches are
    ``DeepLabV3Net``'s, and ``tf_decoder_end_point``: the decoder reads TF DeepLab's stride-4 end point (Xception-65:
    before the ReLU, where our own training reads after it).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: str | Backbone = "xception65",
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = None,
        rates: Sequence[int] = (6, 12, 18),
        image_pooling: bool = True,
        aspp_channels: int = 256,
        separable: bool = False,
        dropout: float = 0.1,
        decoder: bool = True,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        decoder_convs: int = 2,
        backbone_weights: str | None = None,
        aux: bool = False,
        align_corners: bool = False,
        backbone_bn_eps: float | None = None,
        tf_same_padding: bool = False,
        tf_decoder_end_point: bool = False,
    ) -> None:
        super().__init__(
            num_classes,
            backbone=backbone,
            output_stride=output_stride,
            multi_grid=multi_grid,
            rates=rates,
            image_pooling=image_pooling,
            aspp_channels=aspp_channels,
            separable=separable,
            dropout=dropout,
            backbone_weights=backbone_weights,
            aux=aux,
            align_corners=align_corners,
            backbone_bn_eps=backbone_bn_eps,
            tf_same_padding=tf_same_padding,
        )
        if tf_decoder_end_point:
            use_tf_decoder_end_point(self.backbone)
        self.decoder = None
        if decoder:
            self.decoder = Decoder(
                aspp_channels,
                self.backbone.low_level_channels,
                low_level_channels,
                decoder_channels,
                decoder_convs,
                separable,
                align_corners,
            )
            self.classifier = classifier_conv(decoder_channels, num_classes)

    @property
    def logits_stride(self) -> int:
        return 4 if self.decoder is not None else self.output_stride  # the decoder works on stride-4 features

    def logits(self, feats: Features) -> Tensor:
        x = self.encode(feats)
        if self.decoder is not None:
            x = self.decoder(x, feats["low_level"])  # (B, 256, H/4, W/4)
        return self.classifier(x)
