"""One LightningModule per generation: typed knobs with the papers' defaults over the shared module.

Every ablation knob is an ``__init__`` argument, so LightningCLI exposes it (``--model.image_pooling false``)
and loggers record it. Training options (optimizer, poly LR, aux weight, freezing BN, MSC, fine-tuning) are
the keyword arguments of ``SegmentationModule``.
"""

from __future__ import annotations

from typing import Any

from ..inference import V1_CRF, V2_CRF, CRFParams
from ..nets import DeepLabV1Net, DeepLabV2Net, DeepLabV3Net, DeepLabV3PlusNet
from ..nets.caffe_semantics import Interp
from .segmentation import SegmentationModule


class DeepLabV1(SegmentationModule):
    """DeepLab-LargeFOV (V1): VGG16 at OS 8, fc6 3x3 rate 12 with 1024 channels; lr 1e-3, wd 5e-4 (V1 §4.1);
    evaluated with the dense CRF (``crf: null`` turns it off). ``backbone: vgg16_caffe``, ``pool5_avg`` and
    ``interp: caffe`` build the Caffe release's network (``experiments/configs/official/``).
    """

    def __init__(
        self,
        num_classes: int = 21,
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
        lr: float = 1e-3,
        weight_decay: float = 5e-4,
        crf: CRFParams | None = V1_CRF,
        **kwargs: Any,
    ) -> None:
        net = DeepLabV1Net(
            num_classes,
            backbone=backbone,
            output_stride=output_stride,
            fc_kernel=fc_kernel,
            fc_rate=fc_rate,
            fc_channels=fc_channels,
            msc_features=msc_features,
            backbone_weights=backbone_weights,
            aux=aux,
            pool5_avg=pool5_avg,
            interp=interp,
        )
        super().__init__(net, num_classes=num_classes, lr=lr, weight_decay=weight_decay, crf=crf, **kwargs)


class DeepLabV2(SegmentationModule):
    """DeepLab V2: ResNet-101 at OS 8, ASPP-L (6, 12, 18, 24), MSC input (1, 0.75, 0.5); lr 2.5e-4, wd 5e-4;
    evaluated with the dense CRF (``crf: null`` turns it off).
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet101",
        output_stride: int = 8,
        atrous_rates: tuple[int, ...] = (6, 12, 18, 24),
        fc_channels: int | None = None,
        backbone_weights: str | None = None,
        aux: bool = False,
        interp: Interp = "bilinear",
        msc_scales: tuple[float, ...] | None = (0.75, 0.5),
        lr: float = 2.5e-4,
        weight_decay: float = 5e-4,
        crf: CRFParams | None = V2_CRF,
        **kwargs: Any,
    ) -> None:
        net = DeepLabV2Net(
            num_classes,
            backbone=backbone,
            output_stride=output_stride,
            rates=atrous_rates,
            fc_channels=fc_channels,
            backbone_weights=backbone_weights,
            aux=aux,
            interp=interp,
        )
        super().__init__(
            net, num_classes=num_classes, msc_scales=msc_scales, lr=lr, weight_decay=weight_decay, crf=crf, **kwargs
        )


class DeepLabV3(SegmentationModule):
    """DeepLab V3: ResNet-101, OS 16, multi-grid (1, 2, 4), ASPP (6, 12, 18) + image pooling; lr 0.007.

    ``atrous_rates`` are given at OS 16 and scale with the output stride; ``eval_output_stride=8`` is the
    paper's best inference setting. ``cascade_blocks=3`` is the "going deeper" model instead of ASPP.
    ``align_corners``, ``backbone_bn_eps`` and ``tf_same_padding`` are TF DeepLab's semantics, for its released
    checkpoints (``experiments/configs/official/``).
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet101",
        output_stride: int = 16,
        multi_grid: tuple[int, ...] | None = (1, 2, 4),
        atrous_rates: tuple[int, ...] = (6, 12, 18),
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
        **kwargs: Any,
    ) -> None:
        net = DeepLabV3Net(
            num_classes,
            backbone=backbone,
            output_stride=output_stride,
            multi_grid=multi_grid,
            rates=atrous_rates,
            image_pooling=image_pooling,
            aspp_channels=aspp_channels,
            separable=separable,
            head_convs=head_convs,
            dropout=dropout,
            cascade_blocks=cascade_blocks,
            backbone_weights=backbone_weights,
            aux=aux,
            align_corners=align_corners,
            backbone_bn_eps=backbone_bn_eps,
            tf_same_padding=tf_same_padding,
        )
        super().__init__(net, num_classes=num_classes, **kwargs)


class DeepLabV3Plus(SegmentationModule):
    """DeepLab V3+: Xception-65, OS 16, ASPP (6, 12, 18) + image pooling, decoder (48, 2×[3x3, 256]); lr 0.007.

    ``decoder=False`` is V3's head on the same backbone, for the decoder ablation. ``tf_decoder_end_point`` (with
    V3's TF switches) is TF DeepLab's decoder input, for its released checkpoints.
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "xception65",
        output_stride: int = 16,
        multi_grid: tuple[int, ...] | None = None,
        atrous_rates: tuple[int, ...] = (6, 12, 18),
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
        **kwargs: Any,
    ) -> None:
        net = DeepLabV3PlusNet(
            num_classes,
            backbone=backbone,
            output_stride=output_stride,
            multi_grid=multi_grid,
            rates=atrous_rates,
            image_pooling=image_pooling,
            aspp_channels=aspp_channels,
            separable=separable,
            dropout=dropout,
            decoder=decoder,
            low_level_channels=low_level_channels,
            decoder_channels=decoder_channels,
            decoder_convs=decoder_convs,
            backbone_weights=backbone_weights,
            aux=aux,
            align_corners=align_corners,
            backbone_bn_eps=backbone_bn_eps,
            tf_same_padding=tf_same_padding,
            tf_decoder_end_point=tf_decoder_end_point,
        )
        super().__init__(net, num_classes=num_classes, **kwargs)
