"""Cost of each test-time stage relative to one single-scale forward at output stride 16.

DeepLabV3PlusNet (ResNet-101, random weights, eval mode, batch 1, ``torch.inference_mode``) on a 513x513 image at
OS 16 and OS 8: single scale, flip, multi-scale (V3's six scales 0.5-1.75), multi-scale + flip; and on a 1024x2048
image, the whole image against sliding windows (513, stride 342). Each setting is timed ``--repeats`` times after a
warm-up forward and the fastest run is kept.

Peak memory of MS + flip with sliding windows on the large image, for the scales (1.0,), (1.75,) and all six: on
CUDA ``torch.cuda.max_memory_allocated``, on CPU the growth of ``ru_maxrss`` in a fresh process per setting (after a
warm-up window, so it measures what the pipeline adds on top of one window's forward). Averaging into one running
sum, six scales should need about what their largest scale needs alone, not six times as much.

    python benchmarks/bench_tta.py [--quick] [--backbone resnet101] [--size 513] [--big 1024 2048]
        [--window 513] [--stride 342] [--repeats 2] [--threads N] [--classes 21] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch

from deeplab_lit.inference import TTA, V3_SCALES
from deeplab_lit.nets import DeepLabV3PlusNet

FULL = {"size": 513, "big": [1024, 2048], "window": 513, "stride": 342, "repeats": 2, "threads": None}
QUICK = {"size": 97, "big": [129, 257], "window": 97, "stride": 65, "repeats": 1, "threads": 1}


def build(args: argparse.Namespace) -> DeepLabV3PlusNet:
    torch.manual_seed(0)
    return DeepLabV3PlusNet(args.classes, backbone=args.backbone).eval().to(args.device)


def seconds(fn, repeats: int, device: str) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def memory_mb(args: argparse.Namespace, scales: tuple[float, ...]) -> tuple[float, float]:
    """(baseline, peak growth) in MB of MS + flip with sliding windows on the large image."""
    net, x = build(args), torch.randn(1, 3, *args.big, device=args.device)
    net(x[..., : args.window, : args.window])  # warm-up: one window's forward
    tta = TTA(scales, flip=True, window=args.window, stride=args.stride)
    if args.device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        tta(net, x, args.big)
        return base / 2**20, (torch.cuda.max_memory_allocated() - base) / 2**20
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tta(net, x, args.big)
    return base / 2**10, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**10


def memory_in_child(args: argparse.Namespace, scales: tuple[float, ...]) -> tuple[float, float]:
    if args.device == "cuda":
        torch.cuda.empty_cache()
        return memory_mb(args, scales)
    command = [sys.executable, __file__, "--memory-child", ",".join(map(str, scales)), "--backbone", args.backbone]
    command += ["--big", *map(str, args.big), "--window", str(args.window), "--stride", str(args.stride)]
    command += ["--classes", str(args.classes), "--device", args.device, "--threads", str(torch.get_num_threads())]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return tuple(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"small sizes: {QUICK}")
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--size", type=int, help=f"square image side (default {FULL['size']})")
    parser.add_argument("--big", type=int, nargs=2, help=f"large image H W (default {FULL['big']})")
    parser.add_argument("--window", type=int, help=f"sliding window (default {FULL['window']})")
    parser.add_argument("--stride", type=int, help=f"sliding window stride (default {FULL['stride']})")
    parser.add_argument("--repeats", type=int, help=f"timed runs per setting (default {FULL['repeats']})")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's; 1 with --quick)")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_mb(args, tuple(float(s) for s in args.memory_child.split(",")))))
        return

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(
        f"DeepLabV3PlusNet({args.classes}, backbone={args.backbone!r}), batch 1, {args.device} ({device_name}), "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, best of {args.repeats}"
    )
    net = build(args)
    small = torch.randn(1, 3, args.size, args.size, device=args.device)
    big = torch.randn(1, 3, *args.big, device=args.device)
    rows = []
    with torch.inference_mode():
        for output_stride in (16, 8):
            net.set_output_stride(output_stride)
            net(small)  # warm-up
            for name, tta in [
                ("single scale", TTA()),
                ("flip", TTA(flip=True)),
                ("MS (6 scales)", TTA(V3_SCALES)),
                ("MS + flip", TTA(V3_SCALES, flip=True)),
            ]:
                passes = len(tta.scales) * (2 if tta.flip else 1)
                secs = seconds(lambda tta=tta: tta(net, small, small.shape[-2:]), args.repeats, args.device)
                rows.append((name, output_stride, small.shape[-2:], passes, secs))
        net.set_output_stride(16)
        for name, tta in [
            ("whole image", TTA()),
            (f"sliding window {args.window}/{args.stride}", TTA(window=args.window, stride=args.stride)),
        ]:
            secs = seconds(lambda tta=tta: tta(net, big, big.shape[-2:]), args.repeats, args.device)
            rows.append((name, 16, big.shape[-2:], 1, secs))
    unit = rows[0][-1]
    print(f"\n{'setting':<28}{'OS':>4}{'image':>12}{'passes':>8}{'seconds':>10}{'x single OS16':>15}")
    for name, output_stride, (h, w), passes, secs in rows:
        print(f"{name:<28}{output_stride:>4}{f'{h}x{w}':>12}{passes:>8}{secs:>10.3f}{secs / unit:>15.2f}")

    h, w = args.big
    per_pass = args.classes * h * w * 4 / 2**20
    print(f"\nPeak memory, MS + flip, sliding window {args.window}/{args.stride} on {h}x{w}, OS 16 (MB)")
    print(f"one (1, {args.classes}, {h}, {w}) float32 probability map: {per_pass:.1f} MB")
    print(f"{'scales':<40}{'passes':>8}{'baseline':>10}{'growth':>10}{'stacking would add':>20}")
    for scales in [(1.0,), (max(V3_SCALES),), V3_SCALES]:
        base, growth = memory_in_child(args, scales)
        stacked = 2 * len(scales) * per_pass
        print(f"{str(scales):<40}{2 * len(scales):>8}{base:>10.0f}{growth:>10.0f}{stacked:>20.0f}")


if __name__ == "__main__":
    main()
