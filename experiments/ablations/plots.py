"""The ablation plot: test mIoU per variant over seeds, and trimap curves where measured."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


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
