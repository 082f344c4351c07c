"""Dataset-level metrics against a hand-computed confusion matrix, ignored pixels and absent classes."""

import math

import torch
from torchmetrics.classification import MulticlassJaccardIndex

from deeplab_lit.metrics import SegmentationMetrics


def test_metrics_on_a_hand_computed_confusion_matrix() -> None:
    # 4 classes; class 3 never appears in labels or predictions; 255 pixels are ignored.
    target = torch.tensor([[0, 0, 0, 1, 1, 2, 255, 255]])
    preds = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 0]])
    m = SegmentationMetrics(num_classes=4)
    m.update(preds, target)
    r = m.compute()
    # confmat rows=label: 0 -> [2,1,0,0]; 1 -> [0,1,1,0]; 2 -> [0,0,1,0]
    assert r["confmat"].tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    iou = r["IoU"].tolist()
    assert iou[:3] == [2 / 3, 1 / 3, 1 / 2]
    assert math.isnan(iou[3])  # absent from both: NaN, not 0
    assert r["mIoU"].item() == (2 / 3 + 1 / 3 + 1 / 2) / 3
    assert r["pixel_acc"].item() == 4 / 6
    assert r["mean_acc"].item() == (2 / 3 + 1 / 2 + 1) / 3
    assert abs(r["fwIoU"].item() - (3 / 6 * 2 / 3 + 2 / 6 * 1 / 3 + 1 / 6 * 1 / 2)) < 1e-12


def test_miou_accumulates_over_the_split_not_per_image() -> None:
    m = SegmentationMetrics(num_classes=2)
    m.update(torch.tensor([[0, 0, 0, 0]]), torch.tensor([[0, 0, 0, 1]]))  # image 1
    m.update(torch.tensor([[1, 1]]), torch.tensor([[1, 1]]))  # image 2
    # one confusion matrix: class 0 tp=3, fp=1 -> 3/4; class 1 tp=2, fn=1 -> 2/3 (per-image mean would differ)
    assert abs(m.compute()["mIoU"].item() - (3 / 4 + 2 / 3) / 2) < 1e-12


def test_miou_equals_torchmetrics_jaccard_index() -> None:
    torch.manual_seed(0)
    ours = SegmentationMetrics(num_classes=6)
    ref = MulticlassJaccardIndex(num_classes=6, average="macro", ignore_index=255)
    for _ in range(3):
        target = torch.randint(0, 5, (2, 17, 19))  # class 5 absent from labels
        target[:, :3] = 255
        logits = torch.randn(2, 6, 17, 19)
        ours.update(logits, target)
        ref.update(logits.argmax(1), target)
    assert abs(ours.compute()["mIoU"].item() - ref.compute().item()) < 1e-6
