"""experiments/crf_search.py end to end: a tiny checkpoint, a 2x2x1 grid on 3 val images, the written outputs."""

import csv
import importlib.util
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

pytest.importorskip("pydensecrf")

from conftest import randomize_bn  # noqa: E402
from deeplab_lit import cli  # noqa: E402
from deeplab_lit.data import ShapesDataModule  # noqa: E402
from deeplab_lit.inference import CRFParams, dense_crf, segment_probs  # noqa: E402
from deeplab_lit.systems import DeepLabV3  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "crf_search.py"
DATA = {"num_train": 4, "num_val": 3, "num_test": 3, "image_size": 40, "batch_size": 2, "num_workers": 0}
MODEL = {"backbone": "resnet18", "multi_grid": [1, 2], "aspp_channels": 16, "eval_output_stride": 8}
GRID = ["--w1", "3", "5", "--sigma-alpha", "20", "40", "--sigma-beta", "4", "--iterations", "5"]


@pytest.fixture(scope="module")
def crf_search():
    """The script as a module named ``crf_search``, so worker processes can import it too."""
    spec = importlib.util.spec_from_file_location("crf_search", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["crf_search"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("crf_search", None)


@pytest.fixture
def run(tmp_path):
    """A one-step checkpoint and a CLI config for it; returns (ckpt, config)."""
    torch.manual_seed(0)
    model = DeepLabV3(num_classes=7, **MODEL)
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, ShapesDataModule(**DATA))
    randomize_bn(model.net)  # varied, confident predictions, so the CRF parameters matter
    for name in model.net.classifier_names():
        weight = model.net.get_submodule(name).weight.data
        weight.normal_(0, 3 / weight[0].numel() ** 0.5)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    config = {
        "trainer": {"accelerator": "cpu", "logger": False, "default_root_dir": str(tmp_path)},
        "model": {"class_path": "deeplab_lit.systems.DeepLabV3", "init_args": MODEL},
        "data": {"class_path": "deeplab_lit.data.ShapesDataModule", "init_args": DATA},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "model.ckpt", tmp_path / "base.yaml", model


def confusion(label: np.ndarray, pred: np.ndarray, c: int) -> np.ndarray:
    keep = label != 255
    return np.bincount(c * label[keep].astype(int) + pred[keep], minlength=c * c).reshape(c, c)


def miou(cm: np.ndarray) -> float:
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    return float((np.diag(cm)[union > 0] / union[union > 0]).mean())


def test_search_writes_grid_override_heatmap_and_reuses_the_cache(crf_search, run, tmp_path, monkeypatch) -> None:
    ckpt, config, model = run
    out = tmp_path / "search"
    argv = ["--ckpt", str(ckpt), "--config", str(config), "--images", "3", *GRID, "--workers", "2", "--out", str(out)]
    summary = crf_search.main(argv)

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {(float(r["w1"]), float(r["sigma_alpha"])) for r in rows} == {(3, 20), (3, 40), (5, 20), (5, 40)}
    assert all(0.0 <= float(r["mIoU"]) <= 1.0 and float(r["sigma_beta"]) == 4.0 for r in rows)
    assert len({r["mIoU"] for r in rows}) == 4  # the parameters matter here, so "best" is one row
    best = max(rows, key=lambda r: float(r["mIoU"]))
    assert float(best["mIoU"]) == pytest.approx(summary["best"]["mIoU"], abs=1e-12)

    # The cache holds the network's probabilities at the eval output stride (8), at the label size.
    cache = np.load(out / "probs.npz")
    dm = ShapesDataModule(**DATA)
    model.net.set_output_stride(8)
    model.eval()
    x, y = dm.val_dataloader().dataset[0]
    with torch.no_grad():
        expected = segment_probs(model.net, x[None], y.shape)[0].numpy()
    np.testing.assert_allclose(cache["probs_0"].astype(np.float32), expected, atol=2e-3)
    np.testing.assert_array_equal(cache["images_0"], dm.dataset("val")[0][0].permute(1, 2, 0).numpy())

    # The best row's mIoU recomputed directly from the cached images and probabilities.
    params = CRFParams(float(best["w1"]), float(best["sigma_alpha"]), float(best["sigma_beta"]), 3.0, 3.0, 5)
    cm = sum(
        confusion(cache[f"labels_{i}"], dense_crf(cache[f"images_{i}"], cache[f"probs_{i}"], params).argmax(0), 7)
        for i in range(3)
    )
    assert float(best["mIoU"]) == pytest.approx(miou(cm), abs=1e-9)
    base = sum(confusion(cache[f"labels_{i}"], cache[f"probs_{i}"].argmax(0), 7) for i in range(3))
    assert summary["baseline"] == pytest.approx(miou(base), abs=1e-9)

    # best_crf.yaml holds the best row and the CLI accepts it as a config override.
    crf = yaml.safe_load((out / "best_crf.yaml").read_text())["model"]["init_args"]["crf"]
    assert crf == {"w1": params.w1, "sigma_alpha": params.sigma_alpha, "sigma_beta": 4.0, "w2": 3.0,
                   "sigma_gamma": 3.0, "iterations": 5}  # fmt: skip
    tested = cli.main(["test", "--config", str(config), "--config", str(out / "best_crf.yaml")])
    assert tested.model.crf == params and "test/before_crf/mIoU" in tested.trainer.callback_metrics
    with Image.open(out / "heatmap.png") as png:
        assert png.format == "PNG" and min(png.size) > 100

    # A second run reuses the cache (no network), refines the grid serially and logs to W&B offline.
    wandb = pytest.importorskip("wandb")
    mtime = (out / "probs.npz").stat().st_mtime_ns
    monkeypatch.setattr("deeplab_lit.export.load_module", lambda *a: pytest.fail("the network ran again"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "wb").mkdir()
    again = crf_search.main([*argv, "--wandb", "--workers", "0", "--refine"])
    assert (out / "probs.npz").stat().st_mtime_ns == mtime
    assert [r["mIoU"] for r in again["rows"][:4]] == [float(r["mIoU"]) for r in rows]  # serial == parallel
    w1, alpha = params.w1, params.sigma_alpha  # the coarse best; the fine grid is +-1 (w1) and +-10 (sigma_alpha)
    expected = {(w1 + i, alpha + 10 * j) for i in (-1, 0, 1) for j in (-1, 0, 1)} - {(3, 20), (3, 40), (5, 20), (5, 40)}
    assert sorted((r["w1"], r["sigma_alpha"]) for r in again["rows"][4:]) == sorted(expected)
    assert {r["stage"] for r in again["rows"][4:]} == {"fine"}
    assert again["best"]["mIoU"] == max(r["mIoU"] for r in again["rows"])
    crf = yaml.safe_load((out / "best_crf.yaml").read_text())["model"]["init_args"]["crf"]
    assert (crf["w1"], crf["sigma_alpha"]) == (again["best"]["w1"], again["best"]["sigma_alpha"])
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert wandb.run is None


def test_refine_grid_halves_the_step_around_the_best_point(crf_search) -> None:
    axes = {"w1": [3, 4, 5, 6], "sigma_alpha": list(range(30, 101, 10)), "sigma_beta": [3]}
    fine = crf_search.refine_grid(axes, {"w1": 3.0, "sigma_alpha": 60.0, "sigma_beta": 3.0})
    assert fine == {"w1": [2.5, 3.0, 3.5], "sigma_alpha": [55.0, 60.0, 65.0], "sigma_beta": [3.0]}
    assert len(crf_search.make_grid(fine)) == 9
