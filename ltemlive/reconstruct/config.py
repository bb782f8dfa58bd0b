"""What the AD reconstructor refines, how it measures misfit, and when it stops."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FreeGroups(BaseModel):
    """Which unknowns are refined (True) or held at their starting value (False)."""

    model_config = ConfigDict(extra="forbid")

    phase: bool = True
    amplitude: bool = False  # refine only on clean data; otherwise sqrt of the (blurred) in-focus image
    defocus: bool = True  # per-image, with the in-focus image (if any) pinned
    theta_c: bool = True
    astigmatism: bool = False
    shifts: bool = True  # per-image sub-pixel registration
    scales: bool = True  # per-image intensity scale


class ReconstructionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    free: FreeGroups = Field(default_factory=FreeGroups)
    defocus_model: Literal["scale", "per_image"] = Field(
        "scale",
        description="scale: true = scale * nominal (a lens calibration error); per_image: one free defocus "
        "per image on top (offset, hysteresis), less well determined",
    )
    loss: Literal["auto", "poisson", "sqrt_gaussian"] = Field(
        "auto", description="auto: Poisson NLL when the dose is known, else a square-root-domain Gaussian"
    )
    regularization: Literal["tv2", "tv", "none"] = "tv2"
    reg_weight: float | Literal["auto"] = Field(
        "auto", description="weight of the regulariser; auto scales it with the estimated noise variance"
    )
    reg_factor: float = Field(1.0, gt=0, le=1e4, description="multiplies the automatic weight")
    padding: Literal["extend", "mirror", "zero", "periodic"] = Field(
        "extend",
        description="extend: the phase beyond the field of view is fitted too (default, for real images); "
        "mirror/zero: fixed padding; periodic: none (only for periodic synthetic data)",
    )
    max_iter: int = Field(400, ge=1, le=100_000, description="cap on phase iterations (L-BFGS steps)")
    rtol: float = Field(2e-5, ge=0, lt=1, description="stop when the loss falls by less than this per step")
    discrepancy: float = Field(
        0.0, ge=0, le=10, description="stop when the data misfit reaches this multiple of the noise level (0: off)"
    )
    preconditioner_q0: float = Field(
        0.02,
        ge=0,
        le=0.5,
        description="low-frequency boost q0 in cycles/pixel for the phase correction; larger converges faster "
        "on benign data but also amplifies the low-frequency errors of the TIE start into local minima "
        "(0.005 is more robust on strongly non-linear series, slower on smooth ones)",
    )
    defocus_scan: bool = Field(True, description="set the common defocus scale by data-only fits")
    defocus_scan_range: float = Field(0.15, gt=0, le=0.5, description="relative half-range of that scan")
    block_iter: int = Field(15, ge=1, le=1000, description="phase steps between optics updates")
    optics_iter: int = Field(6, ge=1, le=1000, description="optics steps per update")
    device: str = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    seed: int = 0
