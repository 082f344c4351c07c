"""The Lightning layer: loss, optimisation recipe, BN freezing, output-stride switch, checkpoints, fine-tuning."""

import math
import re

import lightning as L
import pytest
import torch

from deeplab_lit.callbacks import Checkpoint
from deeplab_lit.data import ShapesDataModule
from deeplab_lit.systems import DeepLabV1, DeepLabV2, DeepLabV3, DeepLabV3Plus
from deeplab_lit.systems.segmentation import hard_pixel_loss

SMALL_V3 = {"backbone": "resnet18", "multi_grid": (1, 2), "aspp_channels": 16}


def tiny_data(**kwargs) -> ShapesDataModule:
    defaults = {"num_train": 8, "num_val": 4, "num_test": 4, "image_size": 48, "batch_size": 4, "num_workers": 0}
    return ShapesDataModule(**{**defaults, **kwargs})


def trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        "max_epochs": 1,
    }
    return L.Trainer(**{**defaults, **kwargs})


def test_hard_pixel_mining_keeps_the_hardest_labelled_pixels() -> None:
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0] = torch.tensor([4.0, 2.0, 0.0, -9.0])
    target = torch.tensor([[[0, 0, 0, 255]]])
    per_pixel = torch.nn.functional.cross_entropy(logits, target.clamp(max=1), reduction="none")[0, 0, :3]
    assert hard_pixel_loss(logits, target, 255, 1.0) == pytest.approx(per_pixel.mean().item())
    assert hard_pixel_loss(logits, target, 255, 0.34) == pytest.approx(per_pixel.topk(2).values.mean().item())
    assert hard_pixel_loss(logits, target, 255, 0.01) == pytest.approx(per_pixel.max().item())


def test_param_groups_follow_the_paper_recipe(tmp_path) -> None:
    model = DeepLabV3(num_classes=7, **SMALL_V3)
    t = trainer(tmp_path, max_steps=1)
    t.fit(model, tiny_data())
    opt = t.optimizers[0]
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    backbone = {id(p) for p in model.net.backbone.parameters()}
    for group in opt.param_groups:
        params = group["params"]
        in_backbone = {id(p) in backbone for p in params}
        assert len(in_backbone) == 1
        expected = 1.0 if in_backbone.pop() else 10.0
        assert group["lr_mult"] == expected
        assert all(p.ndim > 1 for p in params) == (group["weight_decay"] > 0)  # no decay on BN/bias
    n_grouped = sum(len(g["params"]) for g in opt.param_groups)
    assert n_grouped == sum(1 for p in model.parameters() if p.requires_grad)


def test_poly_schedule_is_stepped_every_iteration(tmp_path) -> None:
    model = DeepLabV3(num_classes=7, lr=0.01, **SMALL_V3)
    t = trainer(tmp_path, max_epochs=3, limit_val_batches=0)
    t.fit(model, tiny_data())  # 2 steps per epoch -> 6 steps
    scheduler = t.lr_scheduler_configs[0]
    assert scheduler.interval == "step"
    assert t.global_step == 6
    backbone_group = next(g for g in t.optimizers[0].param_groups if g["lr_mult"] == 1.0)
    assert backbone_group["lr"] == pytest.approx(0.01 * (1 - 6 / 6) ** 0.9)
    scheduler.scheduler.last_epoch = 0  # check the law itself at step 3 of 6
    assert scheduler.scheduler.lr_lambdas[0](3) == pytest.approx(0.5**0.9)


def test_any_torch_optimizer_by_config(tmp_path) -> None:
    model = DeepLabV3(num_classes=7, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3), **SMALL_V3)
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    t.fit(model, tiny_data())
    opt = t.optimizers[0]
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["initial_lr"] for g in opt.param_groups} == {1e-3, 1e-2}


def test_frozen_bn_keeps_statistics_and_weights(tmp_path) -> None:
    model = DeepLabV3(num_classes=7, freeze_bn=True, **SMALL_V3)
    bn = model.net.backbone.bn1
    before = (bn.running_mean.clone(), bn.weight.clone())
    trainer(tmp_path, max_steps=2, limit_val_batches=1).fit(model, tiny_data())
    assert not bn.training and not bn.weight.requires_grad
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.weight, before[1])
    assert model.net.aspp.convs[0][0].weight.requires_grad


def test_eval_output_stride_switches_for_evaluation_only(tmp_path) -> None:
    model = DeepLabV3(num_classes=7, eval_output_stride=8, **SMALL_V3)
    seen = []
    original = model.validation_step

    def spy(batch, batch_idx):
        seen.append(model.net.output_stride)
        return original(batch, batch_idx)

    model.validation_step = spy
    trainer(tmp_path, max_steps=1).fit(model, tiny_data())
    assert seen and set(seen) == {8}
    assert model.net.output_stride == 16  # back to the training stride
    with pytest.raises(ValueError, match="cannot give output stride 12"):
        DeepLabV3(num_classes=7, eval_output_stride=12, **SMALL_V3)


