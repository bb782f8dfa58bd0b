"""Service benchmark: the frame stream, the controller's own cost per frame, and the live-feedback latency.

Every figure is printed next to a bound measured in the same run on the same machine:

  1. frame stream throughput at 2048x2048 float32 (16 MiB frames): a FrameStreamServer here offering the frames
     (pre-offered, in a few series) to a FrameStreamClient in a separate process (window 4, credit granted as
     it takes them), measured at the consumer from the first to the last frame; next to it raw pyzmq PUSH/PULL
     (zero-copy both ends) with the same transport, frame size and count, and raw pyzmq with one copy per frame
     at the consumer (FrameStreamClient copies every frame out of the receive buffer). tcp loopback and ipc.
  2. the controller's own cost per frame (run file write + flush + offer: Controller.frame_times_s) on the
     simulated instrument in process (time_scale 0), no reconstructor attached: p99 from a controller role
     process's status, p50/p99/max from the same Controller code run in this process; next to it np.copy of one
     frame and a write + flush of one frame into a chunked SWMR dataset with h5py alone.
  3. latency from the last frame of a series (on disk) to the first live phase preview of the whole series, to
     the final published phase (the publisher's 'result' event, as a subscriber sees it) and to the calibration
     decision at the controller, with a whole session of real processes (publisher, reconstructor, controller;
     config/default.yaml, 2 series); next to it the reconstruction's own elapsed_s (the final solve after the
     last image arrived: the latency cannot go below).

Outputs go to a temporary directory (removed at the end unless --keep). Run:
    python bench/bench_service.py [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "config" / "default.yaml"
MB = 1e6

# -- the consumer process (block 1) ---------------------------------------------------------------------------
# A separate interpreter (not multiprocessing: it must not import this module, hence torch). One JSON command
# per stdin line, one JSON reply per stdout line. Times are its own perf_counter: first to last frame.
CONSUMER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import zmq
    from loguru import logger
    from ltemlive.stream.client import FrameStreamClient
    from ltemlive.wire import security

    logger.remove()

    def stream(endpoint, n, window, timeout_s):
        client = FrameStreamClient(endpoint, "recon-1", window=window)
        got, nbytes, t_first, t_last = 0, 0, None, None
        deadline = time.monotonic() + timeout_s
        try:
            while got < n and time.monotonic() < deadline:
                items = client.poll(0.5)
                if not items:
                    continue
                client.consumed(sum(1 for i in items if i.kind != "reset"))
                now = time.perf_counter()
                for it in items:
                    if it.kind == "frame":
                        got += 1
                        nbytes += it.data.nbytes
                        t_first = now if t_first is None else t_first
                        t_last = now
        except BaseException:
            client.close()
            raise
        # Closed (BYE) at the next command, once the server has been told the series are done.
        out = {"n": got, "bytes": nbytes, "t_first": t_first, "t_last": t_last, "stats": dict(client.stats)}
        return out, client

    def raw(endpoint, n, copy_out, timeout_s):
        ctx = zmq.Context()
        s = ctx.socket(zmq.PULL)
        s.setsockopt(zmq.LINGER, 0)
        security.connect(s, "controller")  # CURVE when the command said so (a no-op otherwise)
        s.connect(endpoint)
        got, nbytes, t_first, t_last = 0, 0, None, None
        deadline = time.monotonic() + timeout_s
        try:
            while got < n and time.monotonic() < deadline:
                if not s.poll(500):
                    continue
                frame = s.recv(copy=False)
                a = np.frombuffer(frame.buffer, dtype=np.float32)
                if copy_out:
                    a = np.array(a)
                now = time.perf_counter()
                got += 1
                nbytes += a.nbytes
                t_first = now if t_first is None else t_first
                t_last = now
                del a, frame
        finally:
            s.close()
            ctx.term()
        return {"n": got, "bytes": nbytes, "t_first": t_first, "t_last": t_last}

    print(json.dumps({"ready": True}), flush=True)
    previous = None
    for line in sys.stdin:
        cmd = json.loads(line)
        if previous is not None:
            previous.close()
            previous = None
        if cmd["kind"] == "quit":
            break
        security.deconfigure()
        if cmd.get("keys"):
            security.configure(cmd["keys"], "recon-1")
        if cmd["kind"] == "stream":
            out, previous = stream(cmd["endpoint"], cmd["n"], cmd["window"], cmd["timeout_s"])
        else:
            out = raw(cmd["endpoint"], cmd["n"], cmd["kind"] == "rawcopy", cmd["timeout_s"])
        print(json.dumps(out), flush=True)
    """
)


