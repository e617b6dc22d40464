"""The degradation of Kondo & Ukita (CSBSR, IEEE TIM 2024): how far-away, blurred, compressed photos look.

A photo is blurred with a random anisotropic Gaussian kernel (21×21, σ₁, σ₂ ~ U[0.2, 4], angle ~ U[0, 180°)),
bicubic down-scaled by a factor (×4 by default), and optionally given Gaussian noise and JPEG compression.
Every random draw comes from one ``numpy`` generator seeded explicitly, so a seed always gives the same image.
``degrade_image`` scales the result back to the original size, so the ground-truth mask stays as it is.
"""

from __future__ import annotations

import cv2
import numpy as np

from crackseg.errors import InputError

KERNEL_SIZE = 21
SIGMA_RANGE = (0.2, 4.0)

Seed = int | np.random.Generator
Range = tuple[float, float] | None


class DegradationError(InputError):
    """Bad degradation settings or input (a one-line message saying what to fix)."""


def anisotropic_gaussian_kernel(
    sigma1: float, sigma2: float, angle: float = 0.0, size: int = KERNEL_SIZE
) -> np.ndarray:
    """A size×size float32 Gaussian kernel summing to 1, with std ``sigma1`` along the direction ``angle``
    (degrees, turning from the column axis x towards the row axis y) and ``sigma2`` across it."""
    if size < 1 or size % 2 == 0:
        raise DegradationError(f"kernel size must be a positive odd number, got {size}")
    if sigma1 <= 0 or sigma2 <= 0:
        raise DegradationError(f"kernel sigmas must be positive, got {sigma1}, {sigma2}")
    theta = np.deg2rad(angle)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    covariance = rotation @ np.diag([sigma1**2, sigma2**2]) @ rotation.T
    half = size // 2
    ys, xs = np.mgrid[-half : half + 1, -half : half + 1]
    offsets = np.stack([xs, ys], axis=-1).astype(np.float64)  # (x, y) per pixel
    mahalanobis = np.einsum("...i,ij,...j->...", offsets, np.linalg.inv(covariance), offsets)
    kernel = np.exp(-0.5 * mahalanobis)
    return (kernel / kernel.sum()).astype(np.float32)


def random_kernel(
    rng: np.random.Generator, size: int = KERNEL_SIZE, sigma_range: tuple[float, float] = SIGMA_RANGE
) -> np.ndarray:
    """The paper's random blur: σ₁, σ₂ ~ U[sigma_range], angle ~ U[0, 180°)."""
    sigma1, sigma2 = rng.uniform(*sigma_range, size=2)
    angle = rng.uniform(0.0, 180.0)
    return anisotropic_gaussian_kernel(sigma1, sigma2, angle, size)


def parse_scale(text: str | float) -> float:
    """'x4', '×4', '4' or 4 -> 4.0; anything else (or a factor below 1) is a DegradationError."""
    cleaned = str(text).strip().lower().lstrip("x×")
    try:
        scale = float(cleaned)
    except ValueError:
        raise DegradationError(f"degradation scale must look like x4, ×4 or 4; got {text!r}") from None
    if not np.isfinite(scale) or scale < 1:
        raise DegradationError(f"degradation scale must be a factor of at least 1 (e.g. x4); got {text!r}")
    return scale


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise DegradationError("degradation needs a uint8 image array (H×W×3 RGB or H×W)")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) or min(image.shape[:2]) < 1:
        raise DegradationError(f"degradation needs an H×W×3 RGB or H×W image, got shape {image.shape}")


def _draw(rng: np.random.Generator, value_range: Range, name: str) -> float | None:
    """One draw from (lo, hi), always consuming the generator so that options don't shift later draws."""
    draw = rng.random()
    if value_range is None:
        return None
    lo, hi = value_range
    if lo > hi:
        raise DegradationError(f"{name} range must be (low, high) with low <= high, got {value_range}")
    return lo + draw * (hi - lo)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    # OpenCV encodes BGR; swap so the chroma planes (and their subsampling) are those of the true colours.
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DegradationError(f"JPEG encoding failed at quality {quality}")
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB) if image.ndim == 3 else decoded


def degrade_low_res(
    image: np.ndarray,
    scale: float = 4.0,
    seed: Seed = 0,
    jpeg_quality: Range = None,
    noise_sigma: Range = None,
) -> np.ndarray:
    """Blur, bicubic down-scale by ``scale``, then optional Gaussian noise (std in 0–255 units, drawn from
    ``noise_sigma``) and JPEG (quality drawn from ``jpeg_quality``). Returns the low-resolution uint8 image,
    round(H/scale) × round(W/scale) (at least 1 pixel). The input is not modified."""
    _check_image(image)
    scale = parse_scale(scale)
    rng = np.random.default_rng(seed)
    kernel = random_kernel(rng)
    quality = _draw(rng, jpeg_quality, "jpeg_quality")
    sigma = _draw(rng, noise_sigma, "noise_sigma")

    blurred = cv2.filter2D(image.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    height, width = image.shape[:2]
    low_size = (max(1, round(width / scale)), max(1, round(height / scale)))
    low = cv2.resize(blurred, low_size, interpolation=cv2.INTER_CUBIC)
    # Noise before JPEG, as in a camera: the sensor's noise is there before the encoder compresses it.
    if sigma is not None and sigma > 0:
        low = low + rng.normal(0.0, sigma, low.shape).astype(np.float32)
    low = np.clip(np.rint(low), 0, 255).astype(np.uint8)
    if quality is not None:
        low = _jpeg(low, int(round(quality)))
    return low


def degrade_image(
    image: np.ndarray,
    scale: float = 4.0,
    seed: Seed = 0,
    jpeg_quality: Range = None,
    noise_sigma: Range = None,
) -> np.ndarray:
    """``degrade_low_res`` brought back to the exact original H×W by bicubic up-scaling (uint8), so the
    ground-truth mask of the original still applies."""
    low = degrade_low_res(image, scale, seed, jpeg_quality, noise_sigma)
    height, width = image.shape[:2]
    return cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)


class RandomDegradation:
    """Training augmentation: with probability ``prob`` degrade the crop at a scale drawn from ``scales``.

    The caller sets ``.seed`` before each call (one seed per item and epoch), so the augmentation is
    reproducible whatever the DataLoader worker count. Holds only plain values, so it pickles to workers.
    """

    def __init__(
        self,
        prob: float,
        scales: list[float] | tuple[float, ...] = (2.0, 4.0),
        seed: int = 0,
        jpeg_quality: Range = None,
        noise_sigma: Range = None,
    ):
        if not 0.0 <= prob <= 1.0:
            raise DegradationError(f"degradation probability must be in [0, 1], got {prob}")
        if len(scales) == 0:
            raise DegradationError("degradation scales must list at least one factor, e.g. 2,4")
        self.prob = float(prob)
        self.scales = [parse_scale(s) for s in scales]
        self.seed = seed
        self.jpeg_quality, self.noise_sigma = jpeg_quality, noise_sigma

    def __call__(self, image: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        if rng.random() >= self.prob:
            return image
        scale = self.scales[rng.integers(len(self.scales))]
        return degrade_image(image, scale, rng, self.jpeg_quality, self.noise_sigma)

    def __repr__(self) -> str:
        return f"RandomDegradation(prob={self.prob}, scales={self.scales})"
