"""What the first GPU run meets and a CPU run does not: tensors that must leave the device before numpy, cuDNN's
autotuner in evaluation, deterministic mode, recipes' global batch, and processes with no image to evaluate."""

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from torch.profiler import ProfilerActivity, profile
from torchmetrics.classification import MulticlassConfusionMatrix

from deeplab_lit.callbacks import MetricsWriter, PredictionWriter, WandbMedia
from deeplab_lit.data import ShapesDataModule
from deeplab_lit.data.shapes import write_shapes_images
from deeplab_lit.errors import ConfigError
from deeplab_lit.loggers import WandbLogger
from deeplab_lit.metrics import SegmentationMetrics
from deeplab_lit.systems import DeepLabV3
from deeplab_lit.systems.device import check_deterministic

ROOT = Path(__file__).parents[1]
SMALL_V3 = {"backbone": "resnet18", "multi_grid": (1, 2), "aspp_channels": 8}
DATA = {"num_train": 4, "num_val": 2, "num_test": 2, "image_size": 32, "num_workers": 0, "batch_size": 2}


class OnAccelerator(torch.Tensor):
    """A tensor that converts to host memory as a CUDA tensor does: ``numpy()`` (and so ``np.asarray``, PIL, W&B)
    refuses until ``cpu()`` is called."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.numpy:
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first.")
        if func is torch.Tensor.cpu:
            return args[0].as_subclass(torch.Tensor).clone()
        return super().__torch_function__(func, types, args, kwargs or {})


def on_accelerator(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(OnAccelerator)


class ResultsOnAccelerator(Callback):
    """Runs before the writers: the validation results as a GPU run leaves them, on the device."""

    def on_validation_end(self, trainer, pl_module) -> None:
        pl_module.results["val"] = {k: on_accelerator(v) for k, v in pl_module.results["val"].items()}


class PredictsOnAccelerator(DeepLabV3):
    def predict_step(self, batch, batch_idx):
        items = super().predict_step(batch, batch_idx)
        return [{k: on_accelerator(v) if torch.is_tensor(v) else v for k, v in i.items()} for i in items]


def test_the_tensor_stand_in_refuses_numpy_like_cuda() -> None:
    t = on_accelerator(torch.arange(4))
    with pytest.raises(TypeError, match="Use Tensor.cpu"):
        t.double().numpy()  # results of operations stay on the "device"
    assert t.cpu().numpy().tolist() == [0, 1, 2, 3]


def test_writers_and_wandb_media_take_device_tensors(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B still builds its tables and images from our arrays
    images = tmp_path / "images"
    write_shapes_images(images, 1, image_size=32)
    model = PredictsOnAccelerator(num_classes=7, **SMALL_V3)
    logger = WandbLogger(project="p", save_dir=str(tmp_path))
    callbacks = [ResultsOnAccelerator(), MetricsWriter(), WandbMedia(num_images=1), PredictionWriter(str(tmp_path))]
    trainer = L.Trainer(
        accelerator="cpu", logger=logger, callbacks=callbacks, default_root_dir=tmp_path, enable_progress_bar=False
    )
    trainer.validate(model, ShapesDataModule(**DATA), verbose=False)
    trainer.predict(model, ShapesDataModule(**DATA, predict_path=str(images)), return_predictions=False)
    logger.experiment.finish()  # a run left open makes later W&B runs in this process fail to start
    assert sum(map(sum, yaml.safe_load((tmp_path / "val_metrics.json").read_text())["confmat"])) == 2 * 32 * 32
    assert (tmp_path / "shapes_00000.png").is_file() and (tmp_path / "shapes_00000_overlay.png").is_file()


def test_confusion_matrix_is_exact_and_small_in_deterministic_mode() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 21, (2, 128, 128), generator=g)
    target[:, :8] = 255  # ignored rows
    preds = torch.randint(0, 21, (2, 128, 128), generator=g)
    expected = torch.zeros(21, 21, dtype=torch.long)
    valid = target != 255
    for t, p in zip(target[valid].tolist(), preds[valid].tolist(), strict=True):
        expected[t, p] += 1

    def largest_allocation(metric) -> int:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            metric.update(preds, target)
        assert torch.equal(metric.confmat, expected)
        return max(e.cpu_memory_usage for e in prof.events())

    try:
        torch.use_deterministic_algorithms(True)
        ours = largest_allocation(SegmentationMetrics(21))
        theirs = largest_allocation(MulticlassConfusionMatrix(21, ignore_index=255))
    finally:
        torch.use_deterministic_algorithms(False)
    # torchmetrics compares every pixel with every bin in deterministic mode: pixels × 21² int64 (110 MiB here)
    assert theirs >= valid.sum() * 21 * 21 * 8
    assert ours < 2 * 2**20
    assert largest_allocation(SegmentationMetrics(21)) < 2 * 2**20  # the same path outside deterministic mode


def test_deterministic_true_is_refused_on_cuda_and_warn_is_not() -> None:
    try:
        torch.use_deterministic_algorithms(True)
        with pytest.raises(ConfigError, match="--trainer.deterministic warn"):
            check_deterministic(torch.device("cuda", 0))
        check_deterministic(torch.device("cpu"))
        torch.use_deterministic_algorithms(True, warn_only=True)
        check_deterministic(torch.device("cuda", 0))
    finally:
        torch.use_deterministic_algorithms(False)


class BenchmarkFlag(Callback):
    """Records ``torch.backends.cudnn.benchmark`` in each stage's batches."""

    def __init__(self) -> None:
        self.seen: dict[str, set[bool]] = {}

    def _record(self, stage: str) -> None:
        self.seen.setdefault(stage, set()).add(torch.backends.cudnn.benchmark)

    def on_train_batch_start(self, *args) -> None:
        self._record("train")

    def on_validation_batch_start(self, trainer, *args) -> None:
        self._record("sanity" if trainer.sanity_checking else "val")

    def on_test_batch_start(self, *args) -> None:
        self._record("test")

    def on_predict_batch_start(self, *args) -> None:
        self._record("predict")


