"""The acquisition controller: runs a plan on the instrument, one frame at a time, through a state machine.

    idle -> acquiring <-> paused
               |  \\-> aborting -> done (outcome "aborted")
               |-> done (outcome "complete")        any -> error (the instrument failed for good)

Between any two frames is a *safe point*: a pause waits there (the column holds still, nothing is half
done), an abort ends the series there. After the plan — finished, aborted or failed — the column's defocus is
restored to where it was before the run. Each frame goes: calibrated command -> set, settle, confirm
(driver) -> acquire -> run file (written and flushed) -> frame stream (offered, never waited for) -> events.

Operator commands and reconstruction results arrive on the control socket (:mod:`.control`), in another
thread; they only set flags, write results and update the calibration under a lock, so nothing they do can
stall the acquisition. The defocus feedback is advisory: the calibration in force when a series starts is
used for the whole series; if no estimate comes, the run goes on with the last calibration.

The run state is persisted (:mod:`.state`) after every frame and transition, so a restarted controller
reports where the previous one stood.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from drivers.errors import InstrumentError
from drivers.interface import Camera, Capability, Frame, Microscope
from ltemlive import __version__
from ltemlive.controller.feedback import DefocusCalibration, DefocusEstimate, DefocusFeedback
from ltemlive.controller.plan import Plan, SeriesPlan
from ltemlive.controller.state import RunStateFile
from ltemlive.storage.runfile import RunWriter, new_run_path
from ltemlive.stream.server import FrameStreamServer
from ltemlive.wire import frames as fm

__all__ = ["Controller", "RunState", "result_problem"]

#: consecutive series that fail on an instrument error before the run gives up (state "error")
MAX_FAILED_SERIES = 3
#: frames whose timing the status percentiles are over
TIMES_KEPT = 10_000


def result_problem(parameters: dict, arrays: list[np.ndarray]) -> str:
    """Why an "ok" result cannot be stored or fed back ("" when it can)."""
    if len(arrays) != 2:
        return f"expected phase and amplitude, got {len(arrays)} array(s)"
    if not all(np.isfinite(a).all() for a in arrays):
        return "non-finite values in the phase or amplitude"
    for key in ("defocus_m", "defocus_sigma_m", "defocus_nominal_m"):
        v = parameters.get(key)
        if not isinstance(v, list) or not v:
            return f"parameters.{key} missing"
    return ""


class RunState(str, Enum):
    IDLE = "idle"
    ACQUIRING = "acquiring"
    PAUSED = "paused"
    ABORTING = "aborting"
    ERROR = "error"
    DONE = "done"


class _Aborted(Exception):
    pass


class Controller:
    def __init__(
        self,
        microscope: Microscope,
        camera: Camera,
        plan: Plan,
        feedback: DefocusFeedback,
        *,
        session: str,
        output_dir: Path,
        optics: fm.OpticsInfo,
        frames_endpoint: str = "tcp://127.0.0.1:*",
        config_yaml: str = "",
        instrument_info: dict[str, Any] | None = None,
        emit: Callable[[str, dict[str, Any], tuple], None] | None = None,
        stream_kwargs: dict[str, Any] | None = None,
        drain_timeout_s: float = 600.0,
        max_defocus_step_m: float | None = None,
        context=None,
    ) -> None:
        self.microscope = microscope
        self.camera = camera
        self.plan = plan
        self.feedback = feedback
        self.session = session
        self.output_dir = Path(output_dir)
        self.optics = optics
        self.config_yaml = config_yaml
        self.instrument_info = instrument_info or {}
        self._emit = emit or (lambda topic, payload, arrays=(): None)
        self.drain_timeout_s = drain_timeout_s
        self.max_defocus_step_m = max_defocus_step_m
        self._lock = threading.RLock()  # state, feedback, results
        self._wake = threading.Condition(self._lock)
        self.state = RunState.IDLE
        self.outcome: str | None = None
        self.error: str | None = None
        self._pause = False
        self._abort: str | None = None
        self._stop = False  # abort and skip the drain (Ctrl-C)
        self._results: dict[int, str] = {}  # series -> result status, once fully handled
        #: compact feedback decisions (newest last, bounded): sent with every calibration event
        self._calibration_history: deque[dict[str, Any]] = deque(maxlen=200)  # 200 x ~220 B < MAX_HEADER_BYTES
        self._claimed: set[int] = set()  # series whose result is being or has been handled (first one wins)
        #: results taken but not yet written: they wait for the results of earlier series (in-order writing)
        self._held: dict[int, tuple] = {}
        self._next_result = 0
        self._write_lock = threading.Lock()
        self.series_index = -1
        self.frame_index = -1
        self.frames_written = 0
        # Per frame, over the last TIMES_KEPT frames (a run of days must not grow a list, nor status() sort it):
        self.frame_times_s: deque[float] = deque(maxlen=TIMES_KEPT)  # disk + offer (the controller's own cost)
        self.offer_times_s: deque[float] = deque(maxlen=TIMES_KEPT)  # the offer alone: the send path
        self.stats: dict[str, int] = {"duplicate_results": 0, "unknown_results": 0, "bad_results": 0, "results_held": 0}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.run_path = new_run_path(self.output_dir, session)
        self.run_id = self.run_path.stem
        self.state_file = RunStateFile(self.output_dir / f"{session}.state.json")
        self.previous = self.state_file.previous_run()
        self.writer: RunWriter | None = None
        self.stream = FrameStreamServer(
            frames_endpoint, read_frame=self._read_frame, session=session, context=context, **(stream_kwargs or {})
        )
        self.t_start: float | None = None

    # -- commands (any thread) -------------------------------------------------------------------------------
    def pause(self) -> str:
        with self._lock:
            if self.state not in (RunState.ACQUIRING, RunState.PAUSED, RunState.IDLE):
                return f"cannot pause: {self.state.value}"
            self._pause = True
            self._wake.notify_all()
        self._log("command", "pause requested: the run holds at the next safe point")
        return "pausing at the next safe point"

    def resume(self) -> str:
        with self._lock:
            self._pause = False
            self._wake.notify_all()
        self._log("command", "resume requested")
        return "resuming"

    def abort(self, reason: str = "aborted by the operator") -> str:
        with self._lock:
            if self._abort is None:
                self._abort = reason
            self._wake.notify_all()
        self._log("command", f"abort requested: {reason}")
        return "aborting at the next safe point; the defocus will be restored"

    def stop(self, reason: str = "stopped") -> str:
        with self._lock:
            self._stop = True
        return self.abort(reason)

    def freeze_feedback(self, frozen: bool) -> str:
        with self._lock:
            (self.feedback.freeze if frozen else self.feedback.unfreeze)()
        self._log("feedback", "feedback frozen" if frozen else "feedback unfrozen")
        return "frozen" if frozen else "unfrozen"

    def reset_feedback(self) -> str:
        with self._lock:
            self.feedback.reset()
            cal = self.feedback.calibration
        self._log("feedback", f"feedback reset to scale {cal.scale:.6f}, offset {cal.offset_m * 1e6:+.3f} um")
        return "reset"

    def status(self) -> dict[str, Any]:
        with self._lock:
            cal = self.feedback.calibration
            times = np.asarray(self.frame_times_s)
            return {
                "run_id": self.run_id,
                "run_file": str(self.run_path),
                "state": self.state.value,
                "outcome": self.outcome,
                "abort_reason": self._abort,
                "error": self.error,
                "paused": self.state == RunState.PAUSED,
                "series_index": self.series_index,
                "frame_index": self.frame_index,
                "n_series": self.plan.repeats,
                "n_per_series": len(self.plan.defocus_m),
                "frames_written": self.frames_written,
                "results": {str(k): v for k, v in self._results.items()},
                "calibration": {"scale": cal.scale, "offset_m": cal.offset_m},
                "feedback_frozen": self.feedback.frozen,
                "frame_time_p99_s": float(np.percentile(times, 99)) if times.size else None,
                "offer_time_p99_s": (float(np.percentile(self.offer_times_s, 99)) if self.offer_times_s
                                     else None),
                "offer_time_median_s": float(np.median(self.offer_times_s)) if self.offer_times_s else None,
                "stream": self.stream.status(),
                "stats": dict(self.stats),
            }

    # -- results from the reconstructor (control thread) ---------------------------------------------------------
    def accept_result(
        self, series: int, status: str, reason: str, parameters: dict, provenance: dict, arrays: list[np.ndarray]
    ) -> bool:
        """Take one series' result; it is written and fed back in series order (several workers finish out of
        order: a result waits for those of the series before it). Returns False for a duplicate (first wins)."""
        with self._lock:
            if series in self._claimed:
                self.stats["duplicate_results"] += 1
                return False
            if self.writer is None or series > self.series_index:
                self.stats["unknown_results"] += 1
                logger.warning("result for series {}, which this run has not acquired: dropped", series)
                return True
            if status == "ok":
                problem = result_problem(parameters, arrays)
                if problem:
                    self.stats["bad_results"] += 1
                    status, reason = "error", f"result refused: {problem}"
            self._claimed.add(series)
            self._held[series] = (status, reason, parameters, provenance, arrays)
            if series != self._next_result:
                self.stats["results_held"] += 1
        # Done for the stream now, not when written: a held result must not keep its worker's slot, or the
        # earlier series it waits for could never be assigned to that worker (a deadlock with two workers).
        self.stream.series_done(series)
        self._write_held()
        return True

    def _write_held(self, *, all_of_them: bool = False) -> None:
        """Write the held results whose predecessors are written (``all_of_them``: the rest too, at the end).
        One thread at a time: the control thread, or the acquisition thread at close."""
        with self._write_lock:
            while True:
                with self._lock:
                    if self._next_result in self._held:
                        series = self._next_result
                    elif all_of_them and self._held:
                        series = min(self._held)
                    else:
                        return
                    item = self._held.pop(series)
                    self._next_result = series + 1
                self._write_result(series, *item)

    def _write_result(
        self, series: int, status: str, reason: str, parameters: dict, provenance: dict, arrays: list[np.ndarray]
    ) -> None:
        if status == "ok":
            with self._lock:
                frame_ids = list(self._frames_of.get(series, []))
            self.writer.write_reconstruction(
                series,
                arrays[0],
                arrays[1],
                {**provenance, "series_index": series, "frame_ids": frame_ids, "parameters": parameters},
            )
            self._feedback(series, parameters)
        with self._lock:
            # Only now: a series waiting for this calibration must see the decision, not just the result.
            self._results[series] = status
            self._wake.notify_all()
        self._log("result", f"series {series}: reconstruction {status}" + (f" ({reason})" if reason else ""),
                  series=series, status=status)

    def _feedback(self, series: int, parameters: dict) -> None:
        try:
            est = DefocusEstimate.from_parameters(series, parameters)
        except Exception as exc:  # not a usable estimate: logged, the calibration stays
            self._log("feedback", f"series {series}: estimate unusable: {str(exc)[:300]}", series=series)
            return
        with self._lock:
            decision = self.feedback.update(est)
        record = decision.model_dump(mode="json")
        assert self.writer is not None
        self.writer.append_calibration(
            series, decision.after.scale, decision.after.offset_m, decision.accepted, record
        )
        est = decision.estimate_scale if decision.estimate_scale is not None else math.nan
        self._log(
            "calibration",
            f"series {series}: estimated scale {est:.5f}: {decision.reason}; in force: scale "
            f"{decision.after.scale:.5f}, offset {decision.after.offset_m * 1e6:+.2f} um",
            series=series,
            accepted=decision.accepted,
        )
        with self._lock:
            self._calibration_history.append({
                "series": series, "accepted": decision.accepted, "reason": decision.reason.split(":")[0][:40],
                "estimate_scale": decision.estimate_scale, "sigma_scale": decision.sigma_scale,
                "scale": decision.after.scale, "offset_m": decision.after.offset_m, "t_epoch_s": decision.t_epoch_s,
            })
            history = list(self._calibration_history)
        # With the whole (bounded) history, so a watcher joining late draws the convergence at once.
        self._emit("calibration", {**record, "history": history}, ())

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self) -> RunState:
        self.stream.start()
        try:
            self._open()
            self._acquire_all()
            self._drain()
        except Exception as exc:
            logger.exception("run failed")
            self._set_state(RunState.ERROR, error=f"{type(exc).__name__}: {exc}")
        finally:
            self._close()
        return self.state

    def _open(self) -> None:
        info = self.camera.info()
        h, w = info.sensor_shape
        b = self.plan.binning
        if self.plan.roi is not None:
            h, w = self.plan.roi.height, self.plan.roi.width
        shape = (h // b, w // b)
        px = None
        if Capability.PIXEL_SIZE in self.microscope.capabilities():
            px = self.microscope.get_pixel_size() * b
        if px is None or not (px > 0):
            raise InstrumentError("the microscope reports no pixel size; a reconstruction needs one")
        self.pixel_size_m = float(px)
        self.frame_shape = shape
        self._frames_of: dict[int, list[int]] = {}  # series -> frame ids (read by the control thread: lock)
        self.writer = RunWriter(
            self.run_path,
            run_id=self.run_id,
            session=self.session,
            frame_shape=shape,
            pixel_size_m=self.pixel_size_m,
            config_yaml=self.config_yaml,
            instrument={**self.instrument_info, "camera": info.model_dump(mode="json")},
            software_version=__version__,
        )
        if self.previous is not None:
            self._log("previous_run", self.previous["summary"], previous=self.previous["state"])
        self._log("run", f"run {self.run_id} started: {self.plan.repeats} series of {len(self.plan.defocus_m)} images "
                  f"{shape[0]}x{shape[1]}, frame stream on {self.stream.endpoint}", run_file=str(self.run_path))
        self.t_start = time.monotonic()
        self.start_defocus_m = self.microscope.get_defocus()
        self._set_state(RunState.ACQUIRING)

    def _acquire_all(self) -> None:
        failed = 0
        try:
            for sp in self.plan.series():
                self._before_series(sp)
                ok = self._acquire_series(sp)
                failed = 0 if ok else failed + 1
                if failed >= MAX_FAILED_SERIES:
                    raise InstrumentError(f"{failed} series in a row failed on instrument errors; giving up")
        except _Aborted:
            pass
        finally:
            self._restore_defocus()
        with self._lock:
            if self._abort is not None:
                self.outcome = "aborted"
            elif self.state != RunState.ERROR:
                self.outcome = "complete"

    def _restore_defocus(self) -> None:
        try:
            rb = self._move_defocus(self.start_defocus_m)
            self._log("defocus", f"defocus restored to {rb * 1e3:+.4f} mm", defocus_m=rb)
        except Exception as exc:  # the operator must know; nothing else can be done from here
            self._log("error", f"could not restore the defocus to {self.start_defocus_m:+.6g} m: {exc}")

    def _move_defocus(self, target: float) -> float:
        """Set, settle, confirm; a change larger than the instrument's step limit goes in steps within it (each
        one checked by the driver against a fresh read-back), never in one jump."""
        step = self.max_defocus_step_m
        if step is not None:
            current = self.microscope.get_defocus()
            n = math.ceil(abs(target - current) / (0.999 * step))
            for k in range(1, n):
                self.microscope.set_defocus(current + (target - current) * k / n, self.plan.settle)
        return self.microscope.set_defocus(target, self.plan.settle)

    def _check_abort(self) -> None:
        with self._lock:
            if self._abort is not None:
                raise _Aborted(self._abort)

    def _safe_point(self) -> None:
        """Hold here while paused; leave by an exception when aborted."""
        with self._lock:
            if self._pause and self._abort is None:
                self._set_state(RunState.PAUSED)
                self._log("state", "paused")
                while self._pause and self._abort is None:
                    self._wake.wait(0.5)
                if self._abort is None:
                    self._set_state(RunState.ACQUIRING)
                    self._log("state", "resumed")
        self._check_abort()

    def _wait(self, seconds: float, until: Callable[[], bool] = lambda: False) -> bool:
        """Wait up to ``seconds`` at a safe point (pause and abort honoured); True if ``until`` became true."""
        deadline = time.monotonic() + seconds
        while True:
            self._safe_point()
            with self._lock:
                if until():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.2))

    def _before_series(self, sp: SeriesPlan) -> None:
        assert self.t_start is not None
        start_at = self.t_start + sp.start_after_s
        if sp.index > 0 and self.plan.wait_for_feedback_s > 0:
            prev = sp.index - 1
            got = self._wait(self.plan.wait_for_feedback_s, lambda: prev in self._results)
            if not got:
                self._log("feedback", f"no calibration from series {prev} within {self.plan.wait_for_feedback_s:g} s; "
                          "going on with the calibration in force")
        if time.monotonic() < start_at:
            self._wait(start_at - time.monotonic())
        self._safe_point()
        hook = sp.hook
        if hook is not None:
            if hook.stage is not None:
                pos = self.microscope.move_stage(hook.stage)
                self._log("hook", f"series {sp.index}: stage moved", stage=pos.model_dump())
            if hook.wait_s > 0:
                self._wait(hook.wait_s)
            if hook.labels:
                self._log("hook", f"series {sp.index}: {hook.labels}", **hook.labels)

    def _acquire_series(self, sp: SeriesPlan) -> bool:
        assert self.writer is not None
        with self._lock:
            cal = self.feedback.calibration
            self.series_index = sp.index
            self.frame_index = -1
        commanded = [cal.commanded_for(d) for d in sp.defocus_m]
        plan = {
            "defocus_planned_m": list(sp.defocus_m),
            "defocus_commanded_m": commanded,
            "exposure_s": sp.exposure_s,
            "binning": sp.binning,
            "dose_e_per_px": self.plan.dose_e_per_px,
            "roi": None if sp.roi is None else sp.roi.model_dump(),
            "calibration": cal.model_dump(),
            "hook": None if sp.hook is None else sp.hook.model_dump(mode="json"),
        }
        self.writer.begin_series(sp.index, plan)
        self.stream.begin_series(
            fm.Start(
                session=self.session,
                series=sp.index,
                run_id=self.run_id,
                n_planned=len(sp.defocus_m),
                defocus_planned_m=list(sp.defocus_m),
                frame_shape=self.frame_shape,
                pixel_size_m=self.pixel_size_m,
                optics=self.optics,
                dose_e_per_px=self.plan.dose_e_per_px,
                calibration_scale=cal.scale,
                calibration_offset_m=cal.offset_m,
                hook={} if sp.hook is None else dict(sp.hook.labels),
            )
        )
        self._emit("progress", {"series": sp.index, "frame": -1, "n_series": self.plan.repeats,
                                "n_frames": len(sp.defocus_m), "calibration": cal.model_dump()}, ())
        status, reason = "complete", ""
        try:
            for i, (planned, cmd) in enumerate(zip(sp.defocus_m, commanded, strict=True)):
                self._safe_point()
                self._acquire_frame(sp, i, planned, cmd, cal)
        except _Aborted as exc:
            status, reason = "aborted", str(exc)
            raise
        except InstrumentError as exc:
            status, reason = "error", f"{type(exc).__name__}: {exc}"
            self._log("error", f"series {sp.index} failed: {reason}", series=sp.index)
            return False
        finally:
            self.writer.end_series(sp.index, status, reason)
            self.stream.end_series(sp.index, status, reason)
            self._log("series", f"series {sp.index} {status}" + (f": {reason}" if reason else ""),
                      series=sp.index, status=status)
            self._persist()
        return True

    def _acquire_frame(self, sp: SeriesPlan, i: int, planned: float, cmd: float, cal: DefocusCalibration) -> None:
        assert self.writer is not None
        readback = self._move_defocus(cmd)
        frame: Frame = self.camera.acquire(sp.exposure_s, binning=sp.binning, roi=sp.roi)
        t0 = time.perf_counter()
        md = frame.metadata
        data = np.ascontiguousarray(frame.data, dtype=np.float32)
        fid = self.writer.append_frame(
            data,
            series_index=sp.index,
            index_in_series=i,
            defocus_planned_m=planned,
            defocus_commanded_m=cmd,
            defocus_readback_m=readback,
            calibration_scale=cal.scale,
            calibration_offset_m=cal.offset_m,
            exposure_s=md.exposure_s,
            t_start_epoch_s=md.t_start_epoch_s,
            t_end_epoch_s=md.t_end_epoch_s,
            metadata=md.model_dump(mode="json"),
        )
        # On disk and flushed: now, and only now, it may go downstream.
        nominal = readback if readback is not None and math.isfinite(readback) else cmd
        t_offer = time.perf_counter()
        self.stream.offer_frame(
            fm.FrameMsg(
                session=self.session,
                series=sp.index,
                index=i,
                frame_id=fid,
                defocus_nominal_m=nominal,
                defocus_planned_m=planned,
                defocus_commanded_m=cmd,
                exposure_s=md.exposure_s,
            ),
            data,
        )
        t_done = time.perf_counter()
        dt, offer = t_done - t0, t_done - t_offer
        with self._lock:
            self.offer_times_s.append(offer)
            self._frames_of.setdefault(sp.index, []).append(fid)
            self.frame_index = i
            self.frames_written += 1
            self.frame_times_s.append(dt)
        self._emit("frame", {"series": sp.index, "index": i, "frame_id": fid, "defocus_planned_m": planned,
                             "defocus_commanded_m": cmd, "defocus_readback_m": readback,
                             "n_series": self.plan.repeats, "n_frames": len(sp.defocus_m)}, ())
        self._persist()

    def _drain(self) -> None:
        """Wait for the reconstructions of what was acquired (bounded); a stop skips it."""
        with self._lock:
            if self._stop or self.state == RunState.ERROR:
                return
        deadline = time.monotonic() + self.drain_timeout_s
        if self.stream.pending():
            self._log("run", f"acquisition finished; waiting for {len(self.stream.pending())} reconstruction(s)")
        with self._lock:
            while self.stream.pending() and not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._log("run", f"reconstructions of series {self.stream.pending()} did not come within "
                              f"{self.drain_timeout_s:g} s")
                    break
                self._wake.wait(min(left, 0.2))

    def _close(self) -> None:
        if self.writer is not None:
            if self._held:  # results still waiting for an earlier series that never came: write them now
                logger.warning("writing {} result(s) whose earlier series has none: {}", len(self._held),
                               sorted(self._held))
            self._write_held(all_of_them=True)  # also waits for a write in progress on the control thread
        with self._lock:
            if self.state != RunState.ERROR:
                self._set_state(RunState.DONE)
        if self.writer is not None:
            st = self.status()
            self._log("run", f"run {self.run_id} {self.state.value} ({self.outcome}): {self.frames_written} frames, "
                      f"{len(self._results)} reconstruction(s)", outcome=self.outcome)
            self._emit("status", st, ())
            self.writer.close()
        self.stream.stop()
        self._persist()

    # -- helpers ------------------------------------------------------------------------------------------------
    def _read_frame(self, frame_id: int) -> np.ndarray:
        assert self.writer is not None
        return self.writer.read_frame(frame_id)[0]

    def _set_state(self, state: RunState, error: str | None = None) -> None:
        with self._lock:
            self.state = state
            if error is not None:
                self.error = error
            self._wake.notify_all()
        self._emit("status", {"state": state.value, "run_id": self.run_id, "error": error,
                              "series_index": self.series_index, "outcome": self.outcome}, ())
        self._persist()

    def _log(self, kind: str, message: str, **fields: Any) -> None:
        level = "WARNING" if kind in ("error", "previous_run") else "INFO"
        logger.log(level, "{}", message)
        if self.writer is not None:
            try:
                self.writer.log_event(kind, message, **fields)
            except Exception as exc:  # a closed file at shutdown must not mask the event in the log
                logger.debug("event not written to the run file: {}", exc)
        self._emit("log", {"kind": kind, "message": message, **fields}, ())

    def _persist(self) -> None:
        with self._lock:
            state = {
                "run_id": self.run_id,
                "run_file": str(self.run_path),
                "state": self.state.value,
                "outcome": self.outcome,
                "series_index": self.series_index,
                "frame_index": self.frame_index,
                "frames_written": self.frames_written,
                "n_series": self.plan.repeats,
                "results": {str(k): v for k, v in self._results.items()},
                "feedback": self.feedback.state(),
                "version": __version__,
            }
        try:
            self.state_file.write(state)
        except OSError as exc:
            logger.warning("run state not persisted: {}", exc)
