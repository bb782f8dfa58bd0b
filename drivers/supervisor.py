"""Run the instrument server in a child process and restart it when it dies.

The child is ``python -m drivers.server --config - --endpoint ...`` (the config on its stdin, never on a command
line that every user of the machine can read); it prints ``READY <endpoint>``
once bound and its backend is up. The first start may bind a random port (``tcp://127.0.0.1:*``); restarts
reuse the endpoint the first child reported, so clients reconnect transparently (their DEALER sockets
reconnect by themselves; calls in flight when the child died fail with ServerUnreachable/InstrumentTimeout).
Restarts back off and stop after ``max_restarts`` within ``window_s`` (a crash loop needs a human).
A watchdog pings the child's I/O loop with short pings (each well inside the connection's 3 s heartbeat
timeout, on a fresh socket after a miss): a process that is alive but has answered none for ``watchdog_s`` is
killed and restarted like a dead one; one that recovers in time is left alone. A merely *busy* backend does not
trip it - pings are answered by the server's I/O thread, not by the backend's owner thread - unless the owner
thread has been inside one call for longer than the server's own ``max_call_s`` plus ``hung_grace_s``: a vendor
call that will never return, which only a restart ends.
Works the same on Windows, where microscope PCs live: no select() on pipes, no fork.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from loguru import logger

from drivers.errors import HardwareFault, InstrumentTimeout

__all__ = ["Supervisor"]


class Supervisor:
    def __init__(
        self,
        config: Mapping[str, Any],
        endpoint: str = "tcp://127.0.0.1:*",
        *,
        max_restarts: int = 5,
        window_s: float = 60.0,
        backoff_s: float = 0.2,
        ready_timeout_s: float = 30.0,
        python: str = sys.executable,
        log_level: str = "WARNING",
        watchdog_s: float | None = 5.0,
        hung_grace_s: float = 30.0,
    ) -> None:
        self._config_json = json.dumps(dict(config))
        self.endpoint = endpoint
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff_s = backoff_s
        self.ready_timeout_s = ready_timeout_s
        self.python = python
        self.log_level = log_level
        self.watchdog_s = watchdog_s
        self.hung_grace_s = hung_grace_s
        self.watchdog_kills = 0
        self._last_pong = time.monotonic()
        self.restarts = 0
        self.gave_up = False
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._monitor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._restart_times: deque[float] = deque()
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _env(self) -> dict[str, str]:
        # Make ``drivers`` and ``simulator`` importable in the child even when not installed.
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def _spawn(self) -> None:
        cmd = [
            self.python,
            "-m",
            "drivers.server",
            "--config",
            "-",  # on stdin: a command line is visible to every user of the machine (ps)
            "--endpoint",
            self.endpoint,
            "--log-level",
            self.log_level,
        ]
        # Its own process group: a Ctrl-C at the terminal goes to the supervising process, which stops the server
        # last (after whatever still needs the instrument, e.g. to restore the defocus), not to the server itself.
        group = (
            {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True}
        )
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self._env(), bufsize=1, **group
        )
        assert proc.stdin is not None
        try:
            proc.stdin.write(self._config_json + "\n")
            proc.stdin.close()
        except OSError:  # it died at once: the READY wait below reports it
            pass
        lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        reader = threading.Thread(target=_pump, args=(proc.stdout, lines), name="server-stdout", daemon=True)
        reader.start()
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                _reap(proc, reader)
                raise InstrumentTimeout(f"instrument server not ready within {self.ready_timeout_s} s") from None
            if line is None:
                _reap(proc, reader)
                raise HardwareFault(f"instrument server exited during start-up (code {proc.returncode})")
            if line.startswith("READY "):
                self.endpoint = line.split(maxsplit=1)[1].strip()
                break
            if line.startswith("FAILED"):
                _reap(proc, reader)
                raise HardwareFault(f"instrument server failed to start: {line.strip()}")
        self._proc, self._reader, self._lines = proc, reader, lines
        self._last_pong = time.monotonic()
        logger.info("instrument server pid {} ready on {}", proc.pid, self.endpoint)

    def start(self) -> Supervisor:
        self._spawn()
        self._monitor = threading.Thread(target=self._watch, name="server-supervisor", daemon=True)
        self._monitor.start()
        return self

    def _watch(self) -> None:
        client = None
        next_ping = time.monotonic() + 1.0
        try:
            while not self._stopping.is_set():
                with self._lock:
                    proc = self._proc
                if proc is None:
                    return
                try:
                    proc.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    if self.watchdog_s and time.monotonic() >= next_ping:
                        client = self._watchdog(proc, client)
                        next_ping = time.monotonic() + min(1.0, self.watchdog_s)
                    continue
                if not self._handle_death(proc):
                    return
        finally:
            if client is not None:
                client.close()

    def _watchdog(self, proc: Any, client: Any) -> Any:
        from drivers.client import InstrumentClient

        assert self.watchdog_s
        # A ping shorter than the ZMTP heartbeat timeout (3 s): a reply never goes to a connection that libzmq
        # has dropped meanwhile, and a server that recovers within watchdog_s is answered, not killed.
        ping_s = min(1.0, self.watchdog_s / 2)
        if client is None or client.endpoint != self.endpoint:
            if client is not None:
                client.close()
            client = InstrumentClient(self.endpoint, liveness_s=ping_s, heartbeat_s=ping_s)
        try:
            pong = client.ping(timeout_s=ping_s)
        except InstrumentTimeout:
            silent = time.monotonic() - self._last_pong
            if silent >= self.watchdog_s and proc.poll() is None and not self._stopping.is_set():
                logger.error("instrument server pid {} frozen (no pong for {:.1f} s); killing it", proc.pid, silent)
                self._kill(proc)
            return client
        self._last_pong = time.monotonic()
        busy, limit = pong.get("busy_s"), pong.get("max_call_s")
        if isinstance(busy, int | float) and isinstance(limit, int | float) and busy > limit + self.hung_grace_s:
            logger.critical("instrument server pid {}: {} has been running {:.0f} s (limit {:g} s): a hung vendor "
                            "call; restarting the server", proc.pid, pong.get("busy_method"), busy, limit)
            self._kill(proc)
        return client

    def _kill(self, proc: Any) -> None:
        self.watchdog_kills += 1
        proc.kill()
        self._last_pong = time.monotonic()  # the next child gets its own watchdog_s

    def _handle_death(self, proc: Any) -> bool:
        """Reap a dead child and start the next one (with back-off); False ends the watch loop."""
        if self._stopping.is_set():
            return False
        logger.error("instrument server pid {} died with code {}", proc.pid, proc.returncode)
        with self._lock:
            _reap(proc, self._reader)
        while True:
            now = time.monotonic()
            while self._restart_times and now - self._restart_times[0] > self.window_s:
                self._restart_times.popleft()
            if len(self._restart_times) >= self.max_restarts:
                logger.critical(
                    "instrument server restarted {} times in {} s; giving up", len(self._restart_times), self.window_s
                )
                self.gave_up = True
                with self._lock:
                    self._proc = None
                return False
            if self._stopping.wait(self.backoff_s * (2 ** len(self._restart_times))):
                return False
            self._restart_times.append(time.monotonic())
            try:
                with self._lock:
                    self._spawn()
            except Exception as exc:  # counts against the restart budget; try again after back-off
                logger.error("restart failed: {}", exc)
                continue
            self.restarts += 1
            return True

    def wait_restarted(self, previous_pid: int, timeout_s: float = 20.0) -> int:
        """Block until a new child (pid != previous_pid) is ready; for tests and operators."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                proc = self._proc
            if isinstance(proc, subprocess.Popen) and proc.pid != previous_pid and proc.poll() is None:
                return proc.pid
            if self.gave_up:
                break
            time.sleep(0.05)
        raise InstrumentTimeout("instrument server was not restarted in time")

    def stop(self, timeout_s: float = 3.0) -> None:
        # Stop the child first, then the monitor: a watchdog ping in flight must not delay the shutdown, and
        # the monitor sees _stopping and does not restart what it finds dead.
        self._stopping.set()
        with self._lock:
            proc, self._proc = self._proc, None
        if isinstance(proc, subprocess.Popen):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
            _reap(proc, self._reader)
        if self._monitor is not None:
            self._monitor.join(timeout_s)

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pump(stream: IO[str], out: queue.Queue[str | None]) -> None:
    """Forward the child's stdout line by line (and keep draining it so the child never blocks on a pipe)."""
    try:
        for line in stream:
            out.put(line)
    except (ValueError, OSError):
        pass
    finally:
        out.put(None)


def _reap(proc: Any, reader: threading.Thread | None) -> None:
    if not isinstance(proc, subprocess.Popen):
        return
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if reader is not None:
        reader.join(2)
    if proc.stdout is not None:
        proc.stdout.close()
