"""The main job: train on the built-in Shapes data, test the best checkpoint, predict held-out images.

    python -m deeplab_lit.demo [--config CONFIG] [--out runs/main] [extra CLI overrides ...]

Every step is the public CLI (``python -m deeplab_lit fit|test|predict``), run in-process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .cli import main as cli
from .data.shapes import write_shapes_images
from .errors import ShortArgumentParser

CONFIG = (
    Path(__file__).resolve().parents[1] / "experiments/configs/shapes/deeplabv3plus_mobilenetv2-os16_b16-10e_64.yaml"
)


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = ShortArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--out", default="runs/main", help="folder for checkpoints, logs and predictions")
    parser.add_argument("--num-predict", type=int, default=8, help="held-out images to segment")
    args, overrides = parser.parse_known_args(argv)
    out = Path(args.out)
    common = [
        "--config",
        args.config,
        "--trainer.default_root_dir",
        str(out),
        "--trainer.logger.init_args.save_dir",
        str(out),
        *overrides,
    ]

    start = time.perf_counter()
    fit = cli(["fit", *common, "--checkpoint.dirpath", str(out / "checkpoints")])
    best = fit.trainer.checkpoint_callback.best_model_path
    train_minutes = (time.perf_counter() - start) / 60

    test = cli(["test", *common, "--ckpt_path", best])
    metrics_json = Path(test.trainer.log_dir) / "test_metrics.json"

    images = out / "heldout_images"
    if test.trainer.is_global_zero:  # with several processes each runs this function: one writer, the others wait
        write_shapes_images(images, args.num_predict, seed=1_000_000, **fit.datamodule.generator)
    test.trainer.strategy.barrier()
    predictions = out / "predictions"
    cli(
        [
            "predict",
            *common,
            "--ckpt_path",
            best,
            "--data.init_args.predict_path",
            str(images),
            "--prediction.output_dir",
            str(predictions),
        ]
    )

    summary = {
        "checkpoint (best val/mIoU)": best,
        "last checkpoint": str(out / "checkpoints" / "last.ckpt"),
        "val/mIoU (best)": f"{float(fit.trainer.checkpoint_callback.best_model_score):.4f}",
        "test/mIoU": f"{json.loads(metrics_json.read_text())['mIoU']:.4f}",
        "test metrics JSON": str(metrics_json),
        "training log (CSV)": str(Path(fit.trainer.log_dir) / "metrics.csv"),
        "prediction PNGs and overlays": str(predictions),
        "class fractions JSON": str(predictions / "predictions.json"),
        "training time (min)": f"{train_minutes:.1f}",
    }
    width = max(map(len, summary))
    print("\nMain job done:")
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}")
    return summary


if __name__ == "__main__":
    main()
