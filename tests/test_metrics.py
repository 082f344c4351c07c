"""Dataset-level metrics against a hand-computed confusion matrix, ignored pixels and absent classes."""

import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from deeplab_lit.errors import ConfigError, DataError
from deeplab_lit.metrics import SegmentationMetrics, boundary_band, trimap_miou


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


def two_regions() -> torch.Tensor:
    labels = torch.zeros(6, 6, dtype=torch.long)
    labels[:, 3:] = 1  # class 0 in columns 0-2, class 1 in columns 3-5
    return labels


def test_boundary_band_is_every_pixel_within_width_of_the_other_label() -> None:
    labels = two_regions()
    for width, columns in ((1, [2, 3]), (2, [1, 2, 3, 4]), (3, list(range(6)))):
        expected = torch.zeros(6, 6, dtype=torch.bool)
        expected[:, columns] = True
        assert torch.equal(boundary_band(labels, width), expected)
        assert torch.equal(boundary_band(labels[None].repeat(2, 1, 1), width), expected[None].repeat(2, 1, 1))
    assert not boundary_band(labels, 0).any()
    assert not boundary_band(torch.zeros(4, 4, dtype=torch.long), 2).any()  # the image border is no boundary


def test_boundary_band_leaves_out_void_and_can_treat_it_as_a_boundary() -> None:
    labels = two_regions()
    labels[5, 0] = 255  # a void pixel in the corner of class 0
    band = boundary_band(labels, 1)
    assert not band[5, 0]
    assert band[4, 0] and band[4, 1] and band[5, 1]  # VOC style: void outlines mark boundaries
    class_edges = boundary_band(labels, 1, void_is_boundary=False)
    assert not class_edges[:, :2].any() and class_edges[:, 2:4].all() and not class_edges[:, 4:].any()


def test_trimap_miou_on_a_hand_computed_band() -> None:
    labels = two_regions()
    preds = torch.zeros(6, 6, dtype=torch.long)
    preds[:, 4:] = 1  # the predicted boundary is one column too far right
    # width 1 (columns 2, 3): class 0 tp 6, fp 6 -> 1/2; class 1 tp 0, fn 6 -> 0
    # width 2 (columns 1-4): class 0 tp 12, fp 6 -> 2/3; class 1 tp 6, fn 6 -> 1/2
    result = trimap_miou(preds[None], labels[None], [1, 2], num_classes=2)
    assert result == {1: pytest.approx(0.25), 2: pytest.approx((2 / 3 + 1 / 2) / 2)}
    logits = torch.nn.functional.one_hot(preds, 3).permute(2, 0, 1)[None].float()  # scores work too; class 2 absent
    assert trimap_miou(logits, labels[None], [1], num_classes=3) == {1: pytest.approx(0.25)}


def test_predictions_outside_the_classes_are_an_error_naming_values_and_pixels() -> None:
    # 255 predicted on three labelled pixels and on one ignored pixel (harmless there), 19 on one labelled pixel
    target = torch.tensor([[0, 1, 2, 2, 1, 255]])
    preds = torch.tensor([[0, 255, 255, 19, 255, 255]])
    m = SegmentationMetrics(num_classes=19)
    with pytest.raises(DataError, match=r"predictions hold values \[19, 255\] outside \[0, 19\) at 4 labelled pixels"):
        m.update(preds, target)
    with pytest.raises(DataError, match=r"labels hold values \[7\] outside \[0, 3\) and 255 at 1 pixels"):
        SegmentationMetrics(num_classes=3).update(torch.tensor([[0, 1]]), torch.tensor([[0, 7]]))
    with pytest.raises(ConfigError, match='invalid_preds must be "error" or "wrong"'):
        SegmentationMetrics(num_classes=3, invalid_preds="ignore")


def test_predictions_outside_the_classes_can_count_as_wrong() -> None:
    target = torch.tensor([[0, 0, 0, 1, 1, 2, 255]])
    preds = torch.tensor([[0, 0, 255, 1, 9, 2, 255]])  # one class-0 and one class-1 pixel predicted as no class
    m = SegmentationMetrics(num_classes=3, invalid_preds="wrong")
    m.update(preds, target)
    r = m.compute()
    assert r["confmat"].tolist() == [[2, 0, 0], [0, 1, 0], [0, 0, 1]]  # no other class's cell gets them
    assert r["invalid"].tolist() == [1, 1, 0]
    assert r["IoU"].tolist() == [2 / 3, 1 / 2, 1.0]  # missed pixels count in their class's union
    assert r["pixel_acc"].item() == 4 / 6
    assert r["mean_acc"].item() == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
