"""``python -m deeplab_lit fit|validate|test|predict``: LightningCLI over every generation and datamodule.

python -m deeplab_lit fit --config experiments/configs/shapes/deeplabv3plus_mobilenetv2-os16_b16-10e_64.yaml
python -m deeplab_lit fit --model DeepLabV3 --data ShapesDataModule --model.image_pooling false
python -m deeplab_lit predict --config CONFIG --ckpt_path BEST.ckpt --data.predict_path images/
python -m deeplab_lit check-data --config CONFIG      (decode every sample of every split; see check_data.py)
"""

from __future__ import annotations

import os
import sys
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from . import data, systems  # noqa: F401  (registers the classes for --model NAME / --data NAME)
from .callbacks import Checkpoint, MetricsWriter, PredictionWriter, WandbMedia
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
        does what it says.
        """
        sub = self.config.get("subcommand")
        init_args = self.config[sub].get("model", {}).get("init_args", {}) if sub else {}
        keep = {k: init_args[k] for k in EVAL_KEYS if k in init_args}
        super()._parse_ckpt_path()
        for key, value in keep.items():
            self.config[sub].model.init_args[key] = value


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
            args=None if args is None else argv,
            run=run,
        )
