"""``ltemlive monitor``: the rendering and the plain journal on synthetic summaries (no sockets), the CLI against
nothing, against an in-process publisher (terminal view on a pty, SIGTERM, publisher silent and back), a
monitor attaching to a real session mid-run, and a frozen monitor (SIGSTOP 30 s) beside a real session."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from rich.console import Console
from service_util import ROOT, Session, rss_mb, small

from ltemlive.cli import main
from ltemlive.monitor.terminal import PlainReporter, check_address, plain_changes, render, sparkline, state_line
from ltemlive.publisher import EventSink, Publisher, PublisherConfig, Subscriber
from ltemlive.publisher.view import RunView
from ltemlive.wire.updates import Event

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0
MONITOR = [sys.executable, "-m", "ltemlive.cli", "monitor"]
STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d\d\d) (.*)$")


# -- helpers -----------------------------------------------------------------------------------------------
def ev(topic: str, t: float, seq: int, source: str = "controller", **payload) -> Event:
    return Event(topic=topic, source=source, seq=seq, t_epoch_s=T0 + t, session="demo", payload=payload)


def fold(events, **kw) -> RunView:
    view = RunView(**kw)
    for e in events:
        view.apply(e)
    return view


def text_of(renderable, width: int = 120) -> str:
    with open(os.devnull, "w") as sink:
        console = Console(width=width, record=True, file=sink)
        console.print(renderable)
        return console.export_text()


def mid_run_events() -> list[Event]:
    """Series 1 of 3 acquiring, series 0 reconstructed 10 % long, its feedback rejected, a worker."""
    return [
        ev("status", 0, 1, state="acquiring", run_id="r1", n_series=3, n_per_series=4,
           calibration={"scale": 1.0, "offset_m": 0.0}),
        ev("progress", 1, 2, series=1, frame=-1, n_series=3, n_frames=4, calibration={"scale": 1.1, "offset_m": 2e-6}),
        ev("frame", 2, 3, series=1, index=2, frame_id=6, n_series=3, n_frames=4, defocus_planned_m=1.5e-4),
        ev("recon", 3, 4, source="recon-1", series=1, stage="refine", iteration=12, loss=1.2e-3, data_loss=1.1e-3,
           defocus_m=[-1.6e-3, -1.5e-4], theta_c_rad=1e-5, history=[[i, 10 ** (-i / 5), 1.0] for i in range(13)]),
        ev("result", 3.5, 5, source="recon-1", series=0, iterations=20, stopped_because="converged",
           defocus_m=[-1.76e-3, -1.65e-4, 1.65e-4, 1.76e-3], defocus_sigma_m=[1e-6, 5e-7, 5e-7, 1e-6],
           defocus_nominal_m=[-1.6e-3, -1.5e-4, 1.5e-4, 1.6e-3]),
        ev("calibration", 3.6, 6, series_index=0, accepted=False, reason="invalid: sigma too large",
           estimate_scale=1.1, sigma_scale=0.05, after={"scale": 1.1, "offset_m": 2e-6},
           history=[{"series": 0, "accepted": False}]),
        ev("worker", 3, 7, source="recon-1", worker="recon-1", state="reconstructing", series=1, interval_s=1.0),
        ev("log", 3.7, 8, kind="series", message="series 0 aborted: operator", series=0, status="aborted"),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stamp_s(line: str) -> float:
    """Seconds of the day of a plain line's time stamp."""
    m = STAMP.match(line)
    assert m, f"no time stamp: {line!r}"
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


