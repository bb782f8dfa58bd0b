"""Instrument server: one backend, one owning thread, served over ZeroMQ.

Threads (see docs/adr/0002-one-owning-thread-server.md):

* the **owner thread** creates the backend and is the only thread that ever calls it (vendor COM objects are
  apartment-threaded; a call from another thread fails or, worse, deadlocks). It takes jobs from a bounded
  queue and hands replies back over an ``inproc`` PAIR socket;
* the **I/O thread** owns the ROUTER socket: it validates every request, NACKs malformed ones (counted, never
  fatal), answers ``ping`` itself - so a client can tell "server alive, backend busy" from "server dead" -
  and forwards replies. A backend exception becomes an error reply; the server keeps running.

Run as a process: ``python -m drivers.server --config config/instrument-sim.yaml --endpoint tcp://127.0.0.1:7001``
(prints ``READY <endpoint>`` on stdout once bound and the backend is up); supervised by
:class:`drivers.supervisor.Supervisor`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import zmq
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field

from drivers import memguard
from drivers.errors import (
    InstrumentError,
    InstrumentTimeout,
    LimitViolation,
    NotAvailable,
    PermissionDenied,
    ProtocolError,
)
from drivers.interface import Camera, Frame, Microscope
from drivers.protocol import (
    ACTING_METHODS,
    ID_PATTERN,
    PROTOCOL_ID,
    AcquireArgs,
    MoveStageArgs,
    Reply,
    Request,
    SetBeamBlankedArgs,
    SetDefocusArgs,
    SetFaultsArgs,
    SetLensModeArgs,
    decode_header,
    encode_array,
    encode_header,
    error_info,
)
from ltemlive.wire import security

__all__ = ["Backend", "InstrumentServer", "ServerConfig", "main"]

#: Requests are small JSON headers; a peer sending a larger frame is disconnected by libzmq.
MAX_REQUEST_BYTES = 64 * 1024
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
#: roles whose keys may make requests that act on the instrument, and those that may read it (with CURVE on)
ACTING_ROLES = ("acquisition",)
READING_ROLES = ("acquisition", "operator", "monitor", "reconstructor", "server")
#: request ids remembered for idempotent retries (a repeated id gets the first reply, never a second execution)
RECENT_IDS = 256


class ServerConfig(BaseModel):
    """The ``server`` section of an instrument config: what any one request may ask of the owner thread.

    The instrument has one owning thread, so a single request that settles for ten minutes blocks every other
    client: settle and call times are capped here, on the server, whatever the client asks.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str | None = Field(None, description="bind address (tcp://127.0.0.1:7001); the CLI's --endpoint wins")
    max_settle_s: Annotated[float, Field(ge=0, le=600, allow_inf_nan=False)] = Field(
        10.0, description="largest SettleSpec.settle_s a request may ask for (s)")
    max_settle_timeout_s: Annotated[float, Field(gt=0, le=600, allow_inf_nan=False)] = Field(
        30.0, description="largest SettleSpec.timeout_s (s)")
    max_call_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = Field(
        120.0, description="largest budget of one request, and of a camera exposure's timeout (s)")
    max_start_window_s: Annotated[float, Field(gt=0, le=600, allow_inf_nan=False)] = Field(
        60.0, description="a request's start_by_s may lie at most this far in the server's future (s)")
    keys_dir: str | None = Field(
        None, description="CURVE keyring folder (ltemlive keys): only its keys get in; needed to bind beyond "
        "loopback. Acting requests need a key of role acquisition, reads any key")
    key: str = Field("instrument", description="this server's own key in keys_dir")
    max_rss_mb: Annotated[float, Field(ge=64, le=1e6, allow_inf_nan=False)] = Field(
        2048.0, description="resident-memory bound (MB): above it the server trims its heap and, if still over, "
        "re-binds its socket, dropping every connection and the oversized messages they carry (drivers/memguard.py)")


@dataclass
class Backend:
    """What a server serves: a microscope/camera pair plus optional simulator hooks."""

    microscope: Microscope
    camera: Camera
    set_faults: Callable[[dict[str, Any]], None] | None = None
    extra_info: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        for part in (self.camera, self.microscope):
            try:
                part.close()
            except Exception:
                logger.exception("error while closing {}", part)


