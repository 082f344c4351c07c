"""Atrous rates: V2 LargeFOV (12) vs ASPP-S (2, 4, 8, 12) vs ASPP-L (6, 12, 18, 24); V3 ASPP (6, 12, 18) vs
(6, 12, 18, 24). Expected (PAPERS.md §7): ASPP-L > ASPP-S ≈ LargeFOV (V2 Table 3); adding rate 24 to V3 is flat
to slightly negative, because at a small feature map most of its taps fall on padding (§3j). Each record carries
the share of valid 3x3 taps on the training feature map (crop / output stride) for its rates, in the mean and per
rate (named by its reach in pixels). On ``--dataset context`` every variant is also tested per cue distance and on
the global cue (``grid.TEST_SPLITS``).

    python experiments/ablations/atrous_rates.py [--dataset shapes|context|voc|cityscapes] [--seeds 3] \
        [--dry-run | --slurm | --sweep]
"""

from __future__ import annotations

import math
from typing import Any

from grid import Ablation, Variant
from launch import run_ablation


def tap_shares(size: int, rate: int, kernel: int = 3) -> tuple[float, float]:
    """For a ``kernel``² filter at ``rate`` on a size × size map with zero padding: the mean share of taps that
    land inside the map, and the share of output positions where all of them do (V3 Fig. 4, PAPERS.md §3j)."""
    half = kernel // 2
    inside = [sum(0 <= i + rate * k < size for k in range(-half, half + 1)) for i in range(size)]  # per axis
    mean = (sum(inside) / (size * kernel)) ** 2
    full = (sum(n == kernel for n in inside) / size) ** 2
    return mean, full


def rate_info(cli: Any) -> dict[str, float]:
    """Valid-tap shares of the tested model's atrous branches at its training crop and output stride: the mean over
    the branches, and per branch, named by its reach in input pixels (rate × output stride, e.g. ``@48px``)."""
    from deeplab_lit.nets.aspp import scale_rates

    crop = cli.datamodule.crop_size
    crop = crop if isinstance(crop, int) else min(crop)
    stride = cli.model.train_output_stride
    size = math.ceil(crop / stride)
    aspp = cli.model.net.aspp
    rates = scale_rates(aspp.base_rates, aspp.rates_stride, stride)  # the net may sit at its evaluation stride now
    shares = [tap_shares(size, r) for r in rates]
    info = {"feature map (px)": float(size)}
    if shares:  # V3 with atrous_rates [] keeps only its 1x1 branch
        info["valid taps"] = sum(s[0] for s in shares) / len(shares)
        info["all 9 valid"] = sum(s[1] for s in shares) / len(shares)
    return info | {f"valid taps @{r * stride}px": share for r, (share, _) in zip(rates, shares, strict=True)}


def v2(name: str, rates: str) -> Variant:
    return Variant(name, "v2", "atrous_rates", rates, fit={"model.init_args.atrous_rates": rates})


def v3(name: str, rates: str) -> Variant:
    return Variant(name, "v3", "atrous_rates", rates, fit={"model.init_args.atrous_rates": rates})


ABLATION = Ablation(
    name="atrous_rates",
    title="Atrous rates: LargeFOV vs ASPP-S vs ASPP-L (V2), rate 24 in V3's ASPP",
    variants=[
        v2("v2-largefov", "[12]"),
        v2("v2-aspp-s", "[2, 4, 8, 12]"),
        v2("v2-aspp-l", "[6, 12, 18, 24]"),
        v3("v3-6-12-18", "[6, 12, 18]"),
        v3("v3-6-12-18-24", "[6, 12, 18, 24]"),
    ],
    info=rate_info,
)


def main(argv: list[str] | None = None) -> Any:
    return run_ablation(ABLATION, argv)


if __name__ == "__main__":
    main()
