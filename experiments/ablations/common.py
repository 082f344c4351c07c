"""Shared machinery of the ablation scripts: a grid of runs over a generation's base config, run in this process,
on SLURM or as W&B sweeps, then a Markdown table and a plot of the results.

An ablation is a list of variants. A variant is a generation's base config (``experiments/configs/<dataset>/``)
plus overrides for training and overrides for evaluation only; variants with the same training overrides share one
training run per seed. Each training run (``python -m deeplab_lit fit``) is followed by one ``test`` run per
variant, which loads the best checkpoint's network with ``--model.init_args.init_from`` (with ``--ckpt_path``,
LightningCLI would put the checkpoint's hyperparameters over the evaluation overrides). In this process each test
also measures seconds per image, multiply-adds and, where asked, the trimap mIoU, and appends a record to
``<out>/<ablation>/runs.jsonl``; ``summarize`` turns that file into ``summary.md`` and ``summary.png``.
"""

from __future__ import annotations

import argparse
import fcntl
import fnmatch
import hashlib
import json
import math
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "experiments" / "configs"
WANDB_CONFIG = CONFIGS / "_base" / "logger_wandb.yaml"
GENERATIONS = ("v1", "v2", "v3", "v3plus")
MISSING = object()
SLUG = re.compile(r"[^\w.,-]")  # what a value keeps in a run folder's name: "[6, 12, 18]" -> "6,12,18"
QUICK = {  # Shapes only: seconds per run on a CPU, for tests and smoke runs
    "data.init_args.num_train": "8",
    "data.init_args.num_val": "4",
    "data.init_args.num_test": "4",
    "data.init_args.image_size": "48",
    "data.init_args.batch_size": "4",
    "data.init_args.val_batch_size": "2",
    "data.init_args.num_workers": "0",
    "trainer.max_epochs": "1",
    "trainer.num_sanity_val_steps": "0",
    "trainer.enable_progress_bar": "false",
    "trainer.enable_model_summary": "false",
}


@dataclass(frozen=True)
class Variant:
    """One row of the table: ``generation``'s base config with ``fit`` (training) and ``test`` (evaluation only)
    overrides, as LightningCLI dotted keys → YAML values. Variants with the same ``generation`` and ``fit_name``
    (default: the variant's name) share one training run, so their ``fit`` overrides must be equal.
    """

    name: str
    generation: str
    knob: str
    value: str
    fit: dict[str, str] = field(default_factory=dict)
    test: dict[str, str] = field(default_factory=dict)
    fit_name: str | None = None

    def __post_init__(self) -> None:
        if self.generation not in GENERATIONS or not re.fullmatch(r"[\w.=+-]+", self.name):
            raise ValueError(f"bad variant {self.name!r} ({self.generation!r})")


@dataclass
class Ablation:
    """The variants of one question; ``name`` is the script's file name. ``info(test_cli)`` adds numbers known
    from the tested model (e.g. valid atrous taps) to each record of its tests."""

    name: str
    title: str
    variants: list[Variant]
    trimap_widths: tuple[int, ...] = ()
    info: Callable[[Any], dict[str, float]] | None = None
    no_sweep: str | None = None  # why a W&B sweep (of ``fit`` runs, scored by val/mIoU) cannot answer the question


@dataclass
class Run:
    """One variant × seed: its training command (shared with the variants of the same fit) and its test command."""

    variant: Variant
    seed: int
    config: str
    fit_key: str
    fit_args: list[str]
    test_args: list[str]
    ckpt: Path


def base_config(dataset: str, generation: str) -> Path | None:
    """``experiments/configs/<dataset>/deeplab<generation>_*.yaml`` (one per generation and dataset), if any."""
    found = sorted((CONFIGS / dataset).glob(f"deeplab{generation}_*.yaml"))
    return found[0] if found else None


def shown(path: Path) -> str:
    """A path relative to the working directory when it is below it (commands run from the repository root)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def flat(overrides: dict[str, str]) -> list[str]:
    return [a for key, value in overrides.items() for a in (f"--{key}", value)]


def schedule(opts: argparse.Namespace) -> list[str]:
    """The overrides every command of the grid shares: quick data, schedule, then the user's extra arguments."""
    if opts.quick and opts.dataset != "shapes":
        raise SystemExit("--quick sizes the built-in Shapes data; use --max-steps/--max-epochs for other datasets")
    args = flat(QUICK) if opts.quick else []
    if "--trainer.devices" not in opts.extra:  # one process per run: in-process DDP would re-launch this script
        args += ["--trainer.devices", "1"]
    if opts.max_epochs is not None:
        args += ["--trainer.max_epochs", str(opts.max_epochs)]
    if opts.max_steps is not None:
        args += ["--trainer.max_steps", str(opts.max_steps)]
    return args + list(opts.extra)


