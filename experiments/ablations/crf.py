"""Dense CRF on and off for V1 (LargeFOV) and V2 (ASPP-L), on the same trained weights. The test with the CRF
also reports the mIoU before it, so the table shows the gain. Expected (PAPERS.md §7): a large gain for VGG
LargeFOV (+4 to +5 on VOC), about +1 with ResNet-101 ASPP, below 0.5 on Cityscapes. The CRF parameters are the
papers' defaults (V1_CRF, V2_CRF); tune them for another dataset with experiments/crf_search.py.

    python experiments/ablations/crf.py [--dataset shapes|voc|cityscapes] [--seeds 3] \
        [--dry-run | --slurm | --sweep]
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import yaml

from deeplab_lit.inference import V1_CRF, V2_CRF, CRFParams

from grid import Ablation, Variant
from launch import run_ablation


def variants(generation: str, params: CRFParams) -> list[Variant]:
    on = yaml.safe_dump(asdict(params), default_flow_style=True, sort_keys=False).strip()
    return [
        Variant(f"{generation}-crf-{v}", generation, "crf", v, test={"model.init_args.crf": crf}, fit_name=generation)
        for v, crf in (("on", on), ("off", "null"))
    ]


ABLATION = Ablation(
    name="crf",
    title="Dense CRF on/off (V1 LargeFOV, V2 ASPP-L)",
    variants=variants("v1", V1_CRF) + variants("v2", V2_CRF),
    no_sweep="the CRF runs in test/validate only, never in the validation loop of fit that a sweep scores",
)


def main(argv: list[str] | None = None) -> Any:
    return run_ablation(ABLATION, argv)


if __name__ == "__main__":
    main()
