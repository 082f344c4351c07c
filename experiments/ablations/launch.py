"""The ablation scripts' command line (``run_ablation``): print the grid as ``deeplab_lit`` commands, an sbatch
array script or W&B sweep YAMLs, or run it in this process (all of it, or one ``--index`` as a SLURM task) and
summarise it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from grid import WANDB_CONFIG, Ablation, Run, build_runs, commands, schedule, shown
from runs import execute
from summary import summarize


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


def parse(ablation: Ablation, argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"experiments/ablations/{ablation.name}.py",
        description=f"{ablation.title}. Arguments not listed here are passed to every deeplab_lit command.",
    )
    p.add_argument("--dataset", choices=("shapes", "context", "voc", "cityscapes"), default=ablation.dataset)
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
