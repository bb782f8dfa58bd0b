"""JEOL adapter over PyJEM (``PyJEM.TEM3`` for the column, ``PyJEM.detector`` for the camera).

Mapping (PyJEM -> interface):

* defocus: the focusing lens's DAC value, an integer 0..65535 - ``Lens3().GetOLf()/SetOLf()`` (objective
  fine) in TEM mode, ``GetOM()/SetOM()`` (objective mini-lens) in Lorentz mode (``focus_lens``). The
  :class:`Calibration` converts DAC counts to SI defocus in the project's convention
  (``defocus_m = scale * dac + offset_m``; ``scale`` is metres per count, negative if more current means
  under-focus). Targets are rounded to whole counts, so the confirm tolerance must exceed half a count.
* stage: ``Stage3().GetPos()`` -> ``[x_nm, y_nm, z_nm, tiltx_deg, tilty_deg]``; ``SetX/SetY/SetZ`` (nm),
  ``SetTiltXAngle/SetTiltYAngle`` (deg); ``GetStatus()`` per axis 0 rest, 1 moving, 2 hardware-limit error.
* magnification: ``EOS3().GetMagValue()`` -> ``[value, unit, text]``; mode ``EOS3().GetFunctionMode()`` ->
  ``[index, name]``, switched with ``SelectFunctionMode(index)``.
* beam blank: ``Def3().GetBeamBlank()/SetBeamBlank(0|1)``.
* camera: ``detector.Detector(name)``, ``set_exposuretime_value(us)``, ``snapshot_rawdata()`` -> raw bytes of
  a ``sensor_shape`` image of ``dtype``; binning and ROI are not exposed (capabilities say so).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from drivers.base import CameraBase, MicroscopeBase
from drivers.errors import HardwareFault, InstrumentTimeout, NotAvailable, OutOfRange
from drivers.interface import (
    MICROSCOPE_CAPABILITIES,
    Calibration,
    CameraInfo,
    Capability,
    LensMode,
    Roi,
    SettleSpec,
    StagePosition,
)
from drivers.vendors import import_vendor

__all__ = ["JeolCamera", "JeolConfig", "JeolInstrument", "JeolMicroscope"]

DAC_MAX = 65535
_NM = 1e-9


class JeolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instrument_id: str = "jeol"
    offline: bool = False  # use PyJEM.offline (JEOL's own simulator) instead of the live column
    focus_lens: str = Field("OM", pattern="^(OM|OLf)$")
    #: DAC counts -> SI defocus (measure it; docs/drivers.md). Default: 10 nm per count, focus at 0x8000.
    calibration: Calibration = Field(default_factory=lambda: Calibration(scale=10e-9, offset_m=-32768 * 10e-9))
    defocus_settle: SettleSpec = Field(default_factory=lambda: SettleSpec(tolerance=6e-9, timeout_s=5.0))
    stage_settle: SettleSpec = Field(
        default_factory=lambda: SettleSpec(tolerance=5e-9, angle_tolerance_rad=2e-4, timeout_s=60.0, poll_s=0.1)
    )
    #: EOS function-mode index -> lens mode (JEOL: 0 MAG, 1 MAG2, 2 LowMAG, 3 SAMAG, 4 DIFF)
    function_modes: dict[int, LensMode] = Field(
        default_factory=lambda: {0: LensMode.TEM, 2: LensMode.LORENTZ, 4: LensMode.DIFFRACTION}
    )
    detector: str = "camera"
    sensor_shape: tuple[int, int] = (2048, 2048)
    dtype: str = "uint16"
    detector_pixel_size_m: float = 15e-6


class JeolInstrument:
    def __init__(self, config: JeolConfig) -> None:
        pkg = "PyJEM.offline" if config.offline else "PyJEM"
        tem3 = import_vendor(f"{pkg}.TEM3", "jeol")
        self.config = config
        try:
            self.lens = tem3.Lens3()
            self.stage = tem3.Stage3()
            self.eos = tem3.EOS3()
            self.defl = tem3.Def3()
        except Exception as exc:
            raise NotAvailable(f"cannot reach the JEOL column through {pkg}.TEM3: {exc}") from exc
        self.detector_module = import_vendor(f"{pkg}.detector", "jeol")
        self.microscope = JeolMicroscope(self)
        self.camera = JeolCamera(self)


class JeolMicroscope(MicroscopeBase):
    CAPABILITIES = MICROSCOPE_CAPABILITIES

    def __init__(self, inst: JeolInstrument) -> None:
        c = inst.config
        super().__init__(c.instrument_id, c.calibration, c.defocus_settle, c.stage_settle)
        self._inst = inst

    def _read_defocus_raw(self) -> float:
        lens = self._inst.lens
        return float(lens.GetOM() if self._inst.config.focus_lens == "OM" else lens.GetOLf())

    def _write_defocus_raw(self, raw: float) -> None:
        dac = round(raw)
        if not 0 <= dac <= DAC_MAX:
            raise OutOfRange(f"{self._inst.config.focus_lens} DAC value {dac} outside 0..{DAC_MAX}")
        lens = self._inst.lens
        (lens.SetOM if self._inst.config.focus_lens == "OM" else lens.SetOLf)(int(dac))

    def _read_lens_mode(self) -> LensMode:
        index = int(self._inst.eos.GetFunctionMode()[0])
        return self._inst.config.function_modes.get(index, LensMode.UNKNOWN)

    def _write_lens_mode(self, mode: LensMode) -> None:
        for index, m in self._inst.config.function_modes.items():
            if m is mode:
                self._inst.eos.SelectFunctionMode(int(index))
                return
        raise NotAvailable(f"no JEOL function mode configured for {mode.value}")

    def _read_magnification(self) -> float:
        return float(self._inst.eos.GetMagValue()[0])

    def _read_pixel_size(self) -> float:
        mag = self._read_magnification()
        if mag <= 0:
            raise NotAvailable("no magnification in this mode; no pixel size")
        return self._inst.config.detector_pixel_size_m / mag

    def _read_stage(self) -> StagePosition:
        x, y, z, tx, ty = (float(v) for v in self._inst.stage.GetPos()[:5])
        return StagePosition(
            x_m=x * _NM, y_m=y * _NM, z_m=z * _NM, alpha_rad=float(np.deg2rad(tx)), beta_rad=float(np.deg2rad(ty))
        )

    def _write_stage(self, axes: dict[str, float]) -> None:
        st = self._inst.stage
        status = list(st.GetStatus())
        if 2 in status:
            raise HardwareFault(f"stage hardware-limit error, status {status}")
        setters: dict[str, Any] = {
            "x_m": lambda v: st.SetX(float(v / _NM)),
            "y_m": lambda v: st.SetY(float(v / _NM)),
            "z_m": lambda v: st.SetZ(float(v / _NM)),
            "alpha_rad": lambda v: st.SetTiltXAngle(float(np.rad2deg(v))),
            "beta_rad": lambda v: st.SetTiltYAngle(float(np.rad2deg(v))),
        }
        for axis, value in axes.items():
            setters[axis](value)

    def _read_beam_blanked(self) -> bool:
        return bool(self._inst.defl.GetBeamBlank())

    def _write_beam_blanked(self, blanked: bool) -> None:
        self._inst.defl.SetBeamBlank(1 if blanked else 0)


class JeolCamera(CameraBase):
    CAPABILITIES = frozenset({Capability.ACQUIRE})

    def __init__(self, inst: JeolInstrument) -> None:
        super().__init__(inst.config.instrument_id, microscope=inst.microscope)
        self._inst = inst
        try:
            self._det = inst.detector_module.Detector(inst.config.detector)
        except Exception as exc:
            raise NotAvailable(f"JEOL detector {inst.config.detector!r} not available: {exc}") from exc

    def info(self) -> CameraInfo:
        c = self._inst.config
        return CameraInfo(name=c.detector, sensor_shape=c.sensor_shape, binnings=(1,), dtype=c.dtype)

    def _acquire_raw(
        self, exposure_s: float, binning: int, roi: Roi | None, timeout_s: float
    ) -> tuple[np.ndarray, None]:
        c = self._inst.config
        self._det.set_exposuretime_value(round(exposure_s * 1e6))
        t0 = time.monotonic()
        try:
            raw = self._det.snapshot_rawdata()
        except Exception as exc:
            raise HardwareFault(f"snapshot on {c.detector} failed: {exc}") from exc
        if time.monotonic() - t0 > timeout_s:
            raise InstrumentTimeout(f"{c.detector}: frame arrived after the {timeout_s:g} s timeout; discarded")
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise HardwareFault(f"{c.detector}: snapshot returned {type(raw).__name__}, not raw bytes")
        dtype = np.dtype(c.dtype)
        expected = c.sensor_shape[0] * c.sensor_shape[1] * dtype.itemsize
        if len(raw) != expected:
            raise HardwareFault(f"{c.detector}: {len(raw)} bytes received, expected {expected} (corrupt frame)")
        return np.frombuffer(bytes(raw), dtype=dtype).reshape(c.sensor_shape), None
