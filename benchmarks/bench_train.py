"""Training images/s and peak memory of one DeepLab network, bf16 against fp32 in the same run.

Default: DeepLabV3+ (ResNet-101, OS 16, decoder), 513x513 crops, 21 classes, batch 8, SGD with momentum; "fast"
is channels_last plus bfloat16 autocast, the reference is fp32. Timed steps alternate between the two, so noise
hits both alike; images/s come from the median step. Peak memory is measured for one configuration at a time
(``torch.cuda.max_memory_allocated`` after a reset, weights and optimizer state included); on a CPU it is not
reported, as the process's peak RSS cannot be split between the two.

    python benchmarks/bench_train.py [--device cuda] [--generation v3plus] [--backbone resnet101]
        [--output-stride 16] [--size 513] [--batch 8] [--warmup 3] [--iters 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime, timezone

import torch
import torch.nn.functional as F
from bench_nets import (
    IGNORE_INDEX,
    MODES,
    NUM_CLASSES,
    Config,
    autocast,
    device_name,
    parse_step_arguments,
    random_batch,
    run_interleaved,
)
from torch import Tensor

from deeplab_lit.nets import build_net


def make_config(args: argparse.Namespace, mode: str, images: Tensor, device: torch.device) -> Config:
    """A fresh network (same seed, so the same weights) in ``mode``, with its optimizer and inputs."""
    torch.manual_seed(args.seed)
    fmt = torch.channels_last if mode == "fast" else torch.contiguous_format
    kwargs = {"backbone": args.backbone, "output_stride": args.output_stride}
    model = build_net(args.generation, NUM_CLASSES, **kwargs).to(device, memory_format=fmt).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.007, momentum=0.9, weight_decay=1e-4)
    name = f"{args.generation}-{args.backbone}"
    return Config(name, mode, model, optimizer, images.contiguous(memory_format=fmt))


def train_step(config: Config, labels: Tensor, device: torch.device) -> None:
    """Forward, cross-entropy on every output head, backward, SGD step."""
    config.optimizer.zero_grad(set_to_none=True)
    with autocast(config, device):
        out = config.model(config.images)  # {"out": (B, classes, H, W), "aux"?: ...}
        loss = sum(F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX) for logits in out.values())
    loss.backward()
    config.optimizer.step()


def peak_memory(config: Config, labels: Tensor, device: torch.device) -> float:
    """GiB allocated at the peak of one training step (after a warm-up step that creates the optimizer state)."""
    train_step(config, labels, device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    train_step(config, labels, device)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generation", default="v3plus", help="v1, v2, v3 or v3plus")
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--output-stride", type=int, default=16)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = parse_step_arguments(parser, device=device, batch=8, size=513, warmup=3, iters=10)
    device, images, labels = random_batch(args)

    peaks: dict[str, float] = {}
    if device.type == "cuda":
        for mode in MODES:  # one configuration resident at a time
            config = make_config(args, mode, images, device)
            peaks[config.name] = peak_memory(config, labels, device)
            del config
            torch.cuda.empty_cache()
    configs = [make_config(args, mode, images, device) for mode in MODES]
    times = run_interleaved(configs, lambda c: train_step(c, labels, device), args.warmup, args.iters, device)
    ips = {name: args.batch / statistics.median(values) for name, values in times.items()}
    fast, fp32 = (next(c.name for c in configs if c.mode == mode) for mode in ("fast", "fp32"))

    meta = {
        "device": device_name(device),
        "torch": torch.__version__,
        "network": f"{args.generation} {args.backbone} OS {args.output_stride}",
        "batch": args.batch,
        "size": args.size,
        "warmup": args.warmup,
        "iters": args.iters,
        "fast": f"channels_last + {device.type} autocast bfloat16",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(f"{meta['network']}, batch {args.batch}, {args.size}x{args.size}, on {meta['device']}; {meta['date']}")
    print("| configuration | images/s | peak memory (GiB) |\n|---|---:|---:|")
    for name, value in ips.items():
        peak = f"{peaks[name]:.2f}" if name in peaks else "–"
        print(f"| {name} | {value:.2f} | {peak} |")
    peak_ratio = f"{peaks[fast] / peaks[fp32]:.2f}" if peaks else "–"
    print(f"| fast / fp32 | {ips[fast] / ips[fp32]:.2f} | {peak_ratio} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"meta": meta, "times_s": times, "images_per_s": ips, "peak_memory_gib": peaks}
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
