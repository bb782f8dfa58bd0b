"""The dashboard's gateway: the update stream in, the page's state and pictures out.

Two threads, neither on the web server's event loop:

* the *follower* owns the :class:`~ltemlive.publisher.subscriber.Subscriber` (not thread-safe: only this
  thread touches it) and folds its events into a :class:`~ltemlive.publisher.view.RunView`; after each batch
  (and once a second, so ages and alerts move on) it rebuilds the JSON state the browsers get;
* the *renderer* draws the pictures with :mod:`ltemlive.pictures` - the same functions as the run summary -
  when their source has changed, the phase at most once per ``min_interval_s`` (default 0.5 s: 2 Hz), the
  induction and the loss curve half as often (matplotlib takes 0.2-0.6 s a figure, which must delay neither
  the state nor the web server).

Memory stays bounded: the view keeps only the latest array of each picture, the gateway only the latest PNG
of each and the latest state text. Listeners (the web server) are called from these threads on each change
and must hand over to their own loop themselves (``loop.call_soon_threadsafe``).

Images are rendered here, in the dashboard's own process: the acquisition and reconstructor processes only
publish arrays (tests/test_boundaries.py keeps matplotlib out of them).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from loguru import logger

from ltemlive import pictures, wire
from ltemlive.publisher.view import RunView
from ltemlive.wire.updates import Event

__all__ = ["PICTURES", "Gateway", "Rendered"]

#: the pictures the page shows, in its order
PICTURES = ("phase", "induction", "amplitude", "loss", "calibration")
#: the costliest pictures (300-600 ms each on a busy CPU), which change with every live preview, are drawn
#: half as often as the phase: the machine beside the microscope has a reconstruction to run
_SLOWER = ("induction", "loss")
#: loss rows sent to the browsers (the loss curve itself is a picture)
_LOSS_ROWS_SENT = 20


@dataclass(frozen=True)
class Rendered:
    png: bytes
    version: int  # counts this picture's renders: the page asks for /api/picture/NAME.png?v=VERSION
    source: Any  # what it was drawn from (a picture's seq, the loss rows' last key, ...)
    t_epoch_s: float
    render_s: float


class Gateway:
    """Folds update events into a RunView and serves its state (JSON text) and pictures (PNG bytes).

    ``Gateway.connect(address)`` follows a live publisher; tests build ``Gateway()`` and call :meth:`feed`
    with synthetic events, and :meth:`render_due` to draw without the renderer thread.
    """

    def __init__(self, *, no_frame_s: float = 30.0, min_interval_s: float = 0.5, dpi: int = 90,
                 control: bool = False, address: str = ""):
        self.view = RunView(no_frame_s=no_frame_s)
        self.min_interval_s = float(min_interval_s)
        self.dpi = int(dpi)
        self.control = bool(control)  # whether the server can forward commands (shown on the page)
        self.address = address
        self._lock = threading.Lock()  # guards the view, the state and the pictures
        self._wake = threading.Condition(self._lock)  # the renderer waits on it for new sources
        self._pictures: dict[str, Rendered] = {}
        self._last_try: dict[str, float] = {}  # monotonic time of each picture's last render attempt
        self._failed: dict[str, tuple[Any, str]] = {}  # picture -> (source, error) it could not draw
        self._state_text = "{}"
        self._state_seq = 0  # counts state changes: the browsers' "seq"
        self._listeners: list[Callable[[], None]] = []
        self._publisher_alive = True
        self._synced = False
        self._subscriber = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.stats = {"events": 0, "renders": 0, "render_errors": 0, "states": 0}
        self._render_s: dict[str, list[float]] = {}  # recent render times per picture, for the page's footer
        self._rebuild_state()

    # -- input ----------------------------------------------------------------------------------------------
    @classmethod
    def connect(cls, address: str, *, timeout_s: float = 3.0, **kwargs: Any) -> Gateway:
        """A gateway following the publisher whose snapshot socket is at ``address``.
        PublisherUnreachable (a TimeoutError) when nothing answers within ``timeout_s``."""
        from ltemlive.publisher.subscriber import Subscriber

        gw = cls(address=address, **kwargs)
        gw._subscriber = Subscriber.at(address, timeout_s=timeout_s)
        return gw

    def feed(self, events: Iterable[tuple[Event, Sequence[np.ndarray]]], *, publisher_alive: bool = True,
             synced: bool = True) -> None:
        """Fold events into the view and publish the new state (the follower thread, or a test)."""
        events = list(events)
        with self._lock:
            for ev, arrays in events:
                self.view.apply(ev, arrays)
            self.stats["events"] += len(events)
            self._publisher_alive, self._synced = publisher_alive, synced
            if events:
                self._wake.notify_all()
        self._rebuild_state()

    def start(self) -> None:
        """Start the follower (if connected) and the renderer threads."""
        if self._subscriber is not None:
            self._threads.append(threading.Thread(target=self._follow, name="dashboard-follow", daemon=True))
        self._threads.append(threading.Thread(target=self._render_loop, name="dashboard-render", daemon=True))
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
        for t in self._threads:
            t.join(5)
        if self._subscriber is not None:
            self._subscriber.close()  # after its thread has stopped: it is that thread's alone

    def _follow(self) -> None:
        sub = self._subscriber
        next_tick = 0.0
        while not self._stop.is_set():
            try:
                got = sub.poll(0.2)
                now = time.monotonic()
                if got or now >= next_tick or sub.alive != self._publisher_alive:
                    next_tick = now + 1.0  # a tick a second: "no frame for N s" and liveness move on by themselves
                    self.feed(got, publisher_alive=sub.alive, synced=sub.synced)
            except Exception:  # a bug must not freeze the page silently: say so, and go on with the next events
                logger.exception("dashboard: following the update stream failed")
                self._stop.wait(1.0)

    # -- output: state ---------------------------------------------------------------------------------------
    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from a gateway thread) after each change of the state or of a picture."""
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for cb in listeners:
            try:
                cb()
            except Exception:  # a listener whose loop has closed must not stop the others
                logger.debug("dashboard: a listener failed", exc_info=True)

    def state(self) -> tuple[int, str]:
        """(seq, JSON text) of the latest state: what the page shows, without arrays."""
        with self._lock:
            return self._state_seq, self._state_text

    def state_dict(self) -> dict[str, Any]:
        return json.loads(self.state()[1])

    def _rebuild_state(self) -> None:
        with self._lock:
            summary = self.view.summary(publisher_alive=self._publisher_alive)
            # The curve is a picture: only the latest rows travel (the page prints the current loss).
            summary["loss"] = summary["loss"][-_LOSS_ROWS_SENT:]
            summary["result"] = {k: v for k, v in summary["result"].items() if k != "history"}
            summary["images"] = {n: {"version": r.version, "t_epoch_s": r.t_epoch_s,
                                     "render_ms": round(1e3 * r.render_s, 1)}
                                 for n, r in self._pictures.items()}
            summary["image_errors"] = {n: err for n, (_, err) in self._failed.items()}
            summary["gateway"] = {"publisher": self.address, "publisher_alive": self._publisher_alive,
                                  "synced": self._synced, "control": self.control,
                                  "render_ms_mean": {n: round(1e3 * sum(v) / len(v), 1)
                                                     for n, v in self._render_s.items() if v}}
            # Browsers' JSON has no NaN: wire.json_safe turns non-finite floats into null.
            text = json.dumps(wire.json_safe(summary), allow_nan=False, separators=(",", ":"))
            if text == self._state_text:
                return
            self._state_seq += 1
            self.stats["states"] += 1
            self._state_text = text
        self._notify()

    # -- output: pictures ------------------------------------------------------------------------------------
    def picture(self, name: str) -> Rendered | None:
        with self._lock:
            return self._pictures.get(name)

    def _sources(self) -> dict[str, Any]:
        """What each picture would be drawn from now, as (key, inputs): a changed key means redraw. Under the lock;
        the arrays are the view's own (never written to), the lists copies."""
        v = self.view
        out: dict[str, Any] = {}
        phase = v.pictures.get("phase")
        if phase is not None:
            out["phase"] = out["induction"] = (phase.version, phase)
        amp = v.pictures.get("amplitude")
        if amp is not None:
            out["amplitude"] = (amp.version, amp)
        if v.loss:
            # The newest series with a curve: one that has just started has a single point, and then the
            # one before it (its curve complete) is worth more than a dot.
            by_series: dict[Any, list] = {}
            for r in v.loss:
                by_series.setdefault(r[0], []).append(r)
            series = next((k for k in reversed(by_series) if len(by_series[k]) >= 2), v.loss[-1][0])
            rows = by_series[series]
            out["loss"] = ((series, len(rows), rows[-1][1]), (series, rows))
        if v.calibration_history:
            rows = list(v.calibration_history)
            out["calibration"] = ((len(rows), rows[-1].get("t_epoch_s"), rows[-1].get("series")), rows)
        return out

    def _due(self, now: float) -> tuple[list[tuple[str, Any, Any]], float | None]:
        """The pictures to draw now, and when the next throttled one falls due (monotonic), under the lock."""
        due, next_at = [], None
        for name, (key, inputs) in self._sources().items():
            have = self._pictures.get(name)
            failed = self._failed.get(name)
            if (have is not None and have.source == key) or (failed is not None and failed[0] == key):
                continue
            interval = self.min_interval_s * (2.0 if name in _SLOWER else 1.0)
            at = self._last_try.get(name, -math.inf) + interval
            if at <= now:
                due.append((name, key, inputs))
            else:
                next_at = at if next_at is None else min(next_at, at)
        return due, next_at

    def render_due(self) -> list[str]:
        """Draw every picture whose source changed and whose throttle allows it; returns their names."""
        with self._lock:
            due, _ = self._due(time.monotonic())
        for name, key, inputs in due:
            self._render(name, key, inputs)
        if due:
            self._rebuild_state()  # the new versions travel with the state
        return [d[0] for d in due]

    def _render_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._render_round()
            except Exception:  # _render reports a figure's failure; this is a bug of the loop itself
                logger.exception("dashboard: the picture renderer failed")
                self._stop.wait(1.0)

    def _render_round(self) -> None:
        """Draw what is due, or wait (at most 1 s) for a new source or the next throttled one."""
        with self._lock:
            due, next_at = self._due(time.monotonic())
            if not due:
                wait = 1.0 if next_at is None else min(1.0, max(0.0, next_at - time.monotonic()))
                self._wake.wait(timeout=wait)
                return
        for name, key, inputs in due:
            if self._stop.is_set():
                return
            self._render(name, key, inputs)
        self._rebuild_state()

    def _render(self, name: str, key: Any, inputs: Any) -> None:
        t0 = time.perf_counter()
        with self._lock:
            self._last_try[name] = time.monotonic()
        try:
            fig = _FIGURES[name](inputs)
            png = pictures.figure_png(fig, dpi=self.dpi)
        except Exception as exc:  # an odd array must not stop the other pictures: say so on the page
            self.stats["render_errors"] += 1
            logger.warning("dashboard: cannot draw {}: {}: {}", name, type(exc).__name__, exc)
            with self._lock:
                self._failed[name] = (key, f"{type(exc).__name__}: {exc}"[:200])
            return
        dt = time.perf_counter() - t0
        with self._lock:
            old = self._pictures.get(name)
            self._pictures[name] = Rendered(png, (old.version + 1) if old else 1, key, time.time(), dt)
            self._failed.pop(name, None)
            times = self._render_s.setdefault(name, [])
            times.append(dt)
            del times[:-20]
            self.stats["renders"] += 1


