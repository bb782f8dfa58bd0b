"""VirtualLTEM: the stateful physics of a simulated Lorentz TEM for the driver layer.

Timing, faults and the network protocol live in ``drivers/``; this class only answers "what would the
camera record now": lens miscalibration and hysteresis, specimen drift between acquisitions, dose
proportional to exposure, on-chip binning.
"""

from __future__ import annotations

import math

import numpy as np

from .camera import record
from .field import SpecimenField, true_defocus
from .series import SimulationConfig, random_streams

__all__ = ["VirtualLTEM"]


class VirtualLTEM:
    """A simulated instrument built from a :class:`SimulationConfig`.

    Lens model: true defocus = nominal * (1 + defocus_scale_error) + defocus_offset_m - d * hysteresis_m / 2,
    where d = +1 if the last change of the nominal defocus was an increase, -1 if a decrease, and 0 before
    the first change (a freshly normalised lens at nominal 0). The lens lags behind the command, so the
    values approached from below and from above differ by hysteresis_m.

    The specimen exit wave is built once (on a field wide enough for the configured defocus values plus
    the hysteresis); defocus far beyond ``cfg.defocus_m`` can wrap around the field's margin.
    The first acquisition sees the specimen at shift (0, 0); it then drifts by a random-walk step of
    ``drift_px_per_frame`` (std per axis, camera pixels) after each acquisition.
    """

    def __init__(self, cfg: SimulationConfig, hysteresis_m: float = 0.0) -> None:
        if not (math.isfinite(hysteresis_m) and hysteresis_m >= 0):
            raise ValueError(f"hysteresis_m must be finite and >= 0, got {hysteresis_m!r}")
        self.cfg = cfg
        self.hysteresis_m = float(hysteresis_m)
        max_df = float(np.max(np.abs(true_defocus(cfg, cfg.defocus_m)))) + self.hysteresis_m / 2
        self._field = SpecimenField(cfg, max_abs_defocus_m=max_df)
        #: largest |true defocus| the field's margin is made for; beyond it images wrap around
        self.max_true_defocus_m = max_df
        self._drift_rng, self._camera_rng = random_streams(cfg.seed)
        self._nominal = 0.0
        self._direction = 0
        self._shift = np.zeros(2)
        self._frames = 0

    @property
    def nominal_defocus_m(self) -> float:
        return self._nominal

    def true_defocus_for(self, nominal_m: float) -> float:
        """The largest |true defocus| a command of ``nominal_m`` can give (either hysteresis branch)."""
        return abs(float(true_defocus(self.cfg, float(nominal_m)))) + self.hysteresis_m / 2

    @property
    def true_defocus_m(self) -> float:
        calibrated = float(true_defocus(self.cfg, self._nominal))
        return calibrated - self._direction * self.hysteresis_m / 2

    @property
    def shift_px(self) -> tuple[float, float]:
        """Current specimen shift (dy, dx) in camera pixels relative to the ground truth."""
        return float(self._shift[0]), float(self._shift[1])

    def set_defocus(self, nominal_m: float) -> None:
        nominal_m = float(nominal_m)
        if not math.isfinite(nominal_m):
            raise ValueError(f"nominal defocus must be finite, got {nominal_m!r}")
        if nominal_m > self._nominal:
            self._direction = 1
        elif nominal_m < self._nominal:
            self._direction = -1
        self._nominal = nominal_m

    def acquire(self, exposure_s: float = 1.0, binning: int = 1) -> tuple[np.ndarray, dict]:
        """Record one frame (float32, shape (H // binning, W // binning)) and its truth.

        dose_e_per_px is per camera pixel per second: a binned pixel collects
        dose * exposure_s * binning^2 electrons on average and is read out once (one read noise).
        The detector blur is given in unbinned pixels and applied at the binned scale (blur_px / binning).
        """
        if not (math.isfinite(exposure_s) and exposure_s > 0):
            raise ValueError(f"exposure_s must be positive and finite, got {exposure_s!r}")
        if int(binning) != binning or binning < 1:
            raise ValueError(f"binning must be a positive integer, got {binning!r}")
        binning = int(binning)
        cfg = self.cfg
        df = self.true_defocus_m
        mag = 1.0 + cfg.mag_change_per_m * df
        rot = cfg.rotation_rad_per_m * df
        intensity = self._field.intensity(df, self._shift, mag, rot)
        dose = None if cfg.dose_e_per_px is None else cfg.dose_e_per_px * exposure_s * binning**2
        frame = record(
            intensity, dose, self._camera_rng, gain=cfg.gain, read_noise_e=cfg.read_noise_e,
            blur_px=cfg.blur_px / binning, hot_pixel_fraction=cfg.hot_pixel_fraction,
            bin_factor=cfg.oversample * binning,
        )
        truth = {
            "frame_index": self._frames,
            "nominal_defocus_m": self._nominal,
            "true_defocus_m": df,
            "shift_px": self.shift_px,
            "magnification": mag,
            "rotation_rad": rot,
            "exposure_s": float(exposure_s),
            "binning": binning,
            "dose_e_per_px": dose,
        }
        self._frames += 1
        if cfg.drift_px_per_frame > 0:
            self._shift = self._shift + self._drift_rng.normal(0.0, cfg.drift_px_per_frame, size=2)
        return frame, truth

    def ground_truth(self) -> tuple[np.ndarray, np.ndarray]:
        """(phase, amplitude) of the specimen at camera pixels, at shift (0, 0) and unit magnification."""
        return self._field.truth()