class Consumer:
    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CONSUMER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self._read()  # ready

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"consumer process exited (code {self.proc.poll()})")
        return json.loads(line)

    def send(self, **cmd: Any) -> None:
        from ltemlive.wire import security

        key = security.configured()
        if key is not None and "keys" not in cmd and cmd.get("kind") != "quit":
            cmd["keys"] = str(security._config.keyring.directory)  # the consumer speaks as recon-1 of that ring
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def reply(self) -> dict[str, Any]:
        return self._read()

    def close(self) -> None:
        try:
            self.send(kind="quit")
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)


def _rate(r: dict[str, Any], n: int, nbytes: int) -> tuple[float, float]:
    """(frames/s, MB/s) from the first to the last frame (n - 1 intervals); raises if frames went missing."""
    if r["n"] != n or r["t_first"] is None or r["t_last"] <= r["t_first"]:
        raise RuntimeError(f"consumer got {r['n']} of {n} frames: {r}")
    dt = r["t_last"] - r["t_first"]
    return (n - 1) / dt, (n - 1) * nbytes / dt / MB


def stream_once(consumer: Consumer, endpoint: str, frame: np.ndarray, n_series: int, per_series: int,
                window: int) -> tuple[float, float]:
    from ltemlive.stream.server import FrameStreamServer
    from ltemlive.wire import frames as fm

    n = n_series * per_series
    # Every series assignable at once: without results coming back (series_done) a worker holds at most
    # max_series_per_worker series, 2 by default, and the stream would stop after those.
    server = FrameStreamServer(endpoint, session="bench", cache_bytes=(n + 1) * frame.nbytes,
                               max_series_per_worker=n_series)
    try:
        server.start()
        fid = 0
        for s in range(n_series):
            server.begin_series(fm.Start(
                session="bench", series=s, run_id="bench", n_planned=per_series,
                defocus_planned_m=[1e-4 * (i + 1) for i in range(per_series)], frame_shape=frame.shape,
                pixel_size_m=5e-9, optics=fm.OpticsInfo(voltage_v=200e3),
            ))
            for i in range(per_series):
                msg = fm.FrameMsg(session="bench", series=s, index=i, frame_id=fid, defocus_nominal_m=1e-4 * (i + 1),
                                  defocus_planned_m=1e-4 * (i + 1), defocus_commanded_m=1e-4 * (i + 1),
                                  exposure_s=0.5)
                server.offer_frame(msg, frame)
                fid += 1
            server.end_series(s, "complete")
        consumer.send(kind="stream", endpoint=server.endpoint, n=n, window=window, timeout_s=60)
        r = consumer.reply()
        for s in range(n_series):
            server.series_done(s)
        time.sleep(0.05)  # let the stream thread see it before the consumer says BYE
    finally:
        server.stop()
    return _rate(r, n, frame.nbytes)


def raw_once(consumer: Consumer, endpoint: str, frame: np.ndarray, n: int, copy_out: bool) -> tuple[float, float]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 0)
    from ltemlive.wire import security

    security.serve(s)
    try:
        s.bind(endpoint)
        consumer.send(kind="rawcopy" if copy_out else "raw", endpoint=s.getsockopt_string(zmq.LAST_ENDPOINT), n=n,
                      timeout_s=60)
        for _ in range(n):
            s.send(frame, copy=False)  # blocks until the consumer has connected, then queues (zero-copy)
        r = consumer.reply()
    finally:
        s.close()
        security.release(ctx)
        ctx.term()
    return _rate(r, n, frame.nbytes)


