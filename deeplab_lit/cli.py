"""``python -m deeplab_lit fit|validate|test|predict``: LightningCLI over every generation and datamodule.

python -m deeplab_lit fit --config experiments/configs/shapes/deeplabv3plus_mobilenetv2-os16_b16-10e_64.yaml
python -m deeplab_lit fit --model DeepLabV3 --data ShapesDataModule --model.image_pooling false
python -m deeplab_lit predict --config CONFIG --ckpt_path BEST.ckpt --data.predict_path images/
python -m deeplab_lit check-data --config CONFIG      (decode every sample of every split; see check_data.py)
"""

from __future__ import annotations

import contextlib
import csv
import glob
import importlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import Namespace
from lightning.fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE, _TENSORBOARDX_AVAILABLE
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.strategies.launchers import subprocess_script
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from . import data, systems  # noqa: F401  (registers the classes for --model NAME / --data NAME)
from .callbacks import LOGGER_VERSIONS, Checkpoint, MetricsWriter, PredictionWriter, WandbMedia
from .data.datamodule import SegmentationDataModule
from .errors import DEBUG_ENV, CheckpointError, ConfigError, reported
from .nets.weights import load_file
from .systems import SegmentationModule


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Save ``config.yaml`` in the run folder and send the full resolved config to the logger (W&B)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.logger is not None:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            trainer.logger.log_hyperparams({"config": config})


# Choices of the evaluation run, not of the training run: the command line wins over a checkpoint's hyperparameters.
EVAL_KEYS = (
    "eval_output_stride", "eval_scales", "eval_flip", "sliding_window", "window_stride", "crf", "crf_workers",
    "exported",
)  # fmt: skip


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _logger_configs(trainer: Namespace) -> list[Namespace]:
    """The config's loggers as ``class_path``/``init_args``; ``logger: true`` (or unset) as the logger Lightning
    then creates (its ``configure_logger``)."""
    logger = trainer.get("logger")
    if logger is False:
        return []
    if logger is None or logger is True:
        tensorboard = _TENSORBOARD_AVAILABLE or _TENSORBOARDX_AVAILABLE
        init_args = Namespace(save_dir=trainer.get("default_root_dir") or os.getcwd())
        if tensorboard:
            init_args.version = SLURMEnvironment.job_id()
        class_path = "lightning.pytorch.loggers." + ("TensorBoardLogger" if tensorboard else "CSVLogger")
        return [Namespace(class_path=class_path, init_args=init_args)]
    return list(logger) if isinstance(logger, list) else [logger]


def resolve_last_checkpoint(config: Namespace) -> int | None:
    """``fit --ckpt_path last``: the newest ``last*.ckpt`` where this config's checkpoints go, and its run folder.

    The folder is Lightning's (``ModelCheckpoint``): ``--checkpoint.dirpath``, else the first logger's
    ``<save_dir>/<name>/<version>/checkpoints`` (any version unless the config names one), else
    ``<default_root_dir>/checkpoints``. Lightning itself would look only in the new run's own, new version folder.
    Each logger's ``version`` is pinned to the folder the checkpoint lies in (the first logger's) or to the one saved
    in the checkpoint (:class:`~deeplab_lit.callbacks.Checkpoint`), so logs, checkpoints and metric files continue in
    the same run folder, and a W&B run resumes under its id. With nothing to resume (a SLURM job's first start),
    training starts from scratch, saying so. Returns the resumed global step.
    """
    trainer, dirpath = config.trainer, config.get("checkpoint", Namespace()).get("dirpath")
    loggers = _logger_configs(trainer)
    if dirpath:
        folder = Path(dirpath)
    elif loggers:
        init_args = loggers[0].init_args
        if "version" not in init_args:  # a logger whose run folder cannot be chosen: Lightning's own "last"
            return None
        probe = _import(loggers[0].class_path)(**init_args.as_dict())  # its save_dir and name, as Lightning reads them
        version = init_args.version
        version = "*" if version is None else version if isinstance(version, str) else f"version_{version}"
        save_dir = probe.save_dir or trainer.get("default_root_dir") or os.getcwd()
        folder = Path(glob.escape(str(save_dir))) / glob.escape(str(probe.name)) / version / "checkpoints"
    else:
        folder = Path(glob.escape(str(trainer.get("default_root_dir") or os.getcwd()))) / "checkpoints"
    found = glob.glob(str(folder / "last*.ckpt"))
    if not found:
        rank_zero_info(f"--ckpt_path last: no checkpoint in {folder}; training from scratch")
        config.ckpt_path = None
        return None
    last = max(found, key=os.path.getmtime)
    checkpoint = torch.load(last, map_location="cpu", mmap=True, weights_only=True)
    versions = list(checkpoint.get(LOGGER_VERSIONS) or [])
    if loggers and not dirpath:  # the first logger's run folder is the one the checkpoint lies in
        folder_name = Path(last).parents[1].name
        versions[:1] = [int(folder_name[8:]) if re.fullmatch(r"version_\d+", folder_name) else folder_name]
    pinned = []
    for logger, version in zip(loggers, versions, strict=False):
        if "version" in logger.init_args and version is not None:
            logger.init_args.version = version
            folder = version if isinstance(version, str) else f"version_{version}"
            pinned.append(f"{logger.class_path.rpartition('.')[2]} {folder}")
    if pinned and trainer.get("logger") in (None, True):
        trainer.logger = loggers[0]
    config.ckpt_path = last
    where = f", continuing {', '.join(pinned)}" if pinned else ""
    rank_zero_info(
        f"--ckpt_path last: resuming from {last} (epoch {checkpoint['epoch']}, step {checkpoint['global_step']}){where}"
    )
    return checkpoint["global_step"]