def logged(
    stage: str,
    config: str,
    seed: int,
    run_dir: str,
    label: str,
    group: str,
    tags: list[str],
    job_type: str,
    opts: argparse.Namespace,
) -> list[str]:
    """The start of a command: the configs, the seed, the run folder and the logger (with W&B group and tags)."""
    args = [stage, "--config", config] + (["--config", shown(WANDB_CONFIG)] if opts.wandb else [])
    args += ["--seed_everything", str(seed), "--trainer.default_root_dir", run_dir]
    args += ["--trainer.logger.init_args.save_dir", run_dir, "--trainer.logger.init_args.name", label]
    if opts.wandb:
        args += ["--trainer.logger.init_args.group", group, "--trainer.logger.init_args.tags", json.dumps(tags)]
        args += ["--trainer.logger.init_args.job_type", job_type]
    return args


def build_runs(ablation: Ablation, opts: argparse.Namespace) -> list[Run]:
    """Every variant × seed, ordered by seed then training run, with the exact ``deeplab_lit.cli`` arguments."""
    variants = [v for v in ablation.variants if not opts.only or any(fnmatch.fnmatch(v.name, p) for p in opts.only)]
    missing = sorted({v.generation for v in variants if base_config(opts.dataset, v.generation) is None})
    if missing:
        print(f"# no {'/'.join(missing)} config for {opts.dataset}: those variants are left out", file=sys.stderr)
        variants = [v for v in variants if v.generation not in missing]
    if not variants:
        raise SystemExit(f"{ablation.name}: no variant to run")
    fits: dict[tuple[str, str], dict[str, str]] = {}
    for v in variants:
        key = (v.generation, v.fit_name or v.name)
        if fits.setdefault(key, v.fit) != v.fit:
            raise ValueError(f"variants of training run {key} differ in their training overrides")
    out = Path(opts.out) / ablation.name
    common = schedule(opts)
    runs = []
    for seed in range(opts.seeds):
        for gen, fit_name in dict.fromkeys((v.generation, v.fit_name or v.name) for v in variants):
            config = shown(base_config(opts.dataset, gen))
            members = [v for v in variants if (v.generation, v.fit_name or v.name) == (gen, fit_name)]
            fit_key = fit_label(config, seed, members[0].fit, common)
            run_dir = shown(Path(opts.out) / "fits" / fit_key)
            ckpt = Path(run_dir) / "ckpt" / "best.ckpt"
            shared = len(members) > 1
            fit_tags = [members[0].knob, fit_name if shared else members[0].value]
            group = f"{ablation.name}-{opts.dataset}"
            fit_args = logged("fit", config, seed, run_dir, fit_key, group, fit_tags, "train", opts)
            fit_args += ["--checkpoint.dirpath", str(ckpt.parent), "--checkpoint.filename", "best"]
            fit_args += ["--checkpoint.enable_version_counter", "false", *common, *flat(members[0].fit)]
            for v in members:
                label, tags, test_dir = f"{v.name}-s{seed}-test", [v.knob, v.value], shown(out / f"{v.name}-s{seed}")
                test_args = logged("test", config, seed, test_dir, label, group, tags, "eval", opts)
                test_args += [*common, *flat(v.fit), *flat(v.test), "--model.init_args.backbone_weights", "null"]
                test_args += ["--model.init_args.init_from", str(ckpt)]
                runs.append(Run(v, seed, config, fit_key, fit_args, test_args, ckpt))
    return runs


def lookup(config: dict[str, Any], key: str) -> Any:
    """The value at a dotted LightningCLI key of a parsed YAML config; ``MISSING`` where it does not set it."""
    node: Any = config
    for part in key.split("."):
        node = node.get(part, MISSING) if isinstance(node, dict) else MISSING
    return node


