"""SerialEM adapter over its Python module ``serialem`` (column and camera through SerialEM's own script calls).

SerialEM drives JEOL, Thermo Fisher and Hitachi columns with Gatan, Thermo and Direct Electron cameras, so a lab
that already runs it needs no vendor package of ours. The module is used either inside SerialEM's own Python
(``connect: false``) or from an external Python connected with ``ConnectToSEM(port, ip)`` (``connect: true``, the
default: SerialEM's "Python socket" listens on 48888). Either way every call runs in one thread (the instrument
server's owner thread, or the caller's in-process).

Mapping (serialem -> interface):

* defocus: ``GetDefocus()/SetDefocus(µm)``; SerialEM's sign already is ours (negative = under-focus), its zero the
  one the operator set in SerialEM. :class:`Calibration` ``scale`` defaults to 1e-6 m/µm;
* stage: ``ReportStageXYZ() -> (x, y, z)`` µm, ``MoveStageTo(x, y, z)`` µm (a partial move keeps the other axes at
  their read-back), ``ReportTiltAngle()/TiltTo(deg)``; no beta tilt;
* beam blank: ``SetBeamBlank(0|1)``. SerialEM has no read-back: the state is the last one written through this
  adapter, and unknown (``None`` in frame metadata) before the first write;
* magnification ``ReportMag()[0]``; pixel ``ReportCurrentPixelSize("R")`` nm at the Record set's binning;
* camera: the Record parameter set - ``SetExposure("R", s)``, ``SetBinning("R", b)``, ``Record()``, then
  ``bufferImage("A")`` (a numpy array, copied); sensor size ``CameraProperties()[:2]``. No region of interest and no
  lens-mode switching through this adapter.

Errors: a failing command raises ``serialem.SEMerror``; it becomes ``NotAvailable`` (camera busy),
``ServerUnreachable`` (the connection to SerialEM is gone), ``InstrumentTimeout`` (SerialEM reports a timeout) or
``HardwareFault`` (anything else), always naming the command.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from types import ModuleType
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from drivers.base import CameraBase, MicroscopeBase
from drivers.errors import HardwareFault, InstrumentTimeout, NotAvailable, ServerUnreachable
from drivers.interface import (
    Calibration,
    CameraInfo,
    Capability,
    LensMode,
    OpticsState,
    Roi,
    SettleSpec,
    StagePosition,
)

__all__ = ["SerialEMCamera", "SerialEMConfig", "SerialEMInstrument", "SerialEMMicroscope"]

_UM = 1e-6
_NM = 1e-9


class SerialEMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instrument_id: str = "serialem"
    module: str = "serialem"
    #: external Python: ConnectToSEM(port, ip) first; false inside SerialEM's own Python
    connect: bool = True
    port: Annotated[int, Field(ge=1, le=65535)] = 48888
    ip: str = "127.0.0.1"
    #: SerialEM's defocus (µm, its own zero) -> SI defocus in the project's convention (measure it)
    calibration: Calibration = Field(default_factory=lambda: Calibration(scale=_UM))
    defocus_settle: SettleSpec = Field(default_factory=lambda: SettleSpec(tolerance=5e-9, timeout_s=5.0))
    stage_settle: SettleSpec = Field(
        default_factory=lambda: SettleSpec(tolerance=2e-8, angle_tolerance_rad=2e-4, timeout_s=60.0, poll_s=0.1)
    )
    #: the mode the column is in (SerialEM scripting does not switch to Lorentz; not a capability)
    imaging_lens_mode: LensMode = LensMode.LORENTZ
    binnings: tuple[int, ...] = (1, 2, 4)
    max_exposure_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    acquire_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0


def _import_serialem(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # Not on PyPI: the module ships with SerialEM (its PythonModules folder, one build per Python version).
        raise NotAvailable(
            f"SerialEM's Python module {module!r} is not importable ({exc}); put the folder of SerialEM's "
            "PythonModules for this Python version on PYTHONPATH (docs/drivers.md, SerialEM)"
        ) from None


class SerialEMInstrument:
    """One connection to SerialEM shared by the microscope and the camera."""

    def __init__(self, config: SerialEMConfig) -> None:
        self.config = config
        self.sem = _import_serialem(config.module)
        self._error: type[BaseException] = getattr(self.sem, "SEMerror", RuntimeError)
        try:
            if config.connect:
                self.sem.ConnectToSEM(config.port, config.ip)
            # Errors must raise SEMerror here, not open a modal box on the microscope PC that waits for a click.
            self.sem.NoMessageBoxOnError(1)
        except Exception as exc:
            raise NotAvailable(f"cannot reach SerialEM at {config.ip}:{config.port}: {exc}") from exc
        self.microscope = SerialEMMicroscope(self)
        self.camera = SerialEMCamera(self)

    def call(self, command: str, *args: Any) -> Any:
        """One SerialEM command, its SEMerror turned into our typed errors."""
        fn: Callable[..., Any] = getattr(self.sem, command)
        try:
            return fn(*args)
        except self._error as exc:
            text = str(exc)
            low = text.lower()
            if "busy" in low:
                raise NotAvailable(f"SerialEM {command}: busy: {text}") from exc
            if "connection" in low or "socket" in low or "sending command" in low:
                raise ServerUnreachable(f"SerialEM {command}: lost the connection to SerialEM: {text}") from exc
            if "timeout" in low or "timed out" in low:
                raise InstrumentTimeout(f"SerialEM {command}: {text}") from exc
            raise HardwareFault(f"SerialEM {command}: {text}") from exc
        except (ConnectionError, OSError) as exc:
            raise ServerUnreachable(f"SerialEM {command}: lost the connection to SerialEM: {exc}") from exc

    def close(self) -> None:
        if self.config.connect:
            try:
                self.sem.Exit()  # ends the external connection; SerialEM itself keeps running
            except Exception:
                pass


class SerialEMMicroscope(MicroscopeBase):
    CAPABILITIES = frozenset(
        {
            Capability.DEFOCUS,
            Capability.MAGNIFICATION,
            Capability.PIXEL_SIZE,
            Capability.STAGE_XY,
            Capability.STAGE_Z,
            Capability.STAGE_ALPHA,
            Capability.BEAM_BLANK,
        }
    )

    def __init__(self, inst: SerialEMInstrument) -> None:
        c = inst.config
        super().__init__(c.instrument_id, c.calibration, c.defocus_settle, c.stage_settle)
        self._inst = inst
        self._blanked: bool | None = None  # no read-back in SerialEM: the last state written, None = unknown

    def _read_defocus_raw(self) -> float:
        return float(self._inst.call("GetDefocus"))

    def _write_defocus_raw(self, raw: float) -> None:
        self._inst.call("SetDefocus", float(raw))

    def _read_lens_mode(self) -> LensMode:
        return self._inst.config.imaging_lens_mode

    def _read_magnification(self) -> float:
        return float(self._inst.call("ReportMag")[0])

    def _read_pixel_size(self) -> float:
        binned_nm = float(self._inst.call("ReportCurrentPixelSize", "R"))
        return binned_nm * _NM / int(self._inst.call("ReportBinning", "R"))

    def _read_stage(self) -> StagePosition:
        x, y, z = (float(v) for v in self._inst.call("ReportStageXYZ")[:3])
        tilt = float(self._inst.call("ReportTiltAngle"))
        return StagePosition(x_m=x * _UM, y_m=y * _UM, z_m=z * _UM, alpha_rad=float(np.deg2rad(tilt)))

    def _write_stage(self, axes: dict[str, float]) -> None:
        if axes.keys() & {"x_m", "y_m", "z_m"}:
            now = self._read_stage()
            x = axes.get("x_m", now.x_m) / _UM
            y = axes.get("y_m", now.y_m) / _UM
            z = axes.get("z_m", now.z_m) / _UM
            self._inst.call("MoveStageTo", x, y, z)
        if "alpha_rad" in axes:
            self._inst.call("TiltTo", float(np.rad2deg(axes["alpha_rad"])))

    def _read_beam_blanked(self) -> bool:
        if self._blanked is None:
            raise NotAvailable("SerialEM has no beam-blank read-back and nothing was written yet")
        return self._blanked

    def _write_beam_blanked(self, blanked: bool) -> None:
        self._inst.call("SetBeamBlank", 1 if blanked else 0)
        self._blanked = bool(blanked)

    def optics_state(self) -> OpticsState:
        if self._blanked is not None:
            return super().optics_state()
        # Unknown blanker (nothing written yet): report None rather than a guess.
        self._blanked = False
        try:
            state = super().optics_state()
        finally:
            self._blanked = None
        return state.model_copy(update={"beam_blanked": None})


class SerialEMCamera(CameraBase):
    CAPABILITIES = frozenset({Capability.ACQUIRE, Capability.BINNING})

    def __init__(self, inst: SerialEMInstrument) -> None:
        super().__init__(
            inst.config.instrument_id, microscope=inst.microscope, default_timeout_s=inst.config.acquire_timeout_s
        )
        self._inst = inst
        props = inst.call("CameraProperties")
        self._sensor = (int(props[1]), int(props[0]))  # SerialEM reports width, height

    def info(self) -> CameraInfo:
        c = self._inst.config
        h, w = self._sensor
        return CameraInfo(
            name=f"{c.instrument_id}-record",
            sensor_shape=self._sensor,
            binnings=tuple(b for b in c.binnings if h % b == 0 and w % b == 0),
            dtype="float32",
            max_exposure_s=c.max_exposure_s,
        )

    def _acquire_raw(
        self, exposure_s: float, binning: int, roi: Roi | None, timeout_s: float
    ) -> tuple[np.ndarray, None]:
        inst = self._inst
        inst.call("SetExposure", "R", float(exposure_s))
        inst.call("SetBinning", "R", int(binning))
        t0 = time.monotonic()
        # Record blocks until the image is in buffer A and cannot be interrupted; the deadline is checked after.
        inst.call("Record")
        if time.monotonic() - t0 > timeout_s:
            raise InstrumentTimeout(f"SerialEM Record: frame arrived after the {timeout_s:g} s timeout; discarded")
        image = inst.call("bufferImage", "A")
        if not isinstance(image, np.ndarray):
            raise HardwareFault(f"SerialEM bufferImage returned {type(image).__name__}, not an array")
        return np.array(image, dtype=np.float32, copy=True), None

    def close(self) -> None:
        self._inst.close()
