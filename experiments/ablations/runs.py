"""Running the grid in this process: each training run once (a finished run folder is reused, under a lock), then
each test, measured (seconds per image, multiply-adds, trimap mIoU) and appended as a record to
``<out>/<ablation>/runs.jsonl``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from grid import Ablation, Run


def finish_wandb() -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def measure(module: Any, datamodule: Any, trainer: Any, widths: Sequence[int], limit: int = 20) -> dict[str, Any]:
    """Seconds per image of the test-time pipeline (network, scales/flips, no CRF) on the test set, multiply-adds
    of one image, and the trimap mIoU at each band width (over the whole test set; otherwise ``limit`` images).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from deeplab_lit.metrics import SegmentationMetrics, boundary_band

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device).eval()
    stride = module.hparams.eval_output_stride or module.train_output_stride
    if module.net.output_stride != stride:
        module.net.set_output_stride(stride)
    ignore = module.hparams.ignore_index
    bands = {w: SegmentationMetrics(module.hparams.num_classes, ignore).to(device) for w in widths}
    seconds, images = 0.0, 0
    with torch.inference_mode(), trainer.precision_plugin.forward_context():
        for i, (x, y) in enumerate(datamodule.test_dataloader()):
            x, y = x.to(device), y.to(device)
            if i == 0:
                module.tta(module, x, y.shape[-2:])  # warm-up: first-call kernel selection and allocation
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            preds = module.tta(module, x, y.shape[-2:]).argmax(1)  # (B, H, W)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds, images = seconds + time.perf_counter() - start, images + x.shape[0]
            for width, metric in bands.items():
                metric.update(preds, y.masked_fill(~boundary_band(y, width, ignore), ignore))
            if not widths and images >= limit:
                break
        with FlopCounterMode(display=False) as flops:
            module.tta(module, x[:1], y.shape[-2:])
    return {
        "seconds_per_image": seconds / max(images, 1),
        "gmacs": flops.get_total_flops() / 2e9,
        "params_M": sum(p.numel() for p in module.net.parameters()) / 1e6,
        "trimap": {str(w): float(m.compute()["mIoU"]) for w, m in bands.items()},
    }


def metrics_record(results: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    iou = [None if math.isnan(v) else v for v in results["IoU"].cpu().tolist()]
    return {**{k: float(results[k]) for k in ("mIoU", "pixel_acc")}, "IoU": dict(zip(names, iou, strict=False))}


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, appended under a lock (SLURM array tasks write to the same file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(record) + "\n")


def load_records(path: Path) -> list[dict[str, Any]]:
    """The records of ``runs.jsonl``; for a variant, seed and test split run more than once, the latest."""
    latest: dict[tuple[str, int, str], dict] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.strip():
            record = json.loads(line)
            latest[(record["variant"], record["seed"], record.get("split", ""))] = record
    return list(latest.values())


def config_digest(config: str) -> str:
    """A digest of the config file's text: a training run is reused only while its config is unchanged."""
    return hashlib.sha1(Path(config).read_bytes()).hexdigest()[:12]


def fit_once(run: Run, main: Callable[[list[str]], Any]) -> dict[str, Any]:
    """Train ``run``'s model unless its run folder holds a finished training run (trained by another ablation, or
    by an earlier, interrupted call of this one); the run's ``fit.json``. A lock keeps SLURM tasks from training
    the same run twice at once."""
    folder = run.ckpt.parent.parent
    folder.mkdir(parents=True, exist_ok=True)
    finished = folder / "fit.json"
    digest = config_digest(run.config)
    with (folder / "fit.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if finished.is_file() and run.ckpt.is_file():
            fit = json.loads(finished.read_text())
            if fit["config_sha1"] != digest:
                raise RuntimeError(
                    f"{folder} was trained from another version of {run.config}; delete the folder to train it again"
                )
            return fit
        start = time.perf_counter()
        main(run.fit_args)
        seconds = time.perf_counter() - start
        finish_wandb()
        if not run.ckpt.is_file():
            raise RuntimeError(f"{run.ckpt} was not written: no validation ran (see --trainer.val_check_interval)")
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        fit = {"fit_args": run.fit_args, "config_sha1": digest, "fit_seconds": seconds, "finished": stamp}
        finished.write_text(json.dumps(fit) + "\n")
        return fit


def execute(ablation: Ablation, runs: Sequence[Run], opts: argparse.Namespace) -> list[dict[str, Any]]:
    """Train and test each run in this process; runs recorded with the same test arguments against the same
    finished training run are skipped."""
    from deeplab_lit.cli import main

    path = Path(opts.out) / ablation.name / "runs.jsonl"
    done = {(r["variant"], r["seed"], tuple(r["test_args"]), r.get("fit_finished")) for r in load_records(path)}
    records, fitted = [], {}
    widths = tuple(opts.trimap_widths or ())
    for run in runs:
        if run.fit_key not in fitted:
            fitted[run.fit_key] = fit_once(run, main)
        if (run.variant.name, run.seed, tuple(run.test_args), fitted[run.fit_key]["finished"]) in done:
            continue
        start = time.perf_counter()
        cli = main(run.test_args)
        test_seconds = time.perf_counter() - start
        results, names = cli.model.results, list(cli.datamodule.class_names)
        record = {
            "ablation": ablation.name,
            "dataset": opts.dataset,
            "variant": run.variant.name,
            "generation": run.variant.generation,
            "knob": run.variant.knob,
            "value": run.variant.value,
            "seed": run.seed,
            "split": run.split,
            "config": run.config,
            **metrics_record(results["test"], names),
            "fit_seconds": fitted[run.fit_key]["fit_seconds"],
            "fit_finished": fitted[run.fit_key]["finished"],
            "test_seconds": test_seconds,
            **measure(cli.model, cli.datamodule, cli.trainer, widths),
            "info": ablation.info(cli) if ablation.info else {},
            "ckpt": str(run.ckpt),
            "test_args": run.test_args,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if "test_before_crf" in results:
            record["before_crf"] = metrics_record(results["test_before_crf"], names)
        finish_wandb()
        append_record(path, record)
        records.append(record)
    return records
