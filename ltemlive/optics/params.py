"""Microscope parameters as a validated model. SI units throughout."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator


class MicroscopeParams(BaseModel):
    """The optical parameters of the microscope that image formation depends on.

    Defocus is not here: it is per image and lives with the series.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    voltage_v: float = Field(200e3, gt=0, le=3e6, description="accelerating voltage (V)")
    cs_m: float = Field(1e-3, ge=0, le=10.0, description="spherical aberration coefficient (m)")
    theta_c_rad: float = Field(1e-5, ge=0, le=1e-2, description="beam divergence semi-angle (rad)")
    focal_spread_m: float = Field(100e-9, ge=0, le=1e-4, description="focal spread, 1/e half-width (m)")
    astig_m: float = Field(0.0, ge=0, le=1e-3, description="2-fold astigmatism amplitude Ca (m)")
    astig_azimuth_rad: float = Field(0.0, ge=-2 * math.pi, le=2 * math.pi, description="azimuth phi_a (rad)")
    aperture_q_max: float | None = Field(
        None, gt=0, description="objective aperture radius in spatial frequency (1/m); None = no aperture"
    )

    @field_validator("*")
    @classmethod
    def _finite(cls, v, info):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{info.field_name} must be finite, got {v}")
        return v
