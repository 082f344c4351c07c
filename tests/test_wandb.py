"""Real W&B runs, offline: the run folder holds the logged metrics and the full resolved config."""

import json
import struct
from pathlib import Path

import pytest

from deeplab_lit.cli import main
from deeplab_lit.loggers import WandbLogger, wandb_logged_in

wandb = pytest.importorskip("wandb")


@pytest.fixture
def no_account(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    wandb.teardown()  # forget settings an earlier run in this process (e.g. a disabled one) left behind


def test_offline_without_account_online_with_key(no_account, monkeypatch) -> None:
    assert not wandb_logged_in()
    assert WandbLogger(project="p")._offline
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_logged_in()
    assert not WandbLogger(project="p")._offline
    assert WandbLogger(project="p", offline=True)._offline


def test_offline_run_holds_metrics_and_config(no_account, tmp_path) -> None:
    main(
        [
            "fit",
            "--config",
            "experiments/configs/shapes/deeplabv3_resnet18-os16_b16-4e_64.yaml",
            "--config",
            "experiments/configs/_base/logger_wandb.yaml",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
            "--trainer.logger.init_args.group",
            "pooling-ablation",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.max_epochs",
            "1",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--data.init_args.num_train",
            "8",
            "--data.init_args.num_val",
            "4",
            "--data.init_args.image_size",
            "48",
            "--data.init_args.batch_size",
            "4",
            "--data.init_args.num_workers",
            "0",
        ]
    )
    wandb.finish()
    (run_file,) = Path(tmp_path, "wandb").glob("offline-run-*/run-*.wandb")
    records = read_run(run_file)
    history = {key(i): json.loads(i.value_json) for r in records["history"] for i in r.history.item}
    assert 0.0 <= history["val/mIoU"] <= 1.0 and "val/IoU/circle" in history and "train/loss_epoch" in history
    assert (
        history["val/IoU_per_class/_type"] == "table-file" and history["val/IoU_per_class/nrows"] == 4
    )  # background + the three shapes
    assert history["val/confusion_matrix/_type"] == "images/separated" and history["val/confusion_matrix/count"] == 1
    assert history["val/predictions/count"] == 4
    assert set(history["val/predictions/all_masks"][0]) == {"predictions", "ground_truth"}
    assert history["train/images_per_s"] > 0 and history["train/lr"] > 0
    config = {key(i): json.loads(i.value_json) for r in records["config"] for i in r.config.update}
    assert config["config"]["model"]["class_path"] == "deeplab_lit.systems.DeepLabV3"  # the full resolved config
    assert config["config"]["model"]["init_args"]["multi_grid"] == [1, 2]
    assert len(config["git_commit"].split("+")[0]) == 40
    assert records["run"][0].run.run_group == "pooling-ablation"


def key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(path: Path) -> dict[str, list]:
    """The protobuf records of a W&B run file (its LevelDB-style log: 32 KiB blocks of chunked records)."""
    from wandb.proto import wandb_internal_pb2

    buf, block, pos, pending = path.read_bytes(), 32768, 7, b""  # 7-byte file header ":W&B" + magic + version
    records: dict[str, list] = {}
    while pos + 7 <= len(buf):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", buf[pos : pos + 7])
        if kind == 0:  # zero type: preallocated space, no record
            pos += 7 + length
            continue
        if kind in (1, 2):  # FULL or FIRST chunk starts a record
            pending = b""
        pending += buf[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk ends a record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.setdefault(record.WhichOneof("record_type"), []).append(record)
            pending = b""
    return records
