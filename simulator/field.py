"""The exit wave of a specimen on the padded, oversampled image-formation grid, with cached FFT.

Images are formed on a grid that covers the camera frame plus a margin on every side, at
``pixel_size_m / oversample``; the periodic FFT only wraps inside the margin, and the camera sees a
non-periodic crop, as in a real microscope. Shared by :func:`simulator.series.simulate_series` and
:class:`simulator.instrument.VirtualLTEM` so both form identical images.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from .camera import bin_mean
from .constants import wavelength_m
from .imaging import FrequencyGrid, incoherent_source
from .phase import exit_wave
from .specimens import make_specimen

if TYPE_CHECKING:
    from .series import SimulationConfig

__all__ = ["SpecimenField", "auto_margin_px"]

#: Largest beam deflection the margin allows for (rad); 1 T x 100 nm deflects 200 kV electrons by 6e-5.
_MAX_DEFLECTION_RAD = 1e-4


def auto_margin_px(cfg: SimulationConfig, max_abs_defocus_m: float) -> int:
    """Margin (camera pixels per side) beyond which wrapped-around signal cannot reach the frame.

    Contributions: the Fresnel spread lambda |df| q of the highest frequency that survives the
    spatial-coherence envelope (E ~ exp(-(pi theta_c df q)^2), negligible beyond q = 3 / (pi theta_c df),
    capped by the grid's Nyquist frequency); the geometric shift |df| * deflection; the expected drift
    excursion of the random walk; and the displacement at the frame corner from magnification/rotation.
    """
    px = cfg.pixel_size_m
    df = abs(max_abs_defocus_m)
    lam = wavelength_m(cfg.voltage_v)
    q_max = cfg.oversample / (2.0 * px)
    if cfg.theta_c_rad > 0 and df > 0:
        q_max = min(q_max, 3.0 / (np.pi * cfg.theta_c_rad * df))
    spread_m = lam * (df + abs(cfg.astig_m)) * q_max + df * _MAX_DEFLECTION_RAD
    drift_px = 4.0 * cfg.drift_px_per_frame * math.sqrt(max(len(cfg.defocus_m), 1))
    half_diag = 0.5 * math.hypot(*cfg.shape)
    affine_px = (abs(cfg.mag_change_per_m) + abs(cfg.rotation_rad_per_m)) * df * half_diag
    return math.ceil(spread_m / px + drift_px + affine_px) + 8


def _padded_size(n_inner: int, n_min: int) -> int:
    """Smallest FFT-friendly size >= n_min whose excess over n_inner is even (keeps the frame centred)."""
    n = sfft.next_fast_len(n_min)
    while (n - n_inner) % 2:
        n = sfft.next_fast_len(n + 1)
    return n


class SpecimenField:
    """Specimen exit wave on the padded oversampled grid, and image formation on it."""

    def __init__(self, cfg: SimulationConfig, max_abs_defocus_m: float | None = None) -> None:
        self.cfg = cfg
        os_ = cfg.oversample
        self.pixel_size_m = cfg.pixel_size_m / os_  # image-formation pixel
        h, w = cfg.shape
        if max_abs_defocus_m is None:
            max_abs_defocus_m = max(abs(d) for d in true_defocus(cfg, cfg.defocus_m))
        self.margin_px = cfg.margin_px if cfg.margin_px is not None else auto_margin_px(cfg, max_abs_defocus_m)
        inner = (h * os_, w * os_)
        self.grid_shape = tuple(
            _padded_size(n, n + 2 * self.margin_px * os_) for n in inner
        )
        oy, ox = ((g - n) // 2 for g, n in zip(self.grid_shape, inner, strict=True))
        self.crop = (slice(oy, oy + inner[0]), slice(ox, ox + inner[1]))

        self.specimen = make_specimen(
            cfg.specimen, self.grid_shape, self.pixel_size_m, seed=cfg.seed, **cfg.specimen_params
        )
        self.phase, self.amplitude = exit_wave(self.specimen, cfg.voltage_v)
        self.freq = FrequencyGrid(self.grid_shape, self.pixel_size_m)
        self._psi_q = sfft.fft2(self.amplitude * np.exp(1j * self.phase), workers=-1)
        self._transfer_cache: dict[float, np.ndarray] = {}
        self._incoherent_cache: dict[tuple, np.ndarray] = {}

    # ground truth at camera pixels: block mean of the oversampled truth, cropped to the frame
    def truth(self) -> tuple[np.ndarray, np.ndarray]:
        os_ = self.cfg.oversample
        return bin_mean(self.phase[self.crop], os_), bin_mean(self.amplitude[self.crop], os_)

    def _transfer(self, df: float) -> np.ndarray:
        t = self._transfer_cache.get(df)
        if t is None:
            c = self.cfg
            t = self.freq.transfer(df, c.voltage_v, c.cs_m, c.theta_c_rad, c.focal_spread_m, c.astig_m,
                                   c.astig_azimuth_rad)
            if len(self._transfer_cache) >= 4:  # a few defocus values are revisited; bound the memory
                self._transfer_cache.pop(next(iter(self._transfer_cache)))
            self._transfer_cache[df] = t
        return t

    def _incoherent(self, defocus_m: float, shift_m: tuple[float, float], magnification: float,
                    rotation_rad: float) -> np.ndarray:
        """Incoherent sum over the source: each point a coherent image with the tilted transfer (no spatial
        envelope). The whole-grid sum is kept per (defocus, magnification, rotation): a drift moves the specimen
        and therefore every source point's image alike, so it is applied to the sum (an exact periodic shift) and a
        revisited defocus costs two real FFTs instead of a propagation per source point."""
        c = self.cfg
        key = (defocus_m, magnification, rotation_rad)
        full = self._incoherent_cache.get(key)
        if full is None:
            psi_q = self._psi_q if (magnification, rotation_rad) == (1.0, 0.0) else self._affine_wave_q(
                magnification, rotation_rad)
            full = np.zeros(self.grid_shape)
            for weight, ty, tx in incoherent_source(c.theta_c_rad, c.voltage_v, c.source_points):
                t = self.freq.transfer(defocus_m, c.voltage_v, c.cs_m, 0.0, c.focal_spread_m, c.astig_m,
                                       c.astig_azimuth_rad, tilt=(ty, tx))
                wave = sfft.ifft2(psi_q * t, workers=-1)
                full += weight * (wave.real**2 + wave.imag**2)
            if len(self._incoherent_cache) >= 8:
                self._incoherent_cache.pop(next(iter(self._incoherent_cache)))
            self._incoherent_cache[key] = full
        dy, dx = shift_m
        if dy or dx:
            full = _fourier_shift_real(full, dy, dx, self.freq)
        return full[self.crop]

    def _affine_wave_q(self, magnification: float, rotation_rad: float) -> np.ndarray:
        """FFT of the exit wave magnified and rotated about the frame centre.

        A feature at r (from the centre) moves to magnification * R(rotation) r; R turns +x towards +y.
        Phase and amplitude are interpolated (cubic spline) separately: the phase is unwrapped, so this
        is smooth where the wave itself would alias.
        """
        c, s = math.cos(rotation_rad), math.sin(rotation_rad)
        # output (y, x) samples the input at R(-rotation) (y, x) / magnification, in (y, x) index order
        matrix = np.array([[c, -s], [s, c]]) / magnification
        centre = (np.array(self.grid_shape) - 1) / 2.0
        offset = centre - matrix @ centre
        ph = ndimage.affine_transform(self.phase, matrix, offset=offset, order=3, mode="nearest")
        am = ndimage.affine_transform(self.amplitude, matrix, offset=offset, order=3, mode="nearest")
        return sfft.fft2(np.clip(am, 0.0, None) * np.exp(1j * ph), workers=-1)

    def intensity(
        self,
        defocus_m: float,
        shift_px: tuple[float, float] = (0.0, 0.0),
        magnification: float = 1.0,
        rotation_rad: float = 0.0,
    ) -> np.ndarray:
        """Normalised intensity over the camera frame on the oversampled grid (H*os, W*os).

        shift_px (dy, dx) in camera pixels moves the specimen (a Fourier phase ramp: exact sub-pixel shift).
        """
        if magnification != 1.0 or rotation_rad != 0.0:
            psi_q = self._affine_wave_q(magnification, rotation_rad)
        else:
            psi_q = self._psi_q
        dy, dx = (float(v) * self.cfg.pixel_size_m for v in shift_px)
        if (dy or dx) and not (self.cfg.coherence == "incoherent" and self.cfg.theta_c_rad > 0):
            # f(r - s) <-> F(q) exp(-2 pi i q.s); separable, so two 1-D ramps
            psi_q = psi_q * np.exp(-2j * np.pi * self.freq.qy * dy) * np.exp(-2j * np.pi * self.freq.qx * dx)
        c = self.cfg
        if c.coherence == "incoherent" and c.theta_c_rad > 0:
            return self._incoherent(float(defocus_m), (dy, dx), magnification, rotation_rad)
        if c.coherence == "envelope" or c.theta_c_rad == 0:
            wave = sfft.ifft2(psi_q * self._transfer(float(defocus_m)), workers=-1)[self.crop]
            return wave.real**2 + wave.imag**2


def _fourier_shift_real(a: np.ndarray, dy: float, dx: float, freq: FrequencyGrid) -> np.ndarray:
    """a(r - s) on the periodic grid (s in metres), by the real FFT."""
    h, w = a.shape
    qx = freq.qx[:, : w // 2 + 1]
    ramp = np.exp(-2j * np.pi * freq.qy * dy) * np.exp(-2j * np.pi * np.abs(qx) * dx)
    return sfft.irfft2(sfft.rfft2(a, workers=-1) * ramp, s=(h, w), workers=-1)


def true_defocus(cfg: SimulationConfig, nominal_m) -> np.ndarray:
    """Miscalibrated lens: true = nominal * (1 + defocus_scale_error) + defocus_offset_m."""
    return np.asarray(nominal_m, dtype=np.float64) * (1.0 + cfg.defocus_scale_error) + cfg.defocus_offset_m
