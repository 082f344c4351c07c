"""Cross-validate the dense CRF's w1, sigma_alpha and sigma_beta on the first val images (DeepLab V1 §4, V2 §4.1).

    python experiments/crf_search.py --ckpt BEST.ckpt --config CONFIG [--data.init_args.root ...] [--images 100] \
        [--w1 3 4 5 6] [--sigma-alpha 30 40 50 60 70 80 90 100] [--sigma-beta 3 4 5 6] [--w2 3] [--sigma-gamma 3] \
        [--iterations 10] [--workers 2] [--refine] [--out runs/crf_search] [--wandb]

The network runs once per image (the checkpoint's eval output stride and test-time scales/flips); images, float16
probabilities and labels are cached in ``OUT/probs.npz`` and reused while the checkpoint, data and image count are
unchanged. Every (parameter set, image) CRF job then runs in worker processes. ``--refine`` adds the papers'
coarse-to-fine step: a grid with half the step around the best coarse point. Writes ``results.csv``,
``best_crf.yaml`` (a config override: ``python -m deeplab_lit test --config CONFIG --config OUT/best_crf.yaml``)
and ``heatmap.png`` (mIoU over sigma_alpha x w1 at the best sigma_beta).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing
import os
import site
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from itertools import product
from pathlib import Path

import numpy as np
import yaml

from deeplab_lit.inference.crf import CRFParams, dense_crf

AXES = ("w1", "sigma_alpha", "sigma_beta")
V2_AXES = {"w1": [3, 4, 5, 6], "sigma_alpha": list(range(30, 101, 10)), "sigma_beta": [3, 4, 5, 6]}  # V2 §4.1


def cache_probabilities(ckpt: str | Path, datamodule: object, num_images: int, path: str | Path) -> dict:
    """Images (H, W, 3) uint8, probabilities (C, H, W) float16 and labels (H, W) of the first val images, from
    ``path`` when it was written for the same checkpoint, data settings and count, else from the network."""
    stat, path = Path(ckpt).stat(), Path(path)
    kinds = (str, int, float, tuple, dict)  # the datamodule's settings
    data = {k: v for k, v in vars(datamodule).items() if not k.startswith("_") and isinstance(v, kinds)}
    key = [str(Path(ckpt).resolve()), stat.st_size, stat.st_mtime_ns, type(datamodule).__name__, data, num_images]
    key = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    if path.is_file():
        with np.load(path) as npz:
            if str(npz["key"]) == key:
                n = int(npz["count"])
                cache = {name: [npz[f"{name}_{i}"] for i in range(n)] for name in ("images", "probs", "labels")}
                return {**cache, "num_classes": int(npz["num_classes"])}
    import torch

    from deeplab_lit.data.transforms import EvalPreset
    from deeplab_lit.export import load_module

    module = load_module(ckpt)
    stride = module.hparams.get("eval_output_stride")
    if stride and stride != module.net.output_stride:
        module.net.set_output_stride(stride)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module.to(device)  # the CRF search below is CPU work
    dataset, preset = datamodule.dataset("val"), EvalPreset(datamodule.mean, datamodule.std)
    arrays, count = {}, min(num_images, len(dataset))
    with torch.inference_mode():
        for i in range(count):
            image, mask = dataset[i]  # uint8 (3, H, W), (H, W)
            x, y = preset(image, mask)
            probs = module.tta(module, x[None].to(device), y.shape[-2:])[0]  # (C, H, W), the eval TTA
            arrays[f"images_{i}"] = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
            arrays[f"probs_{i}"] = probs.cpu().numpy().astype(np.float16)
            arrays[f"labels_{i}"] = y.numpy().astype(np.uint8 if int(y.max()) < 256 else np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, key=key, count=count, num_classes=module.hparams.num_classes, **arrays)
    return cache_probabilities(ckpt, datamodule, num_images, path)


def make_grid(axes: dict[str, list[float]], w2: float = 3.0, sigma_gamma: float = 3.0, iterations: int = 10):
    """Every combination of the ``axes`` values (w1, sigma_alpha, sigma_beta) as CRFParams."""
    return [CRFParams(*map(float, v), w2, sigma_gamma, iterations) for v in product(*(axes[a] for a in AXES))]


def refine_grid(axes: dict[str, list[float]], best: dict) -> dict[str, list[float]]:
    """The finer grid around ``best``: per axis, the best value and its neighbours at half the coarse step."""
    fine = {}
    for name in AXES:
        values = sorted(set(axes[name]))
        step = min(np.diff(values)) / 2 if len(values) > 1 else 0.0
        centre, low = float(best[name]), 0.0 if name == "w1" else 1e-3
        fine[name] = sorted({round(v, 6) for v in (centre - step, centre, centre + step) if v >= low})
    return fine


def confusion(label: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 confusion matrix, rows = label, columns = prediction; labels >= C (ignore) are skipped."""
    valid = label < num_classes
    index = num_classes * label[valid].astype(np.int64) + pred[valid]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def _crf_job(image: np.ndarray, probs: np.ndarray, label: np.ndarray, grid: list, num_classes: int) -> np.ndarray:
    return np.stack([confusion(label, dense_crf(image, probs, params).argmax(0), num_classes) for params in grid])


