"""``ltemlive monitor ADDRESS``: a running session in the terminal, read-only, from the publisher's stream.

The state is the one every watcher shares (:class:`~ltemlive.publisher.view.RunView`, alerts included); this
module only connects, folds events in and draws:

* on a terminal, a rich ``Live`` view redrawn ~4 times a second from :func:`render` (a pure function of
  ``RunView.summary()`` plus a ``"monitor"`` entry: address, publisher liveness, gaps);
* elsewhere (pipe, log file, CI) one time-stamped, flushed line per notable change (:class:`PlainReporter`),
  so a log file reads like a journal of the run;
* ``--once``: wait until the snapshot is in (at most ``--timeout``), print the state, exit 0.

It never blocks the publisher: the update stream is PUB/SUB, and a monitor that falls behind (or is frozen)
loses messages for itself only and catches up with a snapshot (the Subscriber does that). Imports neither
torch, the drivers nor the reconstructor (tests/test_boundaries.py): it runs on any laptop with pyzmq and rich.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ltemlive.publisher.subscriber import PublisherUnreachable, Subscriber
from ltemlive.publisher.view import RunView

__all__ = ["PlainReporter", "check_address", "plain_changes", "render", "run_monitor", "state_line"]

#: what ltemlive run prints as "watch:" - a concrete address (no "*" port: we connect, not bind)
_ADDRESS = re.compile(r"^(tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}|ipc://[^\0]{1,200})$")
REFRESH_HZ = 4.0
STATE_STYLE = {"running": "bold green", "starting": "green", "paused": "bold yellow", "draining": "cyan",
               "done": "bold blue", "error": "bold red", "unknown": "dim"}
SPARK = "▁▂▃▄▅▆▇█"


def check_address(address: str) -> str:
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise ValueError(f"{address!r} is not an address; use tcp://HOST:PORT (the 'watch:' address that "
                         "`ltemlive run` prints) or ipc://PATH")
    port = address.rsplit(":", 1)[-1]
    if address.startswith("tcp://") and not 0 < int(port) < 65536:
        raise ValueError(f"{address}: port {port} is out of range (1-65535)")
    return address


# -- formatting helpers (pure) ----------------------------------------------------------------------------------
def _num(x: Any) -> float:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else math.nan


def _fmt(x: Any, spec: str, missing: str = "-") -> str:
    v = _num(x)
    return missing if not math.isfinite(v) else format(v, spec)


def _mm(metres: Any) -> str:
    return _fmt(_num(metres) * 1e3, "+.4f")


def _cal_text(cal: dict) -> str:
    return f"scale {_fmt(cal.get('scale'), '.5f')}, offset {_fmt(_num(cal.get('offset_m')) * 1e6, '+.2f')} um"


def _verdict(decision: dict, n: int = 160) -> str:
    """'accepted (why)' / 'not applied: why' - the feedback's reason often starts with its verdict already."""
    verdict = "accepted" if decision.get("accepted") else "not applied"
    reason = str(decision.get("reason") or "")[:n]
    return reason if reason.startswith(verdict) else f"{verdict}: {reason}" if reason else verdict


def _stamp(t: float | None = None) -> str:
    t = time.time() if t is None else t
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int((t % 1) * 1000):03d}"


def _calibration(s: dict) -> dict:
    """The calibration in force: the latest decision's 'after', else the series' start, else the status."""
    after = (s.get("calibration") or {}).get("after")
    for cal in (after, (s.get("progress") or {}).get("calibration"), (s.get("status") or {}).get("calibration")):
        if isinstance(cal, dict) and math.isfinite(_num(cal.get("scale"))):
            return cal
    return {}


def _counts(s: dict) -> dict[str, Any]:
    """series i/n, frame j/m and the position in the plan, from the newest of progress / frame / status
    (status events come only on state changes: their counters are exact but may be old)."""
    st, pr, fr = s.get("status") or {}, s.get("progress") or {}, s.get("frame") or {}
    n_series = fr.get("n_series", pr.get("n_series", st.get("n_series")))
    n_frames = fr.get("n_frames", pr.get("n_frames", st.get("n_per_series")))
    series = pr.get("series", st.get("series_index"))
    frame = None
    if fr and (fr.get("series") == series or series is None):
        series, frame = fr.get("series"), fr.get("index")
    done = None
    if isinstance(series, int) and isinstance(n_frames, int):
        done = series * n_frames + (frame + 1 if isinstance(frame, int) else 0)
    total = n_series * n_frames if isinstance(n_series, int) and isinstance(n_frames, int) else None
    return {"series": series, "n_series": n_series, "frame": frame, "n_frames": n_frames, "done": done,
            "total": total}


