"""V3+ decoder on and off (off is V3's head on the same backbone), with the trimap mIoU: the mIoU over pixels
within a few pixels of a label boundary (V3+ Fig. 5). Expected (PAPERS.md §7): +1 to +1.6 on VOC val at OS 16,
most of it at boundaries (trimap +4.8 / +5.4).

    python experiments/ablations/decoder.py [--dataset shapes|voc|cityscapes] [--seeds 3] [--trimap-widths 1 2 4 8]
        [--dry-run|--slurm|--sweep]
"""

from __future__ import annotations

from typing import Any

from grid import Ablation, Variant
from launch import run_ablation

ABLATION = Ablation(
    name="decoder",
    title="V3+ decoder on/off, with trimap mIoU",
    variants=[
        Variant(f"v3plus-{name}", "v3plus", "decoder", value, fit={"model.init_args.decoder": value})
        for name, value in (("decoder", "true"), ("nodecoder", "false"))
    ],
    trimap_widths=(1, 2, 4, 8),
)


def main(argv: list[str] | None = None) -> Any:
    return run_ablation(ABLATION, argv)


if __name__ == "__main__":
    main()
