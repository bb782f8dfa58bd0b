"""Fake of Gatan's ``DigitalMicrograph`` Python module (GMS 3.4+; it exists only inside DM's own Python), the
subset the Gatan adapter uses, with the names, argument order and units of the DM-script camera manager (``CM_``)
functions as exposed to Python:

* ``CM_GetCurrentCamera() -> camera``, ``CM_GetCameraName(camera) -> str``, ``CM_CCD_GetSize(camera) -> (width,
  height)`` (unbinned pixels), ``CM_PrepareCameraForAcquire(camera)``;
* ``CM_CreateAcquisitionParameters_FullCCD(camera, processing, exposure_s, bin_x, bin_y) -> params`` (processing
  1 unprocessed, 2 dark subtracted, 3 gain normalised), ``CM_SetBinnedReadArea(camera, params, top, left,
  bottom, right)`` (binned pixels), ``CM_Validate_AcquisitionParameters(camera, params)`` (adjusts what the camera
  cannot do), ``CM_GetExposure/CM_GetBinning/CM_GetProcessing(params)``;
* ``CM_AcquireImage(camera, params) -> Py_Image``; ``image.GetNumArray()`` (a NumPy view of DM's memory, shape
  (height, width)), ``image.GetDimensionScale(i)`` / ``image.GetDimensionUnitString(i)`` (the calibrated pixel,
  e.g. 0.25 and "nm", set by DM from the microscope's magnification).

DM reports script errors as Python exceptions (``RuntimeError`` with DM's message). ``FAKE`` holds the state,
the call log and the fault switches (slow, busy, failing and truncating camera)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

PROCESSING = {1: "unprocessed", 2: "dark subtracted", 3: "gain normalized"}


@dataclass
class _Fake:
    calls: list[str] = field(default_factory=list)
    name: str = "OneView"
    width: int = 64
    height: int = 64
    max_binning: int = 4
    #: calibrated pixel at binning 1 as DM would report it (nm); 0 = an uncalibrated image (units "")
    pixel_nm: float = 0.5
    #: processing levels this camera has references for (no gain reference: gain normalised falls back)
    processing_available: tuple[int, ...] = (1, 2, 3)
    acquire_delay_s: float = 0.0
    busy: bool = False
    fail: bool = False
    corrupt: bool = False
    frames: int = 0
    last_params: dict | None = None

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


FAKE = _Fake()


class Py_Camera:
    def __init__(self, name: str) -> None:
        self.name = name


class Py_Image:
    def __init__(self, data: np.ndarray, scale: float, unit: str) -> None:
        self._data = data
        self._scale = scale
        self._unit = unit

    def GetNumArray(self) -> np.ndarray:
        return self._data

    def GetDimensionScale(self, index: int) -> float:
        return self._scale

    def GetDimensionUnitString(self, index: int) -> str:
        return self._unit


def _log(name: str) -> None:
    FAKE.calls.append(name)


def CM_GetCurrentCamera() -> Py_Camera:
    _log("CM_GetCurrentCamera")
    return Py_Camera(FAKE.name)


def CM_GetCameraName(camera: Py_Camera) -> str:
    return camera.name


def CM_CCD_GetSize(camera: Py_Camera) -> tuple[int, int]:
    return FAKE.width, FAKE.height


def CM_PrepareCameraForAcquire(camera: Py_Camera) -> None:
    _log("CM_PrepareCameraForAcquire")


def CM_CreateAcquisitionParameters_FullCCD(
    camera: Py_Camera, processing: int, exposure: float, bin_x: int, bin_y: int
) -> dict:
    _log("CM_CreateAcquisitionParameters_FullCCD")
    return {
        "processing": int(processing), "exposure": float(exposure), "binning": (int(bin_x), int(bin_y)),
        "area": (0, 0, FAKE.height // int(bin_y), FAKE.width // int(bin_x)),
    }


def CM_SetBinnedReadArea(camera: Py_Camera, params: dict, top: int, left: int, bottom: int, right: int) -> None:
    params["area"] = (int(top), int(left), int(bottom), int(right))


def CM_Validate_AcquisitionParameters(camera: Py_Camera, params: dict) -> None:
    # Like DM: what the camera cannot do is adjusted to the nearest thing it can, not refused.
    bx, by = params["binning"]
    params["binning"] = (min(bx, FAKE.max_binning), min(by, FAKE.max_binning))
    if params["processing"] not in FAKE.processing_available:
        params["processing"] = max(p for p in FAKE.processing_available if p < params["processing"])


def CM_GetExposure(params: dict) -> float:
    return params["exposure"]


def CM_GetBinning(params: dict) -> tuple[int, int]:
    return params["binning"]


def CM_GetProcessing(params: dict) -> int:
    return params["processing"]


def CM_AcquireImage(camera: Py_Camera, params: dict) -> Py_Image:
    _log("CM_AcquireImage")
    FAKE.last_params = dict(params)
    if FAKE.busy:
        raise RuntimeError("The camera is busy: an acquisition is already in progress")
    if FAKE.acquire_delay_s:
        time.sleep(FAKE.acquire_delay_s)
    if FAKE.fail:
        raise RuntimeError("Camera acquisition failed (no signal from the camera)")
    top, left, bottom, right = params["area"]
    shape = (bottom - top, right - left)
    rng = np.random.default_rng(FAKE.frames)
    FAKE.frames += 1
    # DM images of gain-normalised data are float32; unprocessed ones are integers.
    dtype = np.float32 if params["processing"] == 3 else np.uint16
    data = rng.poisson(200, size=shape).astype(dtype)
    if FAKE.corrupt:
        data = data[: shape[0] // 2]
    b = params["binning"][0]
    return Py_Image(data, FAKE.pixel_nm * b if FAKE.pixel_nm else 1.0, "nm" if FAKE.pixel_nm else "")


def OkDialog(text: str) -> bool:
    _log("OkDialog")
    return True


def Result(text: str) -> None:
    _log("Result")