def _defocus_rows(res: dict) -> list[tuple[str, str, str, str, str]]:
    """The latest result per image: index, nominal mm, refined mm, sigma um, refined/nominal - 1 in %
    (the scale error the feedback corrects: +10 % = the lens gives 10 % more defocus than commanded)."""
    refined = res.get("defocus_m")
    if not isinstance(refined, list):
        return []
    nominal, sigma = res.get("defocus_nominal_m") or [], res.get("defocus_sigma_m") or []
    rows = []
    for i, d in enumerate(refined):
        nom = _num(nominal[i]) if i < len(nominal) else math.nan
        sig = _num(sigma[i]) if i < len(sigma) else math.nan
        rel = (_num(d) / nom - 1) * 100 if math.isfinite(nom) and nom != 0 else math.nan
        rows.append((str(i), _mm(nom), _mm(d), _fmt(sig * 1e6, ".2f"), _fmt(rel, "+.2f")))
    return rows


def sparkline(values: list[float], width: int = 40) -> str:
    """The loss history as block characters, log-scaled (losses span decades), the newest at the right."""
    vals = [math.log10(v) for v in values if isinstance(v, int | float) and v > 0 and math.isfinite(v)]
    if not vals:
        return ""
    if len(vals) > width:  # keep the shape: sample evenly, last point included
        vals = [vals[round(i * (len(vals) - 1) / (width - 1))] for i in range(width)]
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * len(SPARK)))] for v in vals)


def _series_loss(s: dict) -> list[float]:
    series = (s.get("recon") or {}).get("series")
    return [r[2] for r in s.get("loss") or [] if len(r) >= 3 and r[0] == series]


