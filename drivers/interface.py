"""The typed instrument interface: what every backend (simulated, remote, vendor) implements.

Conventions (docs/conventions.md): SI units everywhere, defocus ``df > 0`` is over-focus. A backend maps its
instrument's own readout onto this convention through a :class:`Calibration`; callers never see raw units.

Design (ophyd-async / Nion instrumentation kit): small structural protocols instead of a class hierarchy, so a
remote proxy, a simulator and a vendor adapter are interchangeable; optional controls are discovered with
``capabilities()`` rather than by catching exceptions; every write is *set, settle, confirm*
(:func:`set_and_confirm`) and the confirmed read-back goes into the frame metadata.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.errors import InstrumentTimeout, OutOfRange

__all__ = [
    "Calibration",
    "Camera",
    "CameraInfo",
    "Capability",
    "Frame",
    "FrameMetadata",
    "LensMode",
    "Microscope",
    "OpticsState",
    "Roi",
    "SettleSpec",
    "StageMove",
    "StagePosition",
    "check_finite",
    "set_and_confirm",
]

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class Capability(str, Enum):
    """Controls a backend may or may not have. Query them instead of calling and catching NotAvailable."""

    DEFOCUS = "defocus"
    LENS_MODE = "lens_mode"  # switching between conventional TEM and Lorentz (objective off) mode
    MAGNIFICATION = "magnification"
    PIXEL_SIZE = "pixel_size"
    STAGE_XY = "stage_xy"
    STAGE_Z = "stage_z"
    STAGE_ALPHA = "stage_alpha"
    STAGE_BETA = "stage_beta"
    BEAM_BLANK = "beam_blank"
    # camera side
    ACQUIRE = "acquire"
    BINNING = "binning"
    ROI = "roi"


# Everything a full column offers; backends declare this set, or this set less what they lack.
MICROSCOPE_CAPABILITIES = frozenset(
    {
        Capability.DEFOCUS,
        Capability.LENS_MODE,
        Capability.MAGNIFICATION,
        Capability.PIXEL_SIZE,
        Capability.STAGE_XY,
        Capability.STAGE_Z,
        Capability.STAGE_ALPHA,
        Capability.STAGE_BETA,
        Capability.BEAM_BLANK,
    }
)


class LensMode(str, Enum):
    TEM = "tem"  # objective lens on
    LORENTZ = "lorentz"  # objective lens off / field-free, focus by the Lorentz (mini) lens
    DIFFRACTION = "diffraction"
    UNKNOWN = "unknown"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Calibration(_Model):
    """Maps an instrument's raw focus reading onto SI defocus in the project's convention.

    ``defocus_m = scale * raw + offset_m``. A negative ``scale`` flips an instrument whose readout grows towards
    under-focus. ``scale`` is in metres per raw unit (1.0 when the instrument already reports metres).
    """

    scale: FiniteFloat = 1.0
    offset_m: FiniteFloat = 0.0

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0.0:
            raise ValueError("calibration scale must be non-zero")
        return v

    def to_metres(self, raw: float) -> float:
        return self.scale * float(raw) + self.offset_m

    def to_raw(self, defocus_m: float) -> float:
        return (float(defocus_m) - self.offset_m) / self.scale


class SettleSpec(_Model):
    """How a write is confirmed: wait ``settle_s``, then poll every ``poll_s`` until the read-back is within
    ``tolerance`` (the quantity's SI unit; stage tilts use ``angle_tolerance_rad``) or ``timeout_s`` passes."""

    tolerance: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-9
    angle_tolerance_rad: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-4
    timeout_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 5.0
    poll_s: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] = 0.02
    settle_s: Annotated[float, Field(ge=0, le=600, allow_inf_nan=False)] = 0.0


class StagePosition(_Model):
    x_m: FiniteFloat = 0.0
    y_m: FiniteFloat = 0.0
    z_m: FiniteFloat = 0.0
    alpha_rad: FiniteFloat = 0.0
    beta_rad: FiniteFloat = 0.0


