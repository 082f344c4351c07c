"""Lightning overhead: one training epoch through the Trainer vs the same network and data in a plain loop.

    python benchmarks/bench_lightning.py [--images 32 --size 129 --batch 4 --repeats 3]

Both sides train ``DeepLabV3`` (ResNet-50, torchvision's configuration) on the same Shapes images with the same
SGD + poly schedule; epochs alternate (Trainer, plain, Trainer, ...) and the median epoch time is compared.
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F

from deeplab_lit.data import ShapesDataModule
from deeplab_lit.systems import DeepLabV3

KNOBS = {"backbone": "resnet50", "output_stride": 8, "multi_grid": None, "head_convs": 1, "dropout": 0.5}


def lightning_epoch(data: ShapesDataModule) -> float:
    model = DeepLabV3(num_classes=data.num_classes, **KNOBS)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(model, data)
    return time.perf_counter() - start


def plain_epoch(data: ShapesDataModule) -> float:
    model = DeepLabV3(num_classes=data.num_classes, **KNOBS)  # same network, parameter groups and schedule
    loader = data.train_dataloader()
    start = time.perf_counter()
    groups = model.param_groups()
    optimizer = torch.optim.SGD(groups, lr=0.007, momentum=0.9, weight_decay=1e-4)
    for group in optimizer.param_groups:
        group["lr"] *= group["lr_mult"]
    total = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (1 - min(s, total) / total) ** 0.9)
    model.train()
    for x, y in loader:
        loss = F.cross_entropy(model(x)["out"], y, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=129)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = ShapesDataModule(num_train=args.images, image_size=args.size, batch_size=args.batch, num_workers=0)
    lightning_epoch(data), plain_epoch(data)  # warm-up: caches the images, first-call allocations
    times: dict[str, list[float]] = {"trainer": [], "plain": []}
    for _ in range(args.repeats):
        times["trainer"].append(lightning_epoch(data))
        times["plain"].append(plain_epoch(data))
    trainer, plain = statistics.median(times["trainer"]), statistics.median(times["plain"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images {args.size}px, "
        f"batch {args.batch}, {args.repeats} alternating repeats"
    )
    print("| | epoch (s, median) |\n|---|---:|")
    print(f"| Trainer | {trainer:.2f} |\n| plain loop | {plain:.2f} |")
    print(f"| throughput ratio Trainer/plain | {plain / trainer:.3f} |")


if __name__ == "__main__":
    main()