# -- the live view ------------------------------------------------------------------------------------------------
def render(s: dict) -> RenderableType:
    """The whole view from one summary (``RunView.summary()`` + optional ``"monitor"``): no sockets, no clock."""
    mon = s.get("monitor") or {}
    st = s.get("status") or {}
    state = str(s.get("state") or "unknown")
    head = Text()
    head.append(f"{mon.get('session') or 'session ?'}", "bold")
    head.append(f"  run {st.get('run_id') or '?'}  ")
    head.append(f" {state.upper()} ", STATE_STYLE.get(state, "bold") + " reverse")
    if st.get("outcome") and state in ("done", "error"):
        head.append(f" ({st['outcome']})")
    if st.get("feedback_frozen"):
        head.append("  feedback frozen", "yellow")
    head.append("\npublisher ")
    head.append("alive" if mon.get("alive", True) else "SILENT", "green" if mon.get("alive", True) else "bold red")
    head.append(f" {mon.get('address', '')}  instance {mon.get('instance') or '?'}  seq {s.get('last_seq', 0)}  "
                f"gaps {mon.get('gaps', 0)}", "dim")

    c = _counts(s)
    prog = Table.grid(padding=(0, 2))
    prog.add_row(
        f"series {_index(c['series'], c['n_series'])}",
        f"frame {_index(c['frame'], c['n_frames'])}",
        ProgressBar(total=c["total"] or 1, completed=min(c["done"] or 0, c["total"] or 1), width=40),
        f"{c['done'] if c['done'] is not None else '?'}/{c['total'] or '?'} frames of the plan",
    )
    age = s.get("last_frame_age_s")
    if isinstance(age, int | float):
        prog.add_row(Text(f"last frame {age:.1f} s ago", "dim"))

    rec = s.get("recon") or {}
    recon: list[RenderableType] = []
    if rec:
        theta_urad = _num(rec.get("theta_c_rad")) * 1e6
        recon.append(Text(f"series {rec.get('series')}   stage {rec.get('stage', '?')}   iteration "
                          f"{rec.get('iteration', '?')}   loss {_fmt(rec.get('loss'), '.4g')} (data "
                          f"{_fmt(rec.get('data_loss'), '.4g')})   θc {_fmt(theta_urad, '.2f')} µrad"))
        spark = sparkline(_series_loss(s))
        if spark:
            recon.append(Text(f"loss (log) {spark}", "cyan"))
    for name, w in sorted((s.get("workers") or {}).items()):
        series = f", series {w['series']}" if w.get("series") is not None else ""
        recon.append(Text(f"worker {name}: {w.get('state', '?')}{series}", "dim"))
    if not recon:
        recon.append(Text("no reconstructor has reported yet", "dim"))

    res = s.get("result") or {}
    rows = _defocus_rows(res)
    defocus: list[RenderableType] = []
    if rows:
        table = Table(title=f"series {res.get('series')}: {res.get('iterations', '?')} iterations, "
                      f"{res.get('stopped_because') or '?'}", title_justify="left", box=None, padding=(0, 2))
        for col in ("image", "nominal mm", "refined mm", "σ µm", "ref/nom-1 %"):
            table.add_column(col, justify="right")
        for row in rows:
            table.add_row(*row)
        defocus.append(table)
    live = rec.get("defocus_m")
    if isinstance(live, list) and live and _num(rec.get("series")) > _num(res.get("series", -1)):
        defocus.append(Text(f"series {rec.get('series')} now (reconstructing): "
                            + " ".join(_mm(d) for d in live) + " mm", "dim"))
    if not defocus:
        defocus.append(Text("no reconstruction finished yet", "dim"))

    cal = _calibration(s)
    dec = s.get("calibration") or {}
    ctext = Text(f"scale {_fmt(cal.get('scale'), '.5f')}   offset {_fmt(_num(cal.get('offset_m')) * 1e6, '+.2f')} µm")
    if dec:
        ok = dec.get("accepted")
        ctext.append(f"\nlast decision (series {dec.get('series_index')}): ")
        ctext.append(_verdict(dec, 120), "green" if ok else "yellow")
        ctext.append(f"   estimate {_fmt(dec.get('estimate_scale'), '.5f')} ± {_fmt(dec.get('sigma_scale'), '.5f')}")
    hist = s.get("calibration_history") or []
    ctext.append(f"\n{len(hist)} decision(s), {sum(1 for h in hist if h.get('accepted'))} accepted", "dim")

    alerts = Text()
    for a in s.get("alerts") or []:
        alerts.append(f"{'✖' if a.get('level') == 'error' else '▲'} {a.get('key')}: {a.get('message')}\n",
                      "bold red" if a.get("level") == "error" else "yellow")
    if not alerts:
        alerts.append("none", "green")
    alerts.rstrip()

    log = Text()
    for entry in (s.get("log") or [])[-6:]:
        t = entry.get("t_epoch_s")
        log.append(f"{_stamp(t)[:8] if isinstance(t, int | float) else '--:--:--'} {entry.get('kind', '?')}: "
                   f"{str(entry.get('message', ''))[:160]}\n", "red" if entry.get("kind") == "error" else "")
    log.rstrip()

    def panel(body: RenderableType, name: str, style: str = "blue") -> Panel:
        return Panel(body, title=name, title_align="left", border_style=style)

    return Group(
        panel(head, "ltemlive monitor", "bold blue"),
        panel(prog, "progress"),
        panel(Group(*recon), "reconstruction"),
        panel(Group(*defocus), "defocus: refined vs nominal"),
        panel(ctext, "calibration"),
        panel(alerts, "alerts", "red" if s.get("alerts") else "green"),
        panel(log or Text("-", "dim"), "log"),
    )


def _index(i: Any, n: Any) -> str:
    """An index as the run file and the logs count it (from 0), with its range: "series 1 (0-2)"."""
    shown = str(i) if isinstance(i, int) and i >= 0 else "-"
    return f"{shown} (0-{n - 1})" if isinstance(n, int) and n > 0 else shown


# -- plain lines --------------------------------------------------------------------------------------------------
def state_line(s: dict) -> str:
    """The current state in one line (``--once``, and the first line of the plain journal)."""
    st = s.get("status") or {}
    c = _counts(s)
    cal = _calibration(s)
    rec = s.get("recon") or {}
    parts = [f"state {s.get('state', 'unknown')}", f"run {st.get('run_id') or '?'}",
             f"series {_index(c['series'], c['n_series'])}", f"frame {_index(c['frame'], c['n_frames'])}",
             f"plan {c['done'] if c['done'] is not None else '?'}/{c['total'] or '?'} frames",
             f"calibration {_cal_text(cal)}"]
    if rec:
        parts.append(f"recon series {rec.get('series')} it {rec.get('iteration', '?')} "
                     f"loss {_fmt(rec.get('loss'), '.4g')}")
    alerts = s.get("alerts") or []
    parts.append("alerts: " + (", ".join(a["key"] for a in alerts) if alerts else "none"))
    return "; ".join(parts)


