"""From raw images to what the fit needs: normalised data, hot pixels removed, a first registration,
the starting amplitude and the TIE starting phase."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ltemlive.series import Series


def normalise(series: Series) -> tuple[np.ndarray, np.ndarray]:
    """Images divided so that an unscattered beam is ~1: by the dose when known, else by each mean.

    Returns the normalised stack and the per-image divisor (so results can be mapped back to counts).
    """
    imgs = series.images.astype(np.float64)
    if series.dose_e_per_px is not None:
        div = np.full(series.n_images, float(series.dose_e_per_px))
    else:
        div = imgs.reshape(series.n_images, -1).mean(axis=1)
        if (div <= 0).any():
            raise ValueError("an image has a non-positive mean; give intensities or counts, not signed data")
    return imgs / div[:, None, None], div


def remove_hot_pixels(stack: np.ndarray, threshold: float = 8.0) -> tuple[np.ndarray, int]:
    """Replace isolated outliers (dead or hot pixels) by the local median; returns the count replaced."""
    out = stack.copy()
    replaced = 0
    for i, img in enumerate(stack):  # per image: a handful of images, each vectorised
        med = ndimage.median_filter(img, size=3, mode="reflect")
        resid = img - med
        mad = np.median(np.abs(resid - np.median(resid))) * 1.4826 + 1e-12
        bad = np.abs(resid) > threshold * mad + 0.5 * np.abs(med)
        out[i][bad] = med[bad]
        replaced += int(bad.sum())
    return out, replaced


def _band_pass(img: np.ndarray, magnitude: bool = False) -> np.ndarray:
    g = ndimage.gaussian_filter(img, 1.0) - ndimage.gaussian_filter(img, 6.0)
    if magnitude:
        g = np.abs(g)
    win = np.outer(np.hanning(img.shape[0]), np.hanning(img.shape[1]))
    return (g - g.mean()) * win


def cross_correlation_shift(moving: np.ndarray, fixed: np.ndarray, max_shift_px: float, magnitude: bool = False):
    """Shift (dy, dx) of `moving` relative to `fixed` from the band-passed cross-correlation peak.

    magnitude=True correlates |band-passed contrast|: phase contrast inverts between +df and -df while
    absorption contrast does not, so the signed images of a +-df pair may correlate either way, but
    their edges sit in the same places.
    """
    h, w = fixed.shape
    a, b = _band_pass(moving, magnitude), _band_pass(fixed, magnitude)
    xc = np.fft.fftshift(np.fft.ifft2(np.fft.fft2(a) * np.fft.fft2(b).conj()).real)
    cy, cx = h // 2, w // 2
    r = int(min(max_shift_px, cy - 1, cx - 1))
    win = xc[cy - r : cy + r + 1, cx - r : cx + r + 1]
    py, px = np.unravel_index(np.argmax(win), win.shape)
    dy, dx = _parabolic(win, py, px)
    return py + dy - r, px + dx - r


def registration_candidates(stack: np.ndarray, defocus_m: np.ndarray, max_shift_px: float = 16.0) -> list[np.ndarray]:
    """Candidate initial shifts (dy, dx), distinct ones only; the caller keeps the one whose starting model
    explains the data best (and registers the images left at 0 to that model's predictions).

    - the innermost +-df pair registered to each other by the magnitude of the band-passed contrast,
      the others at 0;
    - the same pair by the signed contrast;
    - every image registered to the near-focus reference by magnitude.
    Each rule failed on some measured series by 2-3 px: a +-df pair is neither a copy nor an inverted copy
    of itself (phase contrast inverts across focus, absorption contrast does not, and strong phase
    gradients displace features in opposite directions), and images far from focus are displaced by local
    phase gradients relative to a near-focus one."""
    ref = reference_index(defocus_m)
    partner = _opposite_partner(defocus_m, ref)
    zero = np.zeros((stack.shape[0], 2))
    if partner is None:
        return [zero]
    out: list[np.ndarray] = []
    for magnitude in (True, False):
        shifts = zero.copy()
        shifts[partner] = cross_correlation_shift(stack[partner], stack[ref], max_shift_px, magnitude=magnitude)
        out.append(shifts)
    every = zero.copy()
    for i in range(len(defocus_m)):
        if i != ref:
            every[i] = cross_correlation_shift(stack[i], stack[ref], max_shift_px, magnitude=True)
    out.append(every)
    distinct: list[np.ndarray] = []
    for shifts in out:
        if not any(np.abs(shifts - o).max() < 0.5 for o in distinct):
            distinct.append(shifts)
    return distinct


def _opposite_partner(defocus_m: np.ndarray, ref: int) -> int | None:
    opposite = [i for i in range(len(defocus_m)) if defocus_m[i] * defocus_m[ref] < 0]
    if not opposite:
        return None
    return min(opposite, key=lambda i: abs(defocus_m[i]))


def _parabolic(a: np.ndarray, y: int, x: int) -> tuple[float, float]:
    def vertex(m, c, p):
        den = m - 2 * c + p
        return 0.0 if den == 0 else 0.5 * (m - p) / den

    dy = vertex(a[y - 1, x], a[y, x], a[y + 1, x]) if 0 < y < a.shape[0] - 1 else 0.0
    dx = vertex(a[y, x - 1], a[y, x], a[y, x + 1]) if 0 < x < a.shape[1] - 1 else 0.0
    return dy, dx


def fourier_shift(stack: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shift each image by (dy, dx) pixels (positive moves features to larger index), periodic."""
    h, w = stack.shape[1:]
    qy = np.fft.fftfreq(h)[:, None]
    qx = np.fft.fftfreq(w)[None, :]
    ramp = np.exp(-2j * np.pi * (shifts[:, 0, None, None] * qy + shifts[:, 1, None, None] * qx))
    return np.fft.ifft2(np.fft.fft2(stack) * ramp).real


def in_focus_index(defocus_m: np.ndarray) -> int | None:
    """The image taken at (nominally) zero defocus, if any."""
    z = np.flatnonzero(np.abs(defocus_m) <= 1e-3 * np.abs(defocus_m).max())
    return int(z[0]) if z.size else None


def starting_amplitude(stack: np.ndarray, defocus_m: np.ndarray, blur_px: float = 1.0) -> np.ndarray:
    """sqrt of the slightly blurred in-focus image; without one, of the mean of the innermost +-df pair
    (I(+df) + I(-df) = 2 I0 + O(df^2)) blurred a little more."""
    i0 = in_focus_index(defocus_m)
    if i0 is not None:
        base = stack[i0]
    else:
        order = np.argsort(np.abs(defocus_m))
        pos = [i for i in order if defocus_m[i] > 0]
        neg = [i for i in order if defocus_m[i] < 0]
        if pos and neg:
            base = 0.5 * (stack[pos[0]] + stack[neg[0]])
            blur_px = 2 * blur_px
        else:
            return np.ones(stack.shape[1:])
    return np.sqrt(np.clip(ndimage.gaussian_filter(base, blur_px, mode="reflect"), 1e-3, None))


def reference_index(defocus_m: np.ndarray) -> int:
    """The image whose shift is pinned to 0: the one closest to focus."""
    return int(np.argmin(np.abs(defocus_m)))


def has_symmetric_pair(defocus_m: np.ndarray, rtol: float = 0.05) -> bool:
    """True when some +df and -df images have |df| equal within rtol."""
    pos = defocus_m[defocus_m > 0]
    neg = -defocus_m[defocus_m < 0]
    if not pos.size or not neg.size:
        return False
    return bool((np.abs(pos[:, None] - neg[None, :]) <= rtol * np.maximum(pos[:, None], neg[None, :])).any())
