"""RunView: the update stream folded into what a person watching a run wants to know, with alerts.

One model for every watcher - the terminal monitor, the web dashboard, ``ltemlive run``'s own progress - so
that they agree on what "the reconstructor is down" means. It holds no socket: feed it the events a
:class:`~ltemlive.publisher.subscriber.Subscriber` returns (``view.apply(event, arrays)``) and ask
:meth:`RunView.alerts` / :meth:`RunView.summary` whenever you redraw. Times are the sources' ``t_epoch_s``
(so a view built from a snapshot mid-run knows how old the last frame is) compared with this host's clock.

Alerts (``Alert.key``):

* ``publisher_silent``   nothing heard from the publisher for 3 heartbeats (the caller passes ``publisher_alive``);
* ``no_frame``           the run is acquiring (not paused) and no frame has reached disk for ``no_frame_s``;
* ``series_aborted``     the latest series ended aborted or in error (cleared when the next one starts);
* ``run_aborted``        the run ended aborted with no series cut short (the abort came after the last frame,
  while the controller waited for the reconstructions), with the reason;
* ``reconstructor_down`` no reconstructor worker has reported for 3 of its intervals (or it said it stopped)
  while the run is live;
* ``feedback_rejected``  the latest defocus-feedback decision was not applied, with its reason;
* ``run_error``          the controller reported an error.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ltemlive.wire.updates import Event

__all__ = ["LIVE_STATES", "Alert", "Picture", "RunView"]

#: controller states in which a reconstructor is needed (the controller's RunState says "acquiring" and
#: "aborting"; "running" & co. are kept for other sources and the unit tests)
LIVE_STATES = ("acquiring", "aborting", "running", "paused", "starting", "draining")
#: states in which frames are expected (not paused)
ACQUIRING_STATES = ("acquiring", "running")
#: feedback decisions that are not failures (the operator asked for them)
_QUIET_REASONS = ("accepted", "disabled", "frozen")
LOSS_KEEP = 2000


@dataclass(frozen=True)
class Alert:
    key: str
    level: str  # "warning" | "error"
    message: str


@dataclass
class Picture:
    """An image of the run as last received: ``version`` is the event's seq (changes when the image does)."""

    name: str  # "phase" | "amplitude"
    array: np.ndarray
    pixel_size_m: float
    series: int | None
    version: int
    final: bool  # from a finished reconstruction (else a live preview)


