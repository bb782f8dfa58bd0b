"""In-plane magnetic induction from a phase map, and the colour-wheel picture of it.

docs/conventions.md: d phi/dx = +(e/hbar) B_y t and d phi/dy = -(e/hbar) B_x t, so

    B_x t = -(hbar/e) d phi/dy,    B_y t = +(hbar/e) d phi/dx      (tesla metre).

Arrays are indexed [y, x] with row 0 at the top, so +y points down the displayed image; the colour wheel and
its legend use the same screen axes, so a legend colour at a given direction from its centre is the colour of
an induction pointing that way in the picture.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.colors import hsv_to_rgb

from ltemlive.constants import E_OVER_HBAR

__all__ = ["colour_wheel", "colour_wheel_legend", "induction_map", "save_induction_png"]

# Magnitudes are scaled to this percentile so that a few hot pixels (noise, domain-wall spikes) do not
# darken the whole picture; brighter pixels saturate at full value.
_ROBUST_PERCENTILE = 99.0


def _as_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {a.shape}")
    return a


def induction_map(phase, pixel_size_m: float) -> tuple[np.ndarray, np.ndarray]:
    """(B_x t, B_y t) in tesla metre from a phase map in radians (numpy or torch, (H, W)).

    Derivatives are second-order central differences inside and second-order one-sided differences at the
    edges (np.gradient, edge_order=2), so the edges carry no wrap-around artefact and a linear phase gives an
    exact, uniform induction everywhere. Spectral derivatives would ring at the non-periodic edges of a
    real field of view.
    """
    phi = _as_numpy(phase, "phase")
    if min(phi.shape) < 3:
        raise ValueError(f"phase must be at least 3x3 pixels, got shape {phi.shape}")
    if not np.isfinite(phi).all():
        raise ValueError("phase contains NaN or infinite values")
    pixel = float(pixel_size_m)
    if not np.isfinite(pixel) or pixel <= 0:
        raise ValueError(f"pixel_size_m must be a finite positive number, got {pixel_size_m!r}")
    dphi_dy, dphi_dx = np.gradient(phi, pixel, edge_order=2)
    return -dphi_dy / E_OVER_HBAR, dphi_dx / E_OVER_HBAR


def colour_wheel(bx, by, *, saturation_scale: float | None = None) -> np.ndarray:
    """Colour-wheel (HSV) picture of an in-plane vector field as uint8 RGB, shape (H, W, 3).

    hue = direction atan2(by, bx), measured from +x towards +y (screen axes: +x right, +y down):
        +x red (0 deg), +y yellow-green (90 deg), -x cyan (180 deg), -y violet (270 deg);
    value = |b| / saturation_scale clipped to [0, 1] (zero field is black); saturation = 1.
    saturation_scale defaults to the 99th percentile of |b|.
    """
    bx_a, by_a = _as_numpy(bx, "bx"), _as_numpy(by, "by")
    if bx_a.shape != by_a.shape:
        raise ValueError(f"bx and by must have the same shape, got {bx_a.shape} and {by_a.shape}")
    if not (np.isfinite(bx_a).all() and np.isfinite(by_a).all()):
        raise ValueError("bx and by must be finite")
    magnitude = np.hypot(bx_a, by_a)
    if saturation_scale is None:
        scale = float(np.percentile(magnitude, _ROBUST_PERCENTILE))  # 0 for a zero field: all black
    else:
        scale = float(saturation_scale)
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"saturation_scale must be a finite positive number, got {saturation_scale!r}")
    value = np.clip(magnitude / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(magnitude)
    hue = np.mod(np.arctan2(by_a, bx_a) / (2 * np.pi), 1.0)
    hsv = np.stack([hue, np.ones_like(hue), value], axis=-1)
    return np.round(hsv_to_rgb(hsv) * 255).astype(np.uint8)


def colour_wheel_legend(size: int = 64) -> np.ndarray:
    """A (size, size, 3) uint8 disc showing the colour_wheel mapping in screen axes; white outside.

    The vector at each point is its offset from the centre (rows = +y), with full value on the rim.
    """
    size = int(size)
    if size < 3:
        raise ValueError(f"size must be at least 3 pixels, got {size}")
    centre = (size - 1) / 2
    y, x = np.mgrid[:size, :size] - centre
    legend = colour_wheel(x, y, saturation_scale=centre)
    legend[np.hypot(x, y) > centre + 0.5] = 255
    return legend


def _mathtext_title(title: str) -> str:
    """Write a literal 'B_perp t' / 'B_perp' (as older callers pass it) as mathtext $B_\\perp t$."""
    if "$" in title:
        return title
    return title.replace("B_perp t", r"$B_\perp t$").replace("B_perp", r"$B_\perp$")


def save_induction_png(
    path: str | os.PathLike,
    bx,
    by,
    pixel_size_m: float,
    title: str | None = None,
    *,
    saturation_scale: float | None = None,
    dpi: int = 150,
    percentile: float = _ROBUST_PERCENTILE,
) -> str:
    """Write the colour-wheel picture of (bx, by) (T m) to a PNG: pictures.induction_field_figure, with the
    wheel and a magnitude ramp beside the map (not over it), a scale bar, and the saturation written on it.

    Uses the Agg canvas on a bare Figure (no pyplot), so it is safe in worker threads and headless servers.
    Returns the path written.
    """
    from ltemlive.pictures import induction_field_figure, save_figure

    if saturation_scale is not None:
        scale = float(saturation_scale)
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"saturation_scale must be a finite positive number, got {saturation_scale!r}")
    fig, _ = induction_field_figure(
        bx,
        by,
        pixel_size_m,
        title=_mathtext_title(title) if title else None,
        saturation_scale=saturation_scale,
        percentile=percentile,
    )
    save_figure(fig, path, dpi=dpi)
    return os.fspath(path)
