import dataclasses
import multiprocessing
import os
import time

import numpy as np
import pytest

pytest.importorskip("pydensecrf")

import pydensecrf.densecrf as dcrf  # noqa: E402
from pydensecrf.utils import unary_from_softmax  # noqa: E402

from deeplab_lit.inference import V1_CRF, V2_CRF, CRFParams, CRFPool, crf_batch, dense_crf  # noqa: E402
from deeplab_lit.inference import crf as crf_module  # noqa: E402

FAST = dataclasses.replace(V2_CRF, iterations=5)
needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="the injected worker function needs fork"
)


def random_case(rng: np.random.Generator, height: int, width: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    logits = rng.normal(size=(classes, height, width))
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    return image, probs.astype(np.float32)


def two_colour_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """40x40 image, red left half and blue right half; noisy probabilities whose edge is 4 pixels too far right."""
    rng = np.random.default_rng(0)
    height = width = 40
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :20] = (200, 40, 40)
    image[:, 20:] = (40, 40, 200)
    truth = np.zeros((height, width), np.int64)
    truth[:, 20:] = 1
    shifted = truth.copy()
    shifted[:, 20:24] = 0  # a band of wrong labels next to the colour edge
    probs = np.full((3, height, width), 0.2)
    np.put_along_axis(probs, shifted[None], 0.6, axis=0)
    probs += rng.uniform(0, 0.5, probs.shape)  # flips some pixels away from the band too
    probs /= probs.sum(0, keepdims=True)
    return image, probs.astype(np.float32), truth


def test_crf_snaps_labels_to_the_colour_edge() -> None:
    image, probs, truth = two_colour_case()
    errors_before = int((probs.argmax(0) != truth).sum())
    assert errors_before > 4 * 40  # the whole band plus some noise
    for params in (V1_CRF, V2_CRF):
        refined = dense_crf(image, probs, params)
        assert refined.shape == probs.shape and refined.dtype == np.float32
        np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-5)
        errors_after = int((refined.argmax(0) != truth).sum())
        assert errors_after < errors_before
        assert errors_after <= 2
    # Without the bilateral (colour) term the smoothness kernel removes the noise but keeps the shifted band.
    smooth_only = dataclasses.replace(V2_CRF, w1=0.0)
    assert int((dense_crf(image, probs, smooth_only).argmax(0) != truth).sum()) >= 4 * 40


def test_dense_crf_equals_a_direct_pydensecrf_call() -> None:
    rng = np.random.default_rng(1)
    image, probs = random_case(rng, 23, 31, 4)
    params = CRFParams(w1=5.0, sigma_alpha=50.0, sigma_beta=4.0, w2=2.0, sigma_gamma=2.0, iterations=7)
    d = dcrf.DenseCRF2D(31, 23, 4)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=2.0, compat=2.0)
    d.addPairwiseBilateral(sxy=50.0, srgb=4.0, rgbim=np.ascontiguousarray(image), compat=5.0)
    expected = np.array(d.inference(7), dtype=np.float32).reshape(4, 23, 31)
    result = dense_crf(image, probs, params)
    np.testing.assert_array_equal(result, expected)
    assert not np.array_equal(result, probs)


