"""Fully connected CRF post-processing (Krähenbühl & Koltun 2011) as used by DeepLab V1 and V2.

The energy is the one of the DeepLab papers: unary -log P(x_i) from the network's softmax, and a Potts pairwise
term ``w1 * exp(-|p_i - p_j|^2 / 2 sigma_alpha^2 - |I_i - I_j|^2 / 2 sigma_beta^2)
+ w2 * exp(-|p_i - p_j|^2 / 2 sigma_gamma^2)``, minimised by mean-field inference in pydensecrf.

:func:`dense_crf` refines one image. :class:`CRFPool` refines many, serially or in worker processes that it keeps
between calls (pydensecrf is single-threaded C++, so processes give real parallelism); :func:`crf_batch` is a
one-shot wrapper over it.

pydensecrf is an optional dependency (``pip install deeplab_lit[crf]``, package ``pydensecrf2``); this module imports
without it and :func:`dense_crf` raises :class:`ImportError` when it is missing.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

try:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax
except ImportError:  # pragma: no cover - exercised only without the optional extra
    dcrf = None
    unary_from_softmax = None

__all__ = ["CRFParams", "V1_CRF", "V2_CRF", "dense_crf", "crf_batch", "CRFPool"]


@dataclass(frozen=True)
class CRFParams:
    """Parameters of the fully connected CRF, named as in the DeepLab papers.

    Attributes:
        w1: weight of the bilateral (appearance) kernel; pydensecrf ``addPairwiseBilateral(compat=...)``.
        sigma_alpha: spatial (xy) standard deviation of the bilateral kernel, in pixels (``sxy``).
        sigma_beta: colour (rgb) standard deviation of the bilateral kernel, in intensity levels (``srgb``).
        w2: weight of the Gaussian (smoothness) kernel; ``addPairwiseGaussian(compat=...)``.
        sigma_gamma: spatial standard deviation of the Gaussian kernel, in pixels (``sxy``).
        iterations: number of mean-field iterations.
    """

    w1: float
    sigma_alpha: float
    sigma_beta: float
    w2: float
    sigma_gamma: float
    iterations: int = 10

    def __post_init__(self) -> None:
        for name in ("w1", "sigma_alpha", "sigma_beta", "w2", "sigma_gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"CRFParams.{name} must be a number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ConfigError(f"CRFParams.{name} must be finite, got {value}")
        for name in ("sigma_alpha", "sigma_beta", "sigma_gamma"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"CRFParams.{name} must be > 0, got {getattr(self, name)}")
        for name in ("w1", "w2"):
            if getattr(self, name) < 0:
                raise ConfigError(f"CRFParams.{name} must be >= 0, got {getattr(self, name)}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, (int, np.integer)):
            raise TypeError(f"CRFParams.iterations must be an int, got {type(self.iterations).__name__}")
        if self.iterations < 1:
            raise ConfigError(f"CRFParams.iterations must be >= 1, got {self.iterations}")


# DeepLab-V1 VGG16 LargeFOV release (bi_w 4, bi_xy_std 121, bi_rgb_std 5, pos_w 3, pos_xy_std 3, 10 iterations):
# w2/sigma_gamma as the paper (arXiv 1412.7062), which does not print its cross-validated w1/sigma_alpha/sigma_beta.
V1_CRF = CRFParams(w1=4.0, sigma_alpha=121.0, sigma_beta=5.0, w2=3.0, sigma_gamma=3.0, iterations=10)

# DeepLab-V2 ResNet-101 release (VOC): bi_w 4, bi_xy_std 67, bi_rgb_std 3, pos_w 3, pos_xy_std 1, 10 iterations.
# The paper text (arXiv 1606.00915) says sigma_gamma = 3; the release's test files use 1 (as the public port that
# reproduces its numbers, kazuto1011/deeplab-pytorch), so the default follows the release.
V2_CRF = CRFParams(w1=4.0, sigma_alpha=67.0, sigma_beta=3.0, w2=3.0, sigma_gamma=1.0, iterations=10)


def _check_inputs(image: np.ndarray, probs: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array of shape (H, W, 3) and dtype uint8, got {type(image).__name__}")
    if not isinstance(probs, np.ndarray):
        hint = " (use tensor.cpu().numpy())" if hasattr(probs, "cpu") else ""
        raise TypeError(f"probs must be a numpy array of shape (C, H, W), got {type(probs).__name__}{hint}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must have dtype uint8 (the un-normalised RGB image), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3) (RGB, channels last), got {image.shape}")
    if probs.ndim != 3:
        raise ValueError(f"probs must be 3-D with shape (C, H, W), got {probs.ndim}-D shape {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(f"probs must be floating-point softmax probabilities, got dtype {probs.dtype}")
    if probs.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"probs spatial size {tuple(probs.shape[1:])} (H, W) does not match image size {tuple(image.shape[:2])}; "
            "upsample the probabilities to the image and crop any padding first"
        )
    if probs.size == 0:
        raise ValueError(f"probs must not be empty, got shape {probs.shape}")
    if not np.isfinite(probs).all():
        raise ValueError("probs contains non-finite values (NaN or inf)")
    lo, hi = float(probs.min()), float(probs.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"probs must be probabilities in [0, 1], got values in [{lo:g}, {hi:g}] (logits?)")


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    """Refine softmax probabilities with the fully connected CRF.

    Args:
        image: (H, W, 3) uint8 RGB image, un-normalised, at the resolution of ``probs``.
        probs: (C, H, W) floating-point class probabilities (softmax output), upsampled to the image with padding
            cropped off.
        params: the CRF parameters, e.g. :data:`V1_CRF` or :data:`V2_CRF`.

    Returns:
        (C, H, W) float32 refined probabilities (mean-field marginals); take ``argmax(0)`` for labels.

    Raises:
        TypeError / ValueError: naming ``image`` or ``probs`` for bad dtypes, shapes, sizes or values.
        ImportError: pydensecrf is not installed.
    """
    if dcrf is None:
        raise ImportError("dense_crf needs pydensecrf: pip install 'deeplab_lit[crf]' (package pydensecrf2)")
    if not isinstance(params, CRFParams):
        raise TypeError(f"params must be a CRFParams, got {type(params).__name__}")
    _check_inputs(image, probs)
    n_labels, height, width = probs.shape
    probs32 = np.ascontiguousarray(probs, dtype=np.float32)
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs32)))
    if params.w2 > 0:
        crf.addPairwiseGaussian(sxy=params.sigma_gamma, compat=params.w2)
    if params.w1 > 0:
        crf.addPairwiseBilateral(
            sxy=params.sigma_alpha, srgb=params.sigma_beta, rgbim=np.ascontiguousarray(image), compat=params.w1
        )
    q = crf.inference(params.iterations)
    return np.ascontiguousarray(np.asarray(q, dtype=np.float32).reshape(n_labels, height, width))


def _crf_job(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    # Looked up at call time so that a worker runs this module's current dense_crf.
    return dense_crf(image, probs, params)


def _default_start_method() -> str:
    # forkserver children do not inherit the parent's threads, locks or CUDA state, unlike fork, and start faster
    # than spawn; it is POSIX-only.
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _describe(index: int, names: Sequence[str] | None) -> str:
    return f"image {index}" + (f" ({names[index]!r})" if names is not None else "")


def _job_error(index: int, names: Sequence[str] | None, err: BaseException) -> RuntimeError:
    return RuntimeError(f"dense CRF failed on {_describe(index, names)}: {type(err).__name__}: {err}")


class CRFPool:
    """Runs :func:`dense_crf` over batches of images, reusing worker processes across calls.

    ``workers=0`` runs in this process; ``workers >= 1`` uses a process pool started on the first call and kept
    until :meth:`close` (or the end of a ``with`` block), so a test loop pays the start-up once. Results come back
    in input order. Any failure raises :class:`RuntimeError` naming the image's index (and name, when ``names``
    is given), with the original error as ``__cause__``:

    - an exception inside :func:`dense_crf` (including input validation, which runs in the worker);
    - a worker process that dies (crash, ``os._exit``, OOM kill): the pool is discarded and restarted on the next
      call; the message names the image(s) the workers were running (at most ``workers`` of them), one of which
      killed it;
    - an image taking longer than ``timeout`` seconds: the workers are terminated, so the call never hangs.

    At most ``workers + 1`` images are in flight at a time: one waits queued, so a worker that finishes starts its
    next image at once instead of waiting for this process to send it (1.72x → 1.85x throughput on 2 cores,
    ``docs/benchmarks.md``), and the images named in an error are the ones running or about to run.

    Args:
        params: CRF parameters.
        workers: number of worker processes; 0 runs serially in this process.
        timeout: seconds one image may take from being sent to a worker (which includes the queued image's wait
            for a free worker, and worker start-up for the first images);
            None waits forever. Ignored when ``workers=0``.
        start_method: multiprocessing start method; default "forkserver" where available, else "spawn".
    """

    def __init__(
        self,
        params: CRFParams,
        workers: int = 0,
        *,
        timeout: float | None = None,
        start_method: str | None = None,
    ) -> None:
        if not isinstance(params, CRFParams):
            raise TypeError(f"params must be a CRFParams, got {type(params).__name__}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"workers must be an int >= 0, got {workers!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        methods = multiprocessing.get_all_start_methods()
        if start_method is not None and start_method not in methods:
            raise ValueError(f"start_method must be one of {methods}, got {start_method!r}")
        self.params = params
        self.workers = workers
        self.timeout = timeout
        self.start_method = start_method or _default_start_method()
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> CRFPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut the worker processes down (idempotent). The pool restarts them if it is called again."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __call__(
        self,
        images: Sequence[np.ndarray],
        probs: Sequence[np.ndarray],
        names: Sequence[str] | None = None,
    ) -> list[np.ndarray]:
        """Refine ``probs[i]`` with ``images[i]`` for every i; see :func:`dense_crf` for the array formats."""
        if len(images) != len(probs):
            raise ValueError(f"images and probs must have the same length, got {len(images)} and {len(probs)}")
        if names is not None and len(names) != len(images):
            raise ValueError(f"names must have one entry per image, got {len(names)} for {len(images)} images")
        if self.workers == 0:
            results = []
            for i, (image, prob) in enumerate(zip(images, probs, strict=True)):
                try:
                    results.append(dense_crf(image, prob, self.params))
                except Exception as err:
                    raise _job_error(i, names, err) from err
            return results
        return self._run_parallel(images, probs, names)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            context = multiprocessing.get_context(self.start_method)
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        return self._executor

    def _discard(self, terminate: bool) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if terminate:
            # A hung job never returns, so its worker has to be stopped from outside.
            for process in list((getattr(executor, "_processes", None) or {}).values()):
                if process.is_alive():
                    process.terminate()
        executor.shutdown(wait=False, cancel_futures=True)

    def _run_parallel(
        self, images: Sequence[np.ndarray], probs: Sequence[np.ndarray], names: Sequence[str] | None
    ) -> list[np.ndarray]:
        results: list[np.ndarray | None] = [None] * len(images)
        in_flight: dict[Future, tuple[int, float]] = {}
        next_index = 0
        while next_index < len(images) or in_flight:
            try:
                executor = self._pool()
                while next_index < len(images) and len(in_flight) < self.workers + 1:
                    future = executor.submit(_crf_job, images[next_index], probs[next_index], self.params)
                    in_flight[future] = (next_index, time.monotonic())
                    next_index += 1
            except BrokenProcessPool as err:
                self._discard(terminate=True)
                running = sorted(i for i, _ in in_flight.values()) or [next_index]
                raise RuntimeError(self._died_message(running, names)) from err
            wait_s = None
            if self.timeout is not None:
                oldest = min(start for _, start in in_flight.values())
                wait_s = max(0.0, oldest + self.timeout - time.monotonic())
            done, _ = wait(in_flight, timeout=wait_s, return_when=FIRST_COMPLETED)
            if not done:
                now = time.monotonic()
                late = sorted(i for i, start in in_flight.values() if now - start >= 0.99 * self.timeout)
                late = late or [min(in_flight.values(), key=lambda item: item[1])[0]]
                self._discard(terminate=True)
                late_text = ", ".join(_describe(i, names) for i in late)
                raise RuntimeError(f"dense CRF timed out after {self.timeout} s on {late_text}; workers terminated")
            for future in sorted(done, key=lambda f: in_flight[f][0]):
                index, _ = in_flight[future]
                try:
                    results[index] = future.result()
                except BrokenProcessPool as err:
                    running = sorted(i for i, _ in in_flight.values())
                    self._discard(terminate=True)
                    raise RuntimeError(self._died_message(running, names)) from err
                except Exception as err:
                    raise _job_error(index, names, err) from err
                del in_flight[future]
        return results  # type: ignore[return-value]

    @staticmethod
    def _died_message(running: list[int], names: Sequence[str] | None) -> str:
        which = ", ".join(_describe(i, names) for i in running)
        return (
            f"a dense CRF worker process died (crash, os._exit or out-of-memory kill) while processing {which}; "
            "the pool will be restarted on the next call"
        )


def crf_batch(
    images: Sequence[np.ndarray],
    probs: Sequence[np.ndarray],
    params: CRFParams,
    workers: int = 0,
    names: Sequence[str] | None = None,
    *,
    timeout: float | None = None,
) -> list[np.ndarray]:
    """One-shot :class:`CRFPool`: refine every ``(images[i], probs[i])`` pair, results in input order.

    ``workers=0`` runs serially in this process; ``workers >= 1`` starts that many processes for this call only
    (use a :class:`CRFPool` to keep them across batches). Failures raise :class:`RuntimeError` naming the image's
    index and, when given, its entry in ``names``.
    """
    with CRFPool(params, workers, timeout=timeout) as pool:
        return pool(images, probs, names)