def fit_label(config: str, seed: int, fit: dict[str, str], common: list[str]) -> str:
    """The name of a training run, the same in every ablation that trains it: the base config, the overrides that
    change it (an override equal to the config's own value is left out), the seed and a digest of all of these
    and the shared arguments, e.g. ``deeplabv3_resnet18-os16_b16-4e_64+image_pooling=false-s0-3f2a9c``."""
    base = yaml.safe_load(Path(config).read_text())
    changed = {key: value for key, value in sorted(fit.items()) if lookup(base, key) != yaml.safe_load(value)}
    digest = hashlib.sha1(json.dumps([config, seed, changed, common]).encode()).hexdigest()[:6]
    knobs = "".join(f"+{key.rsplit('.', 1)[-1]}={SLUG.sub('', value)}" for key, value in changed.items())
    return f"{Path(config).stem}{knobs}-s{seed}-{digest}"


def commands(runs: Sequence[Run]) -> list[list[str]]:
    """The ``python -m deeplab_lit`` argument lists in execution order (each training run once, before its tests)."""
    out, seen = [], set()
    for run in runs:
        if run.fit_key not in seen:
            seen.add(run.fit_key)
            out.append(run.fit_args)
        out.append(run.test_args)
    return out


def slurm_script(ablation: Ablation, runs: Sequence[Run], opts: argparse.Namespace, argv: Sequence[str]) -> str:
    """An sbatch array script: array index i trains the i-th training run and tests its variants."""
    fits = list(dict.fromkeys(r.fit_key for r in runs))
    rerun = [a for a in argv if a != "--slurm"]
    log_dir = Path(opts.out) / ablation.name
    lines = [
        "#!/bin/bash",
        f"# {ablation.title}: {len(runs)} test runs over {len(fits)} training runs, one training run per array index.",
        "# Each task runs `python -m deeplab_lit fit` and then `test` for its variants in one process (the commands",
        "# that --dry-run prints) and appends the results to runs.jsonl. Edit the header for your cluster; afterwards",
        f"#   python experiments/ablations/summarize.py --out {log_dir.parent}",
        f"#SBATCH --job-name={ablation.name}",
        f"#SBATCH --array=0-{len(fits) - 1}",
        "#SBATCH --ntasks=1",
        "#SBATCH --gpus=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --time=24:00:00",
        f"#SBATCH --output={log_dir}/slurm-%A_%a.out",
        "set -euo pipefail",
        'cd "${SLURM_SUBMIT_DIR:-.}"',
        f"mkdir -p {shlex.quote(str(log_dir))}",
        # Slurm >= 22.05: srun no longer passes --cpus-per-task on; one failed task ends the step, none waits
        f'srun --cpus-per-task="$SLURM_CPUS_PER_TASK" --kill-on-bad-exit=1 python experiments/ablations/'
        f"{ablation.name}.py {shlex.join(rerun)} --index $SLURM_ARRAY_TASK_ID",
    ]
    return "\n".join(lines) + "\n"


def sweep_configs(ablation: Ablation, runs: Sequence[Run], opts: argparse.Namespace) -> dict[str, dict]:
    """One W&B grid sweep per base config: the variants' knobs as LightningCLI dotted keys, and the seeds."""
    sweeps = {}
    for gen in dict.fromkeys(r.variant.generation for r in runs):
        variants = list({r.variant.name: r.variant for r in runs if r.variant.generation == gen}.values())
        overrides = [{**v.fit, **v.test} for v in variants]
        if any(o.keys() != overrides[0].keys() for o in overrides):
            raise ValueError(f"{ablation.name}: the {gen} variants must set the same keys to form a grid")
        params = {k: {"values": list(dict.fromkeys(o[k] for o in overrides))} for k in overrides[0]}
        params["seed_everything"] = {"values": list(range(opts.seeds))}
        config = runs[[r.variant.generation for r in runs].index(gen)].config
        command = ["${env}", "python", "-m", "deeplab_lit", "fit", "--config", config, "--config", shown(WANDB_CONFIG)]
        command += ["--trainer.logger.init_args.group", f"{ablation.name}-{opts.dataset}-sweep"]
        command += ["--trainer.logger.init_args.tags", json.dumps([variants[0].knob, gen])]
        command += ["--trainer.logger.init_args.job_type", "train", *schedule(opts), "${args}"]
        sweeps[gen] = {
            "name": f"{ablation.name}-{gen}-{opts.dataset}",
            "description": ablation.title,
            "method": "grid",
            "metric": {"name": "val/mIoU", "goal": "maximize"},
            "parameters": params,
            "command": command,
        }
    return sweeps


