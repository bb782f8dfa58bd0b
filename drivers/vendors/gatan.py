"""Gatan cameras driven from DigitalMicrograph (GMS 3.4+ Python), in two halves.

DM's Python runs only inside DM's own process, so the camera cannot be opened from ltemlive's processes. The
DM half is the ordinary instrument server (``drivers.server.InstrumentServer``) started *inside DM* by
``scripts/ltemlive_dm_server.py`` (see ``drivers/vendors/dm_server.py``), serving a :class:`GatanCamera` on the
``DigitalMicrograph`` module and no column (:class:`NoColumn`). Request ids, start-by deadlines, per-request limits,
NACKs and raw-array frames are therefore exactly those of every other instrument server: nothing is re-implemented.

The acquisition half is ``backend: gatan`` (:class:`GatanLinkConfig`): a ``RemoteCamera`` on the DM server plus the
column from another backend (``column: jeol`` with its ``jeol`` section, ``remote``, ``thermo``, ``serialem``...),
joined by :class:`ColumnCamera`, which stamps the column's optics state into each frame as a one-box backend does.

Mapping (DigitalMicrograph -> interface), the DM-script camera-manager functions as exposed to Python:

* ``CM_GetCurrentCamera()``, ``CM_GetCameraName``, ``CM_CCD_GetSize(camera) -> (width, height)`` (unbinned);
* ``CM_CreateAcquisitionParameters_FullCCD(camera, processing, exposure_s, bin, bin)``, processing 1 unprocessed,
  2 dark subtracted, 3 gain normalised; ``CM_SetBinnedReadArea(camera, params, top, left, bottom, right)`` for a
  region (binned pixels); ``CM_Validate_AcquisitionParameters`` - DM silently adjusts what the camera cannot do, so
  exposure, binning and processing are read back (``CM_GetExposure/CM_GetBinning/CM_GetProcessing``) and a
  mismatch is refused instead of recorded under the wrong label;
* ``CM_AcquireImage(camera, params)`` -> image; ``image.GetNumArray()`` (a view of DM's memory: copied at once);
  ``image.GetDimensionScale(0)`` / ``GetDimensionUnitString(0)``: DM's calibrated pixel (it includes binning),
  which becomes the frame's ``pixel_size_m``.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from drivers.base import CameraBase, MicroscopeBase
from drivers.errors import HardwareFault, InstrumentError, InstrumentTimeout, NotAvailable, OutOfRange
from drivers.interface import Camera, CameraInfo, Capability, Frame, Microscope, OpticsState, Roi

__all__ = [
    "PROCESSING",
    "ColumnCamera",
    "GatanCamera",
    "GatanConfig",
    "GatanLinkConfig",
    "NoColumn",
    "import_digitalmicrograph",
]

#: our name -> DM's processing level (CM_CreateAcquisitionParameters_FullCCD)
PROCESSING = {"unprocessed": 1, "dark_subtracted": 2, "gain_normalized": 3}
_UNITS_M = {"m": 1.0, "mm": 1e-3, "µm": 1e-6, "um": 1e-6, "nm": 1e-9, "Å": 1e-10, "A": 1e-10, "pm": 1e-12}


def import_digitalmicrograph() -> ModuleType:
    """The ``DigitalMicrograph`` module, which only DM's own Python has (no pip package exists)."""
    try:
        import DigitalMicrograph  # type: ignore[import-not-found]
    except ImportError:
        raise NotAvailable(
            "the DigitalMicrograph module exists only inside DM's Python (GMS 3.4+): run "
            "scripts/ltemlive_dm_server.py inside DigitalMicrograph and use backend: gatan on this side"
        ) from None
    return DigitalMicrograph


class GatanConfig(BaseModel):
    """The camera as the DM server sees it (the ``gatan`` section of the DM server's config)."""

    model_config = ConfigDict(extra="forbid")

    instrument_id: str = "gatan"
    #: expected DM camera name; DM's *current* camera is used, and a different one is refused (select it in DM)
    camera: str | None = None
    processing: Literal["unprocessed", "dark_subtracted", "gain_normalized"] = "gain_normalized"
    binnings: tuple[int, ...] = (1, 2, 4)
    supports_roi: bool = True
    max_exposure_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    #: default acquisition timeout (s) when the caller gives none
    acquire_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    #: CM_PrepareCameraForAcquire before each frame (inserts a retractable camera, opens the shutter path)
    prepare: bool = True


