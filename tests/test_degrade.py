"""The paper's degradation: reproducible by seed, exact output sizes, a normalised anisotropic kernel."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from crackseg.degrade import (
    DegradationError,
    RandomDegradation,
    anisotropic_gaussian_kernel,
    degrade_image,
    degrade_low_res,
    parse_scale,
    random_kernel,
)
from crackseg.synthetic import synthetic_crack


@pytest.fixture(scope="module")
def crack_image() -> np.ndarray:
    image, _ = synthetic_crack((96, 128), seed=3, crack_width=2)
    return image


def kernel_covariance(kernel: np.ndarray) -> np.ndarray:
    """Second moments of the kernel over (x, y) pixel offsets from its centre."""
    half = kernel.shape[0] // 2
    ys, xs = np.mgrid[-half : half + 1, -half : half + 1]
    offsets = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    weights = kernel.ravel().astype(np.float64)
    return (offsets * weights[:, None]).T @ offsets


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian: high for crisp edges, low for blur."""
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def test_kernel_is_normalised_and_21x21():
    kernel = anisotropic_gaussian_kernel(3.0, 1.0, 30.0)
    assert kernel.shape == (21, 21) and kernel.dtype == np.float32
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5)
    assert (kernel >= 0).all() and kernel[10, 10] == kernel.max()
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert random_kernel(rng).sum() == pytest.approx(1.0, abs=1e-5)


def test_kernel_is_anisotropic_and_rotated_by_the_angle():
    eigenvalues, eigenvectors = np.linalg.eigh(kernel_covariance(anisotropic_gaussian_kernel(3.0, 1.0, 30.0)))
    assert eigenvalues[1] / eigenvalues[0] > 5  # 3² vs 1², a little less after truncation to 21×21
    major = eigenvectors[:, 1]
    axis_angle = np.degrees(np.arctan2(major[1], major[0])) % 180
    assert axis_angle == pytest.approx(30.0, abs=1.0)
    # Turning the kernel by 90° swaps its axes: the same as transposing it.
    along_x = anisotropic_gaussian_kernel(3.0, 1.0, 0.0)
    np.testing.assert_allclose(anisotropic_gaussian_kernel(3.0, 1.0, 90.0), along_x.T, atol=1e-6)
    assert not np.allclose(along_x, along_x.T, atol=1e-4)


def test_kernel_is_isotropic_when_sigmas_are_equal():
    kernel = anisotropic_gaussian_kernel(2.0, 2.0, 37.0)
    eigenvalues = np.linalg.eigvalsh(kernel_covariance(kernel))
    assert eigenvalues[1] / eigenvalues[0] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(kernel, anisotropic_gaussian_kernel(2.0, 2.0, 0.0), atol=1e-6)


@pytest.mark.parametrize("bad", [dict(sigma1=0.0, sigma2=1.0), dict(sigma1=1.0, sigma2=1.0, size=20)])
def test_kernel_rejects_bad_settings(bad):
    with pytest.raises(DegradationError):
        anisotropic_gaussian_kernel(**bad)


def test_same_seed_same_image_other_seed_other_image(crack_image):
    options = dict(scale=4, jpeg_quality=(30, 90), noise_sigma=(1, 10))
    first = degrade_image(crack_image, seed=7, **options)
    np.testing.assert_array_equal(first, degrade_image(crack_image, seed=7, **options))
    assert not np.array_equal(first, degrade_image(crack_image, seed=8, **options))
    plain = degrade_image(crack_image, seed=7)
    np.testing.assert_array_equal(plain, degrade_image(crack_image, seed=7))
    assert not np.array_equal(plain, degrade_image(crack_image, seed=8))
    assert not np.array_equal(plain, first)  # noise and JPEG do change it


def test_input_is_not_modified(crack_image):
    before = crack_image.copy()
    degrade_image(crack_image, seed=1, jpeg_quality=(40, 60), noise_sigma=(5, 5))
    np.testing.assert_array_equal(crack_image, before)