def _best_median(values: list[tuple[float, float]]) -> tuple[tuple[float, float], tuple[float, float]]:
    fps = np.array([v[0] for v in values])
    mbs = np.array([v[1] for v in values])
    return (float(fps.max()), float(mbs.max())), (float(np.median(fps)), float(np.median(mbs)))


def block_stream(args: argparse.Namespace, tmp: Path) -> None:
    side = 2048
    n_series, per_series = args.stream_series, args.stream_per_series
    n = n_series * per_series
    window = 4
    frame = np.random.default_rng(0).random((side, side), dtype=np.float32)
    print(f"\n1. frame stream throughput, {side}x{side} float32 ({frame.nbytes / 2**20:.0f} MiB/frame), {n} frames "
          f"({n_series} series x {per_series}), window {window}; consumer in a separate process; "
          f"{args.repeats} repeats (+1 warm-up), first to last frame at the consumer; all series assignable at once "
          "(max_series_per_worker = number of series: no results come back here)")
    consumer = Consumer()
    try:
        for label, make in (("tcp", lambda r: "tcp://127.0.0.1:*"),
                            ("ipc", lambda r: f"ipc://{tmp}/bench-{r}.ipc")):
            runs: dict[str, list[tuple[float, float]]] = {"stream": [], "raw": [], "rawcopy": []}
            for r in range(args.repeats + 1):
                got = {
                    "stream": stream_once(consumer, make(f"s{r}"), frame, n_series, per_series, window),
                    "raw": raw_once(consumer, make(f"r{r}"), frame, n, copy_out=False),
                    "rawcopy": raw_once(consumer, make(f"c{r}"), frame, n, copy_out=True),
                }
                if r > 0:  # the first round is the warm-up
                    for k, v in got.items():
                        runs[k].append(v)
            res = {k: _best_median(v) for k, v in runs.items()}
            print(f"  {label}:")
            names = {"stream": "FrameStreamServer -> FrameStreamClient",
                     "raw": "raw pyzmq PUSH/PULL, copy=False both ends (bound)",
                     "rawcopy": "raw pyzmq + one np.array copy per frame at the consumer"}
            for k in ("stream", "raw", "rawcopy"):
                (bf, bm), (mf, mm) = res[k]
                print(f"    {names[k]:<56} best {bf:6.1f} frames/s {bm:7.0f} MB/s   median {mf:6.1f} frames/s "
                      f"{mm:7.0f} MB/s")
            best_ratio = res["stream"][0][1] / res["raw"][0][1]
            med_ratio = res["stream"][1][1] / res["raw"][1][1]
            verdict = "met" if med_ratio >= 0.8 else "NOT met"
            print(f"    stream / raw: best {best_ratio:.2f}x, median {med_ratio:.2f}x (goal >= 0.8x: {verdict}); "
                  f"stream / (raw + copy): median {res['stream'][1][1] / res['rawcopy'][1][1]:.2f}x")
    finally:
        consumer.close()