class GatanLinkConfig(BaseModel):
    """``backend: gatan`` on the acquisition side: the DM server's camera plus a column from another backend."""

    model_config = ConfigDict(extra="forbid")

    #: the DM server (scripts/ltemlive_dm_server.py running inside DM)
    endpoint: str = "tcp://127.0.0.1:7002"
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    liveness_s: Annotated[float, Field(gt=0, le=600)] = 3.0
    #: the backend that drives the column; its own section (jeol: {...}, remote: {...}) sits beside this one
    column: Literal["jeol", "thermo", "serialem", "simulated", "remote"] = "jeol"
    #: where a frame's pixel size comes from: DM's image calibration, or the column (magnification table)
    pixel_size_from: Literal["dm", "column"] = "dm"


class NoColumn(MicroscopeBase):
    """The DM server's microscope: none (DM drives only the camera here). Every control is NotAvailable and the
    optics state is empty; the column is joined on the acquisition side (:class:`ColumnCamera`)."""

    CAPABILITIES = frozenset()


def _processing_name(level: int) -> str:
    for name, value in PROCESSING.items():
        if value == level:
            return name
    return f"level {level}"


class GatanCamera(CameraBase):
    """A Gatan camera through DM's camera manager. Runs in the DM server's owner thread only."""

    CAPABILITIES = frozenset({Capability.ACQUIRE, Capability.BINNING, Capability.ROI})

    def __init__(self, dm: ModuleType, config: GatanConfig) -> None:
        super().__init__(config.instrument_id, microscope=None, default_timeout_s=config.acquire_timeout_s)
        self._dm = dm
        self.config = config
        try:
            self._cam = dm.CM_GetCurrentCamera()
            self._name = str(dm.CM_GetCameraName(self._cam))
            width, height = dm.CM_CCD_GetSize(self._cam)
        except Exception as exc:
            raise NotAvailable(f"DM has no usable current camera: {exc}") from exc
        if config.camera is not None and config.camera != self._name:
            raise NotAvailable(f"DM's current camera is {self._name!r}, not {config.camera!r}: select it in DM")
        self._sensor = (int(height), int(width))
        #: DM's calibrated pixel of the last frame (m, binning included), None when DM had no calibration
        self.last_pixel_size_m: float | None = None
        self.supports = self.CAPABILITIES if config.supports_roi else self.CAPABILITIES - {Capability.ROI}

    def capabilities(self) -> frozenset[Capability]:
        return self.supports

    def info(self) -> CameraInfo:
        c = self.config
        return CameraInfo(
            # The processing mode is part of the name so every frame's metadata (and the run file) records it.
            name=f"{self._name} [{c.processing}]",
            sensor_shape=self._sensor,
            binnings=tuple(b for b in c.binnings if self._sensor[0] % b == 0 and self._sensor[1] % b == 0),
            dtype="float32",
            max_exposure_s=c.max_exposure_s,
            supports_roi=c.supports_roi,
        )

    def _params(self, exposure_s: float, binning: int, roi: Roi | None) -> Any:
        dm, cam, want = self._dm, self._cam, PROCESSING[self.config.processing]
        params = dm.CM_CreateAcquisitionParameters_FullCCD(cam, want, exposure_s, binning, binning)
        if roi is not None:
            b = binning
            dm.CM_SetBinnedReadArea(
                cam, params, roi.y0 // b, roi.x0 // b, (roi.y0 + roi.height) // b, (roi.x0 + roi.width) // b
            )
        dm.CM_Validate_AcquisitionParameters(cam, params)
        # DM adjusts what the camera cannot do instead of failing: refuse rather than mislabel the frame.
        got_bin = tuple(int(v) for v in dm.CM_GetBinning(params))
        if got_bin != (binning, binning):
            raise OutOfRange(f"{self._name}: binning {binning} not available (DM offers {got_bin})")
        got_exp = float(dm.CM_GetExposure(params))
        if abs(got_exp - exposure_s) > 1e-3 * max(exposure_s, 1e-3):
            raise OutOfRange(f"{self._name}: exposure {exposure_s:g} s not available (DM offers {got_exp:g} s)")
        got_proc = int(dm.CM_GetProcessing(params))
        if got_proc != want:
            raise NotAvailable(
                f"{self._name}: processing {self.config.processing} not available, DM would record "
                f"{_processing_name(got_proc)} (missing dark or gain reference?)"
            )
        return params

    def _acquire_raw(
        self, exposure_s: float, binning: int, roi: Roi | None, timeout_s: float
    ) -> tuple[np.ndarray, None]:
        dm = self._dm
        try:
            params = self._params(exposure_s, binning, roi)
            if self.config.prepare:
                dm.CM_PrepareCameraForAcquire(self._cam)
            t0 = time.monotonic()
            image = dm.CM_AcquireImage(self._cam, params)
            elapsed = time.monotonic() - t0
            # The numpy array maps DM's image memory, which DM may free or reuse: copy before anything else.
            data = np.array(image.GetNumArray(), dtype=np.float32, copy=True)
            self.last_pixel_size_m = _calibrated_pixel_m(image)
        except InstrumentError:
            raise
        except Exception as exc:
            text = str(exc)
            if "busy" in text.lower():
                raise NotAvailable(f"{self._name} is busy (DM's live view or another script): {text}") from exc
            raise HardwareFault(f"{self._name}: DM acquisition failed: {text}") from exc
        # CM_AcquireImage blocks and cannot be interrupted; the deadline is checked when it returns (a remote
        # client's own deadline holds regardless, docs/drivers.md).
        if elapsed > timeout_s:
            raise InstrumentTimeout(f"{self._name}: frame arrived after the {timeout_s:g} s timeout; discarded")
        return data, None

    def acquire(
        self, exposure_s: float, binning: int = 1, roi: Roi | None = None, timeout_s: float | None = None
    ) -> Frame:
        self.last_pixel_size_m = None
        frame = super().acquire(exposure_s, binning, roi, timeout_s)
        if self.last_pixel_size_m is None:
            return frame
        meta = frame.metadata.model_copy(update={"pixel_size_m": self.last_pixel_size_m})
        return Frame(data=frame.data, metadata=meta)


