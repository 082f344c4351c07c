"""``last.ckpt`` is the last epoch, whatever the monitored metric does (its atomic save: tests/test_resume.py)."""

import lightning as L
import torch

from deeplab_lit.callbacks import Checkpoint
from deeplab_lit.data import ShapesDataModule
from deeplab_lit.systems import DeepLabV3


def test_last_checkpoint_follows_every_epoch_when_the_monitored_metric_stops_improving(tmp_path) -> None:
    # "step" with mode "min" is best at the first save and never again; Lightning's own ModelCheckpoint would leave
    # last.ckpt at that first epoch, and resuming from it would repeat the others.
    model = DeepLabV3(num_classes=7, backbone="resnet18", multi_grid=(1, 2), aspp_channels=16)
    data = ShapesDataModule(num_train=4, num_val=2, image_size=32, batch_size=2, num_workers=0)
    checkpoint = Checkpoint(dirpath=tmp_path, monitor="step", mode="min", save_last=True)
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, callbacks=[checkpoint])  # fmt: skip
    trainer.fit(model, data)
    assert torch.load(checkpoint.best_model_path, weights_only=False)["global_step"] == 2
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == trainer.global_step == 6