def test_dense_crf_accepts_non_contiguous_and_float64_inputs() -> None:
    rng = np.random.default_rng(2)
    image, probs = random_case(rng, 16, 12, 3)
    reference = dense_crf(image, probs, FAST)
    strided_image = np.asfortranarray(image)
    strided_probs = np.swapaxes(np.swapaxes(probs, 1, 2).copy(), 1, 2)  # same values, not C-contiguous
    assert not strided_image.flags.c_contiguous and not strided_probs.flags.c_contiguous
    np.testing.assert_array_equal(dense_crf(strided_image, strided_probs, FAST), reference)
    np.testing.assert_array_equal(dense_crf(image, probs.astype(np.float64), FAST), reference)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda img, p: (img.astype(np.float32), p), TypeError, "image must have dtype uint8"),
        (lambda img, p: (img[..., :1], p), ValueError, r"image must have shape \(H, W, 3\)"),
        (lambda img, p: (img[..., 0], p), ValueError, r"image must have shape \(H, W, 3\)"),
        (lambda img, p: (img[:, :10], p), ValueError, r"probs spatial size \(12, 16\).*image size \(12, 10\)"),
        (lambda img, p: (img, p[0]), ValueError, "probs must be 3-D"),
        (lambda img, p: (img, p[None]), ValueError, "probs must be 3-D"),
        (lambda img, p: (img, np.where(p > 0.9, np.nan, p)), ValueError, "probs contains non-finite"),
        (lambda img, p: (img, np.where(p > 0.9, np.inf, p)), ValueError, "probs contains non-finite"),
        (lambda img, p: (img, p * 10 - 5), ValueError, r"probs must be probabilities in \[0, 1\]"),
        (lambda img, p: (img, (p > 0.5).astype(np.uint8)), TypeError, "probs must be floating-point"),
        (lambda img, p: (img.tolist(), p), TypeError, "image must be a numpy array"),
    ],
)
def test_dense_crf_rejects_bad_inputs(change, error, match) -> None:
    rng = np.random.default_rng(3)
    image, probs = random_case(rng, 12, 16, 3)
    probs[0, 0, 0], probs[1, 0, 0], probs[2, 0, 0] = 0.95, 0.03, 0.02
    bad_image, bad_probs = change(image, probs)
    with pytest.raises(error, match=match):
        dense_crf(bad_image, bad_probs, FAST)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("sigma_alpha", 0.0, ValueError),
        ("sigma_beta", -1.0, ValueError),
        ("sigma_gamma", 0, ValueError),
        ("w1", -0.5, ValueError),
        ("w2", -3, ValueError),
        ("w1", float("nan"), ValueError),
        ("sigma_alpha", float("inf"), ValueError),
        ("iterations", 0, ValueError),
        ("iterations", 2.5, TypeError),
        ("w2", "3", TypeError),
    ],
)
def test_crf_params_validation_names_the_field(field, value, error) -> None:
    with pytest.raises(error, match=f"CRFParams.{field}"):
        dataclasses.replace(V2_CRF, **{field: value})


def test_crf_params_defaults() -> None:
    assert (V1_CRF.w2, V1_CRF.sigma_gamma, V1_CRF.iterations) == (3.0, 3.0, 10)
    assert (V2_CRF.w2, V2_CRF.sigma_gamma, V2_CRF.iterations) == (3.0, 1.0, 10)  # the release's pos_xy_std
    assert (V1_CRF.w1, V1_CRF.sigma_alpha, V1_CRF.sigma_beta) == (4.0, 121.0, 5.0)
    assert (V2_CRF.w1, V2_CRF.sigma_alpha, V2_CRF.sigma_beta) == (4.0, 67.0, 3.0)
    assert CRFParams(w1=1, sigma_alpha=1, sigma_beta=1, w2=0, sigma_gamma=1).iterations == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        V2_CRF.w1 = 5.0  # type: ignore[misc]


def test_parallel_equals_serial_in_input_order() -> None:
    rng = np.random.default_rng(4)
    sizes = [(17, 23, 3), (30, 11, 5), (8, 8, 2), (25, 19, 4), (12, 40, 3)]
    images, probs = zip(*(random_case(rng, *size) for size in sizes), strict=True)
    serial = crf_batch(images, probs, FAST, workers=0)
    with CRFPool(FAST, workers=2, timeout=60) as pool:
        parallel = pool(images, probs)
        again = pool(images[::-1], probs[::-1])  # the same worker processes serve a second batch
    assert len(serial) == len(parallel) == len(sizes)
    for s, p, a, prob in zip(serial, parallel, again[::-1], probs, strict=True):
        assert s.shape == prob.shape
        np.testing.assert_array_equal(p, s)
        np.testing.assert_array_equal(a, s)
    assert crf_batch(images[:2], probs[:2], FAST, workers=2, timeout=60)[1].shape == probs[1].shape


