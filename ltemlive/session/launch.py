"""``ltemlive run``: a whole live session on one machine, each role in its own process.

Order: the instrument server (supervised: restarted if it dies), the publisher, the controller, the
reconstructor service. Each child prints ``READY {json}`` with the endpoints it bound; the next ones are given
those. Progress comes from the publisher's update stream, the way any remote monitor sees it. When the
controller exits the others are stopped and the summary (phase, colour induction map, calibration
convergence) is written beside the run file.

Ctrl-C (or SIGTERM): the controller is told to stop (it aborts the current series at the next safe point,
restores the defocus and closes the run file with that series marked aborted), the reconstructor and the
publisher are stopped at the same time, the instrument server last; every child gets 2 s before it is killed.
Children run in their own process groups so that a Ctrl-C at the terminal reaches only this process, which
stops them in that order.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from ltemlive.session.config import RunConfig

__all__ = ["Child", "run_session"]

STOP_GRACE_S = 10.0  # a stop waits for the frame in flight (an exposure, a simulated image of the whole source)


class Child:
    """One role's process: started, waited for READY, stopped (SIGINT, then SIGKILL after the grace)."""

    def __init__(self, role: str, cfg: RunConfig, log_dir: Path, *, log_level: str = "INFO", name: str = ""):
        self.role = role
        self.name = name or role
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}.log"
        self._log = open(self.log_path, "a", encoding="utf-8")
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        group = (
            {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True}
        )
        # The config goes on stdin: a command line is readable by every user of the machine (ps).
        cmd = [sys.executable, "-m", "ltemlive.session.roles", role, "--config-json", "-", "--log-level", log_level]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env, bufsize=1,
            **group,
        )
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cfg.model_dump(mode="json")) + "\n")
            self.proc.stdin.close()
        except OSError:  # it died at once: wait_ready says why
            pass
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=_pump, args=(self.proc.stdout, self._lines), daemon=True).start()

    def wait_ready(self, timeout_s: float = 60.0, cancel: threading.Event | None = None) -> dict[str, Any] | None:
        """The role's READY endpoints; None if ``cancel`` was set first (a Ctrl-C during start-up)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if cancel is not None and cancel.is_set():
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.role} did not start within {timeout_s:g} s (log: {self.log_path})")
            try:
                line = self._lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.role} exited with code {self.proc.returncode} before it was ready: "
                        f"{_tail(self.log_path)} (log: {self.log_path})"
                    ) from None
                continue
            if line is None:
                continue
            if line.startswith("READY "):
                return json.loads(line[6:])
            if line.startswith("FAILED "):
                raise RuntimeError(f"{self.role}: {line[7:].strip()} (log: {self.log_path})")

    def signal_stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT if os.name != "nt" else signal.CTRL_BREAK_EVENT)
            except OSError:
                pass

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s: float = STOP_GRACE_S) -> int:
        if self.proc.poll() is None:
            self.signal_stop()
        if self.wait(grace_s) is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode


def _pump(stream: IO[str], out: queue.Queue[str | None]) -> None:
    try:
        for line in stream:
            out.put(line)
    except (OSError, ValueError):
        pass
    out.put(None)


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def run_session(cfg: RunConfig, console, *, log_level: str = "INFO", summary: bool = True) -> int:
    """Run the session; returns the exit code (0: the plan completed and its run file is written)."""
    from drivers.supervisor import Supervisor
    from ltemlive.session.progress import Progress

    out = cfg.session.output_dir
    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / "logs" / f"{cfg.session.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    interrupted = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        interrupted.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    children: dict[str, Child] = {}
    supervisor = None
    ready: dict[str, Any] = {}
    progress = None
    code = 1
    try:
        console.print(f"[bold]ltemlive run[/] session [bold]{cfg.session.name}[/]: {cfg.plan.repeats} series of "
                      f"{len(cfg.plan.defocus_m)} images; logs in {log_dir}")
        instrument = cfg.instrument
        if cfg.security.keys_dir is not None:
            from ltemlive.wire import security

            # this process watches (the update stream, the instrument server's pongs) with the controller's key
            security.configure(cfg.security.keys_dir, cfg.key_name("controller"))
            instrument = {**instrument, "server": {**(instrument.get("server") or {}),
                                                   "keys_dir": str(cfg.security.keys_dir), "key": "instrument"}}
        if cfg.controller.instrument_mode == "remote":
            supervisor = Supervisor(instrument, cfg.bind_address("instrument"), log_level="WARNING")
            supervisor.start()
            cfg = cfg.with_endpoints(instrument=supervisor.endpoint)
            console.print(f"  instrument server ({cfg.instrument.get('backend', 'simulated')}) on "
                          f"{supervisor.endpoint}")
        starting: list[tuple[str, Child]] = []  # reconstructors: all started at once, then waited for
        for role, name, role_cfg in _children(cfg):
            if interrupted.is_set():
                break
            child = children[name] = Child(role, role_cfg(cfg), log_dir, log_level=log_level, name=name)
            if role == "reconstructor":
                starting.append((name, child))
                continue
            got = child.wait_ready(cancel=interrupted)
            if got is None:
                break
            ready[name] = got
            if role == "publisher":
                cfg = cfg.with_endpoints(ingest=got["ingest"], updates=got["updates"], snapshot=got["snapshot"])
                progress = Progress(cfg, console)
                progress.sync()

            elif role == "controller":
                cfg = cfg.with_endpoints(frames=got["frames"], control=got["control"])
                console.print(f"  controller: run file [bold]{got['run_file']}[/]; commands: "
                              f"ltemlive control {got['control']} pause|resume|abort|freeze_feedback|...")
                snap = cfg.endpoints.snapshot
                # A secured session is watched with a person's key (a monitor's reads, an operator's commands).
                keys = "" if cfg.security.keys_dir is None else f" --keys {cfg.security.keys_dir} --key KEY"
                console.print(f"  watch: ltemlive monitor {snap}{keys}   in a browser: ltemlive dashboard {snap} "
                              f"--control {got['control']}{keys}")
        for name, child in starting:
            got = child.wait_ready(cancel=interrupted)
            if got is None:
                break
            ready[name] = got
        controller = children.get("controller")
        while controller is not None and controller.proc.poll() is None:
            if interrupted.is_set():
                console.print("[yellow]interrupted: stopping every process[/]")
                break
            if progress is not None:
                progress.poll(0.1)
            else:
                time.sleep(0.1)
        if progress is not None:
            progress.poll(0.3)
        code = _shutdown(children, supervisor, interrupted.is_set())
        supervisor = None
        run_file = ready.get("controller", {}).get("run_file")
        if run_file and Path(run_file).exists():
            if summary:
                _summary(Path(run_file), console)
            if interrupted.is_set():
                return 130
            return code
        return 2 if code == 0 else code
    except RuntimeError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    finally:
        if progress is not None:
            progress.close()
        if children or supervisor is not None:
            _shutdown(children, supervisor, True)
        for s, h in old.items():
            signal.signal(s, h)


def _children(cfg: RunConfig):
    """(role, name, config for it) in start order; config is a function of the config with the endpoints
    found so far. Several reconstructors each get their own worker name (and log file)."""
    from ltemlive.recon_service.config import worker_names

    yield "publisher", "publisher", lambda c: c
    yield "controller", "controller", lambda c: c
    names = worker_names(cfg.reconstructor.worker, cfg.reconstructor.count)
    for i, worker in enumerate(names):
        name = "reconstructor" if i == 0 else f"reconstructor-{worker}"

        def with_name(c: RunConfig, worker: str = worker) -> RunConfig:
            return c.model_copy(update={"reconstructor": c.reconstructor.model_copy(update={"worker": worker})})

        yield "reconstructor", name, with_name


def _shutdown(children: dict[str, Child], supervisor, interrupted: bool) -> int:
    """Stop every child (all signalled at once, each given the same grace), the instrument server last: the
    controller may still need it to restore the defocus. The controller's exit code is the session's."""
    code = 0
    order = ["controller", *(n for n in children if n.startswith("reconstructor")), "publisher"]
    order = [r for r in order if r in children]
    if interrupted or "controller" not in children:
        for r in order:
            children[r].signal_stop()
    elif "controller" in children:
        children["controller"].wait(STOP_GRACE_S)  # it has finished its plan: let it close its file first
        for r in order:
            children[r].signal_stop()
    deadline = time.monotonic() + STOP_GRACE_S
    for r in order:
        child = children.pop(r)
        rc = child.wait(max(deadline - time.monotonic(), 0.05))
        rc = child.stop(grace_s=0.0) if rc is None else child.stop(grace_s=0.05)
        if r == "controller":
            code = rc
    if supervisor is not None:
        supervisor.stop(timeout_s=1.0)
    return code


def _summary(run_file: Path, console) -> None:
    from ltemlive.summary import write_summary

    out_dir = run_file.with_suffix("")
    try:
        s = write_summary(run_file, out_dir)
    except Exception as exc:  # the run file is what matters; a failed picture must not hide it
        console.print(f"[yellow]summary not written: {type(exc).__name__}: {exc}[/]")
        return
    console.print(f"summary: {out_dir}/ ({', '.join(sorted(s.get('files', {})))})")
