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

def _range(bound: float):
    """A [lo, hi] pair of finite floats, each within +-bound: a typo like 1e300 is refused, not obeyed."""
    one = Annotated[float, Field(ge=-bound, le=bound, allow_inf_nan=False)]
    return tuple[one, one]


#: Sanity bounds of the limits themselves (no LTEM goes beyond them): defocus +-20 mm, steps <= 10 mm, stage
#: +-3 mm (z +-1 mm), tilts +-80 degrees.
_DEFOCUS_BOUND_M = 20e-3
_STAGE_BOUND_M = 3e-3
_Z_BOUND_M = 1e-3
_TILT_BOUND_RAD = 1.40


class SafetyLimits(BaseModel):
    """Allowed envelope. Defaults suit LTEM: |df| <= 5 mm, <= 2 mm per step, stage +-1 mm and <= 200 um per
    move, tilt +-70 deg and <= 15 deg per move, Lorentz mode only, every step measured from a fresh read-back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    defocus_min_m: Annotated[float, Field(ge=-_DEFOCUS_BOUND_M, le=_DEFOCUS_BOUND_M, allow_inf_nan=False)] = -5e-3
    defocus_max_m: Annotated[float, Field(ge=-_DEFOCUS_BOUND_M, le=_DEFOCUS_BOUND_M, allow_inf_nan=False)] = 5e-3
    max_defocus_step_m: Annotated[float, Field(gt=0, le=10e-3, allow_inf_nan=False)] = 2e-3
    stage_x_m: _range(_STAGE_BOUND_M) = (-1e-3, 1e-3)  # type: ignore[valid-type]
    stage_y_m: _range(_STAGE_BOUND_M) = (-1e-3, 1e-3)  # type: ignore[valid-type]
    stage_z_m: _range(_Z_BOUND_M) = (-3e-4, 3e-4)  # type: ignore[valid-type]
    stage_alpha_rad: _range(_TILT_BOUND_RAD) = (-1.22, 1.22)  # type: ignore[valid-type]
    stage_beta_rad: _range(_TILT_BOUND_RAD) = (-0.5, 0.5)  # type: ignore[valid-type]
    max_stage_step_m: Annotated[float, Field(gt=0, le=_STAGE_BOUND_M, allow_inf_nan=False)] = 200e-6
    max_tilt_step_rad: Annotated[float, Field(gt=0, le=_TILT_BOUND_RAD, allow_inf_nan=False)] = 0.2618
    #: lens modes the service may switch to. Lorentz only by default: the objective lens of TEM mode puts
    #: ~2 T on the specimen and wipes out the magnetic state under study.
    lens_modes: tuple[LensMode, ...] = (LensMode.LORENTZ,)
    #: False locks the beam blanked (a read-only or maintenance deployment)
    allow_unblank: bool = True

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

    def check_stage(self, move: StageMove, current: StagePosition | None = None) -> None:
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
            if current is not None:
                step = abs(value - getattr(current, axis))
                largest = self.max_tilt_step_rad if axis.endswith("_rad") else self.max_stage_step_m
                if step > largest:
                    raise LimitViolation(f"stage {axis} step {step:.6g} (from {getattr(current, axis):.6g}) "
                                         f"exceeds the largest allowed step {largest:.6g}")

    def check_lens_mode(self, mode: LensMode) -> None:
        if LensMode(mode) not in self.lens_modes:
            allowed = ", ".join(m.value for m in self.lens_modes)
            raise LimitViolation(f"lens mode {LensMode(mode).value!r} not allowed (limits.lens_modes: {allowed})")

    def check_blanker(self, blanked: bool) -> None:
        if not blanked and not self.allow_unblank:
            raise LimitViolation("unblanking the beam is not allowed (limits.allow_unblank is false)")


class LimitedMicroscope:
    """Wraps any :class:`Microscope`; refuses and logs writes outside :class:`SafetyLimits`.

    Every step limit is measured from a FRESH read-back taken just before the write (a read, never a write):
    the focus or the stage may have been moved outside this service - by hand, by the vendor software - since
    the last value this wrapper set. Every write, refused or done, is logged.
    """

    def __init__(self, inner: Microscope, limits: SafetyLimits) -> None:
        self.inner = inner
        self.limits = limits

    def _refuse(self, exc: LimitViolation) -> LimitViolation:
        logger.warning("{}: command refused by safety limits: {}", self.inner.instrument_id, exc)
        return exc

    def _done(self, what: str) -> None:
        logger.info("{}: {}", self.inner.instrument_id, what)

    @property
    def instrument_id(self) -> str:
        return self.inner.instrument_id

    def capabilities(self) -> frozenset[Capability]:
        return self.inner.capabilities()

    def get_defocus(self) -> float:
        return self.inner.get_defocus()

    def set_defocus(self, defocus_m: float, settle: SettleSpec | None = None) -> float:
        try:
            # Range first: it needs no read of the instrument at all.
            self.limits.check_defocus(defocus_m, None)
            current = self.inner.get_defocus()
            self.limits.check_defocus(defocus_m, current)
        except LimitViolation as exc:
            raise self._refuse(exc) from None
        value = self.inner.set_defocus(defocus_m, settle)
        self._done(f"defocus {current:.6g} -> {value:.6g} m (asked {defocus_m:.6g})")
        return value

    def get_lens_mode(self) -> LensMode:
        return self.inner.get_lens_mode()

    def set_lens_mode(self, mode: LensMode) -> LensMode:
        try:
            self.limits.check_lens_mode(mode)
        except LimitViolation as exc:
            raise self._refuse(exc) from None
        before = self.inner.get_lens_mode()
        value = self.inner.set_lens_mode(mode)
        self._done(f"lens mode {before.value} -> {value.value}")
        return value

    def get_magnification(self) -> float:
        return self.inner.get_magnification()

    def get_pixel_size(self) -> float:
        return self.inner.get_pixel_size()

    def get_stage(self) -> StagePosition:
        return self.inner.get_stage()

    def move_stage(self, target: StageMove, settle: SettleSpec | None = None) -> StagePosition:
        try:
            self.limits.check_stage(target)
            current = self.inner.get_stage()
            self.limits.check_stage(target, current)
        except LimitViolation as exc:
            raise self._refuse(exc) from None
        value = self.inner.move_stage(target, settle)
        self._done(f"stage moved {target.axes()} (from {current.model_dump()})")
        return value

    def get_beam_blanked(self) -> bool:
        return self.inner.get_beam_blanked()

    def set_beam_blanked(self, blanked: bool) -> bool:
        if not isinstance(blanked, bool):  # "off", 0, None: never guessed
            raise self._refuse(LimitViolation(f"blanked must be True or False, got {blanked!r}"))
        try:
            self.limits.check_blanker(blanked)
        except LimitViolation as exc:
            raise self._refuse(exc) from None
        value = self.inner.set_beam_blanked(blanked)
        self._done(f"beam {'blanked' if value else 'unblanked'}")
        return value

    def optics_state(self) -> OpticsState:
        return self.inner.optics_state()

    def close(self) -> None:
        self.inner.close()