@dataclass
class _Job:
    identity: bytes
    request: Request
    args: BaseModel
    received: float  # monotonic


def _caps(caps: frozenset) -> list[str]:
    return sorted(c.value for c in caps)


class InstrumentServer:
    """Serve one backend. ``start()`` runs the I/O loop in a background thread (tests, embedding);
    ``run()`` runs it in the calling thread (the server process)."""

    def __init__(
        self,
        backend_factory: Callable[[], Backend],
        endpoint: str = "tcp://127.0.0.1:*",
        *,
        max_queue: int = 8,
        startup_timeout_s: float = 60.0,
        config: ServerConfig | None = None,
    ) -> None:
        self.config = config if config is not None else ServerConfig()
        self._factory = backend_factory
        self._requested_endpoint = endpoint
        self.endpoint: str | None = None
        self.server_id = uuid.uuid4().hex[:12]
        self._max_queue = max_queue
        self._startup_timeout_s = startup_timeout_s
        self._ctx = zmq.Context()
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._init_error: BaseException | None = None
        self._inproc = f"inproc://replies-{self.server_id}"
        self._router: zmq.Socket | None = None
        self._replies: zmq.Socket | None = None
        self._owner: threading.Thread | None = None
        self._io: threading.Thread | None = None
        self._started = time.monotonic()
        self._busy_since: float | None = None
        self._busy_method: str | None = None
        #: Counters, readable by tests and reported by ping: malformed, served, errors, expired, busy, dropped.
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()  # both threads count; ping copies
        self._backend_info: dict[str, Any] = {}
        #: request id -> its reply frames (None while queued or running): a retried id is never run twice
        self._recent: OrderedDict[str, list[Any] | None] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._warn = _RateLimited()

    # -- life cycle -------------------------------------------------------------------------------------
    def _bind(self) -> None:
        self._router = self._bind_router(self._requested_endpoint)
        self.endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        replies = self._ctx.socket(zmq.PAIR)
        replies.setsockopt(zmq.LINGER, 0)
        replies.bind(self._inproc)
        self._replies = replies

    def _bind_router(self, endpoint: str) -> zmq.Socket:
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        router.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        router.setsockopt(zmq.SNDHWM, 64)
        router.setsockopt(zmq.RCVHWM, 4 * self._max_queue)  # complete requests waiting; more wait in TCP
        security.serve(router)
        try:
            router.bind(endpoint)
            security.check_refuses_strangers(router)
        except (zmq.ZMQError, security.SecurityError):
            router.close()
            raise
        return router

    def _guard_memory(self, poller: zmq.Poller) -> None:
        """Hold the server under config.max_rss_mb (see drivers/memguard.py for why a socket option cannot)."""
        rss = memguard.rss_mb()
        if rss is None or rss <= self.config.max_rss_mb:
            return
        memguard.trim()
        after = memguard.rss_mb() or 0.0
        if after <= self.config.max_rss_mb:
            return
        self._count("memory_guard")
        assert self._router is not None and self.endpoint is not None
        poller.unregister(self._router)
        self._router.close(linger=0)
        self._router = None
        deadline = time.monotonic() + 5.0
        while True:  # libzmq releases the port in its own I/O thread, a moment after close()
            try:
                self._router = self._bind_router(self.endpoint)
                break
            except zmq.ZMQError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        poller.register(self._router, zmq.POLLIN)
        memguard.trim()
        logger.critical("instrument server at {:.0f} MB, over its bound of {:.0f} MB after trimming ({:.0f} MB): "
                        "a peer is sending an oversized message; every connection dropped, now {:.0f} MB",
                        rss, self.config.max_rss_mb, after, memguard.rss_mb() or float("nan"))

    def _open(self) -> None:
        """Bind, then create the backend in the owner thread and wait for it (or its failure)."""
        self._bind()
        self._owner = threading.Thread(target=self._owner_main, name="instrument-owner", daemon=True)
        self._owner.start()
        if not self._ready.wait(self._startup_timeout_s):
            self._stop.set()
            self._close_io_sockets()
            security.release(self._ctx)
            self._ctx.destroy(linger=0)  # the owner thread may still be stuck in the vendor constructor
            raise InstrumentTimeout(f"backend did not start within {self._startup_timeout_s} s")
        if self._init_error is not None:
            self._stop.set()
            self._owner.join(5)
            self._close_io_sockets()
            security.release(self._ctx)
            self._ctx.term()
            raise self._init_error

    def start(self) -> InstrumentServer:
        self._open()
        self._io = threading.Thread(target=self._io_main, name="instrument-io", daemon=True)
        self._io.start()
        return self

    def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve in the calling thread until :meth:`request_stop` (e.g. from a signal handler).

        ``on_ready(endpoint)`` is called once bound with the backend up; start-up errors propagate.
        """
        self._open()
        if on_ready is not None:
            assert self.endpoint is not None
            on_ready(self.endpoint)
        self._io_main()
        self._join_and_term()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._io is not None:
            self._io.join(5)
        self._join_and_term()

    def _join_and_term(self) -> None:
        if self._ctx.closed:
            return
        security.release(self._ctx)
        if self._owner is not None:
            self._owner.join(5)
            if self._owner.is_alive():
                # A vendor call that never returns cannot be interrupted; do not wait for it forever.
                logger.error("backend owner thread still busy at shutdown; abandoning it")
                security.release(self._ctx)
                self._ctx.destroy(linger=0)
                return
        self._ctx.term()

    def __enter__(self) -> InstrumentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close_io_sockets(self) -> None:
        for s in (self._router, self._replies):
            if s is not None:
                s.close(linger=0)
        self._router = self._replies = None

    def _stats_snapshot(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self.stats)

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    # -- owner thread -----------------------------------------------------------------------------------
    def _owner_main(self) -> None:
        try:
            backend = self._factory()
            self._backend_info = {
                "instrument_id": backend.microscope.instrument_id,
                "microscope_capabilities": _caps(backend.microscope.capabilities()),
                "camera_capabilities": _caps(backend.camera.capabilities()),
                "camera_info": backend.camera.info().model_dump(mode="json"),
                "simulated": backend.set_faults is not None,
                **backend.extra_info,
            }
        except BaseException as exc:
            # One line for the operator (the caller prints FAILED with it); the traceback only at DEBUG.
            logger.error("backend failed to start: {}: {}", type(exc).__name__, exc)
            logger.opt(exception=exc).debug("backend start-up traceback")
            self._init_error = exc
            self._ready.set()
            return
        out = self._ctx.socket(zmq.PAIR)
        out.setsockopt(zmq.LINGER, 0)
        out.connect(self._inproc)
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    job = self._jobs.get(timeout=0.1)
                except queue.Empty:
                    continue
                frames = self._execute(backend, job)
                out.send_multipart(frames, copy=False)
        finally:
            backend.close()
            out.close(linger=0)

    def _execute(self, backend: Backend, job: _Job) -> list[Any]:
        frames = self._execute_once(backend, job)
        with self._recent_lock:
            if job.request.id in self._recent:
                self._recent[job.request.id] = frames
        return frames

    def _execute_once(self, backend: Backend, job: _Job) -> list[Any]:
        req = job.request
        now = time.monotonic()
        waited = now - job.received
        late = req.start_by_s is not None and now > req.start_by_s
        if waited >= req.timeout_s or late:
            # The client has given up (or will have by the time this could act): a stale command - a defocus
            # change, an exposure - carried out now is what its caller was told did not happen.
            self._count("expired")
            why = (f"its start-by time passed {now - req.start_by_s:.2f} s ago" if late
                   else f"it waited {waited:.2f} s in the queue")
            logger.warning("{} {} dropped unexecuted: {}", req.method, req.id, why)
            reply = Reply(
                id=req.id, ok=False,
                error=error_info(InstrumentTimeout(f"{req.method}: request expired ({why}); not executed")),
            )
            return [job.identity, PROTOCOL_ID, encode_header(reply)]
        self._busy_method, self._busy_since = req.method, time.monotonic()
        try:
            result, arrays = self._dispatch(backend, req.method, job.args)
            headers, buffers = [], []
            for a in arrays:
                h, buf = encode_array(a)
                headers.append(h)
                buffers.append(buf)
            reply = Reply(id=req.id, ok=True, result=result, arrays=headers)
            self._count("served")
            return [job.identity, PROTOCOL_ID, encode_header(reply), *buffers]
        except Exception as exc:
            # Reported, not fatal: the server and the owner thread carry on.
            self._count("errors")
            level = "WARNING" if isinstance(exc, InstrumentError) else "ERROR"
            logger.log(level, "{} failed: {}: {}", req.method, type(exc).__name__, exc)
            reply = Reply(id=req.id, ok=False, error=error_info(exc))
            return [job.identity, PROTOCOL_ID, encode_header(reply)]
        finally:
            self._busy_method = self._busy_since = None

    def _dispatch(self, b: Backend, method: str, args: Any) -> tuple[Any, list[Any]]:
        m, c = b.microscope, b.camera
        if method == "hello":
            return {**self._backend_info, "server_id": self.server_id, "pid": os.getpid()}, []
        if method == "microscope.capabilities":
            return _caps(m.capabilities()), []
        if method == "microscope.get_defocus":
            return m.get_defocus(), []
        if method == "microscope.set_defocus":
            assert isinstance(args, SetDefocusArgs)
            return m.set_defocus(args.defocus_m, args.settle), []
        if method == "microscope.get_lens_mode":
            return m.get_lens_mode().value, []
        if method == "microscope.set_lens_mode":
            assert isinstance(args, SetLensModeArgs)
            return m.set_lens_mode(args.mode).value, []
        if method == "microscope.get_magnification":
            return m.get_magnification(), []
        if method == "microscope.get_pixel_size":
            return m.get_pixel_size(), []
        if method == "microscope.get_stage":
            return m.get_stage().model_dump(mode="json"), []
        if method == "microscope.move_stage":
            assert isinstance(args, MoveStageArgs)
            return m.move_stage(args.target, args.settle).model_dump(mode="json"), []
        if method == "microscope.get_beam_blanked":
            return m.get_beam_blanked(), []
        if method == "microscope.set_beam_blanked":
            assert isinstance(args, SetBeamBlankedArgs)
            return m.set_beam_blanked(args.blanked), []
        if method == "microscope.optics_state":
            return m.optics_state().model_dump(mode="json"), []
        if method == "camera.capabilities":
            return _caps(c.capabilities()), []
        if method == "camera.info":
            return c.info().model_dump(mode="json"), []
        if method == "camera.acquire":
            assert isinstance(args, AcquireArgs)
            frame: Frame = c.acquire(args.exposure_s, args.binning, args.roi, args.timeout_s)
            return frame.metadata.model_dump(mode="json"), [frame.data]
        if method == "sim.set_faults":
            assert isinstance(args, SetFaultsArgs)
            if b.set_faults is None:
                raise NotAvailable("this backend has no fault injection (not a simulator)")
            b.set_faults(args.faults)
            return None, []
        raise NotAvailable(f"method {method} not served")  # unreachable: Request validates the name

    # -- I/O thread ---------------------------------------------------------------------------------------
    def _io_main(self) -> None:
        router, replies = self._router, self._replies
        assert router is not None and replies is not None
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(replies, zmq.POLLIN)
        next_guard = 0.0
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(50))
                if time.monotonic() >= next_guard:
                    self._guard_memory(poller)
                    router, next_guard = self._router, time.monotonic() + 0.05
                    assert router is not None
                if replies in events:
                    for _ in range(64):
                        try:
                            frames = replies.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._send(frames)
                if router in events:
                    for _ in range(64):
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        try:
                            self._handle(frames)
                        except Exception:  # never let one message kill the loop
                            self._count("malformed")
                            logger.exception("unexpected error handling a request")
        finally:
            self._close_io_sockets()

    def _send(self, frames: list[Any]) -> None:
        assert self._router is not None
        try:
            self._router.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._count("dropped")
            logger.warning("client not reading; reply dropped")
        except zmq.ZMQError as exc:  # EHOSTUNREACH with ROUTER_MANDATORY: the client went away
            self._count("dropped")
            logger.warning("reply to a vanished client dropped: {}", exc)

    def _nack(self, identity: bytes, req_id: str, exc: InstrumentError) -> None:
        reply = Reply(id=req_id, ok=False, error=error_info(exc))
        self._send([identity, PROTOCOL_ID, encode_header(reply)])

    def _handle(self, frames: list[Any]) -> None:
        identity = frames[0].bytes
        req_id = ""
        try:
            if len(frames) != 3 or frames[1].bytes != PROTOCOL_ID:
                raise ProtocolError(f"expected 2 frames [{PROTOCOL_ID.decode()}, header], got {len(frames) - 1}")
            raw = frames[2].bytes
            req_id = _salvage_id(raw)
            req: Request = decode_header(raw, Request)
            try:
                args = req.parsed_args()
            except Exception as exc:
                raise ProtocolError(f"invalid arguments for {req.method}: {str(exc)[:500]}") from None
            self._check_request(req, args)
        except ProtocolError as exc:
            self._count("malformed")
            self._warn.warning("malformed", "malformed request NACKed ({} so far): {}",
                               self.stats["malformed"], str(exc)[:200])
            self._nack(identity, req_id, exc)
            return
        except LimitViolation as exc:
            self._count("refused")
            logger.warning("{} {} refused: {}", req.method, req.id, exc)
            self._nack(identity, req.id, exc)
            return
        if not security.allowed(frames[2], ACTING_ROLES if req.method in ACTING_METHODS else READING_ROLES):
            self._count("denied")
            who = security.sender_of(frames[2])
            logger.warning("{} {} refused: key {} may not", req.method, req.id,
                           f"{who.name} ({who.role})" if who else "unknown")
            self._nack(identity, req.id, PermissionDenied(
                f"{req.method}: not allowed for this key's role (acting needs {', '.join(ACTING_ROLES)})"))
            return
        if req.method in ACTING_METHODS:  # the audit trail: which key asked for what
            who = security.sender_of(frames[2])
            logger.info("{} {} from {}", req.method, req.id, f"key {who.name}" if who else "loopback (no keys)")
        if req.method == "ping":
            now = time.monotonic()
            result = {
                "server_id": self.server_id,
                "pid": os.getpid(),
                "uptime_s": now - self._started,
                # the server's monotonic clock: clients bound their offset to it and send start_by_s in it
                "mono_s": now,
                "busy_method": self._busy_method,
                "busy_s": None if self._busy_since is None else now - self._busy_since,
                "max_call_s": self.config.max_call_s,
                "queued": self._jobs.qsize(),
                "rss_mb": memguard.rss_mb(),
                "stats": self._stats_snapshot(),
            }
            self._send([identity, PROTOCOL_ID, encode_header(Reply(id=req.id, ok=True, result=result))])
            return
        with self._recent_lock:
            if req.id in self._recent:  # a retry: the first reply again, or "in progress"; never a second run
                self._count("duplicates")
                done = self._recent[req.id]
                if done is None:
                    self._nack(identity, req.id, NotAvailable(f"{req.method}: request {req.id} is already in "
                                                              "progress; its reply will come"))
                else:
                    self._send([identity, *done[1:]])
                return
        if self._jobs.qsize() >= self._max_queue:
            self._count("busy")
            self._nack(identity, req.id, NotAvailable(f"server busy: {self._jobs.qsize()} requests queued"))
            return
        with self._recent_lock:
            self._recent[req.id] = None
            while len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)
        self._jobs.put(_Job(identity, req, args, time.monotonic()))

    def _check_request(self, req: Request, args: BaseModel) -> None:
        """What the server's own config allows any request, before it is queued (see ServerConfig)."""
        cfg = self.config
        if req.method in ACTING_METHODS:
            if req.start_by_s is None:
                raise ProtocolError(f"{req.method} changes the instrument: the request needs start_by_s")
            ahead = req.start_by_s - time.monotonic()
            if ahead > cfg.max_start_window_s:
                raise ProtocolError(f"start_by_s lies {ahead:.1f} s ahead; at most {cfg.max_start_window_s:g} s "
                                    "(is the client's clock offset from a pong of this server?)")
        settle = getattr(args, "settle", None)
        if settle is not None:
            if settle.settle_s > cfg.max_settle_s:
                raise LimitViolation(f"{req.method}: settle_s {settle.settle_s:g} s exceeds this server's limit "
                                     f"of {cfg.max_settle_s:g} s (server.max_settle_s)")
            if settle.timeout_s > cfg.max_settle_timeout_s:
                raise LimitViolation(f"{req.method}: settle timeout_s {settle.timeout_s:g} s exceeds this "
                                     f"server's limit of {cfg.max_settle_timeout_s:g} s (server.max_settle_timeout_s)")
        if req.timeout_s > cfg.max_call_s:  # after the settle checks: those name what to change
            raise LimitViolation(f"{req.method}: timeout_s {req.timeout_s:g} s exceeds this server's limit of "
                                 f"{cfg.max_call_s:g} s (server.max_call_s)")
        camera_timeout = getattr(args, "timeout_s", None)
        if isinstance(args, AcquireArgs) and camera_timeout is not None and camera_timeout > cfg.max_call_s:
            raise LimitViolation(f"camera.acquire: timeout_s {camera_timeout:g} s exceeds this server's limit of "
                                 f"{cfg.max_call_s:g} s (server.max_call_s)")


