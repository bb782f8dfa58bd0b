"""Fake ``PyJEM.detector``: ``Detector(name)``, exposure in microseconds, raw uint16 bytes."""

from __future__ import annotations

import time

import numpy as np

from PyJEM._state import FAKE


def get_attached_detector() -> list[str]:
    return list(FAKE.detectors)


class Detector:
    def __init__(self, detectorName: str) -> None:
        if detectorName not in FAKE.detectors:
            raise Exception("[PyJEM Exception] The input detector can not be used.")
        self.name = detectorName

    def set_exposuretime_value(self, value: int) -> dict:
        FAKE.calls.append("set_exposuretime_value")
        FAKE.exposure_us = int(value)
        return {"ExposureTime": value}

    def snapshot_rawdata(self) -> bytes:
        FAKE.calls.append("snapshot_rawdata")
        if FAKE.snapshot_delay_s:
            time.sleep(FAKE.snapshot_delay_s)
        rng = np.random.default_rng(len(FAKE.calls))
        img = rng.poisson(50 * FAKE.exposure_us / 1e6 + 1, size=FAKE.shape).astype(np.uint16)
        raw = img.tobytes()
        return raw[: len(raw) // 2] if FAKE.corrupt else raw
