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
    coherence: Literal["blur", "envelope"] = Field(
        "blur",
        description="partial spatial coherence: blur (default): each image blurred by the source (the incoherent "
        "sum over source points, conserves intensity); envelope: the quasi-coherent envelope on the wave, which "
        "damps the strongly deflected beams of strong phase objects",
    )
    detector: Literal["point", "pixel"] = Field(
        "point",
        description="how a camera pixel records the image: point (default): the intensity at the pixel centre, as "
        "simple simulations make it; pixel: integrated over the pixel's square, as a real camera does (the image "
        "spectrum times sinc(qx px) sinc(qy px)). With the wrong one theta_c absorbs the difference (+4 % on a "
        "2x2-binned simulation read as point samples) and the phase's fine detail comes out weak",
    )
    ramp: Literal["phase", "drift"] = Field(
        "phase",
        description="what a shift of the images in proportion to their defocus is (the data cannot tell): phase "
        "(default): a linear phase ramp, i.e. a uniform in-plane induction deflecting the beam, kept in the phase and "
        "reported as phase_ramp_rad_per_m; drift: specimen drift, so the phase's plane over the field of view is "
        "removed and the equivalent shifts are added to the reported shifts",
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
    max_iter: int = Field(
        400, ge=1, le=100_000,
        description="cap on phase iterations (L-BFGS steps); runs normally stop before it, when the phase and the "
        "parameters change by less than a tenth of their uncertainty per block",
    )
    preconditioner_q0: float | Literal["auto"] = Field(
        "auto",
        description="low-frequency boost q0 (cycles/pixel) of the phase correction, P = 1 + (q0/q)^2. auto: where the "
        "largest defocus's transfer stops growing as q^2, q0 = px / sqrt(2 lambda |df|max), clipped to 0.02-0.2: below "
        "it the data fix the phase only weakly and an unboosted gradient leaves the smooth part of strong phases "
        "unconverged (issue 9: 91 % of a vortex array's error below 0.005 cycles/px at the iteration cap)",
    )
    defocus_scan_range: float = Field(
        0.15, gt=0, le=0.5, description="relative half-range of the first data-only fit of the common defocus scale"
    )
    defocus_prior: float = Field(
        0.1, gt=0, le=1.0,
        description="one-sigma relative uncertainty of the nominal defocus calibration (a Gaussian prior on the "
        "common scale; 0.1 = the lens calibration is good to 10 %)",
    )
    theta_c_prior: float = Field(
        1.0, gt=0, le=10.0, description="one-sigma uncertainty of ln(theta_c) about the nominal value (1.0: a factor e)"
    )
    block_iter: int = Field(15, ge=1, le=1000, description="phase steps between optics updates")
    optics_iter: int = Field(6, ge=1, le=1000, description="optics steps per update")
    device: str = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
