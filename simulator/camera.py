"""Camera model: binning of the oversampled image, detector blur, shot noise, gain, read noise, hot pixels.

Noise is a physical dose: each camera pixel receives Poisson(dose * I) electrons, where I is the
normalised intensity (vacuum = 1). It is never applied after a min-max rescale (that gives the darkest
pixel zero counts every time, a bug of earlier simulators).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["bin_mean", "record"]

#: Hot pixels read this many times the mean vacuum signal.
HOT_PIXEL_FACTOR = 50.0


def bin_mean(a: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks of the last two axes (trailing rows/columns that do not fill a
    block are dropped)."""
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"bin factor must be >= 1, got {factor}")
    if factor == 1:
        return a
    h, w = a.shape[-2] // factor, a.shape[-1] // factor
    if h == 0 or w == 0:
        raise ValueError(f"bin factor {factor} larger than the image {a.shape[-2:]}")
    a = a[..., : h * factor, : w * factor]
    return a.reshape(*a.shape[:-2], h, factor, w, factor).mean(axis=(-3, -1))


def record(
    intensity: np.ndarray,
    dose_e_per_px: float | None,
    rng: np.random.Generator,
    gain: float = 1.0,
    read_noise_e: float = 0.0,
    blur_px: float = 0.0,
    hot_pixel_fraction: float = 0.0,
    bin_factor: int = 1,
    noise: bool = True,
) -> np.ndarray:
    """Record normalised intensity (H, W) or (N, H, W) with a camera; returns float32.

    Steps: mean over bin_factor x bin_factor blocks (oversampled grid -> camera pixels); Gaussian
    detector blur of std ``blur_px`` camera pixels (point-spread of the scintillator); then

    - ``dose_e_per_px`` given, ``noise=True`` (default): counts = gain * (Poisson(dose * I)
      + Normal(0, read_noise_e)), in the camera's units (gain = units per electron);
    - ``dose_e_per_px`` given, ``noise=False``: the expectation gain * dose * I;
    - ``dose_e_per_px`` None: the noise-free normalised intensity I (vacuum = 1); gain and read noise are
      not applied (read_noise_e > 0 without a dose is an error).

    Finally a random ``hot_pixel_fraction`` of pixels (independently per frame) reads
    HOT_PIXEL_FACTOR times the vacuum level.
    """
    img = bin_mean(np.asarray(intensity, dtype=np.float64), bin_factor)
    if blur_px > 0:
        sigma = (0,) * (img.ndim - 2) + (blur_px, blur_px)
        # reflecting edges conserve the total signal (no electrons lost or invented at the border)
        img = ndimage.gaussian_filter(img, sigma=sigma, mode="reflect")
    if np.any(img < 0):
        raise ValueError("intensity must be non-negative")
    if dose_e_per_px is None:
        if read_noise_e > 0:
            raise ValueError("read_noise_e > 0 needs a dose (dose_e_per_px is None: noise-free intensity)")
        out, vacuum = img, 1.0
    else:
        if not dose_e_per_px > 0:
            raise ValueError(f"dose_e_per_px must be positive or None, got {dose_e_per_px}")
        vacuum = gain * dose_e_per_px
        if noise:
            electrons = rng.poisson(dose_e_per_px * img).astype(np.float64)
            if read_noise_e > 0:
                electrons += rng.normal(0.0, read_noise_e, size=img.shape)
            out = gain * electrons
        else:
            out = vacuum * img
    out = np.asarray(out, dtype=np.float32)
    if hot_pixel_fraction > 0:
        hot = rng.random(out.shape) < hot_pixel_fraction
        out[hot] = np.float32(HOT_PIXEL_FACTOR * vacuum)
    return out
