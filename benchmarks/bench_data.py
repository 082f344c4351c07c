"""Training input pipeline throughput per worker: ours vs torchvision's reference segmentation preset.

    python benchmarks/bench_data.py [--images 12 --repeats 3]

Both sides decode the same files and run decode → random scale 0.5–2.0 → crop → flip → normalize → pad in one
process (one DataLoader worker does exactly this per sample):
  * VOC: 500x375 JPEGs, crop 513;   * Cityscapes: 2048x1024 PNGs, crop 769.
The reference is the recipe of torchvision's ``references/segmentation/presets.py`` (``SegmentationPresetTrain``)
built from v2 ops on PIL input: RandomResize, flip, pad-if-smaller, RandomCrop, to tensor, ToDtype, Normalize.
Rounds alternate (ours, reference, ...) and the median img/s is reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from deeplab_lit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainPreset
from deeplab_lit.data.voc import load_pair, voc_palette


def write_files(folder: Path, n: int, size: tuple[int, int], suffix: str) -> list[tuple[Path, Path]]:
    """Photo-like images (smooth gradients + noise, so JPEG/PNG sizes are realistic) and palette masks."""
    rng = np.random.default_rng(0)
    h, w = size
    pairs = []
    for i in range(n):
        ys, xs = np.mgrid[0:h, 0:w]
        base = np.stack([(xs * (i + 1)) % 256, (ys * 2) % 256, (xs + ys) % 256], -1)
        rgb = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        labels = ((ys // 64 + xs // 64 + i) % 21).astype(np.uint8)
        image, mask = folder / f"{i}{suffix}", folder / f"{i}.png"
        Image.fromarray(rgb).save(image, quality=90) if suffix == ".jpg" else Image.fromarray(rgb).save(image)
        m = Image.fromarray(labels, mode="P")
        m.putpalette([c for rgb_ in voc_palette() for c in rgb_])
        m.save(mask)
        pairs.append((image, mask))
    return pairs


def reference_preset(base_size: int, crop: int) -> v2.Compose:
    """torchvision's reference ``SegmentationPresetTrain`` (v2 backend): the shorter side resized to 0.5–2.0× base."""

    class PadIfSmaller(v2.Transform):
        def __init__(self, size: int) -> None:
            super().__init__()
            self.size = size

        def make_params(self, flat_inputs: list) -> dict:
            h, w = v2.query_size(flat_inputs)
            return {"padding": [0, 0, max(self.size - w, 0), max(self.size - h, 0)]}

        def transform(self, inpt, params):
            fill = 255 if isinstance(inpt, tv_tensors.Mask) else 0
            return v2.functional.pad(inpt, padding=params["padding"], fill=fill)

    return v2.Compose(
        [
            v2.RandomResize(int(0.5 * base_size), int(2.0 * base_size)),
            v2.RandomHorizontalFlip(0.5),
            PadIfSmaller(crop),
            v2.RandomCrop(crop),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            v2.ToPureTensor(),
        ]
    )


def ours(pairs: list[tuple[Path, Path]], crop: int) -> float:
    preset = TrainPreset(crop)
    start = time.perf_counter()
    for image, mask in pairs:
        x, y = preset(*load_pair(image, mask, 21, voc_palette()))
    return len(pairs) / (time.perf_counter() - start)


def reference(pairs: list[tuple[Path, Path]], crop: int, base_size: int) -> float:
    preset = reference_preset(base_size, crop)
    start = time.perf_counter()
    for image, mask in pairs:
        pil = Image.open(image).convert("RGB")
        target = tv_tensors.Mask(torch.from_numpy(np.array(Image.open(mask))))
        x, y = preset(pil, target)
    return len(pairs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one DataLoader worker is one thread
    settings = [("VOC 500x375 JPEG, crop 513", (375, 500), ".jpg", 513), ("Cityscapes 2048x1024 PNG, crop 769",
                (1024, 2048), ".png", 769)]  # fmt: skip
    print("| pipeline (one worker) | ours img/s | reference img/s | ours / reference |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, size, suffix, crop in settings:
            folder = Path(tmp) / suffix[1:]
            folder.mkdir()
            pairs = write_files(folder, args.images, size, suffix)
            a, b = [], []
            for _ in range(args.repeats):
                torch.manual_seed(0)
                a.append(ours(pairs, crop))
                torch.manual_seed(0)
                b.append(reference(pairs, crop, base_size=min(size)))
            ra, rb = statistics.median(a), statistics.median(b)
            print(f"| {name} | {ra:.1f} | {rb:.1f} | {ra / rb:.2f} |")


if __name__ == "__main__":
    main()
