"""``python -m deeplab_lit fit|validate|test|predict``: LightningCLI over every generation and datamodule.

python -m deeplab_lit fit --config experiments/configs/shapes/deeplabv3plus_mobilenetv2-os16_b16-10e_64.yaml
python -m deeplab_lit fit --model DeepLabV3 --data ShapesDataModule --model.image_pooling false
python -m deeplab_lit predict --config CONFIG --ckpt_path BEST.ckpt --data.predict_path images/
python -m deeplab_lit check-data --config CONFIG      (decode every sample of every split; see check_data.py)
"""

from __future__ import annotations

import sys

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from . import data, systems  # noqa: F401  (registers the classes for --model NAME / --data NAME)
from .callbacks import Checkpoint, MetricsWriter, PredictionWriter, WandbMedia
from .data.datamodule import SegmentationDataModule
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


def main(args: list[str] | None = None, run: bool = True) -> DeepLabCLI:
    argv = sys.argv[1:] if args is None else list(args)
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
        args=args,
        run=run,
    )
