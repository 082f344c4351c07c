"""The context task's two sanity baselines: a head that cannot reach the cues (V3 with only its 1x1 ASPP branch: no
atrous rate, no image pooling) must stay near chance on the objects' classes, and a head whose rates match the cue
distances (V2 ASPP-L, rates 6, 12, 18, 24 at OS 8 = 48, 96, 144, 192 px) must solve every distance. Each variant
is tested on the mixed test split, on one split per cue distance and on the global cue (``grid.TEST_SPLITS``).
V2 ASPP-L's training run is the atrous-rates ablation's.

    python experiments/ablations/context_sanity.py [--seeds 1] [--dry-run | --slurm]
"""

from __future__ import annotations

from typing import Any

from atrous_rates import rate_info
from grid import Ablation, Variant
from launch import run_ablation

ABLATION = Ablation(
    name="context_sanity",
    title="Context task sanity: a head that cannot reach (1x1 only) vs one whose rates match the cue distances",
    variants=[
        Variant(
            "v3-1x1-only",
            "v3",
            "reach",
            "1x1 only",
            fit={"model.init_args.atrous_rates": "[]", "model.init_args.image_pooling": "false"},
        ),
        Variant("v2-aspp-l", "v2", "reach", "ASPP-L", fit={"model.init_args.atrous_rates": "[6, 12, 18, 24]"}),
    ],
    info=rate_info,
    no_sweep="the baselines are judged per test split, which only the test runs measure",
    dataset="context",
)


def main(argv: list[str] | None = None) -> Any:
    return run_ablation(ABLATION, argv)


if __name__ == "__main__":
    main()
