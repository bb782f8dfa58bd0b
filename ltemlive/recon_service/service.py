"""The reconstructor service: series in from the frame stream, phase and refined defocus out.

Two threads. The **I/O thread** owns every socket: the frame stream DEALER (HELLO, credit, pings), the control
DEALER (results, re-sent every ``result_retry_s`` until ACKed) and the event sink to the publisher. The
**compute thread** (the caller of :meth:`run`) takes stream items from a queue and drives one
:class:`StreamingReconstruction` per series: images are added as they arrive and, with ``live``, the fit
iterates between arrivals and publishes throttled previews; at END it runs to convergence and hands the result
(phase, amplitude, refined parameters with their sigmas, provenance) to the I/O thread. Credit goes back only
as the compute thread takes items, so a slow reconstructor holds at most ``window`` frames and the acquisition
side keeps the rest (on disk).

The next series is warm-started from the last good result (phase, the defocus calibration learnt so far,
theta_c, astigmatism, registration). A series it cannot reconstruct — bad frames, an error or a non-finite
result — is reported with status "error" and skipped; an aborted series is reported "aborted"; the service
keeps running. It never imports drivers: it only sees messages.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import zmq
from loguru import logger

from ltemlive import __version__, wire
from ltemlive.optics.params import MicroscopeParams
from ltemlive.publisher.sink import EventSink, downsample
from ltemlive.recon_service.config import ReconstructorServiceConfig
from ltemlive.reconstruct.config import ReconstructionConfig
from ltemlive.reconstruct.solver import ReconstructionResult
from ltemlive.reconstruct.streaming import StreamingReconstruction
from ltemlive.stream.client import FrameStreamClient, StreamItem
from ltemlive.wire import control as cm
from ltemlive.wire import frames as fm
from ltemlive.wire import security

__all__ = ["ReconstructorService", "ReconstructorServiceConfig"]


@dataclass
class _Series:
    start: fm.Start
    stream: StreamingReconstruction
    frame_ids: list[int] = field(default_factory=list)
    t_last_frame: float | None = None
    end: fm.End | None = None
    bad: str = ""
    warm_from_previous: bool = False
    #: (iteration, loss, data_loss) of every step, for the loss curve a late-joining watcher draws at once
    history: list[tuple[int, float, float]] = field(default_factory=list)


#: seconds between two "worker" events (the reconstructor's liveness for watchers)
WORKER_STATUS_S = 1.0
#: points of the loss history sent with each preview
HISTORY_POINTS = 300


def _thin(history: list[tuple[int, float, float]], n: int = HISTORY_POINTS) -> list[list[float]]:
    """At most n rows, evenly spread, always with the last."""
    if len(history) <= n:
        return [list(r) for r in history]
    idx = np.unique(np.linspace(0, len(history) - 1, n).round().astype(int))
    return [list(history[i]) for i in idx]


class ReconstructorService:
    def __init__(
        self,
        config: ReconstructorServiceConfig,
        reconstruction: ReconstructionConfig,
        *,
        frames_endpoint: str,
        control_endpoint: str,
        events_endpoint: str | None = None,
        session: str = "",
        context: zmq.Context | None = None,
    ) -> None:
        self.cfg = config
        self.recon_cfg = reconstruction
        self.frames_endpoint = frames_endpoint
        self.control_endpoint = control_endpoint
        self.events_endpoint = events_endpoint
        self.session = session
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._inbox: queue.Queue[StreamItem] = queue.Queue()
        self._outbox: queue.Queue[tuple] = queue.Queue()
        self._consumed = 0
        self._consumed_lock = threading.Lock()
        self._stop = threading.Event()
        self._io: threading.Thread | None = None
        self._io_ready = threading.Event()
        self.stats: Counter[str] = Counter()
        self._warm: ReconstructionResult | None = None
        self._warm_key: tuple | None = None
        #: what the compute thread is doing, for the "worker" events: (state, series)
        self._activity: tuple[str, int | None] = ("idle", None)
        import torch

        if config.threads:
            torch.set_num_threads(config.threads)
        # The first L-BFGS pulls in torch._dynamo (~2 s, measured): pay it now, not after the first series' END.
        torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])

    # -- compute thread -------------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or self._stop
        self._io = threading.Thread(target=self._io_main, name="recon-io", daemon=True)
        self._io.start()
        self._io_ready.wait(5)
        active: _Series | None = None
        last_preview = -math.inf
        try:
            while not stop.is_set() and not self._stop.is_set():
                busy = active is not None and active.end is None and self.cfg.live and active.stream.ready
                try:
                    item = self._inbox.get(timeout=0.0 if busy else 0.1)
                except queue.Empty:
                    item = None
                if item is not None:
                    self._took()
                    active = self._on_item(active, item)
                if active is None:
                    self._activity = ("idle", None)
                    continue
                self._activity = ("reconstructing" if active.stream.ready else "receiving", active.start.series)
                if active.end is not None:
                    self._finish(active, stop)
                    active = None
                    self._activity = ("idle", None)
                elif busy and item is None and not active.bad:
                    snap = self._step(active)
                    now = time.monotonic()
                    if snap is not None and now - last_preview >= self.cfg.preview_interval_s:
                        last_preview = now
                        self._progress(active, snap, final=False)
        finally:
            self._stop.set()
            if self._io is not None:
                self._io.join(3.0)
            if self._own_ctx:
                self._ctx.term()

    def stop(self) -> None:
        self._stop.set()

    def _took(self) -> None:
        with self._consumed_lock:
            self._consumed += 1

    def _on_item(self, active: _Series | None, item: StreamItem) -> _Series | None:
        if item.kind == "reset":
            if active is not None:
                logger.warning("series {} dropped on a RESET; it will be replayed", active.start.series)
            self.stats["resets"] += 1
            return None
        msg = item.msg
        if item.kind == "start":
            assert isinstance(msg, fm.Start)
            if active is not None and active.start.series != msg.series:
                logger.warning("series {} never ended; dropped for series {}", active.start.series, msg.series)
            return self._begin(msg)
        if active is None or msg is None or msg.series != active.start.series:
            self.stats["orphans"] += 1  # a frame or END without its START (e.g. after a RESET)
            return active
        if item.kind == "frame":
            assert isinstance(msg, fm.FrameMsg) and item.data is not None
            active.t_last_frame = time.monotonic()
            active.frame_ids.append(msg.frame_id)
            if active.bad:
                return active
            data = item.data
            if data.shape != tuple(active.start.frame_shape):
                active.bad = f"frame {msg.index} has shape {data.shape}, the series {tuple(active.start.frame_shape)}"
            elif not np.isfinite(data).all():
                active.bad = f"frame {msg.index} contains NaN or infinite values"
            else:
                try:
                    active.stream.add_image(data, msg.defocus_nominal_m)
                except ValueError as exc:
                    active.bad = f"frame {msg.index}: {exc}"
            self.stats["frames"] += 1
        elif item.kind == "end":
            assert isinstance(msg, fm.End)
            active.end = msg
        return active

    def _begin(self, start: fm.Start) -> _Series:
        o = start.optics
        mic = MicroscopeParams(
            voltage_v=o.voltage_v, cs_m=o.cs_m, theta_c_rad=o.theta_c_rad, focal_spread_m=o.focal_spread_m
        )
        key = (tuple(start.frame_shape), start.pixel_size_m, o.voltage_v)
        warm = self._warm if key == self._warm_key and self.cfg.warm_start else None
        stream = StreamingReconstruction(
            mic, start.pixel_size_m, config=self.recon_cfg, dose_e_per_px=start.dose_e_per_px, warm_start=warm,
            snapshot_interval_s=self.cfg.preview_interval_s,
        )
        logger.info("series {}: started ({} images planned{})", start.series, start.n_planned,
                    ", warm start" if warm is not None else "")
        return _Series(start=start, stream=stream, warm_from_previous=warm is not None)

    def _step(self, s: _Series):
        try:
            snap = s.stream.step()
            if snap is not None:
                s.history.append((int(snap.iteration), float(snap.loss), float(snap.data_loss)))
            return snap
        except Exception as exc:
            s.bad = f"reconstruction failed: {type(exc).__name__}: {exc}"
            logger.warning("series {}: {}", s.start.series, s.bad)
            return None

    def _finish(self, s: _Series, stop: threading.Event) -> None:
        series = s.start.series
        assert s.end is not None and series is not None
        if s.end.status != "complete":
            self._send_result(series, "aborted" if s.end.status == "aborted" else "error",
                              f"acquisition ended {s.end.status}: {s.end.reason}")
            return
        if not s.bad and len(s.frame_ids) < s.end.n_frames:
            s.bad = f"{len(s.frame_ids)} of {s.end.n_frames} frames received"
        if not s.bad and not s.stream.ready:
            s.bad = "fewer than two images at different defocus"
        result = None
        if not s.bad:
            last_preview = time.monotonic()
            while not stop.is_set() and not self._stop.is_set():
                snap = self._step(s)
                if snap is None:
                    break
                if self.cfg.live and time.monotonic() - last_preview >= self.cfg.preview_interval_s:
                    last_preview = time.monotonic()
                    self._progress(s, snap, final=False)
            if stop.is_set() or self._stop.is_set():
                return  # shutting down: the acquisition side replays it to whoever comes next
            if not s.bad:
                try:
                    result = s.stream.result()
                except Exception as exc:
                    s.bad = f"reconstruction failed: {type(exc).__name__}: {exc}"
            if result is not None and not (np.isfinite(result.phase).all() and np.isfinite(result.defocus_m).all()):
                s.bad, result = "the reconstruction diverged (non-finite phase or defocus)", None
        if s.bad or result is None:
            self.stats["series_failed"] += 1
            logger.warning("series {} skipped: {}", series, s.bad)
            self._send_result(series, "error", s.bad)
            return
        params = result.parameters()
        provenance = {
            "software": "ltemlive",
            "software_version": __version__,
            "worker": self.cfg.worker,
            "host_pid": os.getpid(),
            "config": self.recon_cfg.model_dump(mode="json"),
            "frame_ids": list(s.frame_ids),
            "warm_start_from_previous_series": s.warm_from_previous,
            "elapsed_s": result.elapsed_s,
            "iterations": result.iterations,
            "stopped_because": result.stopped_because,
            "latency_s": None if s.t_last_frame is None else time.monotonic() - s.t_last_frame,
        }
        self._warm = result
        self._warm_key = (tuple(s.start.frame_shape), s.start.pixel_size_m, s.start.optics.voltage_v)
        arrays = [result.phase.astype(np.float32), result.amplitude.astype(np.float32)]
        self._send_result(series, "ok", "", params, provenance, arrays)
        self._progress(s, None, final=True, result=result)
        nominal = np.where(result.defocus_nominal_m == 0, np.nan, result.defocus_nominal_m)
        logger.info(
            "series {}: done in {:.1f} s, {} it ({}); refined/nominal defocus {:.5f}",
            series, result.elapsed_s, result.iterations, result.stopped_because,
            float(np.nanmedian(result.defocus_m / nominal)),
        )

    def _progress(self, s: _Series, snap, *, final: bool, result: ReconstructionResult | None = None) -> None:
        if final and result is not None:
            # Full resolution: the publisher sends previews on its stream and keeps these for result requests.
            payload = {"series": s.start.series, "stage": "done", "iterations": result.iterations,
                       "stopped_because": result.stopped_because, "elapsed_s": result.elapsed_s,
                       "defocus_m": result.defocus_m, "defocus_sigma_m": result.defocus_sigma_m,
                       "defocus_nominal_m": result.defocus_nominal_m, "theta_c_rad": result.theta_c_rad,
                       "pixel_size_m": s.start.pixel_size_m, "shape": list(result.phase.shape),
                       "warnings": list(result.warnings), "worker": self.cfg.worker,
                       "history": _thin(s.history)}
            self._event("result", payload,
                        [result.phase.astype(np.float32), result.amplitude.astype(np.float32)], series=s.start.series)
            return
        if snap is None:
            return
        payload = {"series": s.start.series, "stage": snap.stage, "iteration": snap.iteration,
                   "loss": snap.loss, "data_loss": snap.data_loss, "defocus_m": snap.defocus_m,
                   "theta_c_rad": snap.theta_c_rad, "n_images": len(s.stream.images),
                   "pixel_size_m": s.start.pixel_size_m, "worker": self.cfg.worker,
                   "history": _thin(s.history)}
        arrays = []
        if s.stream._rec is not None:
            try:
                phase = s.stream._rec.model.phase_fov().detach().cpu().numpy().astype(np.float32)
                payload["shape"] = list(phase.shape)
                arrays = [downsample(phase, self.cfg.preview_px)]
            except Exception:  # a preview is a nicety
                arrays = []
        self._event("recon", payload, arrays, series=s.start.series)

    def _send_result(self, series: int, status: str, reason: str, parameters=None, provenance=None, arrays=()):
        msg = cm.Result(
            session=self.session, series=series, worker=self.cfg.worker, status=status, reason=reason[:4000],
            parameters=wire.json_safe(parameters or {}), provenance=wire.json_safe(provenance or {}),
        )
        self._outbox.put(("result", msg, list(arrays)))

    def _event(self, topic: str, payload: dict, arrays=(), series: int | None = None) -> None:
        self._outbox.put(("event", topic, payload, list(arrays), series))

    def _worker_event(self, sink: EventSink, peer_alive: bool) -> None:
        state, series = self._activity
        sink.emit("worker", {"worker": self.cfg.worker, "state": state, "series": series,
                             "interval_s": WORKER_STATUS_S, "acquisition_side_alive": peer_alive,
                             "frames": self.stats["frames"], "series_failed": self.stats["series_failed"]})

    # -- I/O thread ---------------------------------------------------------------------------------------
    def _io_main(self) -> None:
        client = FrameStreamClient(
            self.frames_endpoint, self.cfg.worker, window=self.cfg.window, context=self._ctx,
            peer_timeout_s=self.cfg.peer_timeout_s,
        )
        ctl = self._ctx.socket(zmq.DEALER)
        wire.configure(ctl, max_msg_bytes=1 << 20, sndhwm=64)
        ctl.setsockopt(zmq.RECONNECT_IVL, 100)
        ctl.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        security.connect(ctl, "controller")
        ctl.connect(self.control_endpoint)
        sink = None
        if self.events_endpoint:
            sink = EventSink(self.events_endpoint, source=self.cfg.worker, session=self.session, context=self._ctx)
        unacked: dict[int, tuple[cm.Result, list[np.ndarray], float]] = {}
        next_status = 0.0
        was_alive = True
        seq = 0
        self._io_ready.set()
        try:
            while not self._stop.is_set():
                for item in client.poll(0.02):
                    self._inbox.put(item)
                with self._consumed_lock:
                    n, self._consumed = self._consumed, 0
                if n:
                    client.consumed(n)
                while True:
                    try:
                        out = self._outbox.get_nowait()
                    except queue.Empty:
                        break
                    if out[0] == "result":
                        _, msg, arrays = out
                        unacked[msg.series] = (msg, arrays, 0.0)
                    elif sink is not None:
                        sink.emit(out[1], wire.json_safe(out[2]), out[3], series=out[4])
                now = time.monotonic()
                if sink is not None and now >= next_status:
                    next_status = now + WORKER_STATUS_S
                    self._worker_event(sink, client.alive)
                for series, (msg, arrays, sent_at) in list(unacked.items()):
                    if now - sent_at >= self.cfg.result_retry_s:
                        msg = msg.model_copy(update={"seq": seq})
                        seq += 1
                        try:
                            ctl.send_multipart(cm.TO_CONTROLLER.encode(msg, arrays), zmq.NOBLOCK, copy=False)
                            self.stats["results_sent" if sent_at == 0.0 else "results_resent"] += 1
                        except zmq.Again:
                            pass
                        unacked[series] = (msg, arrays, now)
                while ctl.poll(0, zmq.POLLIN):
                    try:
                        reply, _ = cm.FROM_CONTROLLER.decode(ctl.recv_multipart())
                    except wire.WireError as exc:
                        self.stats["malformed"] += 1
                        logger.warning("control: malformed reply dropped: {}", exc)
                        continue
                    if isinstance(reply, cm.Ack) and reply.series is not None:
                        unacked.pop(reply.series, None)
                        client.forget_series(reply.series)  # done on both sides: its dedup keys can go
                        if reply.duplicate:
                            self.stats["acked_duplicate"] += 1
                alive = client.alive
                if alive != was_alive:
                    (logger.info if alive else logger.warning)(
                        "acquisition side {}", "back" if alive else f"silent for over {self.cfg.peer_timeout_s:g} s"
                    )
                    was_alive = alive
        except Exception:
            logger.exception("reconstructor I/O thread failed")
            self._stop.set()
        finally:
            self.stats.update({f"stream_{k}": v for k, v in client.stats.items()})
            client.close(say_bye=True)  # its series go back to the pool at once, not after a timeout
            ctl.close(linger=0)
            if sink is not None:
                self._activity = ("stopped", None)
                self._worker_event(sink, client.alive)
                sink.close()
