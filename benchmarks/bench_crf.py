"""Dense CRF throughput: serial (workers=0) against a CRFPool of worker processes.

Inputs are VOC-sized: 513x513 images, 21 classes, 10 mean-field iterations with the DeepLab-V2 parameters. The
probabilities are a blurred random label map pushed through a softmax (blobs with soft edges, like a network's
output), and the image paints each blob in its own colour with noise. The pool is started and warmed up before
timing, as a test loop that reuses it would see; the parallel results are checked to equal the serial ones.

    python benchmarks/bench_crf.py [--images 8] [--workers 2] [--size 513] [--classes 21] [--iterations 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import numpy as np
from scipy import ndimage

from deeplab_lit.inference import V2_CRF, CRFPool


def synthetic_case(rng: np.random.Generator, size: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A (size, size, 3) uint8 image and (classes, size, size) float32 softmax probabilities that roughly agree."""
    cells = max(2, size // 32)
    coarse = rng.integers(0, classes, (cells, cells))
    labels = np.kron(coarse, np.ones((size // cells + 1, size // cells + 1), np.int64))[:size, :size]
    one_hot = np.stack([(labels == c).astype(np.float32) for c in range(classes)])
    blurred = ndimage.gaussian_filter(one_hot, sigma=(0, 6, 6)) + rng.normal(0, 0.15, one_hot.shape)
    logits = 4.0 * blurred
    probs = np.exp(logits - logits.max(0, keepdims=True))
    probs /= probs.sum(0, keepdims=True)
    palette = rng.integers(0, 256, (classes, 3))
    image = palette[labels] + rng.normal(0, 12, (size, size, 3))
    image = ndimage.gaussian_filter(image, sigma=(1, 1, 0))
    return np.clip(image, 0, 255).astype(np.uint8), probs.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()

    params = dataclasses.replace(V2_CRF, iterations=args.iterations)
    rng = np.random.default_rng(0)
    cases = [synthetic_case(rng, args.size, args.classes) for _ in range(args.images)]
    images = [image for image, _ in cases]
    probs = [prob for _, prob in cases]
    print(
        f"{args.images} images {args.size}x{args.size}, {args.classes} classes, {args.iterations} iterations; "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )

    with CRFPool(params, workers=0) as serial_pool:
        serial_pool(images[:1], probs[:1])  # warm-up
        start = time.perf_counter()
        serial = serial_pool(images, probs)
        serial_s = time.perf_counter() - start

    with CRFPool(params, workers=args.workers) as pool:
        start = time.perf_counter()
        pool(images[: args.workers], probs[: args.workers])  # starts the worker processes
        startup_s = time.perf_counter() - start
        start = time.perf_counter()
        parallel = pool(images, probs)
        parallel_s = time.perf_counter() - start

    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)
    serial_rate = args.images / serial_s
    parallel_rate = args.images / parallel_s
    print(f"serial (workers=0):          {serial_s / args.images:.3f} s/img  {serial_rate:.2f} img/s")
    print(
        f"parallel (workers={args.workers}):        {parallel_s / args.images:.3f} s/img  {parallel_rate:.2f} img/s"
        f"  (pool start + first {args.workers} images: {startup_s:.2f} s)"
    )
    print(f"throughput ratio parallel/serial: {parallel_rate / serial_rate:.2f}x; results identical")


if __name__ == "__main__":
    main()
