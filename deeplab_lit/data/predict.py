"""Images to segment with ``predict``: a file or a folder tree, each output named after its input's path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import DataError
from .transforms import EvalPreset
from .voc import IMAGE_SUFFIXES, read_image


def list_images(path: str | Path) -> list[Path]:
    """An image file, or the image files of a folder (sorted, recursive)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"predict path {path} (--data.init_args.predict_path) is neither an image file nor a folder")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path} (--data.init_args.predict_path)")
    return files


def output_names(path: str | Path, files: Sequence[Path]) -> list[str]:
    """Each input's output name: its path under the predict folder without suffix (``a/x`` for ``a/x.jpg``), or
    the stem of a single file. Two inputs with one name (``x.jpg`` and ``x.png``) raise ``DataError`` naming both:
    one's outputs would overwrite the other's.
    """
    path = Path(path)
    names: dict[str, Path] = {}
    for file in files:
        name = file.stem if file == path else file.relative_to(path).with_suffix("").as_posix()
        if name in names:
            raise DataError(
                f"{names[name]} and {file} would both be written as {name}.png; rename one or predict them separately"
            )
        names[name] = file
    return list(names)


class PredictImages(Dataset):
    """Images to segment, read as training reads them. An unreadable file yields an item with ``error`` set, so the
    run goes on; ``name`` is where its outputs go under the output folder (see :func:`output_names`).
    """

    def __init__(self, path: str | Path, mean: Sequence[float], std: Sequence[float]) -> None:
        self.files = list_images(path)
        self.names = output_names(path, self.files)
        self.transform = EvalPreset(mean, std)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, name = self.files[index], self.names[index]
        try:
            raw = torch.from_numpy(read_image(path)).permute(2, 0, 1)  # (3, H, W) uint8
        except DataError as err:
            return {
                "path": str(path),
                "name": name,
                "error": str(err),
                "image": torch.zeros(3, 1, 1),
                "raw": torch.zeros(3, 1, 1, dtype=torch.uint8),
            }
        image = self.transform(tv_tensors.Image(raw))
        return {"path": str(path), "name": name, "error": "", "image": image, "raw": raw}