class Lines:
    """A subprocess's stdout lines, read by a thread (a frozen or slow reader never blocks the test)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines, self._lock = proc, [], threading.Lock()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        with self.proc.stdout as stream:
            for line in stream:
                with self._lock:
                    self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, pattern: str, timeout_s: float, after: float = 0.0) -> str:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                hit = next((text for t, text in self.lines if t >= after and rx.search(text)), None)
            if hit is not None:
                return hit
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s; got:\n" + self.text())

    def text(self) -> str:
        with self._lock:
            return "\n".join(text for _, text in self.lines)


def start_monitor(address: str, *extra: str, **popen) -> tuple[subprocess.Popen, Lines]:
    proc = subprocess.Popen([*MONITOR, address, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=1, **popen)
    return proc, Lines(proc)


def stop_monitor(proc: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with proc.stderr as err:
        return proc.returncode, err.read()


# -- rendering, on synthetic summaries ----------------------------------------------------------------------
def test_render_shows_every_section_alerts_and_defocus_in_mm():
    view = fold(mid_run_events(), no_frame_s=30)
    s = view.summary(publisher_alive=False, now=T0 + 40)
    s["monitor"] = {"address": "tcp://scope:7106", "alive": False, "gaps": 2, "session": "demo", "instance": "abc"}
    out = text_of(render(s))
    for section in ("progress", "reconstruction", "defocus: refined vs nominal", "calibration", "alerts", "log"):
        assert f"─ {section} " in out, section
    assert "ACQUIRING" in out and "run r1" in out and "SILENT" in out and "gaps 2" in out
    assert "series 1 (0-2)" in out and "frame 2 (0-3)" in out and "7/12 frames" in out
    assert "iteration 12" in out and "loss 0.0012" in out
    # refined vs nominal: mm with 4 decimals, sigma in um, the scale error in %
    row = next(line for line in out.splitlines() if "-1.7600" in line)
    assert re.search(r"-1\.6000\s+-1\.7600\s+1\.00\s+\+10\.00", row), row
    assert "+0.1650" in out and "0.50" in out
    assert "scale 1.10000" in out and "offset +2.00 µm" in out  # the calibration in force (after the decision)
    assert "not applied: invalid: sigma too large" in out and "1 decision(s), 0 accepted" in out
    for key in ("publisher_silent", "no_frame", "series_aborted", "reconstructor_down", "feedback_rejected"):
        assert key in out, key
    assert "series 0 aborted: operator" in out


def test_render_copes_with_nothing_yet_and_with_odd_payloads():
    out = text_of(render(RunView().summary()))
    assert "UNKNOWN" in out and "no reconstruction finished yet" in out and "none" in out
    odd = fold([ev("status", 0, 1, state="acquiring", calibration="x"), ev("progress", 0, 2, series="two"),
                ev("result", 0, 3, defocus_m=["a", None], defocus_nominal_m=[0.0]),
                ev("recon", 0, 4, loss="NaN", iteration=None)])
    out = text_of(render(odd.summary()))
    assert "ACQUIRING" in out  # drawn, not raised


def test_sparkline_is_log_scaled_and_bounded():
    assert sparkline([]) == "" and sparkline([0.0, -1.0, float("nan")]) == ""
    line = sparkline([10.0 ** -i for i in range(5)])
    assert line[0] == "█" and line[-1] == "▁" and len(line) == 5
    assert len(sparkline([1.0 / (i + 1) for i in range(1000)], width=40)) == 40


def test_plain_journal_says_each_change_once():
    events = mid_run_events()
    view = fold(events[:3], no_frame_s=30)
    first = view.summary(now=T0 + 3)
    assert plain_changes(None, first) == [state_line(first)]
    assert "state acquiring" in state_line(first) and "series 1 (0-2)" in state_line(first)
    for e in events[3:]:
        view.apply(e)
    second = view.summary(now=T0 + 4)
    lines = plain_changes(first, second)
    assert any(line.startswith("series 0 reconstructed: 20 it (converged)") and "-1.7600/-1.6000" in line
               for line in lines), lines
    assert any(line.startswith("calibration after series 0: not applied: invalid") for line in lines), lines
    assert "ALERT warning feedback_rejected: feedback rejected (series 0): invalid: sigma too large" in lines
    assert "log series: series 0 aborted: operator" in lines
    assert plain_changes(second, view.summary(now=T0 + 4)) == []  # nothing new, nothing said
    view.apply(ev("progress", 5, 9, series=2, frame=-1, n_series=3, n_frames=4,
                  calibration={"scale": 1.1, "offset_m": 2e-6}))
    view.apply(ev("status", 6, 10, state="done", run_id="r1", outcome="complete"))
    third = view.summary(now=T0 + 6)
    lines = plain_changes(second, third)
    assert "state acquiring -> done (complete), run r1" in lines
    assert any(line.startswith("series 2 (0-2) started") and "scale 1.10000, offset +2.00 um" in line
               for line in lines), lines
    assert "cleared series_aborted" in lines  # a new series clears it
    stamped: list[str] = []
    PlainReporter(stamped.append, clock=lambda: T0).update(third)
    assert STAMP.match(stamped[0]), stamped


def test_view_alerts_use_the_controllers_own_state_names():
    """The controller says "acquiring" (RunState), not "running": no_frame fires then, but not once the plan's
    last frame is in (the controller stays "acquiring" while it waits for the reconstructions)."""
    view = fold([ev("status", 0, 1, state="acquiring"),
                 ev("progress", 0, 2, series=0, frame=-1, n_series=2, n_frames=2),
                 ev("frame", 1, 3, series=0, index=0, n_series=2, n_frames=2),
                 ev("worker", 1, 4, source="recon-1", worker="recon-1", state="idle", interval_s=1.0)], no_frame_s=10)
    assert {"no_frame", "reconstructor_down"} <= {a.key for a in view.alerts(now=T0 + 12)}
    view.apply(ev("frame", 2, 5, series=1, index=1, n_series=2, n_frames=2))
    assert "no_frame" not in {a.key for a in view.alerts(now=T0 + 30)}


# -- the command line ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["nope", "tcp://127.0.0.1:*", "tcp://127.0.0.1", "http://x:1", "tcp://h:99999"])
def test_bad_addresses_are_refused_in_one_line(address, capsys):
    with pytest.raises(ValueError):
        check_address(address)
    assert main(["monitor", address]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "Traceback" not in err, err


def test_nothing_answering_exits_2_with_one_clear_line():
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    p = subprocess.run([*MONITOR, address, "--timeout", "1"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - t0
    err = p.stderr.strip()
    print(f"\nnothing at {address}: exit {p.returncode} after {elapsed:.1f} s (timeout 1 s): {err}")
    assert p.returncode == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: nothing answers at " + address), err
    assert "ltemlive run" in err and "watch:" in err
    assert elapsed < 15  # 1 s of waiting + the interpreter's start-up on a loaded box


# -- against an in-process publisher ------------------------------------------------------------------------
@pytest.fixture
def fake_session():
    """A publisher in this process with a controller-like source: status, progress, frames."""
    ports = {k: free_port() for k in ("ingest", "updates", "snapshot")}
    cfg = PublisherConfig(heartbeat_s=0.2, **{f"{k}_endpoint": f"tcp://127.0.0.1:{p}" for k, p in ports.items()})
    pubs = [Publisher(cfg).start()]
    sink = EventSink(pubs[0].endpoints["ingest"], "controller", session="demo")

    def feed(series: int = 1) -> None:
        sink.emit("status", {"state": "acquiring", "run_id": "r1", "n_series": 3, "n_per_series": 4})
        sink.emit("progress", {"series": series, "frame": -1, "n_series": 3, "n_frames": 4})
        sink.emit("frame", {"series": series, "index": 0, "n_series": 3, "n_frames": 4})

    def restart() -> Publisher:
        pubs[0].stop()
        pubs[0] = Publisher(cfg).start()
        return pubs[0]

    class Fake:
        address = pubs[0].endpoints["snapshot"]

    fake = Fake()
    fake.feed, fake.restart, fake.stop = feed, restart, lambda: pubs[0].stop()
    feed()
    deadline = time.monotonic() + 5
    while pubs[0].stats["published"] < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    yield fake
    sink.close()
    pubs[0].stop()


def test_once_prints_the_state_and_exits_0(fake_session):
    p = subprocess.run([*MONITOR, fake_session.address, "--once"], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert "connecting to" in lines[0] and "synced in" in lines[1], lines
    assert "state acquiring; run r1; series 1 (0-2); frame 0 (0-3)" in lines[2], lines


def test_sigterm_leaves_cleanly_and_a_silent_publisher_is_shown_then_cleared(fake_session):
    proc, out = start_monitor(fake_session.address)
    try:
        out.wait_for(r"state acquiring", 15)
        time.sleep(1.0)  # a few heartbeats: the monitor knows this publisher's instance
        fake_session.stop()
        out.wait_for(r"ALERT error publisher_silent", 10)
        fake_session.restart()
        out.wait_for(r"cleared publisher_silent", 10)
        out.wait_for(r"resynced from a snapshot .*publisher restarts 1", 10)
        deadline = time.monotonic() + 10
        while "series 2 (0-2) started" not in out.text() and time.monotonic() < deadline:
            fake_session.feed(series=2)  # the source's sink reconnects to the new publisher in its own time
            time.sleep(0.2)
        out.wait_for(r"series 2 \(0-2\) started", 1)
    finally:
        code, err = stop_monitor(proc, signal.SIGTERM)
    assert code == 0, err
    assert out.text().splitlines()[-1].endswith("monitor stopped")
    assert "Traceback" not in err, err


def test_sigint_stops_a_monitor_started_with_sigint_ignored(fake_session):
    """A background job (`cmd &`, nohup, a test suite run as one) hands its children SIGINT ignored, and Python
    keeps it ignored: the monitor must still leave on SIGINT, as the roles do."""
    proc, out = start_monitor(fake_session.address, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        out.wait_for(r"state acquiring", 15)
    finally:
        code, err = stop_monitor(proc, signal.SIGINT)
    assert code == 0, err
    assert out.text().splitlines()[-1].endswith("monitor stopped")


def test_terminal_view_on_a_pty_and_ctrl_c_restores_the_terminal(fake_session):
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "60", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([*MONITOR, fake_session.address], cwd=ROOT, stdin=slave, stdout=slave, stderr=slave,
                            env=env)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:  # read all along: a terminal that is not read blocks its writer
        while True:
            try:
                if select.select([master], [], [], 0.1)[0]:
                    chunks.append(os.read(master, 65536))
            except OSError:  # EIO: the child has closed the terminal
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def wait_for(needle: bytes, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in b"".join(chunks) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert needle in b"".join(chunks), f"{needle!r} not on the terminal: {b''.join(chunks)[-1500:]!r}"

    try:
        wait_for(b"ACQUIRING", 15)
        wait_for(b"refined vs nominal", 5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        reader.join(5)
        seen = b"".join(chunks)
        assert seen.rfind(b"\x1b[?25h") > seen.rfind(b"\x1b[?25l") >= 0  # the cursor is shown again at the end
        assert b"Traceback" not in seen
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


# -- against a real session ----------------------------------------------------------------------------------
def test_attach_mid_run_shows_the_current_state_within_1_s(tmp_path):
    # No reconstructor here (its torch start-up is most of a session's; the frozen test has one): the run
    # acquires all the same (wait_for_feedback_s 0).
    data = small(tmp_path, instrument={"simulated": {"time_scale": 1.0, "simulation": {"shape": [64, 64]}}},
                 plan={"repeats": 3, "exposure_s": 0.1})
    s = Session(data, tmp_path, reconstructor=False)
    try:
        address = s.ready["publisher"]["snapshot"]
        s.wait(lambda st: st["frames_written"] >= 1, 30, "frames flowing")
        # in this process: from Subscriber.at to a synced view that knows the run state
        t0 = time.monotonic()
        with Subscriber.at(address, timeout_s=3) as sub:
            view = RunView()
            while not (sub.synced and view.state != "unknown") and time.monotonic() - t0 < 5:
                for e, arrays in sub.poll(0.05):
                    view.apply(e, arrays)
            in_process_s = time.monotonic() - t0
        assert view.state == "acquiring"
        # the command: from its own "connecting" line to its state line (interpreter start-up not counted)
        before = s.status()
        p = subprocess.run([*MONITOR, address, "--once"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        after = s.status()
        assert p.returncode == 0, p.stderr
        lines = p.stdout.strip().splitlines()
        connect, state = lines[0], next(line for line in lines if " state " in line)
        attach_s = (stamp_s(state) - stamp_s(connect)) % 86400
        print(f"\nattach: in-process Subscriber.at -> synced state {in_process_s * 1e3:.0f} ms; "
              f"`ltemlive monitor --once` connecting -> state line {attach_s * 1e3:.0f} ms\n  {state}")
        assert in_process_s < 1.0 and attach_s < 1.0, (in_process_s, attach_s)
        assert "state acquiring" in state and before["run_id"] in state
        shown = int(re.search(r"series (\d+) ", state)[1])
        assert before["series_index"] <= shown <= after["series_index"], (before["series_index"], shown, state)

        # the journal of the rest of the run, then Ctrl-C
        proc, out = start_monitor(address)
        try:
            out.wait_for(r"log series: series 0 complete", 30)
            out.wait_for(r"series 1 \(0-2\) started", 10)
        finally:
            code, err = stop_monitor(proc)
        assert code == 0 and "Traceback" not in err, err
    finally:
        s.close()


# 10 s frozen by default, 30 s (the reliability table's figure) as a soak test. At ~9 events/s, mostly small, what
# a frozen monitor is owed in 10 s fits in the kernel's socket buffers: with the high-water mark off this test still
# passed (+0.6 MB). The memory bound is shown failing by test_publisher.py::test_frozen_subscriber_neither_slows_
# nor_bloats_the_publisher (RSS +104.6 MB without it); this one shows a real monitor freezing and catching up.
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("frozen_s", [10.0, pytest.param(30.0, marks=pytest.mark.soak)])
def test_frozen_monitor_neither_slows_acquisition_nor_bloats_the_publisher(tmp_path, frozen_s):
    """A monitor frozen (SIGSTOP) for `frozen_s` beside a run with a steady event rate (frames at ~4 Hz, live previews
    of the reconstruction at the publisher's limit).

    Bound on the publisher's memory: PUB drops for a subscriber whose queue holds ``sndhwm`` messages, so its
    RSS may grow by at most ``sndhwm`` x the largest message on the stream (here a result: two 128^2 float32
    maps, 128 KiB) + 16 MB slack (allocator, kernel socket buffers are not RSS) = 30 x 128 KiB + 16 MB
    = 19.75 MB (measured: +0.6 MB). Acquisition must not slow: frames/s while frozen >= half the rate before
    (loose: CI is a loaded 2-core box; the sinks never block, so the rate should not move at all)."""
    shape, sndhwm = 128, 30
    data = small(
        tmp_path,
        instrument={"simulated": {"time_scale": 1.0, "simulation": {"shape": [shape, shape]}}},
        plan={"repeats": 200, "exposure_s": 0.1},
        # feedback off: the commanded defocus repeats, so the simulated camera serves its cached images and
        # the frame rate is set by exposure + readout, not by the CPU the reconstructor leaves it
        feedback={"enabled": False},
        reconstructor={"live": True, "preview_interval_s": 0.1},
        publisher={"sndhwm": sndhwm, "preview_interval_s": 0.1},
    )
    largest = 2 * min(shape, data.get("publisher", {}).get("result_preview_px", 512)) ** 2 * 4
    bound_mb = sndhwm * largest / 2**20 + 16
    s = Session(data, tmp_path)
    pub_pid = s.children["publisher"].proc.pid
    proc, out = start_monitor(s.ready["publisher"]["snapshot"])
    try:
        out.wait_for(r"synced in", 20)
        s.wait(lambda st: st["frames_written"] >= 4, 30, "frames flowing")

        def measure(seconds: float) -> tuple[float, float, float]:
            """(frames/s, max publisher RSS MB, publisher events/s) over the next `seconds`."""
            st0, t0, rss = s.status(), time.monotonic(), []
            while time.monotonic() - t0 < seconds:
                rss.append(rss_mb(pub_pid))
                time.sleep(0.25)
            st1, t1 = s.status(), time.monotonic()
            return (st1["frames_written"] - st0["frames_written"]) / (t1 - t0), max(rss), t1 - t0

        def published() -> int:
            """The publisher's last seq: how many events it has published (a healthy watcher asks)."""
            with Subscriber.at(s.ready["publisher"]["snapshot"], timeout_s=3) as sub:
                while not sub.synced:
                    sub.poll(0.05)
                return sub.last_seq

        seq0 = published()
        rate0, rss0, dt0 = measure(3.0)
        seq1 = published()
        os.kill(proc.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            rate1, rss1, dt1 = measure(frozen_s)
            seq2 = published()
            series_now = s.status()["series_index"]
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        # it recovers: it reports a series at least as late as the one running when it was woken
        caught_up = None
        deadline = time.monotonic() + 20
        while caught_up is None and time.monotonic() < deadline:
            found = [int(m[1]) for m in re.finditer(r"series (\d+) \(0-\d+\) started", out.text())]
            caught_up = next((k for k in found if k >= series_now), None)
            time.sleep(0.1)
        resynced = "resynced from a snapshot" in out.text()
        rss_after = rss_mb(pub_pid)
        growth = rss1 - rss0
        figures = (f"frames/s before {rate0:.2f} (over {dt0:.0f} s), frozen {rate1:.2f} (over {dt1:.0f} s); "
                   f"publisher events/s before {(seq1 - seq0) / dt0:.1f}, frozen {(seq2 - seq1) / dt1:.1f}; "
                   f"publisher RSS before {rss0:.1f} MB, frozen max {rss1:.1f} MB (growth {growth:+.1f} MB, bound "
                   f"{bound_mb:.1f} MB = {sndhwm} x {largest / 1024:.0f} KiB + 16 MB), after {rss_after:.1f} MB; "
                   f"frozen {resumed - frozen_at:.0f} s; monitor caught up with series {caught_up} "
                   f"(running when woken: {series_now}), resynced from a snapshot: {resynced}")
        print("\n" + figures)
        assert rate0 > 1.0, figures
        assert rate1 >= 0.5 * rate0, figures
        assert (seq2 - seq1) / dt1 >= 0.5 * (seq1 - seq0) / dt0, figures  # nor the publisher's own output
        assert growth < bound_mb, figures
        assert caught_up is not None, figures + "\n" + out.text()[-3000:]
        assert proc.poll() is None, figures
    finally:
        try:
            code, err = stop_monitor(proc)
        finally:
            s.close()  # also when the monitor would not stop: a session left running loads every later test
    assert code == 0 and "Traceback" not in err, err


def test_the_monitor_imports_no_torch_drivers_or_reconstructor():
    code = ("import sys, ltemlive.cli, ltemlive.monitor.terminal; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'drivers', 'simulator') "
            "or m.startswith(('ltemlive.reconstruct', 'ltemlive.optics', 'ltemlive.recon_service'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr

