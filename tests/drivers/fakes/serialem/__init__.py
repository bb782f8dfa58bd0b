"""Fake of SerialEM's Python module ``serialem`` (SerialEM 4.x: the module inside SerialEM's own Python, or the
external one connected with ``ConnectToSEM(port, ip)``), the subset the SerialEM adapter uses, with SerialEM's
names and units:

* ``ConnectToSEM(port=48888, ip="127.0.0.1")``, ``NoMessageBoxOnError(1)`` (errors raise instead of a modal
  box), ``Exit()``;
* ``GetDefocus() -> µm`` / ``SetDefocus(µm)`` (SerialEM's defocus: negative is under-focus);
* ``ReportStageXYZ() -> (x, y, z)`` µm, ``MoveStageTo(x, y[, z])`` µm (blocks until the stage stops),
  ``ReportTiltAngle() -> deg``, ``TiltTo(deg)``;
* ``SetBeamBlank(0|1)`` (no read-back command);
* ``ReportMag() -> (mag, ...)``, ``ReportCurrentPixelSize("R") -> nm`` at the set's binning,
  ``ReportBinning("R")``, ``CameraProperties() -> (width, height, ...)``;
* ``SetExposure("R", s)``, ``SetBinning("R", b)``, ``Record()``, ``bufferImage("A") -> numpy array``.

A failing command raises ``serialem.SEMerror`` with SerialEM's message. ``FAKE`` holds the state, the call log
and the fault switches (stuck stage, slow / busy / failing camera, truncated buffer, lost connection)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


class SEMerror(Exception):
    """What SerialEM's Python module raises when a script command fails."""


@dataclass
class _Fake:
    calls: list[str] = field(default_factory=list)
    connected: bool = False
    connect_to: tuple[int, str] | None = None
    defocus_um: float = 0.0
    stage_um: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    tilt_deg: float = 0.0
    blanked: bool = False
    mag: float = 8000.0
    pixel_nm: float = 1.5  # at binning 1
    width: int = 64
    height: int = 64
    exposure: dict[str, float] = field(default_factory=lambda: {"R": 1.0})
    binning: dict[str, int] = field(default_factory=lambda: {"R": 1})
    stage_limit_um: float = 1000.0
    stuck_stage: bool = False
    record_delay_s: float = 0.0
    busy: bool = False
    fail: bool = False
    fail_message: str = "Camera acquisition failed: the camera returned no image"
    corrupt: bool = False
    lost: bool = False
    frames: int = 0
    buffer_a: np.ndarray | None = None

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


FAKE = _Fake()


def _log(name: str) -> None:
    if FAKE.lost:
        raise SEMerror("Error sending command to SerialEM: the connection was closed")
    FAKE.calls.append(name)


def ConnectToSEM(port: int = 48888, ip: str = "127.0.0.1") -> None:
    FAKE.calls.append("ConnectToSEM")
    FAKE.connected = True
    FAKE.connect_to = (int(port), str(ip))


def NoMessageBoxOnError(flag: int = 1) -> None:
    _log("NoMessageBoxOnError")


def Exit(code: int = 0) -> None:
    FAKE.calls.append("Exit")
    FAKE.connected = False


def GetDefocus() -> float:
    _log("GetDefocus")
    return FAKE.defocus_um


def SetDefocus(value_um: float) -> None:
    _log("SetDefocus")
    FAKE.defocus_um = float(value_um)


def ReportStageXYZ() -> tuple[float, float, float]:
    _log("ReportStageXYZ")
    return tuple(FAKE.stage_um)  # type: ignore[return-value]


def MoveStageTo(x: float, y: float, z: float | None = None) -> None:
    _log("MoveStageTo")
    target = [float(x), float(y), FAKE.stage_um[2] if z is None else float(z)]
    if any(abs(v) > FAKE.stage_limit_um for v in target[:2]):
        raise SEMerror(f"Stage move to {target[0]:.2f}, {target[1]:.2f} is outside the stage limits")
    if not FAKE.stuck_stage:
        FAKE.stage_um = target


def ReportTiltAngle() -> float:
    _log("ReportTiltAngle")
    return FAKE.tilt_deg


def TiltTo(angle_deg: float) -> None:
    _log("TiltTo")
    if abs(angle_deg) > 70:
        raise SEMerror(f"Tilt angle {angle_deg} is beyond the tilt limits")
    if not FAKE.stuck_stage:
        FAKE.tilt_deg = float(angle_deg)


def SetBeamBlank(flag: int) -> None:
    _log("SetBeamBlank")
    FAKE.blanked = bool(flag)


def ReportMag() -> tuple[float, int, int]:
    _log("ReportMag")
    return FAKE.mag, 0, 0


def ReportBinning(param_set: str) -> int:
    return FAKE.binning[param_set]


def ReportCurrentPixelSize(param_set: str) -> float:
    return FAKE.pixel_nm * FAKE.binning[param_set]


def CameraProperties(camera: int | None = None) -> tuple[int, int, int, float, float]:
    _log("CameraProperties")
    return FAKE.width, FAKE.height, 0, 15.0, 0.0


def SetExposure(param_set: str, seconds: float) -> None:
    _log("SetExposure")
    FAKE.exposure[param_set] = float(seconds)


def SetBinning(param_set: str, binning: int) -> None:
    _log("SetBinning")
    if int(binning) not in (1, 2, 4, 8):
        raise SEMerror(f"Binning {binning} is not available for this camera")
    FAKE.binning[param_set] = int(binning)


def Record() -> None:
    _log("Record")
    if FAKE.busy:
        raise SEMerror("The camera is busy (another acquisition or a script is using it)")
    if FAKE.record_delay_s:
        time.sleep(FAKE.record_delay_s)
    if FAKE.fail:
        raise SEMerror(FAKE.fail_message)
    b = FAKE.binning["R"]
    shape = (FAKE.height // b, FAKE.width // b)
    rng = np.random.default_rng(FAKE.frames)
    FAKE.frames += 1
    img = rng.poisson(150, size=shape).astype(np.int16)
    FAKE.buffer_a = img[: shape[0] // 2] if FAKE.corrupt else img


def bufferImage(buffer: str) -> np.ndarray:
    _log("bufferImage")
    if buffer != "A" or FAKE.buffer_a is None:
        raise SEMerror(f"There is no image in buffer {buffer}")
    return FAKE.buffer_a
