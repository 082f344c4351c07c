"""Callbacks the CLI always adds: metric JSON files after evaluation, the prediction writer, W&B media."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from PIL import Image

from .data.transforms import EvalPreset
from .errors import ConfigError
from .nets import upsample_to

log = logging.getLogger(__name__)
LOGGER_VERSIONS = "logger_versions"  # checkpoint key: each logger's version, the run folder a resume continues in


def run_dir(trainer: L.Trainer) -> Path:
    """The run's folder: the logger's version folder, or the trainer's root folder without a logger.

    A collective call (``trainer.log_dir`` broadcasts rank 0's folder): every process must reach it.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def class_names(trainer: L.Trainer, num_classes: int) -> list[str]:
    names = getattr(trainer.datamodule, "class_names", None)
    return list(names) if names else [str(i) for i in range(num_classes)]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves into ``<name>.part`` beside the checkpoint, syncs it to disk and renames it over the checkpoint, so a
    save cut short (a killed job, a full disk) leaves the previous file whole. Lightning's own save writes its
    temporary file in the system's temp folder and moves it: a copy into place, not a rename, when that folder is
    on another filesystem than the checkpoints (a node's local /tmp and a cluster's shared disk)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own handling
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        with part.open("wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)


class Checkpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` follows every epoch (or every validation, when validation decides),
    written atomically (:class:`AtomicCheckpointIO`, unless the strategy has a checkpoint IO of its own).

    Lightning 2.6 refreshes ``last.ckpt`` only in a step that also saved a top-k checkpoint: with ``monitor`` set,
    ``last.ckpt`` stays at the best epoch, and a run resumed from it would silently repeat every epoch since.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.is_global_zero:  # the process that writes; a CSV logger elsewhere would guess a next version
            checkpoint[LOGGER_VERSIONS] = [logger.version for logger in trainer.loggers]

    def _refresh_last(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):  # skips a step already saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)


class MetricsWriter(Callback):
    """Write ``{stage}_metrics.json`` (scalars, per-class IoU by name, confusion matrix) after val/test."""

    def _write(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        results = getattr(module, "results", {}).get(stage)
        if results is None or trainer.sanity_checking:
            return
        path = run_dir(trainer) / f"{stage}_metrics.json"  # on every process: a collective
        if not trainer.is_global_zero:
            return
        results = {k: v.cpu() for k, v in results.items()}  # JSON needs host memory: the state may be on a GPU
        names = class_names(trainer, len(results["IoU"]))
        payload = {k: float(results[k]) for k in ("mIoU", "pixel_acc", "mean_acc", "fwIoU")}
        payload["IoU"] = {n: (None if np.isnan(v) else v) for n, v in zip(names, results["IoU"].tolist(), strict=True)}
        payload["confmat"] = results["confmat"].tolist()
        payload.update(epoch=trainer.current_epoch, global_step=trainer.global_step)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "test")


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A palette PNG image of a label map (VOC style: the pixel values are the labels)."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [c for rgb in palette for c in rgb]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


class PredictionWriter(BasePredictionWriter):
    """For each image: ``<name>.png`` (label PNG with the dataset's palette), ``<name>_overlay.png`` and one
    ``predictions.json`` with per-image class fractions, keyed by input path. ``<name>`` is the image's path under
    the predict folder without suffix (``a/x`` for ``a/x.jpg``: the folder tree is mirrored), or a single file's stem.
    Files of an earlier run in the output folder are replaced or kept with a warning that counts them. Unreadable
    images are reported and skipped.

    Args:
        output_dir: folder for the files; default ``<run folder>/predictions``.
        overlay_alpha: opacity of the colour mask over the image in the overlays.
        label_ids: also write ``<stem>_labelIds.png`` in the dataset's official label ids (Cityscapes), the
            input of the official evaluation script.
    """

    def __init__(self, output_dir: str | None = None, overlay_alpha: float = 0.5, label_ids: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir, self.overlay_alpha, self.label_ids = output_dir, overlay_alpha, label_ids
        self.fractions: dict[str, dict[str, float]] = {}
        self.failures: dict[str, str] = {}
        self.out = Path(".")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.label_ids and not hasattr(trainer.datamodule, "to_label_ids"):
            raise ConfigError(
                f"--prediction.label_ids needs a dataset with official label ids (Cityscapes); "
                f"{type(trainer.datamodule).__name__} has none"
            )
        self.fractions, self.failures = {}, {}
        self.out = Path(self.output_dir) if self.output_dir else run_dir(trainer) / "predictions"  # every process
        if trainer.is_global_zero:
            self._warn_about_earlier_files(getattr(trainer.predict_dataloaders, "dataset", None))
        self.out.mkdir(parents=True, exist_ok=True)

    def _outputs(self, name: str) -> list[str]:
        return [f"{name}.png", f"{name}_overlay.png", *([f"{name}_labelIds.png"] if self.label_ids else [])]

    def _warn_about_earlier_files(self, dataset: Any) -> None:
        """Never replace an earlier run's files silently: count those this run replaces and those it leaves."""
        if not self.out.is_dir():
            return
        ours = {"predictions.json", *(f for name in getattr(dataset, "names", []) for f in self._outputs(name))}
        earlier = [p.relative_to(self.out).as_posix() for p in self.out.rglob("*") if p.is_file()]
        replaced = sum(p in ours for p in earlier)
        if earlier:
            log.warning(
                "%s already holds %d files of an earlier run: this run replaces %d of them and leaves %d "
                "(predictions.json will list this run's images only); choose an empty --prediction.output_dir to keep "
                "runs apart",
                self.out,
                len(earlier),
                replaced,
                len(earlier) - replaced,
            )

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        out = self.out
        palette = getattr(trainer.datamodule, "palette", None) or [(i, i, i) for i in range(256)]
        names = class_names(trainer, pl_module.hparams.num_classes)
        for item in prediction:
            if item["error"]:
                log.warning("skipped %s: %s", item["path"], item["error"])
                self.failures[item["path"]] = item["error"]
                continue
            labels = item["labels"].cpu().numpy()
            files = [out / f for f in self._outputs(item["name"])]  # label PNG, overlay[, label ids]
            files[0].parent.mkdir(parents=True, exist_ok=True)
            mask = colorize(labels, palette)
            mask.save(files[0])
            image = Image.fromarray(item["image"].cpu().permute(1, 2, 0).numpy())
            Image.blend(image, mask.convert("RGB"), self.overlay_alpha).save(files[1])
            if self.label_ids:
                Image.fromarray(trainer.datamodule.to_label_ids(labels)).save(files[2])
            counts = np.bincount(labels.ravel(), minlength=len(names)) / labels.size
            self.fractions[item["path"]] = {n: round(float(c), 6) for n, c in zip(names, counts, strict=False) if c}

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """One ``predictions.json`` for all processes, written by rank 0."""
        parts = [(self.fractions, self.failures)]
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            parts = [None] * trainer.world_size
            torch.distributed.all_gather_object(parts, (self.fractions, self.failures))
        if not trainer.is_global_zero:
            return
        summary = {"images": {}, "failed": {}}
        for fractions, failures in parts:
            summary["images"].update(fractions)
            summary["failed"].update(failures)
        summary["images"] = dict(sorted(summary["images"].items()))
        (self.out / "predictions.json").write_text(json.dumps(summary, indent=1))
        log.info("wrote %d predictions to %s (%d failed)", len(summary["images"]), self.out, len(summary["failed"]))


def git_commit() -> str | None:
    """The checked-out commit of the working directory (with ``+dirty`` for uncommitted changes), if any."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


class WandbMedia(Callback):
    """What an experiment run needs beyond scalars, when a W&B logger is attached (a no-op otherwise).

    The git commit in the run config; every ``every_n_epochs`` validations a per-class IoU table, the confusion
    matrix as an image and ``num_images`` validation images with ground-truth and predicted masks (class labels
    with 255 as "void"); each training epoch, images/s over all processes and the epoch's peak GPU memory.
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 4) -> None:
        self.every_n_epochs, self.num_images = every_n_epochs, num_images
        self._start, self._images = 0.0, 0

    @staticmethod
    def _logger(trainer: L.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = self._logger(trainer)
        if logger is not None and trainer.is_global_zero:
            logger.experiment.config.update({"git_commit": git_commit()}, allow_val_change=True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._images = time.perf_counter(), 0
        if pl_module.device.type == "cuda":  # the logged peak is this epoch's, not the process's lifetime peak
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._images += batch[0].shape[0]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._logger(trainer) is None or not self._images:
            return
        rate = self._images * trainer.world_size / (time.perf_counter() - self._start)
        pl_module.log("train/images_per_s", rate)
        if pl_module.device.type == "cuda":
            pl_module.log("train/gpu_max_memory_GiB", torch.cuda.max_memory_allocated(pl_module.device) / 2**30)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = self._logger(trainer)
        results = getattr(pl_module, "results", {}).get("val")
        due = (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if logger is None or results is None or trainer.sanity_checking or not due or not trainer.is_global_zero:
            return
        results = {k: v.cpu() for k, v in results.items()}  # W&B and PIL need host memory
        names = class_names(trainer, len(results["IoU"]))
        step = trainer.global_step
        rows = [[n, None if np.isnan(v) else v] for n, v in zip(names, results["IoU"].tolist(), strict=True)]
        logger.log_table("val/IoU_per_class", columns=["class", "IoU"], data=rows, step=step)
        logger.log_image("val/confusion_matrix", [confusion_image(results["confmat"], names)], step=step)
        images, masks = self._predictions(trainer, pl_module, {i: n for i, n in enumerate(names)} | {255: "void"})
        if images:
            logger.log_image("val/predictions", images, step=step, masks=masks)

    def _predictions(self, trainer: L.Trainer, pl_module: L.LightningModule, labels: dict) -> tuple[list, list]:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "dataset"):
            return [], []
        dataset, preset = dm.dataset("val"), EvalPreset(dm.mean, dm.std)
        images, masks = [], []
        training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            for i in range(min(self.num_images, len(dataset))):
                image, mask = dataset[i]
                x, y = preset(image, mask)
                logits = pl_module(x[None].to(pl_module.device))["out"]
                pred = upsample_to(logits, y.shape[-2:]).argmax(1)[0].cpu().numpy()
                images.append(image.cpu().permute(1, 2, 0).numpy())
                masks.append(
                    {
                        "predictions": {"mask_data": pred.astype(np.int64), "class_labels": labels},
                        "ground_truth": {"mask_data": y.cpu().numpy().astype(np.int64), "class_labels": labels},
                    }
                )
        pl_module.train(training)
        return images, masks


def confusion_image(confmat: torch.Tensor, names: Sequence[str]) -> Image.Image:
    """The row-normalised confusion matrix (rows: ground truth) as a labelled heat map."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays as it is

    counts = confmat.cpu().double()  # the metric state lives on the model's device
    rates = (counts / counts.sum(1, keepdim=True).clamp_min(1)).numpy()
    size = 2 + 0.35 * len(names)
    fig = Figure(figsize=(size, size))
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(rates, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    fig.tight_layout()
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