def miou(confmat: np.ndarray) -> float:
    import torch

    from deeplab_lit.metrics import metrics_from_confmat

    return float(metrics_from_confmat(torch.from_numpy(confmat))["mIoU"])


def baseline_miou(cache: dict) -> float:
    """mIoU of the network alone (argmax of the cached probabilities)."""
    c = cache["num_classes"]
    return miou(sum(confusion(y, p.argmax(0), c) for p, y in zip(cache["probs"], cache["labels"], strict=True)))


def grid_search(cache: dict, grid: list[CRFParams], workers: int = 2) -> list[dict]:
    """One dict per parameter set (its fields and ``mIoU`` over the cached images); ``workers`` processes run the
    CRF jobs, one per (image, slice of the grid); 0 runs them serially."""
    c, n = cache["num_classes"], len(cache["images"])
    chunks = max(1, min(len(grid), -(-4 * workers // max(n, 1))))  # (image, chunk) jobs: enough for every worker
    bounds = np.linspace(0, len(grid), chunks + 1).astype(int)
    jobs = [(i, lo, hi) for i in range(n) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]
    confs = np.zeros((len(grid), c, c), np.int64)

    def args(i: int, lo: int, hi: int) -> tuple:
        return cache["images"][i], cache["probs"][i], cache["labels"][i], grid[lo:hi], c

    if workers == 0:
        for i, lo, hi in jobs:
            confs[lo:hi] += _crf_job(*args(i, lo, hi))
    else:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        here = str(Path(__file__).resolve().parent)  # workers import this file as a module
        with ProcessPoolExecutor(workers, mp_context=context, initializer=site.addsitedir, initargs=(here,)) as pool:
            futures = {pool.submit(_crf_job, *args(*job)): job for job in jobs}
            for done, future in enumerate(as_completed(futures), 1):
                _, lo, hi = futures[future]
                confs[lo:hi] += future.result()
                if done % max(1, len(jobs) // 10) == 0 or done == len(jobs):
                    print(f"  CRF jobs {done}/{len(jobs)}", flush=True)
    return [{**asdict(params), "mIoU": miou(conf)} for params, conf in zip(grid, confs, strict=True)]


def write_override(path: str | Path, best: dict, baseline: float | None = None) -> Path:
    """``best_crf.yaml``: ``model.init_args.crf`` set to the best parameters, a config the CLI accepts."""
    crf = {name: best[name] for name in ("w1", "sigma_alpha", "sigma_beta", "w2", "sigma_gamma", "iterations")}
    crf = {k: int(v) if k == "iterations" else float(v) for k, v in crf.items()}
    note = f"# dense CRF cross-validated by experiments/crf_search.py: val mIoU {best['mIoU']:.4f}"
    note += "" if baseline is None else f" (no CRF {baseline:.4f})"
    Path(path).write_text(note + "\n" + yaml.safe_dump({"model": {"init_args": {"crf": crf}}}, sort_keys=False))
    return Path(path)


def plot_heatmap(rows: list[dict], best: dict, baseline: float, path: str | Path) -> Path:
    """mIoU over sigma_alpha (x) and w1 (y) at the best sigma_beta, each cell annotated."""
    from matplotlib.figure import Figure  # rendered with Agg, whatever pyplot's backend
    from matplotlib.patches import Rectangle

    at = [r for r in rows if r["sigma_beta"] == best["sigma_beta"]]
    xs, ys = sorted({r["sigma_alpha"] for r in at}), sorted({r["w1"] for r in at})
    grid = np.full((len(ys), len(xs)), np.nan)
    for r in at:
        grid[ys.index(r["w1"]), xs.index(r["sigma_alpha"])] = 100 * r["mIoU"]
    fig = Figure(figsize=(1.5 + 0.8 * len(xs), 1.5 + 0.5 * len(ys)), layout="tight")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", origin="lower", aspect="auto")
    mid = np.nanmin(grid) + 0.5 * (np.nanmax(grid) - np.nanmin(grid))
    for (j, i), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(i, j, f"{value:.2f}", ha="center", va="center", fontsize=7, color="k" if value > mid else "w")
    i, j = xs.index(best["sigma_alpha"]), ys.index(best["w1"])
    ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, edgecolor="r", linewidth=2))
    ax.set(xticks=range(len(xs)), xticklabels=[f"{x:g}" for x in xs], xlabel="σα", ylabel="w1")
    ax.set(yticks=range(len(ys)), yticklabels=[f"{y:g}" for y in ys])
    ax.set_title(f"CRF val mIoU (%) at σβ={best['sigma_beta']:g}\nno CRF {100 * baseline:.2f}", fontsize=9)
    fig.colorbar(image, ax=ax, label="mIoU (%)")
    fig.savefig(path, dpi=120)
    return Path(path)


def log_wandb(rows: list[dict], best: dict, baseline: float, heatmap: Path, out: Path, project: str) -> None:
    """One W&B run (job_type crf_search): the grid as a Table, the heat map as an Image; online if logged in."""
    import wandb

    from deeplab_lit.loggers import wandb_logged_in

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
    run = wandb.init(project=project, job_type="crf_search", mode=mode, dir=os.environ.get("WANDB_DIR") or str(out))
    table = wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])
    run.log({"crf_grid": table, "crf_heatmap": wandb.Image(str(heatmap))})
    run.summary.update({"best": best, "no_crf_mIoU": baseline, "gain": best["mIoU"] - baseline})
    run.finish()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--config", action="append", default=[], help="config(s) with the data section")
    parser.add_argument("--images", type=int, default=100, help="first N val images (the papers: 100)")
    for name in AXES:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, nargs="+", default=V2_AXES[name])
    parser.add_argument("--w2", type=float, default=3.0)
    parser.add_argument("--sigma-gamma", type=float, default=3.0)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="CRF processes; 0 runs serially")
    parser.add_argument("--refine", action="store_true", help="add a finer grid around the best point")
    parser.add_argument("--out", type=Path, default=Path("runs/crf_search"))
    parser.add_argument("--wandb", action="store_true")
    parser.add_argument("--wandb-project", default="deeplab-lit")
    args, data_args = parser.parse_known_args(argv)
    if not Path(args.ckpt).is_file():
        parser.error(f"checkpoint not found: {args.ckpt}")
    from deeplab_lit.check_data import datamodule_from_args

    datamodule = datamodule_from_args([a for c in args.config for a in ("--config", c)] + data_args)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = cache_probabilities(args.ckpt, datamodule, args.images, args.out / "probs.npz")
    baseline = baseline_miou(cache)
    print(f"{len(cache['images'])} images; no CRF mIoU {baseline:.4f}")
    fixed, axes = (args.w2, args.sigma_gamma, args.iterations), {name: getattr(args, name) for name in AXES}
    grid = make_grid(axes, *fixed)
    print(f"coarse grid: {len(grid)} parameter sets")
    rows = [{"stage": "coarse", **r} for r in grid_search(cache, grid, args.workers)]
    if args.refine:  # coarse to fine, as the papers
        best = max(rows, key=lambda r: r["mIoU"])
        fine = [p for p in make_grid(refine_grid(axes, best), *fixed) if p not in grid]
        print(f"fine grid around w1={best['w1']:g} σα={best['sigma_alpha']:g} σβ={best['sigma_beta']:g}: {len(fine)}")
        rows += [{"stage": "fine", **r} for r in grid_search(cache, fine, args.workers)] if fine else []
    best = max(rows, key=lambda r: r["mIoU"])
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    override = write_override(args.out / "best_crf.yaml", best, baseline)
    heatmap = plot_heatmap(rows, best, baseline, args.out / "heatmap.png")
    params = ", ".join(f"{k}={best[k]:g}" for k in ("w1", "sigma_alpha", "sigma_beta", "w2", "sigma_gamma"))
    print(f"best: {params}, iterations={best['iterations']}: mIoU {best['mIoU']:.4f} ({best['mIoU'] - baseline:+.4f})")
    print(f"wrote {args.out / 'results.csv'}, {override}, {heatmap}")
    if args.wandb:
        log_wandb(rows, best, baseline, heatmap, args.out, args.wandb_project)
    return {"rows": rows, "best": best, "baseline": baseline}


if __name__ == "__main__":
    main()