def keep_csv_rows(trainer: Trainer, step: int) -> None:
    """Keep the rows before ``step`` of each CSV logger's ``metrics.csv`` in a resumed run folder. Lightning's CSV
    writer deletes the file it finds; the rows a killed run logged after its checkpoint are logged again."""
    if not trainer.is_global_zero:  # the process that writes them
        return
    for logger in trainer.loggers:
        path = Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None
        if path is None or not path.is_file():
            continue
        with path.open(newline="") as f:
            rows = [row for row in csv.DictReader(f) if row.get("step") and int(row["step"]) < step]
        logger.experiment.metrics[:0] = [{k: v for k, v in row.items() if v != ""} for row in rows]  # deletes the file


class DeepLabCLI(LightningCLI):
    """Links ``num_classes`` and the ignore label from the datamodule to the model; always checkpoints on
    the best ``val/mIoU`` plus ``last.ckpt``, writes metric JSONs and predictions, and with W&B logs media.
    """

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # argument errors raise instead of exiting with status 2, so main reports them as it reports user errors
        return super().init_parser(exit_on_error=False, **kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        self.ckpt_hparams = check_ckpt_path(self.config)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        check_num_classes(self.config, self.ckpt_hparams, self.model, self.datamodule)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.init_args.ignore_index", apply_on="instantiate")
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/mIoU",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(PredictionWriter, "prediction")
        parser.add_lightning_class_args(MetricsWriter, "metrics")
        parser.add_lightning_class_args(WandbMedia, "wandb_media")

    def _parse_ckpt_path(self) -> None:
        """Lightning puts ``--ckpt_path``'s saved hyperparameters over the config; keep the evaluation settings
        (``EVAL_KEYS``) of this run's config and command line, so ``test --ckpt_path X --model.eval_flip true``
        does what it says. ``fit --ckpt_path last`` resumes the run this config last wrote
        (:func:`resolve_last_checkpoint`).
        """
        sub = self.config.get("subcommand")
        if sub == "fit" and self.config.fit.get("ckpt_path") == "last":
            self.resumed_step = resolve_last_checkpoint(self.config.fit)
        init_args = self.config[sub].get("model", {}).get("init_args", {}) if sub else {}
        keep = {k: init_args[k] for k in EVAL_KEYS if k in init_args}
        super()._parse_ckpt_path()
        for key, value in keep.items():
            self.config[sub].model.init_args[key] = value

    def before_fit(self) -> None:
        if getattr(self, "resumed_step", None) is not None:
            keep_csv_rows(self.trainer, self.resumed_step)


LIGHTNING_CKPT_KEYWORDS = ("best", "last", "hpc", "registry")  # --ckpt_path values Lightning resolves itself


def _ckpt_path(config: Namespace) -> str | None:
    sub = config.get("subcommand")
    path = config[sub].get("ckpt_path") if sub else None
    return None if path is None or str(path).split(":")[0] in LIGHTNING_CKPT_KEYWORDS else str(path)


def check_ckpt_path(config: Namespace) -> dict[str, Any]:
    """The hyperparameters saved in ``--ckpt_path`` ({} without one). A file that is missing or not a Lightning
    checkpoint is a ``CheckpointError``; a checkpoint of another class than ``--model`` names is a ``ConfigError``
    (Lightning would silently build the checkpoint's class instead).
    """
    path = _ckpt_path(config)
    if path is None:
        return {}
    ckpt = load_file(path, "--ckpt_path")
    if "state_dict" not in ckpt:
        raise CheckpointError(
            f"--ckpt_path {path} holds network weights, not a Lightning checkpoint (no state_dict); "
            f"start from them with --model.init_args.init_from {path} instead"
        )
    hparams = ckpt.get("hyper_parameters", {})
    model = config[config.subcommand].get("model")
    ours = ((model or {}).get("class_path") or "").rpartition(".")[2]
    theirs = (hparams.get("_class_path") or "").rpartition(".")[2]
    if ours and theirs and ours != theirs:
        raise ConfigError(
            f"--ckpt_path {path} is a {theirs} checkpoint, but the config or --model names {ours}; "
            f"pass --model {theirs} (with a config of that class) or a {ours} checkpoint"
        )
    return hparams


def check_num_classes(
    config: Namespace, hparams: dict[str, Any], model: LightningModule, datamodule: SegmentationDataModule
) -> None:
    """Refuse a ``--ckpt_path`` trained for another class count than the data's (the classifier would not load)."""
    trained = hparams.get("num_classes")
    if trained is not None and trained != model.hparams.num_classes:
        path = _ckpt_path(config)
        raise CheckpointError(
            f"--ckpt_path {path} was trained for {trained} classes, but {type(datamodule).__name__} has "
            f"{model.hparams.num_classes}; use a checkpoint trained on this data, or fine-tune from this one with "
            f"--model.init_args.init_from {path} --model.init_args.reset_classifier true (without --ckpt_path)"
        )


class ChildErrorObserver(subprocess_script._ChildProcessObserver):
    """Lightning's watch over the DDP processes it starts, which kills them all, itself included (exit status 137),
    when one fails. A process that ended with a user error (status 1, its message already on the shared stderr)
    makes this process exit with status 1 too, after the others are stopped."""

    children: list[subprocess.Popen] = []

    def __init__(self, main_pid: int, child_processes: list[subprocess.Popen], sleep_period: int = 5) -> None:
        super().__init__(main_pid, child_processes, sleep_period)
        ChildErrorObserver.children = child_processes

    def _terminate_all(self) -> None:
        if {proc.returncode for proc in self._child_processes} - {None, 0} != {1}:
            super()._terminate_all()
            return
        for proc in self._child_processes:
            proc.send_signal(self._termination_signal)
        os._exit(1)  # from this watching thread: the main process may be blocked in a collective


subprocess_script._ChildProcessObserver = ChildErrorObserver  # what _launch_process_observer starts


def a_child_stopped_with_a_user_error(timeout: float = 10.0) -> bool:
    """Whether a DDP process started here ended with a user error (status 1), waiting up to ``timeout`` seconds for
    them to end: with gloo, this process fails at once ("connection closed by peer") when another one stops."""
    deadline = time.monotonic() + timeout
    for proc in ChildErrorObserver.children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    return any(proc.returncode == 1 for proc in ChildErrorObserver.children)


def main(args: list[str] | None = None, run: bool = True) -> DeepLabCLI:
    """The command line; a user error ends in a one-line ``error: ...`` and exit status 1 (``--debug`` or
    ``DEEPLAB_LIT_DEBUG=1`` show its traceback)."""
    argv = sys.argv[1:] if args is None else list(args)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    if args is None and debug:
        # LightningCLI and DDP's child processes read sys.argv: the switch moves to the environment, which they inherit
        sys.argv[1:] = argv
        os.environ[DEBUG_ENV] = "1"
    try:
        return _run(argv, args is None, debug, run)
    except SystemExit as stop:
        if stop.code == 1:  # a user error, reported: the other processes would only add "connection closed" walls
            for proc in ChildErrorObserver.children:
                proc.kill()
        raise
    except Exception:
        if debug or os.environ.get(DEBUG_ENV, "") not in ("", "0") or not a_child_stopped_with_a_user_error():
            raise
        print("error: stopped because another process stopped with the error above", file=sys.stderr)
        raise SystemExit(1) from None


def _run(argv: list[str], from_sys_argv: bool, debug: bool, run: bool) -> DeepLabCLI:
    with reported(debug):
        if argv[:1] == ["check-data"]:
            from .check_data import main as check_data

            sys.exit(check_data(argv[1:]))
        return DeepLabCLI(
            SegmentationModule,
            SegmentationDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=LoggerSaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,  # the module owns its parameter groups and poly schedule
            args=None if from_sys_argv else argv,
            run=run,
        )