def _result_line(res: dict) -> str:
    refined, nominal = res.get("defocus_m") or [], res.get("defocus_nominal_m") or []
    pairs = [f"{_mm(d)}/{_mm(n)}" for d, n in zip(refined, nominal, strict=False)]
    return (f"series {res.get('series')} reconstructed: {res.get('iterations', '?')} it "
            f"({res.get('stopped_because') or '?'}); defocus refined/nominal mm: {' '.join(pairs) or '-'}")


def plain_changes(prev: dict | None, cur: dict) -> list[str]:
    """The notable differences between two summaries, one line each (no time stamp): state, series started,
    result, calibration decision, alerts raised and cleared, new log lines. ``prev=None``: the full state."""
    if prev is None:
        return [state_line(cur)]
    out: list[str] = []
    ps, cs = prev.get("status") or {}, cur.get("status") or {}
    if (prev.get("state"), ps.get("run_id")) != (cur.get("state"), cs.get("run_id")):
        extra = f" ({cs['outcome']})" if cs.get("outcome") and cur.get("state") in ("done", "error") else ""
        out.append(f"state {prev.get('state')} -> {cur.get('state')}{extra}, run {cs.get('run_id') or '?'}")
    pp, cp = prev.get("progress") or {}, cur.get("progress") or {}
    if cp and (pp.get("series"), ps.get("run_id")) != (cp.get("series"), cs.get("run_id")):
        c = _counts(cur)
        cal = cp.get("calibration") or {}
        out.append(f"series {_index(cp.get('series'), c['n_series'])} started ({c['n_frames'] or '?'} frames; "
                   f"calibration {_cal_text(cal)})")
    pr, cr = prev.get("result") or {}, cur.get("result") or {}
    if cr and (pr.get("series"), pr.get("t_epoch_s")) != (cr.get("series"), cr.get("t_epoch_s")):
        out.append(_result_line(cr))
    pc, cc = prev.get("calibration") or {}, cur.get("calibration") or {}
    if cc and (pc.get("series_index"), pc.get("t_epoch_s")) != (cc.get("series_index"), cc.get("t_epoch_s")):
        after = cc.get("after") or {}
        out.append(f"calibration after series {cc.get('series_index')}: {_verdict(cc)}; in force {_cal_text(after)}")
    pa = {a["key"]: a for a in prev.get("alerts") or []}
    ca = {a["key"]: a for a in cur.get("alerts") or []}
    out += [f"ALERT {a['level']} {k}: {a['message']}" for k, a in ca.items() if k not in pa]
    out += [f"cleared {k}" for k in pa if k not in ca]
    seen = {(e.get("t_epoch_s"), e.get("message")) for e in prev.get("log") or []}
    for e in cur.get("log") or []:
        if (e.get("t_epoch_s"), e.get("message")) not in seen and e.get("kind") != "calibration":  # said above
            out.append(f"log {e.get('kind', '?')}: {str(e.get('message', ''))[:300]}")
    pm, cm = prev.get("monitor") or {}, cur.get("monitor") or {}
    if cm.get("gaps", 0) > pm.get("gaps", 0) or cm.get("restarts", 0) > pm.get("restarts", 0):
        out.append(f"resynced from a snapshot (gaps {cm.get('gaps', 0)}, publisher restarts "
                   f"{cm.get('restarts', 0)}): {state_line(cur)}")
    return out


class PlainReporter:
    """Prints :func:`plain_changes` with a time stamp, flushed (a log file or a pipe reads it at once)."""

    def __init__(self, write: Callable[[str], None], clock: Callable[[], float] = time.time):
        self.write, self.clock = write, clock
        self.prev: dict | None = None

    def line(self, text: str) -> None:
        self.write(f"{_stamp(self.clock())} {text}")

    def update(self, summary: dict) -> None:
        for text in plain_changes(self.prev, summary):
            self.line(text)
        self.prev = summary