def test_cudnn_benchmark_is_off_in_evaluation_and_back_for_training(tmp_path) -> None:
    before = torch.backends.cudnn.benchmark
    images = tmp_path / "images"
    write_shapes_images(images, 1, image_size=32)
    flag = BenchmarkFlag()
    model = DeepLabV3(num_classes=7, **SMALL_V3)
    try:
        kwargs = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
        kwargs |= {"max_epochs": 1, "limit_train_batches": 1, "num_sanity_val_steps": 1, "default_root_dir": tmp_path}
        trainer = L.Trainer(benchmark=True, callbacks=[flag], **kwargs)
        trainer.fit(model, ShapesDataModule(**DATA))
        assert torch.backends.cudnn.benchmark
        trainer.test(model, ShapesDataModule(**DATA), verbose=False)
        trainer.predict(model, ShapesDataModule(**DATA, predict_path=str(images)), return_predictions=False)
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before
    assert flag.seen == {"sanity": {False}, "train": {True}, "val": {False}, "test": {False}, "predict": {False}}


def recipes() -> list[Path]:
    return sorted((ROOT / "experiments/configs").glob("[!_]*/*.yaml"))


def test_every_recipe_pins_devices_and_gpu_recipes_state_their_global_batch() -> None:
    assert len(recipes()) >= 11
    for path in recipes():
        config = yaml.safe_load(path.read_text())
        assert config["trainer"].get("devices") == 1, path.name  # never "auto": all GPUs of the node
        data = config["data"]["init_args"]
        if path.parent.name in ("voc", "cityscapes"):
            assert data["recipe_global_batch"] == data["batch_size"], path.name
            assert f"_b{data['batch_size']}-" in path.name


def test_fit_warns_when_the_global_batch_differs_from_the_recipe(tmp_path) -> None:
    data = ShapesDataModule(**DATA, recipe_global_batch=16)
    data.trainer = L.Trainer(accelerator="cpu", accumulate_grad_batches=2, logger=False, default_root_dir=tmp_path)
    data.setup("fit")
    with pytest.warns(UserWarning, match=r"global batch of 16 .*this run's is 4 .*--data.init_args.batch_size 8"):
        data.train_dataloader()  # what fit asks for first
    data.recipe_global_batch = 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.train_dataloader()


# -- a process with no image: 2 real CLI processes (gloo) on 1 image ------------------------------------------------
def cli(args: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "MASTER_PORT")}
    return subprocess.Popen(
        [sys.executable, "-m", "deeplab_lit", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a hang is ended with every rank
    )


WHAT = {"predict": "image(s) to predict", "validate": "val image(s)", "test": "test image(s)"}
WHAT["fit"] = "validation image(s)"


@pytest.mark.slow  # 15-45 s each: two CLI processes
@pytest.mark.parametrize("stage", ["predict", "validate", "test", "fit"])
def test_one_image_on_two_processes_is_refused_not_hung(tmp_path, stage) -> None:
    images = tmp_path / "images"
    write_shapes_images(images, 1, image_size=32)
    args = [
        stage, "--model", "DeepLabV3", "--model.backbone", "resnet18", "--model.multi_grid", "[1, 2]",
        "--model.aspp_channels", "8", "--data", "ShapesDataModule", "--data.num_val", "1", "--data.num_test", "1",
        "--data.image_size", "32", "--data.num_workers", "0", "--data.predict_path", str(images),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip
    proc = cli(args)
    try:
        out, _ = proc.communicate(timeout=90)  # a hang lasts until the 30-minute collective timeout
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"{stage} on 2 processes with 1 image hung:\n{proc.communicate()[0][-3000:]}") from None
    assert proc.returncode != 0
    assert f"{stage} has 1 {WHAT[stage]} for 2 processes" in out and "--trainer.devices 1" in out, out[-3000:]
