"""Rebuild every ablation's ``summary.md`` and ``summary.png`` from its ``runs.jsonl``.

python experiments/ablations/summarize.py [--out runs/ablations] [--wandb]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grid import shown
from summary import summarize


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/ablations")
    p.add_argument("--wandb", action="store_true", help="log each table and plot to W&B")
    opts = p.parse_args(argv)
    written = []
    for runs in sorted(Path(opts.out).glob("*/runs.jsonl")):
        table, plot = summarize(runs.parent, wandb=opts.wandb)
        print(f"{shown(table)}, {shown(plot)}")
        written += [table, plot]
    if not written:
        raise SystemExit(f"no runs.jsonl under {opts.out}")
    return written


if __name__ == "__main__":
    main()
