"""The interface implemented on the physics simulator (:class:`simulator.instrument.VirtualLTEM`).

The simulated microscope behaves like a calibrated instrument from the driver's point of view: its defocus
read-back is the *nominal* value it was told (already in metres), while the simulator applies the true
defocus = nominal * (1 + scale error) + offset -/+ hysteresis / 2. The truth is reported only in the
simulator-only ``FrameMetadata.truth`` so tests can check it; nothing in the driver ever corrects for it -
finding it is the reconstruction's job.

Timing is modelled (lens and stage settling, exposure, readout) and scaled by ``time_scale``: 0 for instant
tests, 1 for real-time demos. Timeouts are never scaled: they are the caller's real deadlines, so a fault
surfaces as a typed error within the caller's timeout whatever the time scale.
"""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any, Literal

import numpy as np
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from drivers.base import CameraBase, MicroscopeBase
from drivers.errors import HardwareFault, InstrumentTimeout, OutOfRange
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
from simulator.instrument import VirtualLTEM
from simulator.series import SimulationConfig

__all__ = [
    "FaultConfig",
    "SimulatedCamera",
    "SimulatedInstrument",
    "SimulatedInstrumentConfig",
    "SimulatedMicroscope",
]

_Prob = Annotated[float, Field(ge=0.0, le=1.0)]
_NonNeg = Annotated[float, Field(ge=0.0, le=3600.0, allow_inf_nan=False)]