# -- running in this process ---------------------------------------------------------------------------------
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
    """The records of ``runs.jsonl``; for a variant and seed run more than once, the latest."""
    latest: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.strip():
            record = json.loads(line)
            latest[(record["variant"], record["seed"])] = record
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


# -- tables and plots ------------------------------------------------------------------------------------------
def _stat(values: list[float], scale: float = 1.0, digits: int | None = 2) -> str:
    """Mean ± sample std; ``digits=None``: integers as integers, else 3 decimals."""
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if digits is None:
        if all(float(v).is_integer() for v in values) and len(set(values)) == 1:
            return str(int(mean))
        digits = 3
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _crf_gain(record: dict) -> float | None:
    return record["mIoU"] - record["before_crf"]["mIoU"] if "before_crf" in record else None


def columns(records: Sequence[dict]) -> list[tuple[str, Callable[[dict], float | None], float, int | None]]:
    """(header, value of a record, scale, digits) for every quantity present in the records."""
    cols = [("test mIoU (%)", lambda r: r["mIoU"], 100.0, 2)]
    if any("before_crf" in r for r in records):
        cols.append(("before CRF (%)", lambda r: r.get("before_crf", {}).get("mIoU"), 100.0, 2))
        cols.append(("CRF gain (points)", _crf_gain, 100.0, 2))
    for width in sorted({w for r in records for w in r.get("trimap", {})}, key=int):
        cols.append((f"trimap {width}px (%)", lambda r, w=width: r.get("trimap", {}).get(w), 100.0, 2))
    for key in dict.fromkeys(k for r in records for k in r.get("info", {})):
        cols.append((key, lambda r, k=key: r.get("info", {}).get(k), 1.0, None))
    cols.append(("ms/image", lambda r: r.get("seconds_per_image"), 1000.0, 1))
    cols.append(("GMACs/image", lambda r: r.get("gmacs"), 1.0, 2))
    return cols


