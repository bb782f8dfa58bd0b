"""Fake of temscript's ``Microscope`` (the subset the Thermo adapter uses), same names and units:
defocus in instrument units (increasing = over-focus), stage dict x/y/z in m and a/b in rad, camera
parameters ``exposure(s)``, ``binning``, ``image_size``; ``acquire(*names) -> {name: ndarray}``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Fake:
    calls: list[str] = field(default_factory=list)
    defocus: float = 0.0
    stage: dict[str, float] = field(default_factory=lambda: dict.fromkeys("xyzab", 0.0))
    blanked: bool = False
    magnification: float = 5000.0
    projection_mode: str = "IMAGING"
    camera_params: dict[str, Any] = field(
        default_factory=lambda: {"exposure(s)": 1.0, "binning": 1, "image_size": "FULL"}
    )
    stuck_stage: bool = False
    acquire_delay_s: float = 0.0
    corrupt: bool = False
    frames: int = 0

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


FAKE = _Fake()
CAMERAS = {
    "BM-Ceta": {
        "type": "CAMERA",
        "height": 64,
        "width": 64,
        "pixel_size(um)": 14.0,
        "binnings": [1, 2, 4],
        "shutter_modes": ["POST_SPECIMEN"],
    }
}


class Microscope:
    def __init__(self) -> None:
        FAKE.calls.append("Microscope")

    def get_defocus(self) -> float:
        FAKE.calls.append("get_defocus")
        return FAKE.defocus

    def set_defocus(self, value: float) -> None:
        FAKE.calls.append("set_defocus")
        FAKE.defocus = float(value)

    def get_stage_position(self) -> dict[str, float]:
        FAKE.calls.append("get_stage_position")
        return dict(FAKE.stage)

    def set_stage_position(self, pos=None, method=None, speed=None, **kw) -> None:
        FAKE.calls.append("set_stage_position")
        pos = dict(pos or {}, **kw)
        if FAKE.stuck_stage:
            return
        for k, v in pos.items():
            if k not in FAKE.stage:
                raise AttributeError(f"Unknown keyword '{k}'")
            FAKE.stage[k] = float(v)

    def get_stage_status(self) -> str:
        return "READY"

    def get_indicated_magnification(self) -> float:
        FAKE.calls.append("get_indicated_magnification")
        return FAKE.magnification

    def get_projection_mode(self) -> str:
        return FAKE.projection_mode

    def get_beam_blanked(self) -> bool:
        FAKE.calls.append("get_beam_blanked")
        return FAKE.blanked

    def set_beam_blanked(self, mode: bool) -> None:
        FAKE.calls.append("set_beam_blanked")
        FAKE.blanked = bool(mode)

    def get_cameras(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in CAMERAS.items()}

    def get_camera_param(self, name: str) -> dict[str, Any]:
        if name not in CAMERAS:
            raise KeyError(name)
        return dict(FAKE.camera_params)

    def set_camera_param(self, name: str, values: dict[str, Any], ignore_errors: bool = False) -> None:
        FAKE.calls.append("set_camera_param")
        if name not in CAMERAS:
            raise KeyError(name)
        FAKE.camera_params.update(values)

    def acquire(self, *args: str) -> dict[str, np.ndarray]:
        FAKE.calls.append("acquire")
        if FAKE.acquire_delay_s:
            time.sleep(FAKE.acquire_delay_s)
        out = {}
        for name in args:
            cam = CAMERAS[name]
            b = int(FAKE.camera_params["binning"])
            shape = (cam["height"] // b, cam["width"] // b)
            rng = np.random.default_rng(FAKE.frames)
            img = rng.poisson(100, size=shape).astype(np.uint16)
            if FAKE.corrupt:
                img = img[: shape[0] // 2]
            out[name] = img
        FAKE.frames += 1
        return out
