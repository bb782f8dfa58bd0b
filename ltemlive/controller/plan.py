"""Acquisition plans as data: what to acquire, in what order, and what to do between series.

A :class:`Plan` is a through-focus series (a list of *true* defocus values: what the specimen should be
imaged at; the controller maps them through the defocus calibration to what it commands), repeated
``repeats`` times back to back or, with ``interval_s``, as a time series (one series starting every
``interval_s``). A :class:`SeriesHook` runs before a series: a stage move through the driver (checked by its
limits), a wait, and labels (applied field, temperature) recorded with the series. :meth:`Plan.series`
expands the plan into the :class:`SeriesPlan` items the controller executes — nothing is hidden in code.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.interface import Roi, SettleSpec, StageMove

__all__ = ["Plan", "SeriesHook", "SeriesPlan"]

#: No LTEM defocus is anywhere near this; a value beyond it is a unit mistake (mm or µm given as m).
MAX_ABS_DEFOCUS_M = 0.05


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeriesHook(_Model):
    """Done before a series, at a safe point (the column is not acquiring)."""

    stage: StageMove | None = Field(None, description="stage move (m, rad) through the driver and its limits")
    wait_s: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] = Field(
        0.0, description="wait after the move, e.g. for a temperature or field step to settle (s)"
    )
    labels: dict[str, float | int | str] = Field(
        default_factory=dict,
        description="what this series is, recorded with it: applied field (field_t), temperature (temperature_k)...",
    )


class SeriesPlan(_Model):
    index: int
    defocus_m: tuple[float, ...]
    exposure_s: float
    binning: int
    roi: Roi | None
    start_after_s: float  # from the start of the run (0: as soon as the previous series ends)
    hook: SeriesHook | None


class Plan(_Model):
    defocus_m: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(
        default_factory=lambda: [-1.6e-3, -0.15e-3, 0.15e-3, 1.6e-3],
        description="true defocus of each image in metres, in acquisition order (df > 0 over-focus)",
        min_length=2,
        max_length=64,
    )
    repeats: Annotated[int, Field(ge=1, le=100_000)] = Field(3, description="number of series")
    interval_s: Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)] = Field(
        0.0, description="time series: start one series every interval_s seconds (0: back to back)"
    )
    exposure_s: Annotated[float, Field(gt=0, le=600, allow_inf_nan=False)] = Field(1.0, description="per image (s)")
    binning: Annotated[int, Field(ge=1, le=16)] = 1
    roi: Roi | None = None
    dose_e_per_px: Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)] | None = Field(
        None,
        description="electrons per pixel per image when the camera counts electrons (Poisson likelihood); "
        "null when it does not (a Gaussian likelihood is used)",
    )
    settle: SettleSpec | None = Field(None, description="how a defocus change is confirmed (driver default if null)")
    wait_for_feedback_s: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] = Field(
        0.0,
        description="closed loop: before each series wait up to this long for the previous series' calibration "
        "(0: never wait; the frames never wait for a reconstructor either way)",
    )
    hooks: list[SeriesHook] = Field(
        default_factory=list, description="hook k runs before series k; series beyond the list have none"
    )

    @field_validator("defocus_m")
    @classmethod
    def _range(cls, v: list[float]) -> list[float]:
        bad = [d for d in v if abs(d) > MAX_ABS_DEFOCUS_M]
        if bad:
            raise ValueError(
                f"defocus values {bad} are beyond ±{MAX_ABS_DEFOCUS_M} m: give metres (1.6 mm is 1.6e-3)"
            )
        if len({round(d, 12) for d in v}) < 2:
            raise ValueError("a through-focus series needs at least two different defocus values")
        return v

    def series(self) -> list[SeriesPlan]:
        return [
            SeriesPlan(
                index=k,
                defocus_m=tuple(self.defocus_m),
                exposure_s=self.exposure_s,
                binning=self.binning,
                roi=self.roi,
                start_after_s=k * self.interval_s,
                hook=self.hooks[k] if k < len(self.hooks) else None,
            )
            for k in range(self.repeats)
        ]

    def summary(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def duration_hint_s(self, per_image_overhead_s: float = 0.2) -> float:
        per_series = len(self.defocus_m) * (self.exposure_s + per_image_overhead_s)
        if self.interval_s > 0:
            return max(self.interval_s * (self.repeats - 1) + per_series, 0.0)
        return self.repeats * per_series if math.isfinite(per_series) else math.inf