def summarize(ablation_dir: str | Path, wandb: bool = False) -> tuple[Path, Path]:
    """Rebuild ``summary.md`` (mean ± std over seeds per variant) and ``summary.png`` from ``runs.jsonl``."""
    ablation_dir = Path(ablation_dir)
    records = load_records(ablation_dir / "runs.jsonl")
    if not records:
        raise FileNotFoundError(f"no records in {ablation_dir / 'runs.jsonl'}")
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["variant"], []).append(r)
    cols = columns(records)
    header = ["variant", "config", "knob", "value", "seeds", *(c[0] for c in cols)]
    lines = [f"# {ablation_dir.name} ({records[0]['dataset']})", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    for name, rs in groups.items():
        cells = [name, Path(rs[0]["config"]).stem, rs[0]["knob"], rs[0]["value"], str(len(rs))]
        cells += [_stat([get(r) for r in rs], scale, digits) for _, get, scale, digits in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample standard deviation over seeds; ms/image is the test-time pipeline without the CRF."]
    table = ablation_dir / "summary.md"
    table.write_text("\n".join(lines) + "\n")
    plot = ablation_dir / "summary.png"
    draw(groups, plot, ablation_dir.name)
    if wandb:
        log_summary(ablation_dir, records[0]["dataset"], header, lines[4:-2], plot)
    return table, plot


def draw(groups: dict[str, list[dict]], path: Path, title: str) -> None:
    """Bar chart of test mIoU (and mIoU before the CRF) per variant with std error bars and a dot per seed; trimap
    curves beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def values(rs: list[dict], get: Callable[[dict], float | None]) -> np.ndarray:
        return np.array([v for v in map(get, rs) if v is not None], dtype=float) * 100

    def mean_std(rs: list[dict], get: Callable[[dict], float | None]) -> tuple[float, float]:
        v = values(rs, get)
        if v.size == 0:
            return float("nan"), 0.0
        return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0

    series = [("test mIoU", lambda r: r["mIoU"])]
    if any("before_crf" in r for rs in groups.values() for r in rs):
        series.append(("before CRF", lambda r: r.get("before_crf", {}).get("mIoU")))
    widths = sorted({w for rs in groups.values() for r in rs for w in r.get("trimap", {})}, key=int)
    fig, axes = plt.subplots(1, 2 if widths else 1, figsize=(12 if widths else 7, 4), squeeze=False)
    ax, names = axes[0, 0], list(groups)
    step = 0.8 / len(series)
    for i, (label, get) in enumerate(series):
        stats = [mean_std(groups[n], get) for n in names]
        x = np.arange(len(names)) + (i - (len(series) - 1) / 2) * step
        ax.bar(x, [s[0] for s in stats], step, yerr=[s[1] for s in stats], capsize=3, label=label)
        for xi, n in zip(x, names, strict=True):
            seeds = values(groups[n], get)
            ax.scatter(np.full(seeds.size, xi), seeds, s=10, color="black", zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    if widths:
        ax = axes[0, 1]
        for n in names:
            stats = [mean_std(groups[n], lambda r, w=w: r.get("trimap", {}).get(w)) for w in widths]
            ax.errorbar([int(w) for w in widths], [s[0] for s in stats], [s[1] for s in stats], label=n, capsize=3)
        ax.set_xlabel("trimap band width (px)")
        ax.set_ylabel("mIoU in the band (%)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_summary(directory: Path, dataset: str, header: list[str], rows: list[str], plot: Path) -> None:
    """The table and the plot as one W&B run of the ablation's group (online when logged in, else offline)."""
    import os

    import wandb

    from deeplab_lit.loggers import wandb_logged_in

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
    group, job = f"{directory.name}-{dataset}", f"{directory.name}-summary"
    run = wandb.init(project="deeplab-lit", group=group, job_type="summary", name=job, mode=mode, dir=directory)
    data = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    run.log({"summary/table": wandb.Table(columns=header, data=data), "summary/plot": wandb.Image(str(plot))})
    run.finish()


# -- entry point -----------------------------------------------------------------------------------------------
def parse(ablation: Ablation, argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"experiments/ablations/{ablation.name}.py",
        description=f"{ablation.title}. Arguments not listed here are passed to every deeplab_lit command.",
    )
    p.add_argument("--dataset", choices=("shapes", "voc", "cityscapes"), default="shapes")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per variant")
    p.add_argument("--out", default="runs/ablations")
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--quick", action="store_true", help="tiny Shapes data and one epoch (tests, smoke runs)")
    p.add_argument("--only", nargs="+", metavar="PATTERN", help="variants whose names match these glob patterns")
    p.add_argument("--trimap-widths", type=int, nargs="*", default=list(ablation.trimap_widths))
    p.add_argument("--wandb", action="store_true", help="W&B loggers with group and tags; log the summary")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the deeplab_lit commands")
    mode.add_argument("--slurm", action="store_true", help="print an sbatch array script")
    mode.add_argument("--sweep", action="store_true", help="write W&B sweep YAMLs")
    mode.add_argument("--index", type=int, help="run only this training run (and its tests), as a SLURM task")
    opts, extra = p.parse_known_args(argv)
    if extra and not extra[0].startswith("--"):
        p.error(f"unexpected argument {extra[0]!r}")
    opts.extra = extra
    return opts


def run_ablation(ablation: Ablation, argv: Sequence[str] | None = None) -> Any:
    """The scripts' ``main``: dry run, SLURM script, sweeps, or run (all, or one ``--index``) and summarize."""
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse(ablation, argv)
    runs = build_runs(ablation, opts)
    if opts.dry_run:
        for args in commands(runs):
            print(shlex.join(["python", "-m", "deeplab_lit", *args]))
        return commands(runs)
    if opts.slurm:
        script = slurm_script(ablation, runs, opts, argv)
        print(script, end="")
        return script
    if opts.sweep:
        if ablation.no_sweep:
            raise SystemExit(f"{ablation.name}: no W&B sweep: {ablation.no_sweep}")
        paths = []
        for gen, sweep in sweep_configs(ablation, runs, opts).items():
            path = Path(opts.out) / ablation.name / f"sweep-{gen}-{opts.dataset}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(sweep, sort_keys=False, width=1000))
            print(f"wandb sweep {shlex.quote(shown(path))}   # then: wandb agent ENTITY/PROJECT/SWEEP_ID")
            paths.append(path)
        return paths
    if opts.index is not None:
        fits = list(dict.fromkeys(r.fit_key for r in runs))
        if not 0 <= opts.index < len(fits):
            raise SystemExit(f"--index {opts.index} out of range 0..{len(fits) - 1}")
        return execute(ablation, [r for r in runs if r.fit_key == fits[opts.index]], opts)
    records = execute(ablation, runs, opts)
    table, plot = summarize(Path(opts.out) / ablation.name, wandb=opts.wandb)
    print(table.read_text())
    print(f"wrote {shown(table)} and {shown(plot)}")
    return records
