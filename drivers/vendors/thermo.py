"""Thermo Fisher / FEI adapter over temscript's ``Microscope`` API (SI units, TEM scripting underneath).

Mapping (temscript -> interface):

* defocus: ``get_defocus()/set_defocus(v)`` report the objective/Lorentz focus in *instrument units*
  ("arbitrary units, increasing towards over-focus"; metres relative to eucentric focus on recent software).
  :class:`Calibration` maps them: ``defocus_m = scale * reading + offset_m``.
* stage: ``get_stage_position()`` -> ``{"x","y","z"}`` in m, ``{"a","b"}`` in rad;
  ``set_stage_position({...}, method="GO")``; ``get_stage_status()`` is ``"READY"`` when settled.
* magnification: ``get_indicated_magnification()``; projection mode ``get_projection_mode()``
  (``"IMAGING"``/``"DIFFRACTION"``). Scripting cannot switch the Lorentz configuration, so LENS_MODE is not a
  capability; the imaging mode is reported as the configured ``imaging_lens_mode``.
* beam blank: ``get_beam_blanked()/set_beam_blanked(bool)``.
* camera: ``get_cameras()`` (sizes, binnings, ``pixel_size(um)``), ``set_camera_param(name, {...})`` with
  ``"exposure(s)"``, ``"binning"``, ``"image_size": "FULL"``, then ``acquire(name) -> {name: array}``.

All calls run in the thread that created the adapter (the instrument server's owner thread): TEM scripting
is a COM API with apartment threading.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from drivers.base import CameraBase, MicroscopeBase
from drivers.errors import HardwareFault, InstrumentTimeout, NotAvailable
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

__all__ = ["ThermoCamera", "ThermoConfig", "ThermoInstrument", "ThermoMicroscope"]

_AXES = {"x_m": "x", "y_m": "y", "z_m": "z", "alpha_rad": "a", "beta_rad": "b"}


class ThermoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instrument_id: str = "thermo"
    module: str = "temscript"
    #: temscript reading -> SI defocus in the project's convention (measure it: docs/drivers.md)
    calibration: Calibration = Field(default_factory=Calibration)
    defocus_settle: SettleSpec = Field(default_factory=lambda: SettleSpec(tolerance=5e-9, timeout_s=5.0))
    stage_settle: SettleSpec = Field(default_factory=lambda: SettleSpec(tolerance=2e-8, timeout_s=60.0, poll_s=0.1))
    imaging_lens_mode: LensMode = LensMode.LORENTZ
    camera: str | None = None  # default: the first camera temscript lists
    #: specimen-plane pixel size per magnification (calibrated); else detector pixel / magnification
    pixel_size_m_by_magnification: dict[float, float] = Field(default_factory=dict)


class ThermoInstrument:
    def __init__(self, config: ThermoConfig) -> None:
        temscript = import_vendor(config.module, "fei")
        self.config = config
        try:
            self.tem = temscript.Microscope()
        except Exception as exc:
            raise NotAvailable(f"cannot connect to the microscope through {config.module}: {exc}") from exc
        cameras = self.tem.get_cameras()
        if not cameras:
            raise NotAvailable("temscript lists no cameras")
        name = config.camera or next(iter(cameras))
        if name not in cameras:
            raise NotAvailable(f"camera {name!r} not among {sorted(cameras)}")
        self.camera_name = name
        self.camera_props: dict[str, Any] = cameras[name]
        self.microscope = ThermoMicroscope(self)
        self.camera = ThermoCamera(self)


class ThermoMicroscope(MicroscopeBase):
    # TEM scripting cannot switch to the Lorentz configuration: lens mode is not offered.
    CAPABILITIES = MICROSCOPE_CAPABILITIES - {Capability.LENS_MODE}

    def __init__(self, inst: ThermoInstrument) -> None:
        c = inst.config
        super().__init__(c.instrument_id, c.calibration, c.defocus_settle, c.stage_settle)
        self._inst = inst
        self._tem = inst.tem

    def _read_defocus_raw(self) -> float:
        return float(self._tem.get_defocus())

    def _write_defocus_raw(self, raw: float) -> None:
        self._tem.set_defocus(float(raw))

    def _read_lens_mode(self) -> LensMode:
        mode = str(self._tem.get_projection_mode()).upper()
        if mode == "DIFFRACTION":
            return LensMode.DIFFRACTION
        if mode == "IMAGING":
            return self._inst.config.imaging_lens_mode
        return LensMode.UNKNOWN

    def _read_magnification(self) -> float:
        return float(self._tem.get_indicated_magnification())

    def _read_pixel_size(self) -> float:
        mag = self._read_magnification()
        table = self._inst.config.pixel_size_m_by_magnification
        if mag in table:
            return table[mag]
        if mag <= 0:
            raise NotAvailable("magnification not available in this mode; no pixel size")
        return float(self._inst.camera_props["pixel_size(um)"]) * 1e-6 / mag

    def _read_stage(self) -> StagePosition:
        pos = self._tem.get_stage_position()
        return StagePosition(**{ours: float(pos.get(theirs, 0.0)) for ours, theirs in _AXES.items()})

    def _write_stage(self, axes: dict[str, float]) -> None:
        self._tem.set_stage_position({_AXES[k]: v for k, v in axes.items()}, method="GO")

    def _read_beam_blanked(self) -> bool:
        return bool(self._tem.get_beam_blanked())

    def _write_beam_blanked(self, blanked: bool) -> None:
        self._tem.set_beam_blanked(bool(blanked))


class ThermoCamera(CameraBase):
    CAPABILITIES = frozenset({Capability.ACQUIRE, Capability.BINNING})

    def __init__(self, inst: ThermoInstrument) -> None:
        super().__init__(inst.config.instrument_id, microscope=inst.microscope)
        self._inst = inst
        self._tem = inst.tem

    def info(self) -> CameraInfo:
        p = self._inst.camera_props
        return CameraInfo(
            name=self._inst.camera_name,
            sensor_shape=(int(p["height"]), int(p["width"])),
            binnings=tuple(int(b) for b in p.get("binnings", [1])),
            dtype="uint16",
            supports_roi=False,
        )

    def _acquire_raw(
        self, exposure_s: float, binning: int, roi: Roi | None, timeout_s: float
    ) -> tuple[np.ndarray, None]:
        name = self._inst.camera_name
        self._tem.set_camera_param(name, {"exposure(s)": exposure_s, "binning": binning, "image_size": "FULL"})
        t0 = time.monotonic()
        # TEM scripting's acquisition blocks and cannot be interrupted from Python; the deadline is checked
        # when it returns (a remote client enforces it independently, see docs/drivers.md).
        try:
            images = self._tem.acquire(name)
        except Exception as exc:
            raise HardwareFault(f"acquisition on {name} failed: {exc}") from exc
        if time.monotonic() - t0 > timeout_s:
            raise InstrumentTimeout(f"{name}: frame arrived after the {timeout_s:g} s timeout; discarded")
        if not isinstance(images, dict) or name not in images:
            raise HardwareFault(f"{name}: no image returned")
        return np.asarray(images[name]), None
