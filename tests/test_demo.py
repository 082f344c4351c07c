"""The main job (``make run``): fit, test on the best checkpoint and predict held-out images, with its own config."""

import json
from pathlib import Path

import torch

from deeplab_lit.demo import CONFIG, main


def test_the_main_job_trains_tests_and_predicts_with_its_shipped_config(tmp_path) -> None:
    assert CONFIG.is_file()
    tiny = [
        *("--data.init_args.num_train", "16", "--data.init_args.num_val", "4", "--data.init_args.num_test", "4"),
        *("--data.init_args.image_size", "32", "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0"),
        *("--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"),
    ]
    summary = main(["--out", str(tmp_path), "--num-predict", "3", *tiny])

    best = torch.load(summary["checkpoint (best val/mIoU)"], map_location="cpu", weights_only=False)
    assert best["hyper_parameters"]["num_classes"] == 4  # background + the config's three shapes
    assert torch.load(summary["last checkpoint"], map_location="cpu", weights_only=False)["global_step"] == 8
    test = json.loads(Path(summary["test metrics JSON"]).read_text())
    assert set(test["IoU"]) == {"background", "circle", "rectangle", "ring"}
    assert f"{test['mIoU']:.4f}" == summary["test/mIoU"] and 0.0 <= test["mIoU"] <= 1.0
    assert Path(summary["training log (CSV)"]).read_text().count("\n") > 1
    predictions = Path(summary["prediction PNGs and overlays"])
    fractions = json.loads(Path(summary["class fractions JSON"]).read_text())
    assert len(fractions["images"]) == 3 and not fractions["failed"]
    expected = {f"shapes_{i:05d}{kind}.png" for i in range(3) for kind in ("", "_overlay")}  # label PNG + overlay
    assert {p.name for p in predictions.glob("*.png")} == expected