# -- the figures: all drawn by ltemlive.pictures, only titled here ------------------------------------------------

def _what(p) -> str:
    series = "" if p.series is None else f", series {p.series}"
    return f"{series} ({'final' if p.final else 'live preview'})"


def _pixel(p) -> float:
    # A preview without a usable pixel size is still worth seeing: 1 nm pixels (the scale bar then says so).
    return p.pixel_size_m if math.isfinite(p.pixel_size_m) and p.pixel_size_m > 0 else 1e-9


def _phase(p) -> Any:
    return pictures.phase_figure(p.array, _pixel(p), title=f"phase{_what(p)}", width_in=5.0)


def _induction(p) -> Any:
    fig, _ = pictures.induction_figure(p.array, _pixel(p), title=f"induction $B_\\perp t${_what(p)}", width_in=6.0)
    return fig


def _amplitude(p) -> Any:
    return pictures.amplitude_figure(p.array, _pixel(p), title=f"amplitude{_what(p)}")


def _loss(inputs) -> Any:
    series, rows = inputs
    history = [{"iteration": it, "loss": loss, "data_loss": data} for _, it, loss, data in rows]
    return pictures.loss_figure(history, title=f"reconstruction loss, series {series}")


def _calibration(rows) -> Any:
    return pictures.calibration_history_figure(rows)


_FIGURES: dict[str, Callable[[Any], Any]] = {
    "phase": _phase, "induction": _induction, "amplitude": _amplitude, "loss": _loss, "calibration": _calibration,
}
