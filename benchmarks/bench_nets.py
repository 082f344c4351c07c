"""Our DeepLabV3Net (torchvision's configuration) against torchvision's deeplabv3_resnet50, in one run.

Both networks hold the same weights and see the same inputs. Training steps and inference passes of all
four configurations (ours/torchvision x fp32/fast) are interleaved in one loop per task, so machine noise
hits them alike; the median per-iteration time gives images/s, and the ratios compare the two networks.
"fast" is channels_last plus bfloat16 autocast.

    python benchmarks/bench_nets.py [--device cpu|cuda] [--batch 2] [--size 257] [--warmup 2] [--iters 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.segmentation import deeplabv3_resnet50

from deeplab_lit.nets import DeepLabV3Net, convert_torchvision_deeplabv3, load_checked

NUM_CLASSES = 21
IGNORE_INDEX = 255
NETS = ("ours", "torchvision")
MODES = ("fp32", "fast")


@dataclass
class Config:
    """One network in one mode: its model, optimizer and inputs in the matching memory format."""

    net: str
    mode: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    images: Tensor

    @property
    def name(self) -> str:
        return f"{self.net}-{self.mode}"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def build_models(device: torch.device) -> tuple[nn.Module, nn.Module]:
    """torchvision's deeplabv3_resnet50 and our DeepLabV3Net holding its weights."""
    tv = deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True)
    ours = DeepLabV3Net(
        NUM_CLASSES, backbone="resnet50", output_stride=8, multi_grid=None, head_convs=1, dropout=0.5, aux=True
    )
    load_checked(ours, convert_torchvision_deeplabv3(tv.state_dict()), source="torchvision deeplabv3_resnet50")
    return ours.to(device), tv.to(device)


@torch.inference_mode()
def check_agreement(ours: nn.Module, tv: nn.Module, images: Tensor, tol: float = 1e-3) -> float:
    """Assert the eval-mode outputs ("out" and "aux") agree to ``tol``; return the largest difference."""
    ours.eval()
    tv.eval()
    a, b = ours(images), tv(images)
    diff = max((a[k] - b[k]).abs().max().item() for k in ("out", "aux"))
    assert diff <= tol, f"ours and torchvision disagree by {diff:.3g} (> {tol})"
    return diff


def autocast(config: Config, device: torch.device) -> AbstractContextManager:
    if config.mode == "fast":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_step(config: Config, labels: Tensor, device: torch.device) -> None:
    """Forward, cross-entropy on "out" + 0.5 x on "aux", backward, SGD step."""
    config.optimizer.zero_grad(set_to_none=True)
    with autocast(config, device):
        out = config.model(config.images)
        loss = F.cross_entropy(out["out"], labels, ignore_index=IGNORE_INDEX)
        loss = loss + 0.5 * F.cross_entropy(out["aux"], labels, ignore_index=IGNORE_INDEX)
    loss.backward()
    config.optimizer.step()


def infer_step(config: Config, device: torch.device) -> None:
    """One eval-mode forward pass under inference mode."""
    with torch.inference_mode(), autocast(config, device):
        config.model(config.images)


def timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run_interleaved(
    configs: list[Config], step: Callable[[Config], None], warmup: int, iters: int, device: torch.device
) -> dict[str, list[float]]:
    """Run ``step`` for every config in turn (A, B, C, D, A, B, ...); the timed seconds per config."""
    times: dict[str, list[float]] = {c.name: [] for c in configs}
    for i in range(warmup + iters):
        for config in configs:
            seconds = timed(lambda config=config: step(config), device)
            if i >= warmup:
                times[config.name].append(seconds)
    return times


def make_configs(ours: nn.Module, tv: nn.Module, images: Tensor, train: bool) -> list[Config]:
    """Fresh copies of both networks in both modes (training steps change the weights)."""
    configs = []
    for mode in MODES:
        fmt = torch.channels_last if mode == "fast" else torch.contiguous_format
        for net, base in zip(NETS, (ours, tv), strict=True):
            model = copy.deepcopy(base).to(memory_format=fmt).train(train)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            configs.append(Config(net, mode, model, optimizer, images.contiguous(memory_format=fmt)))
    return configs


