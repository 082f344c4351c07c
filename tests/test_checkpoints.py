"""Checkpoints survive an interrupted save: ``last.ckpt`` is replaced atomically, never left half-written."""

import fsspec.implementations.local as local_fs
import lightning as L
import pytest
import torch

from deeplab_lit.callbacks import Checkpoint
from deeplab_lit.data import ShapesDataModule
from deeplab_lit.systems import DeepLabV3


def test_an_interrupted_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch) -> None:
    model = DeepLabV3(num_classes=7, backbone="resnet18", multi_grid=(1, 2), aspp_channels=16)
    data = ShapesDataModule(num_train=4, num_val=2, image_size=32, batch_size=2, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, data)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    before = path.read_bytes()

    real_write = local_fs.LocalFileOpener.write

    def dies_half_way(self, data):  # the process is killed after writing half the bytes
        real_write(self, data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(local_fs.LocalFileOpener, "write", dies_half_way)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # the next save would hold different weights
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(path)
    monkeypatch.undo()

    assert path.read_bytes() == before  # the old file is untouched, no partial file in its place
    restored = DeepLabV3.load_from_checkpoint(path)
    assert restored.hparams.num_classes == 7


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
