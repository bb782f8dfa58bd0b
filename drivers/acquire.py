"""Acquisition helpers built only on the protocols, so they run unchanged on every backend."""

from __future__ import annotations

from collections.abc import Sequence

from loguru import logger

from drivers.interface import Camera, Frame, Microscope, Roi, SettleSpec

__all__ = ["acquire_through_focus"]


def acquire_through_focus(
    microscope: Microscope,
    camera: Camera,
    defocus_m: Sequence[float],
    exposure_s: float,
    *,
    binning: int = 1,
    roi: Roi | None = None,
    settle: SettleSpec | None = None,
    timeout_s: float | None = None,
    restore: bool = True,
) -> list[Frame]:
    """Set-settle-confirm each defocus, then acquire; returns one frame per defocus, in order.

    Each frame's metadata carries the confirmed read-back and the commanded value. With ``restore`` the
    starting defocus is set again afterwards (also after an error), so an aborted series leaves the column
    where it was.
    """
    start = microscope.get_defocus() if restore else None
    frames: list[Frame] = []
    try:
        for df in defocus_m:
            microscope.set_defocus(df, settle)
            frames.append(camera.acquire(exposure_s, binning=binning, roi=roi, timeout_s=timeout_s))
    finally:
        if start is not None:
            try:
                microscope.set_defocus(start, settle)
            except Exception as exc:  # do not mask the original error; the operator must know though
                logger.error("could not restore defocus {:.6g} m after the series: {}", start, exc)
    return frames
