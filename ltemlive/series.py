"""The through-focus series: images, their defocus and the microscope that took them.

One container for simulated, recorded and live data (the same processing contract for all three).
Validation here gives every caller the same clear errors for bad input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ltemlive.optics.params import MicroscopeParams


def _positive_real(value: Any) -> float | None:
    """`value` as a float when it is a finite positive real number (Python or NumPy int/float, not a bool),
    else None."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    try:
        v = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return v if math.isfinite(v) and v > 0 else None


# Negative values in intensity data. Intensities cannot be negative, but camera data that has been dark-subtracted
# or normalised legitimately holds small negative values from read noise (and the odd dead or hot pixel).
# The rule: a pixel is "clearly negative" when it lies below -NEGATIVE_MARGIN x the image's mean intensity (a
# read-noise excursion that deep would swamp the signal); an image is refused when its mean is not positive while
# it has negative values, or when more than NEGATIVE_FRACTION of its pixels are clearly negative.
NEGATIVE_MARGIN = 0.5
NEGATIVE_FRACTION = 0.01


def negative_intensity_problem(images: np.ndarray) -> str | None:
    """Why the (N, H, W) stack `images` cannot be intensities (see NEGATIVE_MARGIN), or None when it can.

    Used for data read from files (ltemlive.storage.read_series), where a phase map, a difference image or a badly
    dark-subtracted stack given by mistake would otherwise be reconstructed as if it were intensities."""
    stack = np.asarray(images, dtype=np.float64)
    if stack.ndim == 2:
        stack = stack[None]
    n = stack.shape[0]
    for i, img in enumerate(stack):
        if not (img < 0).any():
            continue
        mean = float(img.mean())
        lo = float(img.min())
        where = f"image {i} of {n}" if n > 1 else "the image"
        if mean <= 0:
            return (
                f"images: {where} has negative values and a mean intensity of {mean:.3g} (min {lo:.3g}); "
                "intensities must be >= 0 with a positive mean (is this a phase map or a difference image?)"
            )
        frac = float((img < -NEGATIVE_MARGIN * mean).mean())
        if frac > NEGATIVE_FRACTION:
            return (
                f"images: {where} has {100 * frac:.2g}% of its pixels below -{NEGATIVE_MARGIN} x its mean intensity "
                f"(min {lo:.3g}, mean {mean:.3g}); intensities cannot be negative: at most "
                f"{100 * NEGATIVE_FRACTION:g}% of pixels may lie below -{NEGATIVE_MARGIN} x the mean (read noise); "
                "check the dark/background subtraction (or is this a phase map or a difference image?)"
            )
    return None


@dataclass
class GroundTruth:
    """What a simulated series really is; absent for recorded data."""

    phase: np.ndarray  # (H, W) rad
    amplitude: np.ndarray  # (H, W)
    defocus_m: np.ndarray  # (N,) true defocus
    shifts_px: np.ndarray | None = None  # (N, 2) applied drift (dy, dx)


@dataclass
class Series:
    images: np.ndarray  # (N, H, W) counts or normalised intensity
    defocus_m: np.ndarray  # (N,) nominal defocus, conventions.md sign (df > 0 over-focus)
    pixel_size_m: float
    microscope: MicroscopeParams
    dose_e_per_px: float | None = None  # mean electrons per pixel of an unscattered beam, if known
    truth: GroundTruth | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        images = np.asarray(self.images)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3:
            raise ValueError(f"images must be a stack of shape (N, H, W), got shape {images.shape}")
        if min(images.shape[1:]) < 8:
            raise ValueError(f"images must be at least 8x8 pixels, got {images.shape[1:]}")
        if not np.issubdtype(images.dtype, np.number) or np.iscomplexobj(images):
            raise ValueError(f"images must be real numbers, got dtype {images.dtype}")
        images = images.astype(np.float32, copy=False)
        if not np.isfinite(images).all():
            raise ValueError("images contain NaN or infinite values")
        if (images < 0).any() and self.dose_e_per_px is not None:
            raise ValueError("images contain negative counts, but a dose was given (counts cannot be negative)")
        try:
            raw = np.asarray(self.defocus_m)
            if raw.dtype == bool:
                raise TypeError("booleans are not lengths")
            defocus = np.atleast_1d(np.asarray(self.defocus_m, dtype=np.float64))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"defocus_m must be numbers in metres, one per image ({exc})") from exc
        if defocus.ndim != 1 or defocus.size != images.shape[0]:
            raise ValueError(
                f"defocus_m has {defocus.size} values but there are {images.shape[0]} images; "
                "give one defocus per image"
            )
        if not np.isfinite(defocus).all():
            raise ValueError(f"defocus_m must be finite, got {defocus.tolist()}")
        px = _positive_real(self.pixel_size_m)
        if px is None:
            raise ValueError(f"pixel_size_m must be a finite positive length in metres, got {self.pixel_size_m!r}")
        dose = None
        if self.dose_e_per_px is not None:
            dose = _positive_real(self.dose_e_per_px)
            if dose is None:
                raise ValueError(f"dose_e_per_px must be positive and finite, got {self.dose_e_per_px!r}")
        self.images = images
        self.defocus_m = defocus
        self.pixel_size_m = px
        self.dose_e_per_px = dose

    @property
    def n_images(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.images.shape[1], self.images.shape[2]