@pytest.mark.parametrize("shape, scale, low_shape", [((101, 77), 4, (25, 19)), ((96, 128), 2, (48, 64))])
def test_output_sizes_are_exact(shape, scale, low_shape):
    image, _ = synthetic_crack(shape, seed=0)
    low = degrade_low_res(image, scale=scale, seed=0)
    assert low.shape == (*low_shape, 3) and low.dtype == np.uint8
    out = degrade_image(image, scale=scale, seed=0, jpeg_quality=(50, 50), noise_sigma=(2, 2))
    assert out.shape == image.shape and out.dtype == np.uint8


def test_tiny_and_grey_images_keep_their_size():
    tiny = np.full((3, 5, 3), 128, np.uint8)
    assert degrade_low_res(tiny, scale=4).shape == (1, 1, 3)
    assert degrade_image(tiny, scale=4).shape == (3, 5, 3)
    grey = np.random.default_rng(0).integers(0, 256, (33, 31), dtype=np.uint8)
    assert degrade_image(grey, scale="x4", jpeg_quality=(70, 70)).shape == (33, 31)


def test_degraded_image_is_blurrier(crack_image):
    original = sharpness(crack_image)
    for seed in range(5):
        assert sharpness(degrade_image(crack_image, scale=4, seed=seed)) < 0.5 * original
    # A larger factor loses more detail than a smaller one with the same kernel.
    assert sharpness(degrade_image(crack_image, scale=4, seed=0)) < sharpness(
        degrade_image(crack_image, scale=2, seed=0)
    )


def test_rejects_bad_images_and_ranges(crack_image):
    with pytest.raises(DegradationError, match="uint8"):
        degrade_image(crack_image.astype(np.float32))
    with pytest.raises(DegradationError, match="shape"):
        degrade_image(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(DegradationError, match="jpeg_quality"):
        degrade_image(crack_image, jpeg_quality=(90, 30))


@pytest.mark.parametrize("text, scale", [("x4", 4.0), ("X2", 2.0), ("×4", 4.0), ("4", 4.0), (" 2.5 ", 2.5), (3, 3.0)])
def test_parse_scale(text, scale):
    assert parse_scale(text) == scale


@pytest.mark.parametrize("text", ["", "x", "four", "4x4", "x0.5", "-4", "nan"])
def test_parse_scale_errors(text):
    with pytest.raises(DegradationError, match="scale"):
        parse_scale(text)


def test_random_degradation_probability(crack_image):
    never, always = RandomDegradation(0.0, [2.0, 4.0]), RandomDegradation(1.0, [2.0, 4.0])
    for seed in range(5):
        never.seed = always.seed = seed
        np.testing.assert_array_equal(never(crack_image), crack_image)
        degraded = always(crack_image)
        assert degraded.shape == crack_image.shape and not np.array_equal(degraded, crack_image)
    half = RandomDegradation(0.5, [4.0])
    small = crack_image[:24, :24]
    changed = []
    for seed in range(200):
        half.seed = seed
        changed.append(not np.array_equal(half(small), small))
    assert 0.35 < np.mean(changed) < 0.65


def test_random_degradation_is_seeded_and_picklable(crack_image):
    augment = RandomDegradation(1.0, [2.0, 4.0], jpeg_quality=(40, 90))
    augment.seed = 1234
    copy = pickle.loads(pickle.dumps(augment))
    np.testing.assert_array_equal(augment(crack_image), copy(crack_image))
    first = augment(crack_image)
    augment.seed = 1235
    assert not np.array_equal(first, augment(crack_image))
    # Same seed, a larger factor: the same kernel draw, so strictly more detail lost.
    coarse, fine = RandomDegradation(1.0, [4.0]), RandomDegradation(1.0, [1.0])
    coarse.seed = fine.seed = 9
    assert sharpness(coarse(crack_image)) < sharpness(fine(crack_image))


def test_random_degradation_rejects_bad_settings():
    with pytest.raises(DegradationError, match="probability"):
        RandomDegradation(1.5, [4.0])
    with pytest.raises(DegradationError, match="scales"):
        RandomDegradation(0.5, [])
    with pytest.raises(DegradationError, match="scale"):
        RandomDegradation(0.5, ["x0"])
