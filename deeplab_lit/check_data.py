"""``python -m deeplab_lit check-data --config CONFIG``: read every sample of every split before training.

The datamodule's ``setup`` already runs the cheap check (layout, split lists, one sample). This is the full scan:
every image and mask is decoded and checked (sizes, label range, palette) in the loader's worker processes, and
every problem is reported with its file, not only the first. Exit status 1 when any sample is bad.

    python -m deeplab_lit check-data --config experiments/configs/voc/deeplabv3_r101-os16_b16-30k_513.yaml
    python -m deeplab_lit check-data --config CONFIG --data.init_args.root /data/VOCdevkit
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from jsonargparse import ArgumentParser
from torch.utils.data import DataLoader, Dataset

from . import data  # noqa: F401  (registers the datamodules for --data NAME)
from .data.datamodule import SegmentationDataModule
from .data.voc import DataError
from .errors import ConfigError


class _Checked(Dataset):
    """Each item: ``(index, error message or "")``, so one bad file does not stop the scan."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, str]:
        try:
            self.dataset[index]
        except DataError as err:
            return index, str(err)
        return index, ""


def scan(datamodule: SegmentationDataModule, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, list]:
    """Decode every sample of each split; returns ``{split: [error, ...]}`` (a layout error counts as one)."""
    report: dict[str, list[str]] = {}
    seen: dict[int, str] = {}
    for split in splits:
        try:
            dataset = datamodule.dataset(split)
        except DataError as err:
            report[split] = [str(err)]
            print(f"{split}: {err}")
            continue
        if id(dataset) in seen:  # e.g. test is val
            report[split] = report[seen[id(dataset)]]
            continue
        seen[id(dataset)] = split
        loader = DataLoader(
            _Checked(dataset), batch_size=None, num_workers=datamodule.num_workers, collate_fn=lambda item: item
        )
        errors = [message for _, message in loader if message]
        report[split] = errors
        print(f"{split}: {len(dataset)} samples, {len(errors)} bad")
        for message in errors:
            print(f"  {message}")
    return report


def datamodule_from_args(argv: list[str]) -> SegmentationDataModule:
    """The ``data`` section of the configs (later ``--config`` files win), with ``--data...`` overrides applied."""
    section: dict = {}
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--config" or arg.startswith("--config="):
            path = arg.split("=", 1)[1] if "=" in arg else next(args)
            if not Path(path).is_file():
                raise ConfigError(f"--config {path}: no such file")
            data_config = (yaml.safe_load(Path(path).read_text()) or {}).get("data") or {}
            section = {
                "class_path": data_config.get("class_path", section.get("class_path")),
                "init_args": {**section.get("init_args", {}), **data_config.get("init_args", {})},
            }
        else:
            rest.append(arg)
    parser = ArgumentParser(prog="python -m deeplab_lit check-data", description=__doc__, exit_on_error=False)
    parser.add_subclass_arguments(SegmentationDataModule, "data", required=True)
    if section.get("class_path"):
        parser.set_defaults(data=section)
    return parser.instantiate(parser.parse_args(rest)).data


def main(argv: list[str] | None = None) -> int:
    datamodule = datamodule_from_args(sys.argv[1:] if argv is None else argv)
    report = scan(datamodule)
    bad = len({message for errors in report.values() for message in errors})  # test may be val
    print("data check passed" if not bad else f"data check failed: {bad} problems")
    return int(bad > 0)