# -- the loop -----------------------------------------------------------------------------------------------------
class _Watch:
    """A Subscriber and a RunView, with what the monitor adds to the summary."""

    def __init__(self, address: str, no_frame_s: float, timeout_s: float):
        self.address = address
        self.sub = Subscriber.at(address, timeout_s=timeout_s)
        self.view = RunView(no_frame_s=no_frame_s)
        self.session = ""

    def pump(self, timeout_s: float) -> None:
        for ev, arrays in self.sub.poll(timeout_s):
            self.view.apply(ev, arrays)
            self.session = ev.session or self.session

    def summary(self) -> dict:
        alive = self.sub.alive
        s = self.view.summary(publisher_alive=alive)
        s["monitor"] = {"address": self.address, "alive": alive, "synced": self.sub.synced, "gaps": self.sub.gaps,
                        "restarts": self.sub.stats["restarts"], "session": self.session,
                        "instance": self.sub.last_heartbeat.get("instance")}
        return s


def run_monitor(args, console: Console) -> int:
    """``ltemlive monitor``: returns 0 when left by Ctrl-C / SIGTERM (or after ``--once``)."""
    address = check_address(args.address)
    timeout_s = float(args.timeout)
    if not timeout_s > 0:
        raise ValueError(f"--timeout {args.timeout}: must be > 0 seconds")
    if not float(args.no_frame_s) > 0:
        raise ValueError(f"--no-frame-s {args.no_frame_s}: must be > 0 seconds")
    plain = bool(args.once) or not console.is_terminal

    def write(text: str) -> None:  # one unwrapped, unstyled line, flushed
        console.print(text, soft_wrap=True, markup=False, highlight=False, emoji=False)
        console.file.flush()

    # SIGTERM leaves like Ctrl-C (systemd, `kill`, a test's terminate()). SIGINT is set too: a process started from a
    # background job (`cmd &`, nohup) inherits SIGINT ignored, and Python then leaves it ignored, so `kill -INT`
    # (and a test's Ctrl-C) did nothing (seen when the test suite itself ran as a background job: the monitor outlived
    # SIGINT by 10 s and was killed). The roles set both the same way. Only the main thread may set handlers.
    old_handlers: dict = {}
    if threading.current_thread() is threading.main_thread():
        old_handlers = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    watch: _Watch | None = None
    try:
        t0 = time.time()
        if plain:
            write(f"{_stamp(t0)} connecting to {address}")
        try:
            watch = _Watch(address, float(args.no_frame_s), timeout_s)
        except PublisherUnreachable:
            raise ValueError(f"nothing answers at {address} within {timeout_s:g} s: is `ltemlive run` running "
                             "there? (ADDRESS is the 'watch:' address it prints)") from None
        deadline = time.monotonic() + timeout_s
        while not watch.sub.synced and time.monotonic() < deadline:
            watch.pump(0.05)
        if plain:
            if not watch.sub.synced:
                write(f"{_stamp()} connected, but no snapshot within {timeout_s:g} s; showing what has arrived")
            else:
                write(f"{_stamp()} synced in {time.time() - t0:.3f} s (seq {watch.sub.last_seq})")
        if args.once:
            write(f"{_stamp()} {state_line(watch.summary())}")
            return 0
        if plain:
            _plain_loop(watch, write)
        else:
            _live_loop(watch, console)
    except KeyboardInterrupt:
        pass  # Ctrl-C / SIGTERM: the way out, not an error
    finally:
        if watch is not None:
            watch.sub.close()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    if plain:
        write(f"{_stamp()} monitor stopped")
    return 0


def _tick(watch: _Watch, period: float) -> None:
    """Take in events for one display period (a busy stream is drained in batches, drawn once)."""
    end = time.monotonic() + period
    while (left := end - time.monotonic()) > 0:
        watch.pump(left)


def _plain_loop(watch: _Watch, write: Callable[[str], None]) -> None:
    reporter = PlainReporter(write)
    while True:
        reporter.update(watch.summary())
        _tick(watch, 1.0 / REFRESH_HZ)


def _live_loop(watch: _Watch, console: Console) -> None:
    # Redrawn by this loop (auto_refresh off): no second thread touching the view. Live restores the cursor
    # and leaves the last picture on screen when the loop ends (Ctrl-C included).
    with Live(render(watch.summary()), console=console, auto_refresh=False, transient=False) as live:
        while True:
            _tick(watch, 1.0 / REFRESH_HZ)
            live.update(render(watch.summary()), refresh=True)