class StageMove(_Model):
    """A stage target; axes left as None are not driven."""

    x_m: FiniteFloat | None = None
    y_m: FiniteFloat | None = None
    z_m: FiniteFloat | None = None
    alpha_rad: FiniteFloat | None = None
    beta_rad: FiniteFloat | None = None

    def axes(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Roi(_Model):
    """Region of interest in *unbinned* sensor pixels, ``[y0:y0+height, x0:x0+width]``."""

    y0: Annotated[int, Field(ge=0)]
    x0: Annotated[int, Field(ge=0)]
    height: Annotated[int, Field(gt=0)]
    width: Annotated[int, Field(gt=0)]


class CameraInfo(_Model):
    name: str
    sensor_shape: tuple[int, int]  # (H, W) unbinned
    binnings: tuple[int, ...] = (1,)
    dtype: str = "float32"
    max_exposure_s: float = 60.0
    supports_roi: bool = False


class OpticsState(_Model):
    """A snapshot of the column stamped into every frame's metadata."""

    defocus_readback_m: float | None = None
    defocus_commanded_m: float | None = None
    lens_mode: LensMode = LensMode.UNKNOWN
    magnification: float | None = None
    pixel_size_m: float | None = None  # at the specimen, camera binning 1
    stage: StagePosition | None = None
    beam_blanked: bool | None = None


class FrameMetadata(_Model):
    instrument_id: str
    camera: str
    seq: int
    t_start_epoch_s: float
    t_end_epoch_s: float
    t_start_monotonic_s: float  # monotonic clock of the host that acquired the frame
    t_end_monotonic_s: float
    exposure_s: float
    binning: int
    roi: Roi | None
    shape: tuple[int, int]
    dtype: str
    pixel_size_m: float | None  # at the specimen, *including* binning
    defocus_readback_m: float | None  # confirmed read-back (calibrated, SI, df > 0 over-focus)
    defocus_commanded_m: float | None  # the last target written through the driver
    lens_mode: LensMode = LensMode.UNKNOWN
    magnification: float | None = None
    stage: StagePosition | None = None
    beam_blanked: bool | None = None
    #: SIMULATOR ONLY: the physics ground truth (true defocus, shift...). Always None for a real instrument;
    #: never feed it to a reconstruction, it exists so tests can check the instrument model.
    truth: dict[str, Any] | None = None


class Frame(BaseModel):
    """One acquired image ``(H, W)`` plus its metadata."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    data: np.ndarray
    metadata: FrameMetadata

    @model_validator(mode="after")
    def _consistent(self) -> Frame:
        if self.data.ndim != 2:
            raise ValueError(f"frame data must be 2-D, got shape {self.data.shape}")
        if tuple(self.data.shape) != tuple(self.metadata.shape) or str(self.data.dtype) != self.metadata.dtype:
            raise ValueError("frame data and metadata disagree on shape/dtype")
        return self


@runtime_checkable
class Microscope(Protocol):
    """The column: optics, stage, beam blanker. All values SI; defocus in the project's convention."""

    @property
    def instrument_id(self) -> str: ...

    def capabilities(self) -> frozenset[Capability]: ...

    def get_defocus(self) -> float: ...

    def set_defocus(self, defocus_m: float, settle: SettleSpec | None = None) -> float:
        """Set, settle, confirm; returns the confirmed read-back. Raises InstrumentTimeout if it never settles."""
        ...

    def get_lens_mode(self) -> LensMode: ...

    def set_lens_mode(self, mode: LensMode) -> LensMode: ...

    def get_magnification(self) -> float: ...

    def get_pixel_size(self) -> float:
        """Specimen-plane pixel size (m) of the attached camera at binning 1."""
        ...

    def get_stage(self) -> StagePosition: ...

    def move_stage(self, target: StageMove, settle: SettleSpec | None = None) -> StagePosition: ...

    def get_beam_blanked(self) -> bool: ...

    def set_beam_blanked(self, blanked: bool) -> bool: ...

    def optics_state(self) -> OpticsState: ...

    def close(self) -> None: ...


@runtime_checkable
class Camera(Protocol):
    @property
    def instrument_id(self) -> str: ...

    def capabilities(self) -> frozenset[Capability]: ...

    def info(self) -> CameraInfo: ...

    def acquire(
        self, exposure_s: float, binning: int = 1, roi: Roi | None = None, timeout_s: float | None = None
    ) -> Frame:
        """Acquire one frame; raises InstrumentTimeout if none arrives within ``timeout_s``."""
        ...

    def close(self) -> None: ...


def check_finite(name: str, value: float) -> float:
    """Reject NaN/inf and non-numbers before they reach hardware (a NaN lens current is not a request)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise OutOfRange(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise OutOfRange(f"{name} must be finite, got {v}")
    return v


T = TypeVar("T")


def set_and_confirm(
    write: Callable[[T], object],
    read: Callable[[], T],
    target: T,
    spec: SettleSpec,
    *,
    within: Callable[[T, T], bool] | None = None,
    what: str = "value",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Write ``target``, wait ``spec.settle_s``, poll ``read`` until ``within(readback, target)``.

    Returns the confirmed read-back. The timeout is measured on ``clock`` (real time by default) from the end
    of the write, so a stuck actuator surfaces as :class:`InstrumentTimeout` after ``spec.timeout_s`` at most
    (plus one read).
    """
    if within is None:

        def within(a: Any, b: Any) -> bool:
            return abs(float(a) - float(b)) <= spec.tolerance

    write(target)
    if spec.settle_s > 0:
        sleep(spec.settle_s)
    deadline = clock() + spec.timeout_s
    while True:
        value = read()
        if within(value, target):
            return value
        remaining = deadline - clock()
        if remaining <= 0:
            raise InstrumentTimeout(
                f"{what} did not settle within {spec.timeout_s:g} s: target {target!r}, last read-back {value!r}"
            )
        sleep(min(spec.poll_s, remaining))
