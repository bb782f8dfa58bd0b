"""Through-focus series simulation: configuration, result container and ``simulate_series``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .camera import record
from .field import SpecimenField, true_defocus
from .specimens import SPECIMENS, specimen_params

__all__ = ["SimulatedSeries", "SimulationConfig", "simulate_series"]

_Side = Annotated[int, Field(ge=16, le=8192)]
_Defocus = Annotated[float, Field(ge=-0.05, le=0.05, allow_inf_nan=False)]


class SimulationConfig(BaseModel):
    """Everything that defines a simulated through-focus series (SI units; see docs/simulator.md)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    specimen: str = "resolution_pattern"
    specimen_params: dict[str, Any] = Field(default_factory=dict)
    #: camera frame (H, W) in camera pixels
    shape: tuple[_Side, _Side] = (512, 512)
    #: camera pixel size at the specimen
    pixel_size_m: float = Field(5e-9, gt=1e-11, le=1e-6)
    #: image formation runs at pixel_size_m / oversample, then is binned to camera pixels
    oversample: int = Field(2, ge=1, le=8)
    #: field beyond the frame on each side (camera px) so nothing wraps around; None = automatic
    margin_px: int | None = Field(None, ge=0, le=8192)
    voltage_v: float = Field(200e3, ge=1e4, le=3e6)
    cs_m: float = Field(1e-3, ge=-0.1, le=0.1)
    theta_c_rad: float = Field(1e-5, ge=0.0, le=1e-2)
    #: partial spatial coherence: "incoherent" sums the images of a Gaussian source's points (physical);
    #: "envelope" multiplies the wave by the quasi-coherent envelope E(q) (the textbook approximation)
    coherence: Literal["incoherent", "envelope"] = "incoherent"
    #: Gauss-Hermite points per axis for the incoherent source sum
    source_points: int = Field(5, ge=1, le=25)
    focal_spread_m: float = Field(100e-9, ge=0.0, le=1e-5)
    astig_m: float = Field(0.0, ge=-1e-3, le=1e-3)
    astig_azimuth_rad: float = Field(0.0, ge=-2 * np.pi, le=2 * np.pi)
    #: nominal defocus of each image (df > 0 over-focus), finite, |df| <= 5 cm
    defocus_m: list[_Defocus] = Field(default_factory=lambda: [-1.6e-3, -0.15e-3, 0.15e-3, 1.6e-3],
                                      min_length=1, max_length=256)
    #: electrons per camera pixel (per image; per second of exposure for VirtualLTEM); None = noise-free
    dose_e_per_px: float | None = Field(None, gt=0.0, le=1e7)
    gain: float = Field(1.0, gt=0.0, le=1e4)
    read_noise_e: float = Field(0.0, ge=0.0, le=1e3)
    blur_px: float = Field(0.0, ge=0.0, le=20.0)
    hot_pixel_fraction: float = Field(0.0, ge=0.0, le=0.1)
    #: true defocus = nominal * (1 + defocus_scale_error) + defocus_offset_m
    defocus_scale_error: float = Field(0.0, ge=-0.5, le=0.5)
    defocus_offset_m: float = Field(0.0, ge=-1e-2, le=1e-2)
    #: random-walk specimen drift: std per frame and axis, camera pixels
    drift_px_per_frame: float = Field(0.0, ge=0.0, le=100.0)
    #: relative magnification change per metre of true defocus (e.g. 10 -> +1.6 % at 1.6 mm)
    mag_change_per_m: float = Field(0.0, ge=-100.0, le=100.0)
    #: image rotation per metre of true defocus (rad/m), +x turning towards +y
    rotation_rad_per_m: float = Field(0.0, ge=-1000.0, le=1000.0)
    seed: int = Field(0, ge=0, le=2**63 - 1)

    @field_validator("specimen")
    @classmethod
    def _known_specimen(cls, v: str) -> str:
        if v not in SPECIMENS:
            raise ValueError(f"unknown specimen {v!r}; valid names: {', '.join(sorted(SPECIMENS))}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SimulationConfig:
        valid = specimen_params(self.specimen)
        bad = sorted(set(self.specimen_params) - set(valid))
        if bad:
            hint = " (use the top-level seed)" if "seed" in bad else ""
            raise ValueError(
                f"specimen_params: {self.specimen!r} has no parameter(s) {bad}{hint}; valid: {valid}"
            )
        if self.read_noise_e > 0 and self.dose_e_per_px is None:
            raise ValueError("read_noise_e > 0 needs dose_e_per_px (dose None means noise-free)")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> SimulationConfig:
        """Load a config from a YAML mapping (e.g. config/simulate.yaml)."""
        import yaml

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        return cls.model_validate(data)


@dataclass
class SimulatedSeries:
    """A simulated series with its ground truth (camera pixels, SI units).

    images: (N, H, W) float32 recorded frames. defocus_nominal_m / defocus_true_m: (N,).
    shifts_px: (N, 2) specimen shift (dy, dx) applied to each frame, camera pixels.
    phase, amplitude: (H, W) exit-wave truth, block mean of the oversampled truth over the frame.
    magnification, rotation_rad: (N,) the defocus-dependent image scale and rotation applied.
    """

    images: np.ndarray
    defocus_nominal_m: np.ndarray
    defocus_true_m: np.ndarray
    shifts_px: np.ndarray
    phase: np.ndarray
    amplitude: np.ndarray
    pixel_size_m: float
    config: SimulationConfig
    magnification: np.ndarray = field(default_factory=lambda: np.ones(0))
    rotation_rad: np.ndarray = field(default_factory=lambda: np.zeros(0))


def random_streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent (drift, camera) generators: changing the dose does not change the drift path."""
    drift, camera = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(drift), np.random.default_rng(camera)


def simulate_series(cfg: SimulationConfig) -> SimulatedSeries:
    """Simulate a through-focus series (seeded: the same config gives identical output)."""
    field_ = SpecimenField(cfg)
    drift_rng, camera_rng = random_streams(cfg.seed)
    nominal = np.asarray(cfg.defocus_m, dtype=np.float64)
    true = true_defocus(cfg, nominal)
    n = nominal.size
    steps = drift_rng.normal(0.0, cfg.drift_px_per_frame, size=(n, 2)) if cfg.drift_px_per_frame else np.zeros((n, 2))
    steps[0] = 0.0  # the first frame defines the reference position of the ground truth
    shifts = np.cumsum(steps, axis=0)
    mag = 1.0 + cfg.mag_change_per_m * true
    rot = cfg.rotation_rad_per_m * true

    h, w = cfg.shape
    os_ = cfg.oversample
    intens = np.empty((n, h * os_, w * os_))
    for k in range(n):
        intens[k] = field_.intensity(true[k], shifts[k], mag[k], rot[k])
    images = record(
        intens, cfg.dose_e_per_px, camera_rng, gain=cfg.gain, read_noise_e=cfg.read_noise_e,
        blur_px=cfg.blur_px, hot_pixel_fraction=cfg.hot_pixel_fraction, bin_factor=os_,
    )
    phase, amplitude = field_.truth()
    return SimulatedSeries(
        images=images, defocus_nominal_m=nominal, defocus_true_m=true, shifts_px=shifts, phase=phase,
        amplitude=amplitude, pixel_size_m=cfg.pixel_size_m, config=cfg, magnification=mag, rotation_rad=rot,
    )
