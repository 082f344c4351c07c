"""Image pooling (image-level features in ASPP) on and off, for V3 and V3+. Expected (PAPERS.md §7): a small gain
on VOC (+0.63, V3 Table 5), slightly negative on Cityscapes with V3+ (−0.35).

    python experiments/ablations/image_pooling.py [--dataset shapes|context|voc|cityscapes] [--seeds 3] \
        [--dry-run | --slurm | --sweep]
"""

from __future__ import annotations

from typing import Any

from grid import Ablation, Variant
from launch import run_ablation


def variant(generation: str, pooling: bool) -> Variant:
    value = "true" if pooling else "false"
    name = f"{generation}-{'pool' if pooling else 'nopool'}"
    return Variant(name, generation, "image_pooling", value, fit={"model.init_args.image_pooling": value})


ABLATION = Ablation(
    name="image_pooling",
    title="Image pooling on/off (V3, V3+)",
    variants=[variant(g, p) for g in ("v3", "v3plus") for p in (True, False)],
)


def main(argv: list[str] | None = None) -> Any:
    return run_ablation(ABLATION, argv)


if __name__ == "__main__":
    main()