class FaultConfig(BaseModel):
    """Injected faults; each probability is drawn per acquisition from a seeded generator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    camera_timeout_prob: _Prob = 0.0  # the camera never delivers: InstrumentTimeout at the caller's timeout
    drop_frame_prob: _Prob = 0.0  # the camera reports a lost frame: HardwareFault
    corrupt_frame_prob: _Prob = 0.0  # garbage pixels or a truncated buffer: caught by the integrity check
    stuck_stage: bool = False  # the stage ignores moves: InstrumentTimeout on confirm


class SimulatedInstrumentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instrument_id: str = "sim-ltem"
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    #: lens hysteresis: values approached from below and above differ by this much (m)
    hysteresis_m: _NonNeg = 0.0
    lens_settle_time_s: _NonNeg = 0.05
    stage_settle_time_s: _NonNeg = 0.5
    readout_time_s: _NonNeg = 0.05
    #: multiplies every simulated duration: 0 = instant (tests), 1 = real time (demos)
    time_scale: Annotated[float, Field(ge=0.0, le=100.0)] = 0.0
    #: physical detector pixel; magnification = camera_pixel_size_m / simulation.pixel_size_m
    camera_pixel_size_m: Annotated[float, Field(gt=0)] = 15e-6
    camera_name: str = "sim-camera"
    binnings: tuple[int, ...] = (1, 2, 4)
    max_exposure_s: Annotated[float, Field(gt=0)] = 60.0
    #: default acquisition timeout (real seconds) when the caller gives none
    acquire_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    initial_lens_mode: LensMode = LensMode.LORENTZ
    #: -1 models a column whose focus runs the other way from the project's convention (df > 0 over-focus) - a
    #: reversed sign in a vendor calibration - so `ltemlive check-defocus` can be tested against it. The lens
    #: sees ``defocus_sign * nominal``; the read-back stays the nominal value, as on a miscalibrated column.
    defocus_sign: Literal[1, -1] = 1
    faults: FaultConfig = Field(default_factory=FaultConfig)
    #: seed of the fault generator; None derives it from simulation.seed
    fault_seed: int | None = None


class SimulatedInstrument:
    """State shared by the simulated microscope and camera (one column, one camera, one lock)."""

    def __init__(self, config: SimulatedInstrumentConfig, physics: VirtualLTEM | None = None) -> None:
        self.config = config
        self.physics = physics or VirtualLTEM(config.simulation, hysteresis_m=config.hysteresis_m)
        self.faults = config.faults
        seed = config.fault_seed if config.fault_seed is not None else config.simulation.seed + 0x5EED
        self._fault_rng = np.random.default_rng(seed)
        self.lock = threading.RLock()
        self._closed = threading.Event()
        # Lens: the read-back reaches the new nominal value once the lens has settled.
        self._nominal = 0.0
        self._nominal_previous = 0.0
        self._lens_ready_at = 0.0
        self._lens_mode = config.initial_lens_mode
        self._stage = StagePosition()
        self._stage_previous = StagePosition()
        self._stage_ready_at = 0.0
        self._blanked = False
        self.microscope = SimulatedMicroscope(self)
        self.camera = SimulatedCamera(self)

    # -- time -------------------------------------------------------------------------------------------
    def scaled(self, seconds: float) -> float:
        return seconds * self.config.time_scale

    def sleep_scaled(self, seconds: float) -> None:
        dt = self.scaled(seconds)
        if dt > 0:
            self._closed.wait(dt)

    def set_faults(self, faults: FaultConfig | dict[str, Any]) -> None:
        self.faults = faults if isinstance(faults, FaultConfig) else FaultConfig.model_validate(faults)
        logger.info("{}: fault injection set to {}", self.config.instrument_id, self.faults)

    def close(self) -> None:
        self._closed.set()

    # -- lens -------------------------------------------------------------------------------------------
    def read_defocus(self) -> float:
        with self.lock:
            return self._nominal if time.monotonic() >= self._lens_ready_at else self._nominal_previous

    def write_defocus(self, nominal_m: float) -> None:
        lens_m = self.config.defocus_sign * float(nominal_m)  # what the lens is really driven to
        reach = self.physics.true_defocus_for(lens_m)
        if reach > self.physics.max_true_defocus_m * (1 + 1e-9):
            # Its images would wrap around the simulated field's margin: wrong pictures, silently.
            raise OutOfRange(
                f"nominal defocus {nominal_m:.6g} m images at up to {reach:.6g} m, beyond the "
                f"{self.physics.max_true_defocus_m:.6g} m the simulated field is made for "
                "(widen simulated.simulation.defocus_m)"
            )
        with self.lock:
            self._nominal_previous = self.read_defocus()
            self._nominal = float(nominal_m)
            self._lens_ready_at = time.monotonic() + self.scaled(self.config.lens_settle_time_s)
            self.physics.set_defocus(lens_m)

    # -- stage ------------------------------------------------------------------------------------------
    def read_stage(self) -> StagePosition:
        with self.lock:
            return self._stage if time.monotonic() >= self._stage_ready_at else self._stage_previous

    def write_stage(self, axes: dict[str, float]) -> None:
        with self.lock:
            if self.faults.stuck_stage:
                logger.warning("{}: stage stuck (injected fault), move ignored", self.config.instrument_id)
                return
            self._stage_previous = self.read_stage()
            self._stage = self._stage.model_copy(update=axes)
            self._stage_ready_at = time.monotonic() + self.scaled(self.config.stage_settle_time_s)

    # -- camera -----------------------------------------------------------------------------------------
    def acquire(
        self, exposure_s: float, binning: int, roi: Roi | None, timeout_s: float
    ) -> tuple[np.ndarray, dict[str, Any]]:
        f = self.faults
        with self.lock:
            draws = self._fault_rng.random(4)
        t0 = time.monotonic()
        if draws[0] < f.camera_timeout_prob:
            # The frame never comes. Wait out the caller's (real) timeout, as a real camera call would.
            self._closed.wait(timeout_s)
            raise InstrumentTimeout(
                f"{self.config.camera_name}: no frame within {timeout_s:g} s (injected camera timeout)"
            )
        self.sleep_scaled(exposure_s + self.config.readout_time_s)
        if time.monotonic() - t0 > timeout_s:
            raise InstrumentTimeout(f"{self.config.camera_name}: exposure + readout exceeded {timeout_s:g} s")
        if draws[1] < f.drop_frame_prob:
            raise HardwareFault(f"{self.config.camera_name}: frame dropped by the camera (injected fault)")
        with self.lock:
            if self._blanked:
                h, w = self.config.simulation.shape
                frame = np.zeros((h // binning, w // binning), dtype=np.float32)
                truth: dict[str, Any] = {"true_defocus_m": self.physics.true_defocus_m, "beam_blanked": True}
            else:
                frame, truth = self.physics.acquire(exposure_s=exposure_s, binning=binning)
                truth = {**truth, "beam_blanked": False}
        if roi is not None:
            b = binning
            frame = frame[roi.y0 // b : (roi.y0 + roi.height) // b, roi.x0 // b : (roi.x0 + roi.width) // b]
        frame = np.ascontiguousarray(frame)
        if draws[2] < f.corrupt_frame_prob:
            frame = self._corrupt(frame, draws[3])
        return frame, truth

    @staticmethod
    def _corrupt(frame: np.ndarray, u: float) -> np.ndarray:
        if u < 0.5:  # a band of garbage rows
            bad = frame.astype(np.float32, copy=True)
            bad[: max(1, bad.shape[0] // 8)] = np.nan
            return bad
        return frame.ravel()[: frame.size // 2].copy()  # a truncated transfer

    def camera_info(self) -> CameraInfo:
        c = self.config
        h, w = c.simulation.shape
        return CameraInfo(
            name=c.camera_name,
            sensor_shape=(h, w),
            binnings=tuple(b for b in c.binnings if h % b == 0 and w % b == 0),
            dtype="float32",
            max_exposure_s=c.max_exposure_s,
            supports_roi=True,
        )


class SimulatedMicroscope(MicroscopeBase):
    CAPABILITIES = MICROSCOPE_CAPABILITIES

    def __init__(self, instrument: SimulatedInstrument) -> None:
        cfg = instrument.config
        # The simulated column reads out nominal metres directly: identity calibration. The miscalibration
        # is in the physics, where a real instrument has it too.
        super().__init__(
            cfg.instrument_id,
            Calibration(),
            defocus_settle=SettleSpec(tolerance=1e-9, timeout_s=max(2.0, 10 * cfg.lens_settle_time_s * cfg.time_scale)),
            stage_settle=SettleSpec(
                tolerance=1e-9, timeout_s=max(2.0, 10 * cfg.stage_settle_time_s * cfg.time_scale), poll_s=0.01
            ),
        )
        self._sim = instrument

    def _read_defocus_raw(self) -> float:
        return self._sim.read_defocus()

    def _write_defocus_raw(self, raw: float) -> None:
        self._sim.write_defocus(raw)

    def _read_lens_mode(self) -> LensMode:
        return self._sim._lens_mode

    def _write_lens_mode(self, mode: LensMode) -> None:
        self._sim._lens_mode = mode

    def _read_magnification(self) -> float:
        cfg = self._sim.config
        return cfg.camera_pixel_size_m / cfg.simulation.pixel_size_m

    def _read_pixel_size(self) -> float:
        return self._sim.config.simulation.pixel_size_m

    def _read_stage(self) -> StagePosition:
        return self._sim.read_stage()

    def _write_stage(self, axes: dict[str, float]) -> None:
        self._sim.write_stage(axes)

    def _read_beam_blanked(self) -> bool:
        return self._sim._blanked

    def _write_beam_blanked(self, blanked: bool) -> None:
        self._sim._blanked = blanked

    def close(self) -> None:
        self._sim.close()


class SimulatedCamera(CameraBase):
    CAPABILITIES = frozenset({Capability.ACQUIRE, Capability.BINNING, Capability.ROI})

    def __init__(self, instrument: SimulatedInstrument) -> None:
        super().__init__(
            instrument.config.instrument_id,
            microscope=instrument.microscope,
            default_timeout_s=instrument.config.acquire_timeout_s,
        )
        self._sim = instrument

    def info(self) -> CameraInfo:
        return self._sim.camera_info()

    def _acquire_raw(
        self, exposure_s: float, binning: int, roi: Roi | None, timeout_s: float
    ) -> tuple[np.ndarray, dict[str, Any]]:
        return self._sim.acquire(exposure_s, binning, roi, timeout_s)

    def close(self) -> None:
        self._sim.close()
