import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def randomize_bn(module: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so eval-mode comparisons test them too."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def recipe_args(config, root, tmp_path) -> list[str]:
    """CLI arguments that run a dataset recipe on a tiny tree: fp32, no weight download, a 33 px crop, batch 2."""
    return [
        "--config", str(config),
        "--trainer.precision", "32-true",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        "--model.init_args.backbone_weights", "null",
        "--data.init_args.root", str(root),
        "--data.init_args.crop_size", "33",
        "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", "0",
    ]  # fmt: skip