def block_curve(args: argparse.Namespace, tmp: Path) -> None:
    """1b: the same over tcp with CURVE on (the frame stream secured as in a split deployment, the consumer
    speaking as a reconstructor key), next to raw pyzmq PUSH/PULL with CURVE in the same run."""
    from ltemlive.wire import security

    side = 2048
    n_series, per_series = args.stream_series, args.stream_per_series
    n = n_series * per_series
    frame = np.random.default_rng(0).random((side, side), dtype=np.float32)
    ring = security.Keyring(tmp / "keys")
    ring.create("controller", "acquisition")
    ring.create("recon-1", "reconstructor")
    print(f"\n1b. the same with CURVE (tcp loopback, {n} frames of {frame.nbytes / 2**20:.0f} MiB, "
          f"{args.repeats} repeats + 1 warm-up)")
    consumer = Consumer()
    security.configure(ring, "controller")
    try:
        runs: dict[str, list[tuple[float, float]]] = {"stream": [], "raw": []}
        for r in range(args.repeats + 1):
            got = {"stream": stream_once(consumer, "tcp://127.0.0.1:*", frame, n_series, per_series, 4),
                   "raw": raw_once(consumer, "tcp://127.0.0.1:*", frame, n, copy_out=False)}
            if r > 0:
                for k, v in got.items():
                    runs[k].append(v)
        res = {k: _best_median(v) for k, v in runs.items()}
        for k, name in (("stream", "FrameStreamServer -> FrameStreamClient, CURVE"),
                        ("raw", "raw pyzmq PUSH/PULL, CURVE, copy=False (bound)")):
            (bf, bm), (mf, mm) = res[k]
            print(f"    {name:<56} best {bf:6.1f} frames/s {bm:7.0f} MB/s   median {mf:6.1f} frames/s {mm:7.0f} MB/s")
        nominal = 5 * frame.nbytes / MB  # 5 frames/s of 2048^2 float32: a fast LTEM camera
        print(f"    stream / raw (CURVE): median {res['stream'][1][1] / res['raw'][1][1]:.2f}x; stream with CURVE / "
              f"nominal 5 frames/s ({nominal:.0f} MB/s): {res['stream'][1][1] / nominal:.1f}x (goal >= 5x)")
    finally:
        security.deconfigure()
        consumer.close()


# -- helpers for the role processes ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_config() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))


def run_config(data: dict[str, Any]):
    from ltemlive.session.config import check_everything, load_run_config

    cfg = load_run_config(None, overrides=data)
    check_everything(cfg, "bench")
    return cfg


def load() -> str:
    """Other processes on the machine change every figure here: say how busy it was."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def pct(a, q) -> float:
    return float(np.percentile(np.asarray(a, dtype=np.float64), q))


def ms(x: float) -> str:
    return f"{x * 1e3:7.2f} ms"


# -- block 2 ------------------------------------------------------------------------------------------------------
def controller_config(side: int, repeats: int, out: Path, name: str) -> dict[str, Any]:
    d = base_config()
    d["session"] = {"name": name, "output_dir": str(out)}
    sim = d["instrument"]["simulated"]
    sim["time_scale"] = 0.0
    sim["simulation"]["shape"] = [side, side]
    sim["simulation"]["oversample"] = 1  # the physics is not what is measured; the controller's cost starts after it
    d["plan"]["repeats"] = repeats
    d["plan"]["wait_for_feedback_s"] = 0
    d["controller"] = {"instrument_mode": "in_process", "drain_timeout_s": 300}
    d["endpoints"]["ingest"] = f"tcp://127.0.0.1:{free_port()}"  # nobody there: the event sink never blocks
    return d


def controller_in_process(data: dict[str, Any]) -> list[float]:
    """The same Controller code in this process, for the whole distribution of its per-frame cost."""
    from loguru import logger

    from drivers.factory import build
    from drivers.limits import SafetyLimits
    from ltemlive.controller.controller import Controller
    from ltemlive.controller.feedback import DefocusFeedback
    from ltemlive.session.roles import _optics

    cfg = run_config(data)
    logger.remove()
    microscope, camera = build(cfg.controller_instrument())
    limits = SafetyLimits.model_validate(cfg.instrument.get("limits") or {})
    try:
        c = Controller(microscope, camera, cfg.plan, DefocusFeedback(cfg.feedback), session=cfg.session.name,
                       output_dir=cfg.session.output_dir, optics=_optics(cfg), config_yaml=cfg.dump_yaml(),
                       stream_kwargs={"cache_bytes": cfg.controller.cache_mb << 20}, drain_timeout_s=0.0,
                       max_defocus_step_m=limits.max_defocus_step_m)
        c.run()
        return list(c.frame_times_s)
    finally:
        for part in (camera, microscope):
            part.close()


def h5py_bound(path: Path, frame: np.ndarray, n: int) -> list[float]:
    """Write + flush of one frame into a chunked, resizable SWMR dataset, as the run file's /frames/data is."""
    import h5py

    from ltemlive.storage.runfile import LIBVER

    h, w = frame.shape
    times = []
    with h5py.File(path, "x", libver=LIBVER) as f:
        ds = f.create_dataset("data", shape=(0, h, w), maxshape=(None, h, w), chunks=(1, h, w), dtype="f4")
        f.swmr_mode = True
        for i in range(n):
            t = time.perf_counter()
            ds.resize(i + 1, axis=0)
            ds[i] = frame
            ds.flush()
            times.append(time.perf_counter() - t)
    path.unlink()
    return times


