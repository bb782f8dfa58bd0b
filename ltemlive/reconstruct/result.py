"""What a reconstruction returns: a cheap snapshot while it runs, the full result at the end."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Snapshot:
    """The state of a running reconstruction, cheap to publish."""

    iteration: int
    stage: str
    loss: float
    data_loss: float
    reg_loss: float
    defocus_m: np.ndarray
    theta_c_rad: float
    astig_m: tuple[float, float]
    shifts_px: np.ndarray
    scales: np.ndarray
    elapsed_s: float
    phase: np.ndarray | None = None


@dataclass
class ReconstructionResult:
    phase: np.ndarray
    amplitude: np.ndarray
    defocus_m: np.ndarray
    defocus_sigma_m: np.ndarray
    defocus_nominal_m: np.ndarray
    theta_c_rad: float
    theta_c_sigma_rad: float
    astig_m: tuple[float, float]  # Cartesian (a_c, a_s)
    shifts_px: np.ndarray
    scales: np.ndarray
    tie_phase: np.ndarray
    history: list[dict]
    stopped_because: str
    iterations: int
    elapsed_s: float
    loss_kind: str
    reg_weight: float
    noise_level: float
    padding: str
    hot_pixels_replaced: int = 0
    extras: dict = field(default_factory=dict)
    #: one-sigma map of the phase (rad), same shape as phase; None when not computed
    phase_sigma: np.ndarray | None = None
    #: the phase's linear ramp over the field of view (d phi/dy, d phi/dx) in rad/m, part of `phase`
    ramp_rad_per_m: tuple[float, float] = (0.0, 0.0)
    #: whether the data supported moving the defocus / theta_c away from their nominal values
    defocus_refined: bool = False
    theta_c_refined: bool = False
    #: things the user must know about this result (one line each), e.g. a fit that could not improve on its start
    warnings: list[str] = field(default_factory=list)

    def parameters(self) -> dict:
        """The refined microscope parameters with uncertainties, in SI units (for parameters.yaml)."""
        ac, as_ = self.astig_m
        return {
            "defocus_m": [float(d) for d in self.defocus_m],
            "defocus_sigma_m": [float(s) for s in self.defocus_sigma_m],
            "defocus_nominal_m": [float(d) for d in self.defocus_nominal_m],
            "defocus_refined": bool(self.defocus_refined),
            "theta_c_rad": float(self.theta_c_rad),
            "theta_c_sigma_rad": float(self.theta_c_sigma_rad),
            "theta_c_refined": bool(self.theta_c_refined),
            "astig_m": float(math.hypot(ac, as_)),
            "astig_azimuth_rad": float((0.5 * math.atan2(as_, ac)) % math.pi),
            "shifts_px": [[float(v) for v in s] for s in self.shifts_px],
            "intensity_scales": [float(s) for s in self.scales],
            "phase_ramp_rad_per_m": [float(v) for v in self.ramp_rad_per_m],
            "loss": self.loss_kind,
            "reg_weight": float(self.reg_weight),
            "iterations": int(self.iterations),
            "stopped_because": self.stopped_because,
            "elapsed_s": float(self.elapsed_s),
            "padding": self.padding,
            "warnings": list(self.warnings),
        }
