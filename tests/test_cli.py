"""The CLI end to end on Shapes: every generation's config, fit → validate/test/predict, resume, errors."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from deeplab_lit.cli import main
from deeplab_lit.data.shapes import write_shapes_images

CONFIGS = sorted(Path("experiments/configs/shapes").glob("*.yaml"))
TINY = [
    "--data.init_args.num_train",
    "8",
    "--data.init_args.num_val",
    "4",
    "--data.init_args.num_test",
    "4",
    "--data.init_args.image_size",
    "48",
    "--data.init_args.batch_size",
    "4",
    "--data.init_args.val_batch_size",
    "2",
    "--data.init_args.num_workers",
    "0",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


def run(tmp_path: Path, *args: str):
    return main(
        [
            *args,
            *TINY,
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
        ]
    )


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_shapes_config_runs_fast_dev_run(tmp_path, config) -> None:
    cli = run(tmp_path, "fit", "--config", str(config), "--trainer.fast_dev_run", "1")
    assert cli.trainer.global_step == 1
    # linked from the datamodule, whose class list the config may narrow (the main job keeps three shapes)
    assert cli.model.hparams.num_classes == len(cli.datamodule.class_names) == cli.model.net.num_classes


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("run")
    config = "experiments/configs/shapes/deeplabv3_resnet18-os16_b16-4e_64.yaml"
    run(tmp, "fit", "--config", config, "--trainer.max_epochs", "1", "--checkpoint.dirpath", str(tmp / "ckpt"))
    return tmp, tmp / "ckpt", config


def test_fit_writes_best_and_last_checkpoints_and_metrics(trained) -> None:
    tmp, ckpt, _ = trained
    names = {p.name for p in ckpt.iterdir()}
    assert "last.ckpt" in names and any(n.startswith("best-epoch") for n in names)
    val = json.loads(next(tmp.rglob("val_metrics.json")).read_text())
    assert set(val["IoU"]) == {"background", "circle", "rectangle", "ring"}  # the config's three shapes
    assert 0.0 <= val["mIoU"] <= 1.0 and len(val["confmat"]) == 4
    config = next(tmp.rglob("config.yaml")).read_text()
    assert "DeepLabV3" in config and "multi_grid" in config


def test_test_and_validate_on_a_saved_checkpoint(trained, tmp_path) -> None:
    _, ckpt, config = trained
    cli = run(tmp_path, "test", "--config", config, "--ckpt_path", str(ckpt / "last.ckpt"))
    metrics = json.loads((Path(cli.trainer.log_dir) / "test_metrics.json").read_text())
    assert metrics["mIoU"] == pytest.approx(float(cli.trainer.callback_metrics["test/mIoU"]))
    total = sum(map(sum, metrics["confmat"]))
    assert total == 4 * 48 * 48  # every labelled test pixel counted once
    cli = run(tmp_path, "validate", "--config", config, "--ckpt_path", str(ckpt / "last.ckpt"))
    assert "val/mIoU" in cli.trainer.callback_metrics
    assert cli.model.hparams.eval_output_stride == 8 and cli.model.hparams.multi_grid == [1, 2]  # from the config


def test_evaluation_settings_on_the_command_line_win_over_the_checkpoint(trained, tmp_path) -> None:
    _, ckpt, config = trained
    args = ["--model.init_args.eval_output_stride", "16", "--model.init_args.eval_flip", "true"]
    cli = run(tmp_path, "validate", "--config", config, "--ckpt_path", str(ckpt / "last.ckpt"), *args)
    assert cli.model.hparams.eval_output_stride == 16 and cli.model.tta.flip
    assert cli.model.net.output_stride == 16  # evaluated at 16, not at the checkpoint's 8


def test_predict_writes_pngs_overlays_and_fractions_and_survives_a_bad_file(trained, tmp_path) -> None:
    _, ckpt, config = trained
    images = tmp_path / "images"
    write_shapes_images(images, 2, image_size=40, seed=99)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "pred"
    run(
        tmp_path,
        "predict",
        "--config",
        config,
        "--ckpt_path",
        str(ckpt / "last.ckpt"),
        "--data.init_args.predict_path",
        str(images),
        "--prediction.output_dir",
        str(out),
    )
    summary = json.loads((out / "predictions.json").read_text())
    assert len(summary["images"]) == 2
    assert list(summary["failed"]) == [str(images / "broken.png")]
    for path, fractions in summary["images"].items():
        stem = Path(path).stem
        labels = Image.open(out / f"{stem}.png")
        assert labels.mode == "P" and labels.size == (40, 40)
        assert Image.open(out / f"{stem}_overlay.png").size == (40, 40)
        assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-4)


def test_resume_from_last_checkpoint_continues_the_run(trained, tmp_path) -> None:
    _, ckpt, config = trained
    before = torch.load(ckpt / "last.ckpt", weights_only=False)["global_step"]
    cli = run(tmp_path, "fit", "--config", config, "--trainer.max_epochs", "2", "--ckpt_path", str(ckpt / "last.ckpt"))
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 2 * before


def test_print_config_and_choosing_classes_by_name(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "fit",
                "--model",
                "DeepLabV3Plus",
                "--data",
                "ShapesDataModule",
                "--model.image_pooling",
                "false",
                "--print_config",
            ]
        )
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    assert "deeplab_lit.systems.DeepLabV3Plus" in out and "image_pooling: false" in out


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--model", "DeepLabV9"], "DeepLabV9"),
        (["--model", "DeepLabV3", "--model.no_such_knob", "1"], "no_such_knob"),
    ],
)
def test_unknown_class_or_argument_is_rejected(capsys, args, match) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *args, "--data", "ShapesDataModule"])
    assert exit_.value.code != 0
    assert match in capsys.readouterr().err
