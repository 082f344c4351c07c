"""SegmentationModule: the one Lightning layer over any DeepLab network.

One shared step for train/val/test: forward → logits upsampled to the label size → cross-entropy (ignore 255)
[+ aux loss, + every MSC scale's loss, optional hard-pixel mining] → dataset-level metrics.

``validate``, ``test`` and ``predict`` run the test-time pipeline (``evaluation.py``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from ..errors import ConfigError
from ..inference import TTA, CRFParams, CRFPool
from ..inference.exported import load_exported
from ..metrics import SegmentationMetrics
from ..nets import DeepLabNet, upsample_to
from ..nets.msc import check_scales, multi_scale_forward
from ..nets.sources import load_network
from .device import check_deterministic
from .evaluation import TestTimePipeline

STAGES = ("train", "val", "test")


def hard_pixel_loss(logits: Tensor, target: Tensor, ignore_index: int, top_k_percent: float) -> Tensor:
    """Cross-entropy over the labelled pixels; with ``top_k_percent < 1`` only over the hardest such pixels
    (online hard example mining, TF DeepLab's ``top_k_percent_pixels``).
    """
    if top_k_percent >= 1.0:
        return F.cross_entropy(logits, target, ignore_index=ignore_index)
    losses = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    losses = losses[target.flatten() != ignore_index]
    if losses.numel() == 0:
        return logits.sum() * 0.0
    k = max(1, math.ceil(top_k_percent * losses.numel()))
    return losses.topk(k, sorted=False).values.mean()


class SegmentationModule(TestTimePipeline):
    """Training, evaluation and prediction for a DeepLab network built by a subclass.

    Args:
        net: the network (pure PyTorch, returns ``{"out", ["aux"]}``).
        num_classes: classes; linked from the datamodule by the CLI.
        ignore_index: label ignored by the loss and metrics; linked from the datamodule.
        lr, momentum, weight_decay: the default optimizer, SGD as in the papers.
        optimizer: any torch optimizer instead (``--model.optimizer AdamW --model.optimizer.lr 1e-4``).
        head_lr_mult: learning-rate multiplier of everything but the backbone (the papers' 10×).
        poly_power: poly schedule ``(1 - step / total) ** power``, stepped every iteration.
        aux_weight: weight of the auxiliary head's loss, when the network has one.
        top_k_percent_pixels: train on this fraction of the hardest labelled pixels (1.0 = all).
        freeze_bn: keep BatchNorm statistics and affine parameters fixed (the papers' second stage).
        eval_output_stride: output stride for validation/test/predict (V3: train at 16, evaluate at 8).
        msc_scales: V2's multi-scale input for training and evaluation, e.g. ``[0.75, 0.5]`` (scale 1 implied).
        init_from: start from a checkpoint, a network state dict, torchvision's DeepLabV3, a TF DeepLab or a Caffe
            release checkpoint (`deeplab_lit.nets.sources.load_network`).
        reset_classifier: with ``init_from``, re-initialise only the classifiers (fine-tuning to new classes).
        channels_last: run the network in channels-last memory format (faster with bf16 and on GPUs).
        eval_scales: test-time input scales, probabilities averaged (V3: 0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
        eval_flip: also average the left-right flipped inputs.
        sliding_window: evaluate in windows of this size (int or (h, w)), e.g. 769 for Cityscapes at 1024x2048.
        window_stride: step between windows (default 2/3 of the window).
        tf_eval_crop: TF DeepLab's evaluation instead (the TF model zoo's protocol): each image padded with the mean
            pixel to this crop (513 on VOC, (1025, 2049) on Cityscapes), scales resized with corners aligned.
        crf: dense CRF parameters for evaluation and prediction (V1/V2 default to their papers' values);
            ``test`` then reports metrics before (``test/before_crf/...``) and after it.
        crf_workers: processes running the CRF (pydensecrf is single-threaded); 0 runs it in this process.
        exported: evaluate or predict with an exported ONNX / TorchScript file instead of the network.
    """

    def __init__(
        self,
        net: DeepLabNet,
        num_classes: int = 21,
        ignore_index: int = 255,
        lr: float = 0.007,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        optimizer: OptimizerCallable | None = None,
        head_lr_mult: float = 10.0,
        poly_power: float = 0.9,
        aux_weight: float = 0.4,
        top_k_percent_pixels: float = 1.0,
        freeze_bn: bool = False,
        eval_output_stride: int | None = None,
        msc_scales: Sequence[float] | None = None,
        init_from: str | None = None,
        reset_classifier: bool = False,
        channels_last: bool = False,
        eval_scales: Sequence[float] = (1.0,),
        eval_flip: bool = False,
        sliding_window: int | tuple[int, int] | None = None,
        window_stride: int | tuple[int, int] | None = None,
        tf_eval_crop: int | tuple[int, int] | None = None,
        crf: CRFParams | None = None,
        crf_workers: int = 2,
        exported: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "crf"])
        crf = CRFParams(**crf) if isinstance(crf, dict) else crf  # as stored in a checkpoint
        self.hparams["crf"] = None if crf is None else asdict(crf)  # plain data in checkpoints
        self.crf = crf
        self.tta = TTA(tuple(eval_scales), eval_flip, sliding_window, window_stride, tf_eval_crop)
        self._crf_pool: CRFPool | None = None
        self.exported = load_exported(exported) if exported else None
        if not 0.0 < top_k_percent_pixels <= 1.0:
            raise ConfigError(f"--model.init_args.top_k_percent_pixels must be in (0, 1], got {top_k_percent_pixels}")
        self.net = net
        self.optimizer_factory = optimizer
        self.msc_scales = check_scales(msc_scales, "msc_scales") if msc_scales is not None else None
        self.train_output_stride = net.output_stride
        if eval_output_stride is not None:
            net.backbone.check_output_stride(eval_output_stride)
        if init_from:
            load_network(self.net, init_from, reset_classifier)
        if freeze_bn:
            for m in self._batch_norms():
                m.requires_grad_(False)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        metric_names = [f"{s}_metrics" for s in STAGES]
        metric_names += [f"{s}_before_crf_metrics" for s in STAGES[1:]] if crf else []
        self.metrics = nn.ModuleDict({name: SegmentationMetrics(num_classes, ignore_index) for name in metric_names})
        self.results: dict[str, dict[str, Tensor]] = {}
        self._benchmark = torch.backends.cudnn.benchmark  # cuDNN's autotuner setting outside evaluation

    # -- network -----------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.exported is not None:
            return self.exported(x)
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.msc_scales:
            return multi_scale_forward(self.net, x, self.msc_scales)
        return self.net(x)

    def setup(self, stage: str) -> None:
        """SyncBN when training on several GPUs, plain BN otherwise (PyTorch's SyncBatchNorm refuses CPU tensors)."""
        trainer = self.trainer
        check_deterministic(trainer.strategy.root_device)
        if stage == "fit" and trainer.world_size > 1 and trainer.strategy.root_device.type == "cuda":
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)

    def _batch_norms(self) -> list[nn.Module]:
        return [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> SegmentationModule:
        super().train(mode)
        if mode and self.hparams.freeze_bn:
            for m in self._batch_norms():
                m.eval()
        return self

    # -- the shared step -----------------------------------------------------------------------------------
    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str, batch_idx: int) -> Tensor:
        x, y = batch  # (B, 3, H, W) float, (B, H, W) int64
        if stage != "train" and self.pipeline_active():
            return self.pipeline_step(x, y, stage)
        out = self(x)
        logits = upsample_to(out["out"], y.shape[-2:])  # (B, classes, H, W)
        top_k = self.hparams.top_k_percent_pixels if stage == "train" else 1.0
        ignore = self.hparams.ignore_index
        loss = hard_pixel_loss(logits, y, ignore, top_k)
        for scale_logits in out.get("scales", []) if stage == "train" else []:
            loss = loss + hard_pixel_loss(upsample_to(scale_logits, y.shape[-2:]), y, ignore, top_k)
        if "aux" in out:
            aux = hard_pixel_loss(upsample_to(out["aux"], y.shape[-2:]), y, ignore, top_k)
            loss = loss + self.hparams.aux_weight * aux
        if stage == "train":
            self._stop_if_non_finite(loss, batch_idx)
        self.metrics[f"{stage}_metrics"].update(logits.detach().argmax(1), y)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            batch_size=x.shape[0],
            prog_bar=stage == "train",
            sync_dist=stage != "train",
        )
        return loss

    def _stop_if_non_finite(self, loss: Tensor, batch_idx: int) -> None:
        """Stop training on a non-finite loss, every process together: the losses are gathered (one scalar per
        process and step), so the processes whose loss is finite stop too instead of failing or waiting in DDP's
        gradient all-reduce (NCCL: until its timeout) for the one that stopped."""
        losses = loss.detach().float().reshape(1)
        if self._trainer is not None and self.trainer.world_size > 1:
            losses = self.all_gather(losses).reshape(-1)  # (world_size,)
        bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
        if not bad:
            return
        where = ", ".join(f"rank {r}: {losses[r].item()}" for r in bad) if len(losses) > 1 else str(losses[0].item())
        saved = self._newest_checkpoint()
        raise FloatingPointError(
            f"non-finite loss ({where}) at global step {self.global_step}, epoch {self.current_epoch}, batch "
            f"{batch_idx}; " + (f"the newest checkpoint is {saved}" if saved else "no checkpoint was saved yet")
        )

    def _newest_checkpoint(self) -> str | None:
        """The newest checkpoint file this run saved or resumed from, if any."""
        if self._trainer is None:
            return None
        trainer = self.trainer
        paths = [p for cb in trainer.checkpoint_callbacks for p in (cb.last_model_path, cb.best_model_path)]
        saved = [str(p) for p in [*paths, trainer.ckpt_path] if p and os.path.isfile(p)]
        return max(saved, key=os.path.getmtime) if saved else None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout draws from the global generator: seeded from (seed, rank, step), a run resumed from last.ckpt
        # draws the masks an uninterrupted run draws (the sampler does the same for data and augmentation).
        seed = os.getenv("PL_GLOBAL_SEED")
        if seed is not None:
            entropy = [int(seed), self.global_rank, self.global_step]
            step_seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
            if self.device.type == "cpu":  # torch.manual_seed also queues a seed, with its call stack, per accelerator
                torch.random.default_generator.manual_seed(step_seed)
            else:
                torch.manual_seed(step_seed)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return self.shared_step(batch, "train", batch_idx)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.shared_step(batch, "val", batch_idx)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.shared_step(batch, "test", batch_idx)

    def _log_metrics(self, stage: str) -> None:
        self._log_metric_set(stage, f"{stage}_metrics", stage)
        if f"{stage}_before_crf_metrics" in self.metrics and self.metrics[f"{stage}_before_crf_metrics"].update_called:
            self._log_metric_set(f"{stage}_before_crf", f"{stage}_before_crf_metrics", f"{stage}/before_crf")

    def _log_metric_set(self, key: str, metric: str, prefix: str) -> None:
        results = self.metrics[metric].compute()
        self.metrics[metric].reset()
        if self.trainer.sanity_checking:
            return
        self.results[key] = {k: v.cpu() for k, v in results.items()}  # for writers and loggers: host memory
        names = getattr(self.trainer.datamodule, "class_names", None) or range(self.hparams.num_classes)
        self.log(f"{prefix}/mIoU", results["mIoU"].float(), prog_bar=prefix == key)
        scalars = {f"{prefix}/{k}": results[k].float() for k in ("pixel_acc", "mean_acc", "fwIoU")}
        scalars.update({f"{prefix}/IoU/{name}": iou.float() for name, iou in zip(names, results["IoU"], strict=False)})
        self.log_dict(scalars)

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    # -- optimisation ----------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Backbone at the base LR, the rest at ``head_lr_mult``×; no weight decay on BN weights and biases."""
        backbone = {id(p) for p in self.net.backbone.parameters()}
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for p in self.net.parameters():
            if p.requires_grad:
                groups.setdefault((id(p) in backbone, p.ndim > 1), []).append(p)
        return [
            {
                "params": params,
                "lr_mult": 1.0 if is_backbone else self.hparams.head_lr_mult,
                **({} if decay else {"weight_decay": 0.0}),
            }
            for (is_backbone, decay), params in sorted(groups.items(), reverse=True)
        ]

    def poly(self, step: int) -> float:
        """The poly schedule's factor, ``(1 - step / total) ** power``. The step total is looked up at the first
        step, not when the optimizer is built: asking for it then makes Lightning build the training loader and
        draw its first batch before a checkpoint is restored, so a resumed run would start with epoch 0's data."""
        if step == 0:
            return 1.0
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return (1.0 - min(step, total) / total) ** self.hparams.poly_power

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self.param_groups()
        if self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(groups)
        else:
            hp = self.hparams
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        for group in optimizer.param_groups:
            group["lr"] *= group["lr_mult"]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.poly)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
