"""Expected user errors through the real command line: exit status 1, the file or argument named, no traceback.

Each case is a real ``python -m deeplab_lit ...`` process; the trees and checkpoints are written once per module and
the processes run three at a time. Three cases (and the debug switch) run by default, the rest are marked ``slow``.
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from PIL import Image
from test_folder import write_folder
from test_voc import break_corrupt_image, break_labels, break_split, write_voc

from deeplab_lit.cli import main

V3 = ["--model", "DeepLabV3", "--model.backbone", "mobilenet_v2", "--model.multi_grid", "null"]
V3 += ["--model.aspp_channels", "8"]
V3PLUS = ["--model", "DeepLabV3Plus", "--model.backbone", "mobilenet_v2", "--model.aspp_channels", "8"]
V3PLUS += ["--model.decoder_channels", "8", "--model.low_level_channels", "8"]
SHAPES = ["--data", "ShapesDataModule", "--data.num_train", "4", "--data.num_val", "2", "--data.num_test", "2"]
SHAPES += ["--data.image_size", "32", "--data.batch_size", "2", "--data.num_workers", "0"]
VOC = ["--data", "VOCDataModule", "--data.train_split", "train", "--data.crop_size", "32", "--data.batch_size", "2"]
VOC += ["--data.num_workers", "0"]


def trainer(t: SimpleNamespace) -> list[str]:
    return ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", t.out]


def cli(t: SimpleNamespace, *args: str) -> list[str]:
    return ["deeplab_lit", *args, *trainer(t)]


def export(t: SimpleNamespace, output: str, ckpt: str | None = None) -> list[str]:
    args = ["--ckpt", ckpt or t.v3plus, "--format", "onnx", "--size", "32", "32", "--output", output]
    return ["deeplab_lit.export", *args]


# name: (the command after `python -m`, the strings its message must hold)
CASES = {
    "backbone name": (lambda t: cli(t, "fit", *V3, "--model.backbone", "resnet7", *SHAPES), ["resnet7", "backbone"]),
    "output stride 7": (
        lambda t: cli(t, "fit", *V3, "--model.output_stride", "7", *SHAPES),
        ["output stride 7", "output_stride"],
    ),
    "negative CRF weight": (
        lambda t: cli(t, "fit", "--model", "DeepLabV1", "--model.crf.w1", "-1", *SHAPES),
        ["CRFParams.w1", "-1"],
    ),
    "missing VOC root": (lambda t: cli(t, "fit", *V3, *VOC, "--data.root", t.missing), ["nowhere"]),
    "Cityscapes root without its folders": (
        lambda t: cli(t, "fit", *V3, "--data", "CityscapesDataModule", "--data.root", t.empty),
        ["empty", "not a Cityscapes root"],
    ),
    "mis-sized mask in a loader worker during fit": (
        lambda t: cli(
            t,
            "fit",
            *V3PLUS,
            "--data",
            "FolderDataModule",
            "--data.root",
            t.bad_size,
            "--data.class_names",
            "[a, b, c]",
            "--data.crop_size",
            "32",
            "--data.batch_size",
            "2",
            "--data.num_workers",
            "1",
            "--trainer.max_epochs",
            "1",
            "--trainer.num_sanity_val_steps",
            "0",
        ),  # fmt: skip
        ["f2.png", "f2.jpg"],
    ),
    "labels out of range": (lambda t: cli(t, "fit", *V3, *VOC, "--data.root", t.voc_labels), ["2007_000032.png"]),
    "empty split file": (lambda t: cli(t, "fit", *V3, *VOC, "--data.root", t.voc_split), ["train.txt", "empty"]),
    "corrupt image": (lambda t: cli(t, "fit", *V3, *VOC, "--data.root", t.voc_corrupt), ["2007_000032.jpg"]),
    "empty predict folder": (
        lambda t: cli(t, "predict", *V3PLUS, *SHAPES, "--data.predict_path", t.empty),
        ["empty", "predict_path"],
    ),
    "ckpt_path of a text file": (
        lambda t: cli(t, "test", *V3PLUS, *SHAPES, "--ckpt_path", t.notes),
        ["--ckpt_path", "notes.txt", "not a PyTorch checkpoint"],
    ),
    "truncated checkpoint": (
        lambda t: cli(t, "validate", *V3PLUS, *SHAPES, "--ckpt_path", t.truncated),
        ["--ckpt_path", "truncated.ckpt"],
    ),
    "missing checkpoint": (
        lambda t: cli(t, "fit", *V3PLUS, *SHAPES, "--ckpt_path", t.missing),
        ["--ckpt_path", "nowhere", "no such file"],
    ),
    "checkpoint of another class count": (
        lambda t: cli(t, "test", *V3, *SHAPES, "--ckpt_path", t.v3),
        ["v3.ckpt", "3 classes", "has 7"],
    ),
    "V3+ checkpoint under --model DeepLabV3": (
        lambda t: cli(t, "test", *V3, *SHAPES, "--ckpt_path", t.v3plus),
        ["v3plus.ckpt", "DeepLabV3Plus checkpoint", "names DeepLabV3;"],
    ),
    "init_from of a text file": (
        lambda t: cli(t, "fit", *V3PLUS, *SHAPES, "--model.init_from", t.notes),
        ["--model.init_args.init_from", "notes.txt"],
    ),
    "backbone_weights file missing": (
        lambda t: cli(t, "fit", *V3PLUS, *SHAPES, "--model.backbone_weights", t.missing + ".pth"),
        ["nowhere.pth", "no such file"],
    ),
    "unknown --data class": (lambda t: cli(t, "fit", *V3, "--data", "NoSuchDataModule"), ["data", "NoSuchDataModule"]),
    "unknown model argument": (
        lambda t: cli(t, "fit", *V3, *SHAPES, "--model.no_such_knob", "1"),
        ["no_such_knob", "not accepted"],
    ),
    "bad eval_scales": (
        lambda t: cli(t, "validate", *V3PLUS, *SHAPES, "--model.eval_scales", "[0.0, -1.0]"),
        ["eval_scales", "-1.0"],
    ),
    "batch size 1": (lambda t: cli(t, "fit", *V3PLUS, *SHAPES, "--data.batch_size", "1"), ["batch_size", "got 1"]),
    "export to an unwritable path": (
        lambda t: export(t, t.notes + "/m.onnx"),
        ["--output", "notes.txt/m.onnx"],
    ),
    "export with a bad suffix": (lambda t: export(t, t.out + "/m.txt"), ["--output", "m.txt", ".onnx"]),
    "export of a text file": (lambda t: export(t, t.out + "/m.onnx", t.notes), ["--ckpt", "notes.txt"]),
    "export to an unknown format": (
        lambda t: [*export(t, t.out + "/m.onnx"), "--format", "tflite"],
        ["--format", "tflite", "--help"],
    ),
    "check-data on a bad tree": (
        lambda t: ["deeplab_lit", "check-data", *VOC, "--data.root", t.voc_corrupt],
        ["2007_000032.jpg is corrupt", "data check failed"],
    ),
}
FAST = ["backbone name", "mis-sized mask in a loader worker during fit", "ckpt_path of a text file"]
SLOW = sorted(set(CASES) - set(FAST))


@pytest.fixture(scope="module")
def t(tmp_path_factory) -> SimpleNamespace:
    """The files the cases point at: damaged data trees, checkpoints, a text file, an empty folder."""
    tmp = tmp_path_factory.mktemp("errors")
    (tmp / "empty").mkdir()
    (tmp / "notes.txt").write_text("not a checkpoint\n")
    damages = {"voc_labels": break_labels, "voc_split": break_split, "voc_corrupt": break_corrupt_image}
    trees = {name: write_voc(tmp / name) for name in damages}
    for name, damage in damages.items():
        damage(trees[name] / "VOC2012")
    bad_size = write_folder(tmp / "bad_size")
    Image.new("L", (20, 20)).save(bad_size / "train/masks/f2.png")  # not the first pair, which setup decodes
    for name, model, data in (("v3", V3, ["--data.shapes", "[circle, ring]"]), ("v3plus", V3PLUS, [])):
        run = main([*model, *SHAPES, *data, *trainer(SimpleNamespace(out=str(tmp)))], run=False)
        run.trainer.strategy.connect(run.model)
        run.trainer.save_checkpoint(tmp / f"{name}.ckpt")
    data = (tmp / "v3.ckpt").read_bytes()
    (tmp / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    paths = {name: str(tree) for name, tree in trees.items()}
    files = ("empty", "notes.txt", "v3.ckpt", "v3plus.ckpt", "truncated.ckpt")
    paths.update({name.split(".")[0]: str(tmp / name) for name in files})
    return SimpleNamespace(**paths, bad_size=str(bad_size), missing=str(tmp / "nowhere"), out=str(tmp / "out"))


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}  # three processes share two cores: no spinning threads
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, env=env)


def run_all(t: SimpleNamespace, names: list[str]) -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(3) as pool:
        return dict(zip(names, pool.map(lambda name: run(CASES[name][0](t)), names), strict=True))


@pytest.fixture(scope="module")
def fast(t) -> dict[str, subprocess.CompletedProcess]:
    return run_all(t, FAST)


@pytest.fixture(scope="module")
def slow(t) -> dict[str, subprocess.CompletedProcess]:
    return run_all(t, SLOW)


def check_short_error(result: subprocess.CompletedProcess, expected: list[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and "Original Traceback" not in output, output
    report = result.stderr if "error: " in result.stderr else result.stdout  # check-data reports on stdout
    message = report[report.rfind("error: ") :] if "error: " in report else report
    for text in expected:
        assert text in message, output
    assert len(message.splitlines()) <= 8, output


@pytest.mark.parametrize("name", FAST)
def test_user_error_is_a_short_message(fast, name) -> None:
    check_short_error(fast[name], CASES[name][1])


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_more_user_errors_are_short_messages(slow, name) -> None:
    check_short_error(slow[name], CASES[name][1])


def test_a_worker_error_reports_the_original_message_only(fast) -> None:
    err = fast["mis-sized mask in a loader worker during fit"].stderr
    assert "DataLoader worker" not in err and err.count("f2.png") == 1


def test_debug_flag_shows_the_traceback_and_other_errors_keep_theirs(t, tmp_path) -> None:
    plugin = tmp_path / "boom.py"  # a user's callback with a bug: not an expected user error
    plugin.write_text(
        "from lightning.pytorch import Callback\n\n\nclass Boom(Callback):\n"
        "    def setup(self, trainer, pl_module, stage):\n        raise RuntimeError('boom in a callback')\n"
    )
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    runs = [
        (CASES["backbone name"][0](t) + ["--debug"], {}),
        (cli(t, "fit", *V3PLUS, *SHAPES, "--trainer.callbacks", "boom.Boom"), {"PYTHONPATH": path}),
    ]
    with ThreadPoolExecutor(2) as pool:
        debug, unexpected = pool.map(lambda case: run(*case), runs)
    check_traceback(debug, "deeplab_lit.errors.ConfigError: unknown backbone 'resnet7'")
    check_traceback(unexpected, "RuntimeError: boom in a callback")


@pytest.mark.slow
def test_debug_environment_variable_shows_the_traceback(t) -> None:
    check_traceback(run(CASES["backbone name"][0](t), {"DEEPLAB_LIT_DEBUG": "1"}), "unknown backbone 'resnet7'")


def check_traceback(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr, result.stderr
    assert message in result.stderr and "error: " not in result.stderr, result.stderr


@pytest.mark.slow
def test_errors_in_ddp_processes_are_short_too(tmp_path) -> None:
    root = write_folder(tmp_path / "data")
    for i in (1, 2, 3):  # every process meets a mis-sized mask in its first batch (setup decodes f0 only)
        Image.new("L", (20, 20)).save(root / f"train/masks/f{i}.png")
    args = cli(
        SimpleNamespace(out=str(tmp_path / "out")), "fit", *V3PLUS, "--data", "FolderDataModule", "--data.root",
        str(root), "--data.class_names", "[a, b, c]", "--data.crop_size", "32", "--data.batch_size", "2",
        "--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy",
        "ddp", "--trainer.max_epochs", "1", "--trainer.num_sanity_val_steps", "0",
    )  # fmt: skip
    result = run(args)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "error: mask" in result.stderr and "is 20x20 but image" in result.stderr