@dataclass
class RunView:
    no_frame_s: float = 30.0
    clock: Callable[[], float] = time.time
    status: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    frame: dict[str, Any] = field(default_factory=dict)
    recon: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    pictures: dict[str, Picture] = field(default_factory=dict)
    #: (series, iteration, loss, data_loss) of the reconstructions seen, oldest first
    loss: deque = field(default_factory=lambda: deque(maxlen=LOSS_KEEP))
    #: compact feedback decisions, oldest first (from the calibration events' history)
    calibration_history: list[dict[str, Any]] = field(default_factory=list)
    log: deque = field(default_factory=lambda: deque(maxlen=200))
    last_frame_t: float | None = None
    series_end: dict[str, Any] = field(default_factory=dict)
    last_seq: int = 0

    # -- folding --------------------------------------------------------------------------------------------
    def apply(self, ev: Event, arrays: Sequence[np.ndarray] = ()) -> None:
        """Fold one event in. Unknown or malformed payload fields are ignored, never raised."""
        p = dict(ev.payload)
        p.setdefault("t_epoch_s", ev.t_epoch_s)
        self.last_seq = max(self.last_seq, ev.seq)
        handler = getattr(self, f"_on_{ev.topic}", None)
        if handler is not None:
            try:
                handler(ev, p, list(arrays))
            except (KeyError, TypeError, ValueError, IndexError):
                pass  # a watcher shows what it can; a source's odd payload is not its crash

    def _on_status(self, ev: Event, p: dict, arrays: list) -> None:
        if p.get("run_id") and p.get("run_id") != self.status.get("run_id"):
            self.series_end = {}
        self.status = {**self.status, **p}

    def _on_progress(self, ev: Event, p: dict, arrays: list) -> None:
        self.progress = p
        if self.series_end.get("series") != p.get("series"):
            self.series_end = {}  # a new series has started
        if self.last_frame_t is None or ev.t_epoch_s > self.last_frame_t:
            self.last_frame_t = ev.t_epoch_s  # the clock for "no frame" starts with the series

    def _on_frame(self, ev: Event, p: dict, arrays: list) -> None:
        self.frame = p
        self.last_frame_t = max(self.last_frame_t or 0.0, ev.t_epoch_s)

    def _on_recon(self, ev: Event, p: dict, arrays: list) -> None:
        self.recon = p
        if isinstance(p.get("history"), list):
            self._merge_loss(p.get("series"), p["history"])
        elif "iteration" in p and "loss" in p:
            self.loss.append((p.get("series"), int(p["iteration"]), float(p["loss"]),
                              float(p.get("data_loss", math.nan))))
        if arrays:
            self._picture("phase", arrays[0], p, ev.seq, final=False)

    def _on_result(self, ev: Event, p: dict, arrays: list) -> None:
        self.result = p
        if isinstance(p.get("history"), list):  # the last iterations, after the last preview
            self._merge_loss(p.get("series"), p["history"])
        for name, a in zip(("phase", "amplitude"), arrays, strict=False):
            self._picture(name, a, p, ev.seq, final=True)

    def _merge_loss(self, series: Any, history: list) -> None:
        """The source's own record of the loss: complete even for a watcher that joined late."""
        known = {(s, it) for s, it, *_ in self.loss}
        for row in history:
            if isinstance(row, list | tuple) and len(row) >= 3 and (series, row[0]) not in known:
                self.loss.append((series, int(row[0]), float(row[1]), float(row[2])))
        ordered = sorted(self.loss, key=lambda r: (r[0] if r[0] is not None else -1, r[1]))
        self.loss = deque(ordered, maxlen=LOSS_KEEP)

    def _picture(self, name: str, a: np.ndarray, p: dict, seq: int, *, final: bool) -> None:
        old = self.pictures.get(name)
        if old is not None and old.version > seq:
            return
        px = float(p.get("pixel_size_m") or math.nan)
        shape = p.get("shape")
        if isinstance(shape, list | tuple) and len(shape) == 2 and a.shape[1] and shape[1]:
            px *= shape[1] / a.shape[1]  # a downsampled preview: its pixels are larger
        self.pictures[name] = Picture(name, np.asarray(a), px, p.get("series"), seq, final)

    def _on_calibration(self, ev: Event, p: dict, arrays: list) -> None:
        self.calibration = p
        history = p.get("history")
        if isinstance(history, list):
            self.calibration_history = [h for h in history if isinstance(h, dict)]

    def _on_worker(self, ev: Event, p: dict, arrays: list) -> None:
        name = str(p.get("worker") or ev.source or "reconstructor")
        self.workers[name] = {**p, "t_epoch_s": ev.t_epoch_s}

    def _on_log(self, ev: Event, p: dict, arrays: list) -> None:
        self.log.append(p)
        if p.get("kind") == "series":
            self.series_end = {"series": p.get("series"), "status": p.get("status"), "message": p.get("message")}

    # -- reading --------------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return str(self.status.get("state") or "unknown")

    def alerts(self, *, publisher_alive: bool = True, now: float | None = None) -> list[Alert]:
        now = self.clock() if now is None else now
        out: list[Alert] = []
        if not publisher_alive:
            out.append(Alert("publisher_silent", "error", "nothing heard from the publisher for 3 heartbeats"))
        state = self.state
        if state == "error":
            out.append(Alert("run_error", "error", f"run error: {self.status.get('error') or 'unknown'}"))
        if (state in ACQUIRING_STATES and self.last_frame_t is not None and not self._plan_acquired()
                and now - self.last_frame_t > self.no_frame_s):
            out.append(Alert("no_frame", "warning", f"no frame for {now - self.last_frame_t:.0f} s"))
        end = self.series_end
        if end.get("status") in ("aborted", "error"):
            out.append(Alert("series_aborted", "warning", str(end.get("message") or f"series {end.get('series')} "
                                                                                     f"{end.get('status')}")))
        elif self.status.get("outcome") == "aborted":
            out.append(Alert("run_aborted", "warning",
                             f"run aborted: {self.status.get('abort_reason') or 'reason not given'}"))
        if state in LIVE_STATES:
            alive = [w for w in self.workers.values() if self._worker_alive(w, now)]
            if self.workers and not alive:
                out.append(Alert("reconstructor_down", "error", "no reconstructor has reported for "
                                 f"{min(now - w['t_epoch_s'] for w in self.workers.values()):.0f} s"))
        cal = self.calibration
        if cal and cal.get("accepted") is False:
            reason = str(cal.get("reason") or "")
            if not reason.startswith(_QUIET_REASONS):
                out.append(Alert("feedback_rejected", "warning",
                                 f"feedback rejected (series {cal.get('series_index')}): {reason[:160]}"))
        return out

    def _plan_acquired(self) -> bool:
        """The last frame of the plan is in: the controller stays "acquiring" while it waits for the
        reconstructions (drain), and no frame is expected then."""
        f = self.frame
        return (isinstance(f.get("n_series"), int) and f.get("series") == f["n_series"] - 1
                and isinstance(f.get("n_frames"), int) and f.get("index") == f["n_frames"] - 1)

    @staticmethod
    def _worker_alive(w: dict[str, Any], now: float) -> bool:
        if w.get("state") == "stopped":
            return False
        interval = w.get("interval_s")
        interval = float(interval) if isinstance(interval, int | float) and interval > 0 else 1.0
        return now - float(w.get("t_epoch_s", 0.0)) <= 3 * interval + 1.0

    def summary(self, *, publisher_alive: bool = True, now: float | None = None) -> dict[str, Any]:
        """Everything but the arrays, JSON-able: what a dashboard sends its browsers."""
        now = self.clock() if now is None else now
        return {
            "state": self.state,
            "status": self.status,
            "progress": self.progress,
            "frame": self.frame,
            "recon": {k: v for k, v in self.recon.items() if k != "history"},
            "result": self.result,
            "calibration": {k: v for k, v in self.calibration.items() if k != "history"},
            "calibration_history": self.calibration_history,
            "workers": self.workers,
            "loss": [list(r) for r in self.loss],
            "log": list(self.log)[-20:],
            "pictures": {n: {"version": p.version, "series": p.series, "final": p.final,
                             "shape": list(p.array.shape), "pixel_size_m": p.pixel_size_m}
                         for n, p in self.pictures.items()},
            "last_frame_age_s": None if self.last_frame_t is None else now - self.last_frame_t,
            "alerts": [a.__dict__ for a in self.alerts(publisher_alive=publisher_alive, now=now)],
            "last_seq": self.last_seq,
        }