def copy_bound(frame: np.ndarray, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        np.copy(frame)
        times.append(time.perf_counter() - t)
    return times


def block_controller(args: argparse.Namespace, tmp: Path) -> None:
    from ltemlive.controller.client import ControlClient
    from ltemlive.session.launch import Child
    from ltemlive.storage.runfile import RunReader

    repeats, per = args.ctl_repeats, 4
    n = repeats * per
    print(f"\n2. controller per-frame cost (run file write + flush + offer), simulated instrument in process, "
          f"time_scale 0, {repeats} series x {per} images, no reconstructor attached")
    for side in args.ctl_sizes:
        out = tmp / f"ctl-{side}"
        data = controller_config(side, repeats, out, f"benchctl{side}")
        cfg = run_config(data)
        child = Child("controller", cfg, tmp / "logs", log_level=args.log_level)
        p99_status = None
        t0 = time.monotonic()
        try:
            ready = child.wait_ready(120)
            with ControlClient(ready["control"]) as cc:
                while child.proc.poll() is None and time.monotonic() - t0 < 600:
                    st = cc.command("status").status
                    if st["frames_written"] >= n:  # the plan is done; the controller waits in its drain
                        p99_status = st["frame_time_p99_s"]
                        break
                    time.sleep(0.5)  # seldom: each query is work for the controller's control thread
            wall = time.monotonic() - t0
        finally:
            child.stop()
        with RunReader(ready["run_file"]) as r:
            recs = [r.frame_record(i) for i in range(r.n_frames)]
        end_to_stamp = [x["t_written_epoch_s"] - x["t_end_epoch_s"] for x in recs]
        cadence = np.diff([x["t_written_epoch_s"] for x in recs])
        inproc = controller_in_process(controller_config(side, repeats, out / "inproc", f"benchctl{side}i"))
        frame = np.random.default_rng(1).random((side, side), dtype=np.float32)
        t_copy = copy_bound(frame, n)
        t_h5 = h5py_bound(tmp / f"scratch-{side}.h5", frame, n)
        print(f"  {side}x{side} ({frame.nbytes / 2**20:.1f} MiB/frame), {len(recs)} frames written "
              f"(role process: {wall:.1f} s from start to the last frame, median frame interval "
              f"{np.median(cadence) * 1e3:.1f} ms incl. the simulator):")
        def row(label: str, t: list[float] | None, p99_only: float | None = None) -> None:
            if t is None:
                figs = f"{'':>15}p99 {ms(p99_only) if p99_only is not None else '    n/a'}"
            else:
                figs = f"p50 {ms(pct(t, 50))}  p99 {ms(pct(t, 99))}  max {ms(max(t))}"
            print(f"    {label:<60}{figs}")

        row("controller role process: status frame_time_p99_s", None, p99_status)
        row("same Controller code in this process: frame_times_s", inproc)
        row("run file: camera end -> on disk (t_written, stamped after the flush)", end_to_stamp)
        row("bound: np.copy of one frame", t_copy)
        row("bound: h5py alone, resize + write + flush of one frame", t_h5)
        b = pct(t_copy, 50) + pct(t_h5, 50)
        print(f"    controller p50 / (copy + h5py) p50: {pct(inproc, 50) / b:.2f}x")


# -- block 3 ------------------------------------------------------------------------------------------------------
def block_latency(args: argparse.Namespace, tmp: Path) -> None:
    from ltemlive.publisher.subscriber import Subscriber
    from ltemlive.session.launch import Child
    from ltemlive.storage.runfile import RunReader

    d = base_config()
    d["session"] = {"name": "benchlat", "output_dir": str(tmp / "latency")}
    d["instrument"]["simulated"]["time_scale"] = 1.0
    d["plan"].update({"repeats": 2, "exposure_s": 0.5, "wait_for_feedback_s": 60})
    d["controller"] = {"instrument_mode": "in_process"}
    if args.max_iter is not None:
        d.setdefault("reconstruction", {})["max_iter"] = args.max_iter
    # Fixed ports for the controller's sockets, so that the reconstructor can be started (torch imported) BEFORE
    # the controller: the latency measured is the pipeline's, not the reconstructor's start-up.
    d["endpoints"]["frames"] = f"tcp://127.0.0.1:{free_port()}"
    d["endpoints"]["control"] = f"tcp://127.0.0.1:{free_port()}"
    cfg = run_config(d)
    sim = cfg.instrument["simulated"]["simulation"]
    print(f"\n3. latency, whole session of real processes (publisher, reconstructor, controller): simulated instrument "
          f"in process, time_scale 1, {sim['shape'][0]}x{sim['shape'][1]}, {cfg.plan.repeats} series x "
          f"{len(cfg.plan.defocus_m)} images, exposure {cfg.plan.exposure_s:g} s, wait_for_feedback_s "
          f"{cfg.plan.wait_for_feedback_s:g}, reconstruction max_iter {cfg.reconstruction.get('max_iter', 'default')}, "
          f"device {cfg.reconstruction.get('device', 'cpu')}, reconstructor torch threads "
          f"{cfg.reconstructor.threads or 'default'}; reconstructor started before the controller (fixed ports)")
    logs = tmp / "logs"
    children: list[Child] = []
    seen: dict[tuple[str, int], float] = {}  # (topic, series) -> first receipt (epoch) at the subscriber
    last_frame_event: dict[int, float] = {}
    sub = None
    try:
        pub = Child("publisher", cfg, logs, log_level=args.log_level)
        children.append(pub)
        got = pub.wait_ready(60)
        cfg = cfg.with_endpoints(ingest=got["ingest"], updates=got["updates"], snapshot=got["snapshot"])
        topics = ("frame", "recon", "result", "calibration")
        sub = Subscriber(cfg.endpoints.updates, cfg.endpoints.snapshot, topics=topics)
        t_sync = time.monotonic() + 5
        while not sub.synced and time.monotonic() < t_sync:
            sub.poll(0.1)
        rec = Child("reconstructor", cfg, logs, log_level=args.log_level)
        children.append(rec)
        rec.wait_ready(120)
        ctl = Child("controller", cfg, logs, log_level=args.log_level)
        children.append(ctl)
        run_file = ctl.wait_ready(120)["run_file"]
        n_series = cfg.plan.repeats

        n_images = len(cfg.plan.defocus_m)

        def take(timeout: float) -> None:
            for ev, arrays in sub.poll(timeout):
                now = time.time()
                p = ev.payload
                s = p.get("series", p.get("series_index"))
                if not isinstance(s, int):
                    continue
                seen.setdefault((ev.topic, s), now)
                if ev.topic == "recon" and arrays and p.get("n_images") == n_images:
                    seen.setdefault(("preview", s), now)  # the first live phase of the whole series
                if ev.topic == "frame" and p.get("index") == p.get("n_frames", 0) - 1:
                    last_frame_event[s] = now

        deadline = time.monotonic() + args.latency_timeout_s
        while ctl.proc.poll() is None and time.monotonic() < deadline:
            take(0.2)
        t_more = time.monotonic() + 3
        while time.monotonic() < t_more and not all(("result", s) in seen for s in range(n_series)):
            take(0.1)
        if ctl.proc.poll() is None:
            print(f"  controller still running after {args.latency_timeout_s:g} s: stopped")
    finally:
        if sub is not None:
            sub.close()
        for c in reversed(children):  # controller, reconstructor, publisher
            c.stop()
    with RunReader(run_file) as r:
        frames = [r.frame_record(i) for i in range(r.n_frames)]
        cal = r.calibration()
        recons = r.reconstructions()
    for s in range(n_series):
        mine = [f for f in frames if f["series_index"] == s]
        if not mine:
            print(f"  series {s}: no frames")
            continue
        t_disk = max(mine, key=lambda f: f["index_in_series"])["t_written_epoch_s"]
        t_res = seen.get(("result", s))
        t_cal = next((c["t_epoch_s"] for c in cal if c["series_index"] == s), None)
        prov = next((x["provenance"] for x in recons if x["series_index"] == s), None)
        parts = [f"  series {s}: last frame on disk ->"]
        t_pre = seen.get(("preview", s))
        if t_pre:
            parts.append(f"first live phase (preview) {t_pre - t_disk:6.2f} s,")
        parts.append(f"final phase published {t_res - t_disk:6.2f} s," if t_res else "no phase published,")
        parts.append(f"feedback at the controller {t_cal - t_disk:6.2f} s" if t_cal else "no calibration record")
        print(" ".join(parts))
        if s in last_frame_event:
            print(f"            ('frame' event of that frame seen {last_frame_event[s] - t_disk:+.3f} s after its "
                  "t_written stamp)")
        if prov is not None:
            lat = prov.get("latency_s")
            own = f"; reconstructor's own last frame received -> result sent {lat:.2f} s" if lat is not None else ""
            print(f"            bound: reconstruction elapsed_s {prov['elapsed_s']:6.2f} s ({prov['iterations']} it, "
                  f"{prov['stopped_because']}){own}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller counts: the whole script in ~2 min on 2 cores")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (run files, logs)")
    ap.add_argument("--only", default="1c23", help="blocks to run, e.g. 13 (c: the frame stream with CURVE)")
    ap.add_argument("--log-level", default="WARNING", help="log level of the role processes (logs in the temp dir)")
    ap.add_argument("--max-iter", type=int, default=None,
                    help="reconstruction.max_iter in block 3 (default: the config's; 30 with --quick)")
    args = ap.parse_args()
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{time:HH:mm:ss.SSS} {level: <7} {message}")
    if args.quick:
        args.repeats, args.stream_series, args.stream_per_series = 3, 4, 6
        args.ctl_sizes, args.ctl_repeats = [512, 1024], 5
        args.latency_timeout_s = 90.0
        if args.max_iter is None:  # the default 200 iterations take over a minute per series at 256x256 on 2 cores
            args.max_iter = 30
    else:
        args.repeats, args.stream_series, args.stream_per_series = 7, 4, 10
        args.ctl_sizes, args.ctl_repeats = [512, 2048], 10
        args.latency_timeout_s = 300.0
    print(machine())
    import h5py

    print(f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}), numpy {np.__version__}, h5py {h5py.__version__} "
          f"(HDF5 {h5py.version.hdf5_version}){'; --quick' if args.quick else ''}")
    t0 = time.monotonic()
    tmp_obj = tempfile.TemporaryDirectory(prefix="ltemlive-bench-")
    tmp = Path(tmp_obj.name)
    try:
        for key, block in (("1", block_stream), ("c", block_curve), ("2", block_controller), ("3", block_latency)):
            if key in args.only:
                print(f"\n[{load()} before block {key}]", end="")
                block(args, tmp)
        print(f"\n[{load()} at the end]")
    finally:
        if args.keep:
            print(f"\noutputs kept in {tmp}")
            tmp_obj._finalizer.detach()  # type: ignore[attr-defined]
        else:
            tmp_obj.cleanup()
    print(f"total {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