def _calibrated_pixel_m(image: Any) -> float | None:
    """DM's calibrated pixel (m) of an image, or None when it is uncalibrated (pixels) or in other units."""
    try:
        scale = float(image.GetDimensionScale(0))
        unit = str(image.GetDimensionUnitString(0)).strip()
    except Exception:
        return None
    factor = _UNITS_M.get(unit)
    if factor is None or not np.isfinite(scale) or scale <= 0:
        return None
    return scale * factor


class ColumnCamera:
    """A camera served elsewhere (the DM server) joined to this side's column: each frame carries the column's
    optics state read just before the exposure, as a single-box backend's frames do."""

    def __init__(self, camera: Camera, column: Microscope, *, pixel_size_from: str = "dm") -> None:
        self.camera = camera
        self.column = column
        self.pixel_size_from = pixel_size_from

    @property
    def instrument_id(self) -> str:
        return f"{self.column.instrument_id}+{self.camera.instrument_id}"

    def capabilities(self) -> frozenset[Capability]:
        return self.camera.capabilities()

    def info(self) -> CameraInfo:
        return self.camera.info()

    def acquire(
        self, exposure_s: float, binning: int = 1, roi: Roi | None = None, timeout_s: float | None = None
    ) -> Frame:
        optics: OpticsState = self.column.optics_state()
        frame = self.camera.acquire(exposure_s, binning, roi, timeout_s)
        md = frame.metadata
        pixel = md.pixel_size_m if self.pixel_size_from == "dm" else None
        if pixel is None and optics.pixel_size_m is not None:
            pixel = optics.pixel_size_m * md.binning
        meta = md.model_copy(
            update={
                "instrument_id": self.instrument_id,
                "pixel_size_m": pixel,
                "defocus_readback_m": optics.defocus_readback_m,
                "defocus_commanded_m": optics.defocus_commanded_m,
                "lens_mode": optics.lens_mode,
                "magnification": optics.magnification,
                "stage": optics.stage,
                "beam_blanked": optics.beam_blanked,
            }
        )
        return Frame(data=frame.data, metadata=meta)

    def close(self) -> None:
        self.camera.close()
