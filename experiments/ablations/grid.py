"""The grid of an ablation: variants of a generation's base config (``experiments/configs/<dataset>/``) × seeds,
each a training run and a test run with their exact ``python -m deeplab_lit`` arguments.

A variant is a base config plus overrides for training and overrides for evaluation only; variants with the same
training overrides share one training run per seed. Each training run (``fit``) is followed by one ``test`` run per
variant, which loads the best checkpoint's network with ``--model.init_args.init_from`` (with ``--ckpt_path``,
LightningCLI would put the checkpoint's hyperparameters over the evaluation overrides). A training run is named
after what it trains (``fit_label``), so ablations that ask for the same run share it.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "experiments" / "configs"
WANDB_CONFIG = CONFIGS / "_base" / "logger_wandb.yaml"
GENERATIONS = ("v1", "v2", "v3", "v3plus")
MISSING = object()
SLUG = re.compile(r"[^\w.,-]")  # what a value keeps in a run folder's name: "[6, 12, 18]" -> "6,12,18"
QUICK_SCHEDULE = {  # --quick: seconds per run on a CPU, for tests and smoke runs
    "data.init_args.num_train": "8",
    "data.init_args.num_val": "4",
    "data.init_args.num_test": "4",
    "data.init_args.batch_size": "4",
    "data.init_args.val_batch_size": "2",
    "data.init_args.num_workers": "0",
    "trainer.max_epochs": "1",
    "trainer.num_sanity_val_steps": "0",
    "trainer.enable_progress_bar": "false",
    "trainer.enable_model_summary": "false",
}
QUICK_DATA = {  # the built-in datasets: Shapes at 48 px; context keeps its 256 px, which its cue distances need
    "shapes": {"data.init_args.image_size": "48"},
    "context": {},
}
# Test splits per dataset, each a set of data overrides for the test command; "" is the config's own test split.
# Context: one split per cue distance (local cue only) and one for the global cue, beside the mixed default.
TEST_SPLITS: dict[str, dict[str, dict[str, str]]] = {
    "context": {
        "": {},
        **{
            f"d{d}": {"data.init_args.cue_kinds": "[local]", "data.init_args.cue_distances": f"[{d}]"}
            for d in (48, 96, 144, 192)
        },
        "global": {"data.init_args.cue_kinds": "[global]"},
    }
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
    dataset: str = "shapes"  # the default of --dataset


@dataclass
class Run:
    """One variant × seed × test split: its training command (shared with the variants of the same fit and the
    other splits) and its test command on ``split`` (``""``: the config's own test split)."""

    variant: Variant
    seed: int
    config: str
    fit_key: str
    fit_args: list[str]
    test_args: list[str]
    ckpt: Path
    split: str = ""


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
    if opts.quick and opts.dataset not in QUICK_DATA:
        raise SystemExit("--quick sizes the built-in data (shapes, context); use --max-steps/--max-epochs for others")
    args = flat({**QUICK_SCHEDULE, **QUICK_DATA[opts.dataset]}) if opts.quick else []
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
            splits = TEST_SPLITS.get(opts.dataset, {"": {}})
            weights = {"model.init_args.backbone_weights": "null", "model.init_args.init_from": str(ckpt)}
            for v in members:
                for split, data in splits.items():
                    name = f"{v.name}-s{seed}" + (f"-{split}" if split else "")
                    label, tags, test_dir = f"{name}-test", [v.knob, v.value], shown(out / name)
                    test_args = logged("test", config, seed, test_dir, label, group, tags, "eval", opts)
                    test_args += [*common, *flat(v.fit), *flat(v.test), *flat(data), *flat(weights)]
                    runs.append(Run(v, seed, config, fit_key, fit_args, test_args, ckpt, split))
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
