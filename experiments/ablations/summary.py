"""``summary.md`` (mean ± std over seeds per variant) and ``summary.png`` from an ablation's ``runs.jsonl``, and
the same table and plot as one W&B run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from plots import draw
from runs import load_records


def _stat(values: list[float], scale: float = 1.0, digits: int | None = 2) -> str:
    """Mean ± sample std; ``digits=None``: integers as integers, else 3 decimals."""
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if digits is None:
        if all(float(v).is_integer() for v in values) and len(set(values)) == 1:
            return str(int(mean))
        digits = 3
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _crf_gain(record: dict) -> float | None:
    return record["mIoU"] - record["before_crf"]["mIoU"] if "before_crf" in record else None


def columns(records: Sequence[dict]) -> list[tuple[str, Callable[[dict], float | None], float, int | None]]:
    """(header, value of a record, scale, digits) for every quantity present in the records."""
    cols = [("test mIoU (%)", lambda r: r["mIoU"], 100.0, 2)]
    if any("before_crf" in r for r in records):
        cols.append(("before CRF (%)", lambda r: r.get("before_crf", {}).get("mIoU"), 100.0, 2))
        cols.append(("CRF gain (points)", _crf_gain, 100.0, 2))
    for width in sorted({w for r in records for w in r.get("trimap", {})}, key=int):
        cols.append((f"trimap {width}px (%)", lambda r, w=width: r.get("trimap", {}).get(w), 100.0, 2))
    for key in dict.fromkeys(k for r in records for k in r.get("info", {})):
        cols.append((key, lambda r, k=key: r.get("info", {}).get(k), 1.0, None))
    cols.append(("ms/image", lambda r: r.get("seconds_per_image"), 1000.0, 1))
    cols.append(("GMACs/image", lambda r: r.get("gmacs"), 1.0, 2))
    return cols


def _object_miou(record: dict) -> float | None:
    """mIoU over the classes other than the first (background), those present in the split."""
    ious = [v for k, v in list(record["IoU"].items())[1:] if v is not None]
    return sum(ious) / len(ious) if ious else None


def split_tables(records: Sequence[dict]) -> list[str]:
    """Markdown tables per test split (rows: variants; columns: splits, ``mixed`` the config's own test split):
    test mIoU, and the mIoU of the object classes alone (background left out), mean ± std over seeds."""
    splits = list(dict.fromkeys(r.get("split", "") for r in records))
    cells: dict[str, dict[str, list[dict]]] = {}
    for r in records:
        cells.setdefault(r["variant"], {}).setdefault(r.get("split", ""), []).append(r)
    lines = []
    for title, get in (("test mIoU (%)", lambda r: r["mIoU"]), ("object-class mIoU (%)", _object_miou)):
        lines += ["", f"## Per test split: {title}", ""]
        lines.append("| variant | " + " | ".join(s or "mixed" for s in splits) + " |")
        lines.append("|---|" + "---:|" * len(splits))
        for name, by_split in cells.items():
            row = [_stat([get(r) for r in by_split.get(s, [])], 100.0, 1) for s in splits]
            lines.append(f"| {name} | " + " | ".join(row) + " |")
    return lines


def summarize(ablation_dir: str | Path, wandb: bool = False) -> tuple[Path, Path]:
    """Rebuild ``summary.md`` (mean ± std over seeds per variant, on the config's own test split, then per test
    split where there are several) and ``summary.png`` from ``runs.jsonl``."""
    ablation_dir = Path(ablation_dir)
    every = load_records(ablation_dir / "runs.jsonl")
    records = [r for r in every if not r.get("split")]
    if not records:
        raise FileNotFoundError(f"no records in {ablation_dir / 'runs.jsonl'}")
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["variant"], []).append(r)
    cols = columns(records)
    header = ["variant", "config", "knob", "value", "seeds", *(c[0] for c in cols)]
    lines = [f"# {ablation_dir.name} ({records[0]['dataset']})", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    for name, rs in groups.items():
        cells = [name, Path(rs[0]["config"]).stem, rs[0]["knob"], rs[0]["value"], str(len(rs))]
        cells += [_stat([get(r) for r in rs], scale, digits) for _, get, scale, digits in cols]
        lines.append("| " + " | ".join(cells) + " |")
    rows = lines[4:]
    lines += ["", "Mean ± sample standard deviation over seeds; ms/image is the test-time pipeline without the CRF."]
    if len(every) > len(records):
        lines += split_tables(every)
    table = ablation_dir / "summary.md"
    table.write_text("\n".join(lines) + "\n")
    plot = ablation_dir / "summary.png"
    draw(groups, plot, ablation_dir.name)
    if wandb:
        log_summary(ablation_dir, records[0]["dataset"], header, rows, plot)
    return table, plot


def log_summary(directory: Path, dataset: str, header: list[str], rows: list[str], plot: Path) -> None:
    """The table and the plot as one W&B run of the ablation's group (online when logged in, else offline)."""
    import os

    import wandb

    from deeplab_lit.loggers import wandb_logged_in

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
    group, job = f"{directory.name}-{dataset}", f"{directory.name}-summary"
    run = wandb.init(project="deeplab-lit", group=group, job_type="summary", name=job, mode=mode, dir=directory)
    data = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    run.log({"summary/table": wandb.Table(columns=header, data=data), "summary/plot": wandb.Image(str(plot))})
    run.finish()
