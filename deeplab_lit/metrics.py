"""Dataset-level segmentation metrics from one confusion matrix accumulated over the whole split.

mIoU here is the benchmark mIoU (VOC/Cityscapes): one confusion matrix over every labelled pixel of the split,
the same value as torchmetrics' ``MulticlassJaccardIndex(average="macro", ignore_index=255)`` (a test checks
this). Keeping the matrix itself gives every other metric from the same single state, which is summed across
processes, and lets loggers draw it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix


class SegmentationMetrics(MulticlassConfusionMatrix):
    """Confusion matrix (rows = label, columns = prediction) with the segmentation metrics derived from it.

    ``compute()`` returns ``mIoU``, ``pixel_acc``, ``mean_acc``, ``fwIoU`` (scalars), ``IoU`` (per class,
    NaN for a class absent from both labels and predictions) and ``confmat``.
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, validate_args=False)

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``: (B, H, W) class indices or (B, C, H, W) scores; ``target``: (B, H, W) labels."""
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(1)
        super().update(preds, target)

    def compute(self) -> dict[str, Tensor]:
        return metrics_from_confmat(self.confmat)


def metrics_from_confmat(confmat: Tensor) -> dict[str, Tensor]:
    """Every metric from a (C, C) confusion matrix (rows = label, columns = prediction)."""
    cm = confmat.double()
    tp = cm.diagonal()
    gt, pred = cm.sum(1), cm.sum(0)
    union = gt + pred - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp_min(1), torch.nan)
    total = cm.sum().clamp_min(1)
    acc = torch.where(gt > 0, tp / gt.clamp_min(1), torch.nan)
    return {
        "mIoU": iou[present].mean() if present.any() else torch.tensor(0.0, dtype=cm.dtype),
        "pixel_acc": tp.sum() / total,
        "mean_acc": acc.nanmean() if (gt > 0).any() else torch.tensor(0.0, dtype=cm.dtype),
        "fwIoU": (gt / total * iou.nan_to_num()).sum(),
        "IoU": iou,
        "confmat": confmat,
    }
