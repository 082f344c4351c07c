"""Dataset-level segmentation metrics from one confusion matrix accumulated over the whole split.

mIoU here is the benchmark mIoU (VOC/Cityscapes): one confusion matrix over every labelled pixel of the split,
the same value as torchmetrics' ``MulticlassJaccardIndex(average="macro", ignore_index=255)`` (a test checks
this). Keeping the matrix itself gives every other metric from the same single state, which is summed across
processes, and lets loggers draw it. ``boundary_band`` and ``trimap_miou`` give the papers' trimap evaluation:
mIoU over the pixels near label boundaries only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from .errors import ConfigError, DataError


class SegmentationMetrics(MulticlassConfusionMatrix):
    """Confusion matrix (rows = label, columns = prediction) with the segmentation metrics derived from it.

    ``compute()`` returns ``mIoU``, ``pixel_acc``, ``mean_acc``, ``fwIoU`` (scalars), ``IoU`` (per class,
    NaN for a class absent from both labels and predictions), ``confmat`` and ``invalid``.

    Labels must lie in ``[0, num_classes)`` or be ``ignore_index``. A prediction outside ``[0, num_classes)`` on a
    labelled pixel (e.g. 255 read back from another tool's label PNGs) raises ``DataError`` naming the values and the
    pixel count; with ``invalid_preds="wrong"`` such pixels count as wrong instead: in ``invalid`` (per label
    class, the matrix's extra "wrong" column), in their class's ground truth and in the total, in no class's
    predictions.
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255, invalid_preds: str = "error") -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, validate_args=False)
        if invalid_preds not in ("error", "wrong"):
            raise ConfigError(f'invalid_preds must be "error" or "wrong", got {invalid_preds!r}')
        self.invalid_preds = invalid_preds
        self.add_state("invalid", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``: (B, H, W) class indices or (B, C, H, W) scores; ``target``: (B, H, W) labels."""
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(1)
        n = self.num_classes
        labelled = target != self.ignore_index
        bad_labels = labelled & ((target < 0) | (target >= n))
        bad_preds = labelled & ((preds < 0) | (preds >= n))
        if bool((bad_labels | bad_preds).any()):  # one check in the common case; details only on failure
            if bad_labels.any():
                raise DataError(
                    f"labels hold values {target[bad_labels].unique()[:10].tolist()} outside [0, {n}) and "
                    f"{self.ignore_index} at {int(bad_labels.sum())} pixels"
                )
            if self.invalid_preds == "error":
                raise DataError(
                    f"predictions hold values {preds[bad_preds].unique()[:10].tolist()} outside [0, {n}) at "
                    f'{int(bad_preds.sum())} labelled pixels; map them to classes, or pass invalid_preds="wrong" '
                    "to count them as wrong"
                )
            missed = target[bad_preds].long()
            self.invalid.index_add_(0, missed, torch.ones_like(missed))
            target = target.masked_fill(bad_preds, self.ignore_index)  # counted above, not in the matrix
        self.confmat += confusion_counts(preds, target, n, self.ignore_index)

    def compute(self) -> dict[str, Tensor]:
        return metrics_from_confmat(self.confmat, self.invalid)


def confusion_counts(preds: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """The (C, C) int64 confusion matrix of one batch (rows = label), pixels labelled ``ignore_index`` left out.

    Counted with ``index_add_`` of ones into C² bins: exact (integer sums do not depend on their order) and
    O(pixels) memory whether or not ``torch.use_deterministic_algorithms`` is on. torchmetrics' own update falls
    back, in deterministic mode, to comparing every pixel with every bin: a (pixels × C²) int64 array, about 15 GB
    for a VOC batch of 16 × 513².
    """
    valid = target != ignore_index
    bins = target[valid].long() * num_classes + preds[valid].long()  # (N,) in [0, C²)
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=bins.device)
    return counts.index_add_(0, bins, torch.ones_like(bins)).view(num_classes, num_classes)


def metrics_from_confmat(confmat: Tensor, invalid: Tensor | None = None) -> dict[str, Tensor]:
    """Every metric from a (C, C) confusion matrix (rows = label, columns = prediction); ``invalid`` (C,) counts
    each class's labelled pixels predicted as no class (always wrong)."""
    cm = confmat.double()
    missed = torch.zeros_like(cm[0]) if invalid is None else invalid.double()
    tp = cm.diagonal()
    gt, pred = cm.sum(1) + missed, cm.sum(0)
    union = gt + pred - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp_min(1), torch.nan)
    total = gt.sum().clamp_min(1)
    acc = torch.where(gt > 0, tp / gt.clamp_min(1), torch.nan)
    return {
        "mIoU": iou[present].mean() if present.any() else torch.tensor(0.0, dtype=cm.dtype),
        "pixel_acc": tp.sum() / total,
        "mean_acc": acc.nanmean() if (gt > 0).any() else torch.tensor(0.0, dtype=cm.dtype),
        "fwIoU": (gt / total * iou.nan_to_num()).sum(),
        "IoU": iou,
        "confmat": confmat,
        "invalid": missed.long(),
    }


def boundary_band(labels: Tensor, width: int, ignore_index: int = 255, void_is_boundary: bool = True) -> Tensor:
    """The trimap band: labelled pixels within ``width`` pixels (Chebyshev distance) of a pixel of another label.

    ``labels`` is (H, W) or (B, H, W). A pixel is in the band when the (2 width + 1)² window around it holds two
    labels, i.e. the label-change map max-pooled by ``width``. Ignored pixels are never in the band. With
    ``void_is_boundary`` the ignore label counts as a label, so VOC's void outlines mark object boundaries (the
    papers' trimap is "a narrow band of the void labels"); without it only edges between two classes count.
    Pixels beyond the image border are not a boundary.
    """
    if width < 1:
        return torch.zeros_like(labels, dtype=torch.bool)
    void = labels == ignore_index
    x = labels.reshape(-1, 1, *labels.shape[-2:]).float()  # (B, 1, H, W); max_pool2d pads with -inf

    def window_max(t: Tensor) -> Tensor:
        return F.max_pool2d(t, 2 * width + 1, stride=1, padding=width).view(labels.shape)

    if void_is_boundary:
        changes = window_max(x) != -window_max(-x)
    else:  # the window's largest and smallest class label, void left out (-1 / +inf never win)
        flat_void = void.reshape(x.shape)
        hi = window_max(x.masked_fill(flat_void, -1.0))
        lo = -window_max(-x.masked_fill(flat_void, torch.inf))
        changes = (hi >= 0) & (lo < torch.inf) & (hi != lo)
    return changes & ~void


def trimap_miou(
    preds: Tensor, labels: Tensor, widths: Sequence[int], num_classes: int, ignore_index: int = 255
) -> dict[int, float]:
    """Dataset-level mIoU over the trimap band of each width (V3+ Fig. 5); ``preds`` (B, H, W) or (B, C, H, W).

    For a split, update one :class:`SegmentationMetrics` per width with the labels outside
    ``boundary_band(labels, width)`` set to ``ignore_index``; this function does that for one batch.
    """
    results = {}
    for width in widths:
        metric = SegmentationMetrics(num_classes, ignore_index).to(labels.device)
        band = boundary_band(labels, width, ignore_index)
        metric.update(preds, labels.masked_fill(~band, ignore_index))
        results[width] = float(metric.compute()["mIoU"])
    return results
