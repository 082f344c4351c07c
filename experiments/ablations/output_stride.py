"""Output stride: V3 trained at OS 8, 16 and 32, each evaluated at OS 8 and 16 with the same weights
(``--model.init_args.eval_output_stride``; the rates follow the stride), with multiply-adds and time per image.
Expected (PAPERS.md §7): evaluating at 8 a model trained at 16 gains about 1.3 for about 3.4× the compute; training
at 8 hurts with small batches; OS 32 loses most.

    python experiments/ablations/output_stride.py [--dataset shapes|context|voc|cityscapes] [--seeds 3] \
        [--dry-run | --slurm | --sweep]
"""

from __future__ import annotations

from typing import Any

from grid import Ablation, Variant
from launch import run_ablation


def variant(train: int, evaluate: int) -> Variant:
    return Variant(
        f"train{train}-eval{evaluate}",
        "v3",
        "output_stride",
        f"train {train}, eval {evaluate}",
        fit={"model.init_args.output_stride": str(train)},
        test={"model.init_args.eval_output_stride": str(evaluate)},
        fit_name=f"train{train}",
    )


ABLATION = Ablation(
    name="output_stride",
    title="Output stride in training × at evaluation (V3)",
    variants=[variant(t, e) for t in (8, 16, 32) for e in (8, 16)],
)


def main(argv: list[str] | None = None) -> Any:
    return run_ablation(ABLATION, argv)


if __name__ == "__main__":
    main()