class _RateLimited:
    """At most one warning per key every ``interval_s``; the next says how many were suppressed (a flood of
    malformed requests must not flood the log)."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, key: str, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self.interval_s:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        logger.opt(depth=1).warning(fmt + (f" ({n} similar suppressed)" if n else ""), *args)


def _salvage_id(raw: bytes) -> str:
    """The request id of a malformed header, if one can be read safely, so the NACK reaches its caller."""
    try:
        obj = json.loads(raw[:4096].decode("utf-8"))
        rid = obj.get("id") if isinstance(obj, dict) else None
        if isinstance(rid, str) and ID_PATTERN.match(rid):
            return rid
    except Exception:
        pass
    return ""


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    import yaml

    text = Path(path).read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m drivers.server`` (and of ``ltemlive instrument-server``)."""
    parser = argparse.ArgumentParser(prog="instrument-server", description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="instrument YAML/JSON config file (backend, limits, ...); - reads stdin")
    src.add_argument("--config-json", help="instrument config as a JSON string")
    parser.add_argument("--endpoint", default=None, help="bind address (default from config, else tcp://127.0.0.1:*)")
    parser.add_argument("--log-level", default="INFO")
    ns = parser.parse_args(argv)

    logger.remove()
    # diagnose=False: a traceback in a log must not dump variable values (configs, buffers)
    log_format = "{time:HH:mm:ss.SSS} {level: <7} {message}"
    logger.add(sys.stderr, level=ns.log_level.upper(), format=log_format, diagnose=False)
    from drivers.factory import build_backend, check_config

    source = ns.config or "--config-json"
    try:
        if ns.config == "-":  # the supervisor's way: a config (perhaps with secrets) never on a command line
            config = json.loads(sys.stdin.readline())
        elif ns.config:
            config = load_config(ns.config)
        else:
            config = json.loads(ns.config_json)
        check_config(config)
    except FileNotFoundError:
        print(f"error: {source}: no such config file", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # yaml.YAMLError and json.JSONDecodeError are ValueErrors here
        print(f"error: {source}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except Exception as exc:  # a YAML parser error is not a ValueError
        print(f"error: {source}: not a valid config: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    server_cfg = ServerConfig.model_validate(config.get("server") or {})
    endpoint = ns.endpoint or server_cfg.endpoint or "tcp://127.0.0.1:*"
    try:
        if server_cfg.keys_dir:
            security.configure(server_cfg.keys_dir, server_cfg.key)
        elif not security.loopback_only(endpoint):
            raise security.SecurityError(
                f"binding {endpoint} beyond loopback needs CURVE keys: server.keys_dir (ltemlive keys create "
                f"{server_cfg.key} --role server), or bind tcp://127.0.0.1"
            )
    except security.SecurityError as exc:
        print(f"error: {source}: {exc}", file=sys.stderr)
        return 2
    server = InstrumentServer(lambda: build_backend(config), endpoint, config=server_cfg)

    def _on_signal(signum: int, _frame: object) -> None:
        logger.info("signal {} received, stopping", signum)
        server.request_stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    def ready(endpoint: str) -> None:
        # The supervisor waits for this line; keep its format stable.
        print(f"READY {endpoint}", flush=True)
        logger.info("instrument server {} serving on {}", server.server_id, endpoint)

    try:
        server.run(on_ready=ready)
    except Exception as exc:
        print(f"FAILED {type(exc).__name__}: {exc}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
