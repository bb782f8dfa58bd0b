"""Shared bookkeeping for local backends (simulated and vendor adapters).

A backend subclasses :class:`MicroscopeBase` / :class:`CameraBase` and implements a handful of ``_read_*`` /
``_write_*`` hooks in the instrument's own units; the base class does the parts that must be identical
everywhere: capability checks (NotAvailable), finiteness checks, calibration, set-settle-confirm, the
bookkeeping of the commanded defocus, argument validation of acquisitions, frame integrity checks and the
frame metadata with timestamps. Remote proxies do not use these classes: they implement the protocols directly.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from loguru import logger

from drivers.errors import HardwareFault, NotAvailable, OutOfRange
from drivers.interface import (
    Calibration,
    CameraInfo,
    Capability,
    Frame,
    FrameMetadata,
    LensMode,
    Microscope,
    OpticsState,
    Roi,
    SettleSpec,
    StageMove,
    StagePosition,
    check_finite,
    set_and_confirm,
)

__all__ = ["CameraBase", "MicroscopeBase", "expected_shape", "validate_frame_data"]

_STAGE_CAPS = {
    "x_m": Capability.STAGE_XY,
    "y_m": Capability.STAGE_XY,
    "z_m": Capability.STAGE_Z,
    "alpha_rad": Capability.STAGE_ALPHA,
    "beta_rad": Capability.STAGE_BETA,
}


class MicroscopeBase:
    """Template for a local microscope backend. Subclasses set ``CAPABILITIES`` and implement the hooks."""

    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset()

    def __init__(
        self,
        instrument_id: str,
        calibration: Calibration | None = None,
        defocus_settle: SettleSpec | None = None,
        stage_settle: SettleSpec | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._instrument_id = instrument_id
        self.calibration = calibration or Calibration()
        self.defocus_settle = defocus_settle or SettleSpec(tolerance=1e-9, timeout_s=5.0)
        self.stage_settle = stage_settle or SettleSpec(tolerance=1e-8, timeout_s=30.0, poll_s=0.05)
        self._sleep = sleep
        self._defocus_commanded_m: float | None = None

    # -- hooks, instrument units ------------------------------------------------------------------------
    def _read_defocus_raw(self) -> float:
        raise NotAvailable("defocus")

    def _write_defocus_raw(self, raw: float) -> None:
        raise NotAvailable("defocus")

    def _read_lens_mode(self) -> LensMode:
        return LensMode.UNKNOWN

    def _write_lens_mode(self, mode: LensMode) -> None:
        raise NotAvailable("lens mode")

    def _read_magnification(self) -> float:
        raise NotAvailable("magnification")

    def _read_pixel_size(self) -> float:
        raise NotAvailable("pixel size")

    def _read_stage(self) -> StagePosition:
        raise NotAvailable("stage")

    def _write_stage(self, axes: dict[str, float]) -> None:
        raise NotAvailable("stage")

    def _read_beam_blanked(self) -> bool:
        raise NotAvailable("beam blank")

    def _write_beam_blanked(self, blanked: bool) -> None:
        raise NotAvailable("beam blank")

    # -- protocol ---------------------------------------------------------------------------------------
    @property
    def instrument_id(self) -> str:
        return self._instrument_id

    def capabilities(self) -> frozenset[Capability]:
        return self.CAPABILITIES

    def _require(self, cap: Capability) -> None:
        if cap not in self.capabilities():
            raise NotAvailable(f"{self.instrument_id}: no {cap.value} control")

    def get_defocus(self) -> float:
        self._require(Capability.DEFOCUS)
        return self.calibration.to_metres(self._read_defocus_raw())

    def set_defocus(self, defocus_m: float, settle: SettleSpec | None = None) -> float:
        target = check_finite("defocus_m", defocus_m)
        self._require(Capability.DEFOCUS)
        raw = self.calibration.to_raw(target)
        spec = settle or self.defocus_settle
        # Record the command when it is issued: even if it never settles, the column was told to go there.
        self._defocus_commanded_m = target
        return set_and_confirm(
            lambda _t: self._write_defocus_raw(raw),
            self.get_defocus,
            target,
            spec,
            what=f"{self.instrument_id} defocus",
            sleep=self._sleep,
        )

    def get_lens_mode(self) -> LensMode:
        return self._read_lens_mode()

    def set_lens_mode(self, mode: LensMode) -> LensMode:
        mode = LensMode(mode)
        self._require(Capability.LENS_MODE)
        if mode is LensMode.UNKNOWN:
            raise OutOfRange("cannot set lens mode 'unknown'")
        return set_and_confirm(
            self._write_lens_mode,
            self._read_lens_mode,
            mode,
            self.defocus_settle,
            within=lambda a, b: a == b,
            what=f"{self.instrument_id} lens mode",
            sleep=self._sleep,
        )

    def get_magnification(self) -> float:
        self._require(Capability.MAGNIFICATION)
        return float(self._read_magnification())

    def get_pixel_size(self) -> float:
        self._require(Capability.PIXEL_SIZE)
        return float(self._read_pixel_size())

    def get_stage(self) -> StagePosition:
        if not self.capabilities() & set(_STAGE_CAPS.values()):
            raise NotAvailable(f"{self.instrument_id}: no stage")
        return self._read_stage()

    def move_stage(self, target: StageMove, settle: SettleSpec | None = None) -> StagePosition:
        axes = target.axes()
        for name, value in axes.items():
            check_finite(name, value)
            self._require(_STAGE_CAPS[name])
        if not axes:
            return self.get_stage()
        spec = settle or self.stage_settle

        def within(pos: StagePosition, _t: Any) -> bool:
            for name, want in axes.items():
                tol = spec.angle_tolerance_rad if name.endswith("_rad") else spec.tolerance
                if abs(getattr(pos, name) - want) > tol:
                    return False
            return True

        return set_and_confirm(
            lambda _t: self._write_stage(axes),
            self._read_stage,
            target,
            spec,
            within=within,
            what=f"{self.instrument_id} stage",
            sleep=self._sleep,
        )

    def get_beam_blanked(self) -> bool:
        self._require(Capability.BEAM_BLANK)
        return bool(self._read_beam_blanked())

    def set_beam_blanked(self, blanked: bool) -> bool:
        self._require(Capability.BEAM_BLANK)
        return set_and_confirm(
            lambda b: self._write_beam_blanked(bool(b)),
            self._read_beam_blanked,
            bool(blanked),
            self.defocus_settle,
            within=lambda a, b: bool(a) == bool(b),
            what=f"{self.instrument_id} beam blank",
            sleep=self._sleep,
        )

    def optics_state(self) -> OpticsState:
        caps = self.capabilities()
        has_stage = bool(caps & set(_STAGE_CAPS.values()))
        return OpticsState(
            defocus_readback_m=self.get_defocus() if Capability.DEFOCUS in caps else None,
            defocus_commanded_m=self._defocus_commanded_m,
            lens_mode=self.get_lens_mode(),
            magnification=self.get_magnification() if Capability.MAGNIFICATION in caps else None,
            pixel_size_m=self.get_pixel_size() if Capability.PIXEL_SIZE in caps else None,
            stage=self.get_stage() if has_stage else None,
            beam_blanked=self.get_beam_blanked() if Capability.BEAM_BLANK in caps else None,
        )

    def close(self) -> None:
        """Release the instrument. Local backends hold nothing by default."""


def expected_shape(info: CameraInfo, binning: int, roi: Roi | None) -> tuple[int, int]:
    h, w = (roi.height, roi.width) if roi is not None else info.sensor_shape
    return h // binning, w // binning


def validate_frame_data(data: Any, shape: tuple[int, int]) -> np.ndarray:
    """Integrity check of a frame straight from the camera; a failure is a HardwareFault, never a silent pass.

    A truncated or padded buffer, a wrong shape and non-finite pixels (a corrupted float frame) are all
    caught here, so the reconstruction never sees them.
    """
    if not isinstance(data, np.ndarray):
        raise HardwareFault(f"camera returned {type(data).__name__}, not an array")
    if data.shape != shape:
        raise HardwareFault(f"camera returned shape {data.shape}, expected {shape} (truncated or corrupt frame)")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise HardwareFault("camera returned non-finite pixels (corrupt frame)")
    return data


class CameraBase:
    """Template for a local camera backend: argument checks, timestamps, integrity checks, metadata."""

    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset({Capability.ACQUIRE})

    def __init__(
        self,
        instrument_id: str,
        microscope: Microscope | None = None,
        default_timeout_s: float = 30.0,
    ) -> None:
        self._instrument_id = instrument_id
        #: The column whose optics state is stamped into each frame (read just before the exposure).
        self.microscope = microscope
        self.default_timeout_s = default_timeout_s
        self._seq = itertools.count()

    @property
    def instrument_id(self) -> str:
        return self._instrument_id

    def capabilities(self) -> frozenset[Capability]:
        return self.CAPABILITIES

    def info(self) -> CameraInfo:
        raise NotImplementedError

    def _acquire_raw(
        self, exposure_s: float, binning: int, roi: Roi | None, timeout_s: float
    ) -> tuple[np.ndarray, dict[str, Any] | None]:
        """Return (image, simulator-only truth or None). Must raise InstrumentTimeout after ``timeout_s``."""
        raise NotImplementedError

    def _check_args(self, exposure_s: float, binning: int, roi: Roi | None) -> CameraInfo:
        info = self.info()
        exposure_s = check_finite("exposure_s", exposure_s)
        if not 0 < exposure_s <= info.max_exposure_s:
            raise OutOfRange(f"exposure {exposure_s} s outside (0, {info.max_exposure_s}] s")
        if binning not in info.binnings:
            raise OutOfRange(f"binning {binning} not in {info.binnings}")
        if roi is not None:
            if not info.supports_roi:
                raise NotAvailable(f"{info.name}: no region-of-interest readout")
            h, w = info.sensor_shape
            if roi.y0 + roi.height > h or roi.x0 + roi.width > w:
                raise OutOfRange(f"ROI {roi} outside sensor {info.sensor_shape}")
            if any(v % binning for v in (roi.y0, roi.x0, roi.height, roi.width)):
                raise OutOfRange(f"ROI {roi} not a multiple of binning {binning}")
        return info

    def acquire(
        self, exposure_s: float, binning: int = 1, roi: Roi | None = None, timeout_s: float | None = None
    ) -> Frame:
        info = self._check_args(exposure_s, binning, roi)
        timeout = self.default_timeout_s if timeout_s is None else check_finite("timeout_s", timeout_s)
        if timeout <= 0:
            raise OutOfRange("timeout_s must be positive")
        optics = self.microscope.optics_state() if self.microscope is not None else OpticsState()
        t0_epoch, t0_mono = time.time(), time.monotonic()
        data, truth = self._acquire_raw(float(exposure_s), binning, roi, timeout)
        t1_epoch, t1_mono = time.time(), time.monotonic()
        shape = expected_shape(info, binning, roi)
        data = validate_frame_data(data, shape)
        seq = next(self._seq)
        meta = FrameMetadata(
            instrument_id=self.instrument_id,
            camera=info.name,
            seq=seq,
            t_start_epoch_s=t0_epoch,
            t_end_epoch_s=t1_epoch,
            t_start_monotonic_s=t0_mono,
            t_end_monotonic_s=t1_mono,
            exposure_s=float(exposure_s),
            binning=binning,
            roi=roi,
            shape=shape,
            dtype=str(data.dtype),
            pixel_size_m=None if optics.pixel_size_m is None else optics.pixel_size_m * binning,
            defocus_readback_m=optics.defocus_readback_m,
            defocus_commanded_m=optics.defocus_commanded_m,
            lens_mode=optics.lens_mode,
            magnification=optics.magnification,
            stage=optics.stage,
            beam_blanked=optics.beam_blanked,
            truth=truth,
        )
        logger.debug("{} frame {} acquired: {} {} in {:.3f} s", info.name, seq, shape, data.dtype, t1_mono - t0_mono)
        return Frame(data=data, metadata=meta)

    def close(self) -> None:
        """Release the camera. Local backends hold nothing by default."""