def ratios(ips: dict[str, float]) -> dict[str, float]:
    """Throughput ratios: ours/torchvision at equal settings, and ours-fast/torchvision-fp32."""
    out = {f"ours/torchvision {mode}": ips[f"ours-{mode}"] / ips[f"torchvision-{mode}"] for mode in MODES}
    out["ours-fast/torchvision-fp32"] = ips["ours-fast"] / ips["torchvision-fp32"]
    return out


def markdown_table(results: dict[str, dict[str, dict]]) -> str:
    """Rows: images/s of each configuration, then the ratios; one column per task."""
    tasks = list(results)

    def row(label: str, key: str, name: str, fmt: str) -> str:
        return f"| {label} | " + " | ".join(format(results[t][key][name], fmt) for t in tasks) + " |"

    lines = ["| | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    lines += [row(f"{n} (images/s)", "images_per_s", n, ".2f") for n in (f"{a}-{m}" for m in MODES for a in NETS)]
    lines += [row(f"{n} (ratio)", "ratios", n, ".2f") for n in results[tasks[0]]["ratios"]]
    return "\n".join(lines)


def parse_step_arguments(
    parser: argparse.ArgumentParser, *, device: str, batch: int, size: int, warmup: int, iters: int
) -> argparse.Namespace:
    """Add the arguments every step benchmark takes (device, batch, size, warm-up, timed steps, seed, JSON), parse."""
    parser.add_argument("--device", default=device, help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=batch, help="images per step (at least 2)")
    parser.add_argument("--size", type=int, default=size, help="square input side in pixels")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed iterations per configuration")
    parser.add_argument("--iters", type=int, default=iters, help="timed iterations per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.batch < 2:
        parser.error("--batch must be at least 2: training batch norm after image pooling needs 2 values a channel")
    return args


def random_batch(args: argparse.Namespace) -> tuple[torch.device, Tensor, Tensor]:
    """The device, seeded random images (B, 3, size, size) and labels (B, size, size) on it."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (args.batch, args.size, args.size), device=device)
    return device, images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = parse_step_arguments(parser, device="cpu", batch=2, size=257, warmup=2, iters=5)
    device, images, labels = random_batch(args)
    ours, tv = build_models(device)
    max_diff = check_agreement(ours, tv, images)

    tasks: dict[str, tuple[bool, Callable[[Config], None]]] = {
        "train step": (True, lambda c: train_step(c, labels, device)),
        "inference": (False, lambda c: infer_step(c, device)),
    }
    results: dict[str, dict[str, dict]] = {}
    for task, (train, step) in tasks.items():
        configs = make_configs(ours, tv, images, train)
        times = run_interleaved(configs, step, args.warmup, args.iters, device)
        seconds = {name: statistics.median(values) for name, values in times.items()}
        ips = {name: args.batch / s for name, s in seconds.items()}
        results[task] = {"times_s": times, "median_s": seconds, "images_per_s": ips, "ratios": ratios(ips)}
        del configs

    meta = {
        "device": device_name(device),
        "device_type": device.type,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "batch": args.batch,
        "size": args.size,
        "warmup": args.warmup,
        "iters": args.iters,
        "fast": f"channels_last + {device.type} autocast bfloat16",
        "max_eval_diff": max_diff,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(f"device: {meta['device']} ({meta['cpu_count']} CPUs, {meta['torch_threads']} torch threads)")
    print(f"torch {meta['torch']}, torchvision {meta['torchvision']}; {meta['date']}")
    print(f"batch {args.batch}, {args.size}x{args.size}, {args.warmup} warm-up + {args.iters} timed iterations")
    print(f"eval outputs agree: max |ours - torchvision| = {max_diff:.3g}\n")
    print(markdown_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
