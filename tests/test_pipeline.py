"""The test-time pipeline inside the Lightning layer: MS + flip, sliding window, CRF before/after, exported models."""

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deeplab_lit.data import ShapesDataModule
from deeplab_lit.export import export_onnx
from deeplab_lit.inference import CRFParams, dense_crf, segment_probs
from deeplab_lit.metrics import SegmentationMetrics
from deeplab_lit.systems import DeepLabV1, DeepLabV3

SMALL_V3 = {"backbone": "resnet18", "multi_grid": (1, 2), "aspp_channels": 16}
CRF = CRFParams(w1=5.0, sigma_alpha=20.0, sigma_beta=10.0, w2=3.0, sigma_gamma=3.0, iterations=5)


def data() -> ShapesDataModule:
    return ShapesDataModule(num_train=4, num_val=3, num_test=3, image_size=40, val_batch_size=2, num_workers=0)


def trainer(tmp_path) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)


def reference_miou(model, dm, stage: str, probs_fn) -> float:
    """mIoU of ``probs_fn(x, y) -> (B, C, H, W)`` over the stage's loader, computed outside Lightning."""
    metric = SegmentationMetrics(model.hparams.num_classes)
    model.eval()
    dm.setup(stage)
    loader = dm.val_dataloader() if stage == "validate" else dm.test_dataloader()
    with torch.no_grad():
        for x, y in loader:
            metric.update(probs_fn(x, y).argmax(1), y)
    return float(metric.compute()["mIoU"])


def test_validate_runs_multi_scale_and_flip(tmp_path) -> None:
    torch.manual_seed(0)
    model = DeepLabV3(num_classes=7, eval_scales=(0.75, 1.0, 1.5), eval_flip=True, **SMALL_V3)
    dm = data()
    result = trainer(tmp_path).validate(model, dm, verbose=False)[0]["val/mIoU"]
    expected = reference_miou(model, dm, "validate", lambda x, y: segment_probs(model.net, x, y.shape[-2:],
                              (0.75, 1.0, 1.5), flip=True))  # fmt: skip
    plain = reference_miou(model, dm, "validate", lambda x, y: F.softmax(model.net(x)["out"], 1))
    assert result == pytest.approx(expected, abs=1e-6)
    assert result != pytest.approx(plain, abs=1e-6)  # the pipeline did something


def test_test_reports_metrics_before_and_after_the_crf(tmp_path) -> None:
    torch.manual_seed(0)
    model = DeepLabV3(num_classes=7, crf=CRF, crf_workers=2, **SMALL_V3)
    dm = data()
    t = trainer(tmp_path)
    metrics = t.test(model, dm, verbose=False)[0]
    t.save_checkpoint(tmp_path / "model.ckpt")
    assert DeepLabV3.load_from_checkpoint(tmp_path / "model.ckpt").crf == CRF
    mean, std = torch.tensor(dm.mean).view(3, 1, 1), torch.tensor(dm.std).view(3, 1, 1)

    def crf_probs(x, y):
        probs = segment_probs(model.net, x, y.shape[-2:])
        out = []
        for image, p in zip(x, probs, strict=True):
            rgb = ((image * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            out.append(torch.from_numpy(dense_crf(np.ascontiguousarray(rgb), p.numpy(), CRF)))
        return torch.stack(out)

    before = reference_miou(model, dm, "test", lambda x, y: segment_probs(model.net, x, y.shape[-2:]))
    after = reference_miou(model, dm, "test", crf_probs)
    assert metrics["test/before_crf/mIoU"] == pytest.approx(before, abs=1e-6)
    assert metrics["test/mIoU"] == pytest.approx(after, abs=1e-6)
    assert before != pytest.approx(after, abs=1e-6)


def test_v1_evaluates_with_the_crf_by_default_and_can_turn_it_off() -> None:
    assert DeepLabV1(num_classes=3).crf is not None
    model = DeepLabV1(num_classes=3, crf=None)
    assert model.crf is None and "test_before_crf_metrics" not in model.metrics


def test_predict_with_an_exported_onnx_model_matches_the_network(tmp_path) -> None:
    torch.manual_seed(0)
    model = DeepLabV3(num_classes=7, **SMALL_V3).eval()
    path = export_onnx(model.net, tmp_path / "net.onnx", 40, 40)
    exported = DeepLabV3(num_classes=7, exported=str(path), **SMALL_V3)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        ours = segment_probs(model, x, (40, 40))
        theirs = segment_probs(exported, x, (40, 40))
    assert torch.allclose(ours, theirs, atol=1e-5)
