"""The test-time pipeline of ``validate``, ``test`` and ``predict``: output stride at evaluation → multi-scale +
flip → sliding window → dense CRF, each stage optional (the papers' evaluation protocols).

The validation loop inside ``fit`` only selects checkpoints and uses the plain single-scale forward at the
evaluation output stride, as the papers' training runs do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..inference import TTA, CRFParams, CRFPool
from ..nets import DeepLabNet
from .device import set_cudnn_benchmark


class TestTimePipeline(L.LightningModule):
    """The evaluation and prediction half of ``SegmentationModule``, which sets the attributes below."""

    net: DeepLabNet
    train_output_stride: int
    tta: TTA
    crf: CRFParams | None
    _crf_pool: CRFPool | None
    _benchmark: bool

    def _use_output_stride(self, output_stride: int | None) -> None:
        if output_stride is not None and output_stride != self.net.output_stride:
            self.net.set_output_stride(output_stride)

    def on_validation_model_eval(self) -> None:
        super().on_validation_model_eval()
        self._use_output_stride(self.hparams.eval_output_stride)

    def on_validation_model_train(self) -> None:
        self._use_output_stride(self.train_output_stride)
        super().on_validation_model_train()

    def on_test_model_eval(self) -> None:
        super().on_test_model_eval()
        self._use_output_stride(self.hparams.eval_output_stride)

    def on_predict_model_eval(self) -> None:
        super().on_predict_model_eval()
        self._use_output_stride(self.hparams.eval_output_stride)

    # -- the test-time pipeline --------------------------------------------------------------------------------
    def pipeline_active(self) -> bool:
        """True in ``validate``/``test``/``predict`` runs, False in training and in the validation loop of ``fit``."""
        return self._trainer is None or self.trainer.state.fn != "fit"

    def refine(self, images: Sequence[Tensor], probs: Tensor, names: Sequence[str] | None = None) -> Tensor:
        """Dense CRF on each image's probabilities: ``images`` uint8 (3, H, W), ``probs`` (B, C, H, W)."""
        if self._crf_pool is None:
            self._crf_pool = CRFPool(self.crf, self.hparams.crf_workers)
        rgb = [im.permute(1, 2, 0).cpu().numpy() for im in images]  # (H, W, 3) uint8
        refined = self._crf_pool(rgb, list(probs.float().cpu().numpy()), names)
        return torch.from_numpy(np.stack(refined)).to(probs)

    # cuDNN's autotuner (``benchmark: true``) pays off for training's fixed crops; evaluation sees every image at
    # its own size and scale, where it would re-tune for each new shape: off while evaluating, restored after.
    def on_validation_start(self) -> None:
        self._benchmark = set_cudnn_benchmark(False)

    def on_test_start(self) -> None:
        self._benchmark = set_cudnn_benchmark(False)

    def on_predict_start(self) -> None:
        self._benchmark = set_cudnn_benchmark(False)

    def on_validation_end(self) -> None:
        set_cudnn_benchmark(self._benchmark)
        self._close_crf()

    def on_test_end(self) -> None:
        set_cudnn_benchmark(self._benchmark)
        self._close_crf()

    def on_predict_end(self) -> None:
        set_cudnn_benchmark(self._benchmark)
        self._close_crf()

    def _close_crf(self) -> None:
        if self._crf_pool is not None:
            self._crf_pool.close()
            self._crf_pool = None

    def _raw_images(self, x: Tensor) -> Tensor:
        """The uint8 images (B, 3, H, W) of a normalized batch (evaluation batches are never padded)."""
        dm = self.trainer.datamodule
        mean = torch.tensor(dm.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(dm.std, device=x.device).view(1, 3, 1, 1)
        return ((x.float() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)

    def pipeline_step(self, x: Tensor, y: Tensor, stage: str) -> Tensor:
        """Evaluation through the test-time pipeline; the loss is the NLL of the fused probabilities."""
        probs = self.tta(self, x, y.shape[-2:], self.net.logits_stride)  # (B, C, H, W)
        if self.crf is not None:
            self.metrics[f"{stage}_before_crf_metrics"].update(probs.argmax(1), y)
            probs = self.refine(self._raw_images(x), probs)
        self.metrics[f"{stage}_metrics"].update(probs.argmax(1), y)
        loss = F.nll_loss(probs.clamp_min(1e-8).log(), y, ignore_index=self.hparams.ignore_index)
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        return loss

    # -- prediction ------------------------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Per image: path, output name, label map (H, W) uint8 or an error message for an unreadable file."""
        results = []
        for i, path in enumerate(batch["path"]):
            if batch["error"][i]:
                results.append({"path": path, "name": batch["name"][i], "error": batch["error"][i]})
                continue
            raw = batch["raw"][i]
            probs = self.tta(self, batch["image"][i : i + 1], raw.shape[-2:], self.net.logits_stride)  # (1, C, H, W)
            if self.crf is not None:
                probs = self.refine([raw], probs, [path])
            labels = probs.argmax(1)[0].to(torch.uint8)
            item = {"path": path, "name": batch["name"][i], "error": "", "labels": labels.cpu(), "image": raw.cpu()}
            results.append(item)
        return results
