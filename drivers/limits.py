"""Safety limits enforced in the driver layer itself.

Whatever asks for a move (an operator, a plan, the defocus feedback loop), a command outside the limits is
refused *before* the backend is touched, and the refusal is logged. The limits live next to the instrument:
the instrument server applies its own copy, so a misconfigured remote client cannot bypass them.
"""

from __future__ import annotations

from typing import Annotated

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.errors import LimitViolation
from drivers.interface import (
    Capability,
    LensMode,
    Microscope,
    OpticsState,
    SettleSpec,
    StageMove,
    StagePosition,
    check_finite,
)

__all__ = ["LimitedMicroscope", "SafetyLimits"]

Range = tuple[Annotated[float, Field(allow_inf_nan=False)], Annotated[float, Field(allow_inf_nan=False)]]


class SafetyLimits(BaseModel):
    """Allowed envelope. Defaults suit LTEM: |df| <= 5 mm, <= 2 mm per step, stage +-1 mm, tilt +-70 deg."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    defocus_min_m: Annotated[float, Field(allow_inf_nan=False)] = -5e-3
    defocus_max_m: Annotated[float, Field(allow_inf_nan=False)] = 5e-3
    max_defocus_step_m: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 2e-3
    stage_x_m: Range = (-1e-3, 1e-3)
    stage_y_m: Range = (-1e-3, 1e-3)
    stage_z_m: Range = (-3e-4, 3e-4)
    stage_alpha_rad: Range = (-1.22, 1.22)
    stage_beta_rad: Range = (-0.5, 0.5)

    @model_validator(mode="after")
    def _ordered(self) -> SafetyLimits:
        if self.defocus_min_m > self.defocus_max_m:
            raise ValueError("defocus_min_m > defocus_max_m")
        for name in ("stage_x_m", "stage_y_m", "stage_z_m", "stage_alpha_rad", "stage_beta_rad"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: min > max")
        return self

    def check_defocus(self, target_m: float, current_m: float | None) -> None:
        """Raise LimitViolation if ``target_m`` is outside the range or too far from ``current_m``."""
        target_m = check_finite("defocus_m", target_m)
        if not self.defocus_min_m <= target_m <= self.defocus_max_m:
            raise LimitViolation(
                f"defocus {target_m:.6g} m outside the allowed range "
                f"[{self.defocus_min_m:.6g}, {self.defocus_max_m:.6g}] m"
            )
        if current_m is not None and abs(target_m - current_m) > self.max_defocus_step_m:
            raise LimitViolation(
                f"defocus step {target_m - current_m:.6g} m (from {current_m:.6g} m) exceeds the largest "
                f"allowed step {self.max_defocus_step_m:.6g} m"
            )

    def check_stage(self, move: StageMove) -> None:
        ranges = {
            "x_m": self.stage_x_m,
            "y_m": self.stage_y_m,
            "z_m": self.stage_z_m,
            "alpha_rad": self.stage_alpha_rad,
            "beta_rad": self.stage_beta_rad,
        }
        for axis, value in move.axes().items():
            lo, hi = ranges[axis]
            if not lo <= value <= hi:
                raise LimitViolation(f"stage {axis} = {value:.6g} outside the allowed range [{lo:.6g}, {hi:.6g}]")


class LimitedMicroscope:
    """Wraps any :class:`Microscope`; refuses and logs writes outside :class:`SafetyLimits`.

    The step limit is measured from the last defocus this wrapper confirmed or read; when that is unknown
    (at start, or after a failed write) the current read-back is fetched first - a read, never a write.
    """

    def __init__(self, inner: Microscope, limits: SafetyLimits) -> None:
        self.inner = inner
        self.limits = limits
        self._last_defocus_m: float | None = None

    def _refuse(self, exc: LimitViolation) -> LimitViolation:
        logger.warning("{}: command refused by safety limits: {}", self.inner.instrument_id, exc)
        return exc

    @property
    def instrument_id(self) -> str:
        return self.inner.instrument_id

    def capabilities(self) -> frozenset[Capability]:
        return self.inner.capabilities()

    def get_defocus(self) -> float:
        value = self.inner.get_defocus()
        self._last_defocus_m = value
        return value

    def set_defocus(self, defocus_m: float, settle: SettleSpec | None = None) -> float:
        try:
            # Range first: it needs no read of the instrument at all.
            self.limits.check_defocus(defocus_m, None)
            current = self._last_defocus_m if self._last_defocus_m is not None else self.get_defocus()
            self.limits.check_defocus(defocus_m, current)
        except LimitViolation as exc:
            raise self._refuse(exc) from None
        self._last_defocus_m = None  # unknown until confirmed
        value = self.inner.set_defocus(defocus_m, settle)
        self._last_defocus_m = value
        return value

    def get_lens_mode(self) -> LensMode:
        return self.inner.get_lens_mode()

    def set_lens_mode(self, mode: LensMode) -> LensMode:
        self._last_defocus_m = None  # a mode change changes the focus reference
        return self.inner.set_lens_mode(mode)

    def get_magnification(self) -> float:
        return self.inner.get_magnification()

    def get_pixel_size(self) -> float:
        return self.inner.get_pixel_size()

    def get_stage(self) -> StagePosition:
        return self.inner.get_stage()

    def move_stage(self, target: StageMove, settle: SettleSpec | None = None) -> StagePosition:
        try:
            self.limits.check_stage(target)
        except LimitViolation as exc:
            raise self._refuse(exc) from None
        return self.inner.move_stage(target, settle)

    def get_beam_blanked(self) -> bool:
        return self.inner.get_beam_blanked()

    def set_beam_blanked(self, blanked: bool) -> bool:
        return self.inner.set_beam_blanked(blanked)

    def optics_state(self) -> OpticsState:
        return self.inner.optics_state()

    def close(self) -> None:
        self.inner.close()