def test_aux_and_msc_losses_are_added(tmp_path) -> None:
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    plain = DeepLabV2(num_classes=3, backbone="resnet18", msc_scales=None)
    msc = DeepLabV2(num_classes=3, backbone="resnet18", msc_scales=(0.5,))
    msc.load_state_dict(plain.state_dict())
    for m in (plain, msc):
        m.train()
        m.log = lambda *a, **k: None
    torch.manual_seed(0)
    loss_plain = plain.shared_step((x, y), "train", 0)
    out = msc(x)
    expected = sum(hard_pixel_loss(o, y, 255, 1.0) for o in [out["out"], *out["scales"]])
    assert msc.shared_step((x, y), "train", 0).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss_plain.item() != pytest.approx(expected.item())


class NaNBatch(L.Callback):
    """Turns the training batch of global step ``step`` into NaNs on the processes ``ranks``: a diverging loss."""

    def __init__(self, step: int, ranks: tuple[int, ...] = (0,)) -> None:
        self.step, self.ranks = step, ranks

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step and trainer.global_rank in self.ranks:
            batch[0].fill_(math.nan)


@pytest.mark.parametrize("step", [1, 3])  # before and after the first checkpoint (end of epoch 0, step 2)
def test_non_finite_loss_stops_naming_the_newest_checkpoint_or_none(tmp_path, step) -> None:
    checkpoint = Checkpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    t = trainer(tmp_path, max_epochs=2, limit_val_batches=0, enable_checkpointing=True)
    t.callbacks += [checkpoint, NaNBatch(step)]
    saved = f"the newest checkpoint is {tmp_path / 'last.ckpt'}" if step > 2 else "no checkpoint was saved yet"
    message = f"non-finite loss (nan) at global step {step}, epoch {step // 2}, batch {step % 2}; {saved}"
    with pytest.raises(FloatingPointError, match=re.escape(message)):
        t.fit(DeepLabV3(num_classes=7, **SMALL_V3), tiny_data())  # 8 images, batch 4: 2 steps per epoch


@pytest.mark.parametrize(
    ("precision", "channels_last"), [("bf16-mixed", True), ("32-true", True), ("bf16-mixed", False)]
)
def test_bf16_and_channels_last_train(tmp_path, precision, channels_last) -> None:
    model = DeepLabV3Plus(num_classes=7, backbone="mobilenet_v2", channels_last=channels_last)
    stem = model.net.backbone.features[0][0].weight  # (32, 3, 3, 3)
    assert stem.is_contiguous(memory_format=torch.channels_last) == channels_last
    before = model.net.classifier.weight.detach().clone()
    t = trainer(tmp_path, max_steps=2, limit_val_batches=1, precision=precision)
    t.fit(model, tiny_data())
    assert not torch.equal(before, model.net.classifier.weight)
    assert torch.isfinite(t.callback_metrics["val/loss"])


def test_load_from_checkpoint_outside_the_cli(tmp_path) -> None:
    model = DeepLabV3(num_classes=7, image_pooling=False, **SMALL_V3)
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    t.fit(model, tiny_data())
    t.save_checkpoint(tmp_path / "m.ckpt")
    loaded = DeepLabV3.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.hparams.num_classes == 7 and loaded.net.aspp.pooling is None
    x = torch.randn(1, 3, 32, 32)
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)["out"], loaded(x)["out"])


def test_class_count_mismatch_is_an_error_unless_reset(tmp_path) -> None:
    source = DeepLabV3(num_classes=21, aux=True, **SMALL_V3)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "voc.ckpt")
    with pytest.raises(ValueError, match=r"voc.ckpt was trained for 21 classes, this model has 7; .*reset_classifier"):
        DeepLabV3(num_classes=7, aux=True, init_from=str(tmp_path / "voc.ckpt"), **SMALL_V3)
    tuned = DeepLabV3(num_classes=7, aux=True, init_from=str(tmp_path / "voc.ckpt"), reset_classifier=True, **SMALL_V3)
    assert tuned.net.classifier.out_channels == 7
    src, own = source.net.state_dict(), tuned.net.state_dict()
    assert torch.equal(own["aspp.project.0.weight"], src["aspp.project.0.weight"])
    assert torch.equal(own["backbone.layer4.1.conv2.weight"], src["backbone.layer4.1.conv2.weight"])


def test_every_generation_builds_with_paper_defaults() -> None:
    assert DeepLabV1(num_classes=21).hparams.lr == 1e-3
    v2 = DeepLabV2(num_classes=21)
    assert v2.msc_scales == (0.75, 0.5) and v2.net.aspp.rates == (6, 12, 18, 24)
    v3 = DeepLabV3(num_classes=21)
    assert v3.net.output_stride == 16 and v3.hparams.lr == 0.007
    assert DeepLabV3Plus(num_classes=21, backbone="resnet50").net.decoder is not None