@pytest.mark.parametrize("workers", [0, 2])
def test_job_error_names_the_image(workers: int) -> None:
    rng = np.random.default_rng(5)
    images, probs = zip(*(random_case(rng, 10, 12, 3) for _ in range(6)), strict=True)
    probs = list(probs)
    probs[4] = probs[4].copy()
    probs[4][1, 2, 3] = np.nan
    names = [f"img_{i}.jpg" for i in range(6)]
    with pytest.raises(RuntimeError, match=r"image 4 \('img_4\.jpg'\).*non-finite") as info:
        crf_batch(images, probs, FAST, workers=workers, names=names, timeout=60)
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(RuntimeError, match=r"image 1: ValueError: probs spatial size"):
        crf_batch(images[:2], [probs[0], probs[1][:, :5]], FAST, workers=workers, timeout=60)


def test_batch_length_mismatch() -> None:
    image, probs = random_case(np.random.default_rng(6), 8, 8, 2)
    with pytest.raises(ValueError, match="images and probs must have the same length"):
        crf_batch([image, image], [probs], FAST)
    with pytest.raises(ValueError, match="names must have one entry per image"):
        crf_batch([image], [probs], FAST, names=["a", "b"])
    with pytest.raises(ValueError, match="workers"):
        CRFPool(FAST, workers=-1)


def _marked(probs: np.ndarray) -> bool:
    return probs.shape[0] == 7  # the test's marker: the only item with 7 classes


@needs_fork
def test_dead_worker_is_reported_with_the_image_and_the_pool_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    real = crf_module.dense_crf

    def dies_on_marked(image, probs, params):
        if _marked(probs):
            os._exit(3)
        return real(image, probs, params)

    monkeypatch.setattr(crf_module, "dense_crf", dies_on_marked)  # inherited by the forked workers
    rng = np.random.default_rng(7)
    items = [random_case(rng, 10, 10, 7 if i == 3 else 3) for i in range(6)]
    images, probs = zip(*items, strict=True)
    names = [f"img_{i}.png" for i in range(6)]
    start = time.monotonic()
    with CRFPool(FAST, workers=2, timeout=30, start_method="fork") as pool:
        with pytest.raises(RuntimeError, match=r"worker process died.*image 3 \('img_3\.png'\)"):
            pool(images, probs, names)
        good = [i for i in range(6) if i != 3]
        results = pool([images[i] for i in good], [probs[i] for i in good])  # a fresh pool after the crash
    assert time.monotonic() - start < 20
    for i, result in zip(good, results, strict=True):
        np.testing.assert_array_equal(result, real(images[i], probs[i], FAST))


@needs_fork
def test_hung_worker_times_out_with_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    real = crf_module.dense_crf

    def hangs_on_marked(image, probs, params):
        if _marked(probs):
            time.sleep(30)
        return real(image, probs, params)

    monkeypatch.setattr(crf_module, "dense_crf", hangs_on_marked)
    rng = np.random.default_rng(8)
    items = [random_case(rng, 10, 10, 7 if i == 1 else 3) for i in range(4)]
    images, probs = zip(*items, strict=True)
    start = time.monotonic()
    with CRFPool(FAST, workers=2, timeout=2.0, start_method="fork") as pool:
        with pytest.raises(RuntimeError, match=r"timed out after 2.0 s on image 1\b"):
            pool(images, probs, None)
        assert pool([images[0]], [probs[0]])[0].shape == probs[0].shape
    assert time.monotonic() - start < 20
    deadline = time.monotonic() + 5
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()  # the hung worker was terminated, not left sleeping
