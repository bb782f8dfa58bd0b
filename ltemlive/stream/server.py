"""The acquisition side of the frame stream: a ROUTER that reconstructors connect to.

The acquisition thread calls :meth:`FrameStreamServer.begin_series`, :meth:`offer_frame` (after the frame is
on disk) and :meth:`end_series`; these only append to an in-memory log and wake the stream thread, so they
never wait for a reconstructor: an absent, frozen, slow or dead consumer changes nothing upstream.

The stream thread owns the socket. It assigns each series, whole, to one reconstructor (the oldest series
without a result first, at most ``max_series_per_worker`` at a time per worker: the one it computes and the
next one), and sends its START, FRAMEs and END in order while that worker holds credit. A worker that says
BYE, that the socket reports gone, or that stays silent for ``peer_timeout_s`` loses its series, which go —
replayed from their START, frames from the cache or else the run file — to the next worker that asks. A
series stays in the log until :meth:`series_done` (its result reached the controller). Messages from a peer
that has not said HELLO get a RESET; malformed ones are counted and dropped.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq
from loguru import logger

from ltemlive import wire
from ltemlive.wire import frames as fm
from ltemlive.wire import security

__all__ = ["FrameStreamServer"]


@dataclass
class _SeriesLog:
    start: fm.Start
    frames: list[fm.FrameMsg] = field(default_factory=list)
    end: fm.End | None = None
    worker: bytes | None = None
    done: bool = False
    sent_before: bool = False  # assigned at least once: a later assignment is a replay

    def available(self) -> int:
        """Items ready to send: START, the frames so far, END when it has come."""
        return 1 + len(self.frames) + (1 if self.end is not None else 0)

    def complete(self) -> bool:
        return self.end is not None


@dataclass
class _Worker:
    name: str
    credit: int
    seq: int = 0
    series: list[int] = field(default_factory=list)  # assigned, in order
    cursor: dict[int, int] = field(default_factory=dict)  # series -> next item to send


class _FrameCache:
    """Recently offered frames by id, bounded in bytes; misses are read back from the run file."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._d: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0

    def put(self, frame_id: int, data: np.ndarray) -> None:
        if frame_id in self._d:
            return
        self._d[frame_id] = data
        self._bytes += data.nbytes
        while self._bytes > self.max_bytes and len(self._d) > 1:
            _, old = self._d.popitem(last=False)
            self._bytes -= old.nbytes

    def get(self, frame_id: int) -> np.ndarray | None:
        a = self._d.get(frame_id)
        if a is not None:
            self._d.move_to_end(frame_id)
        return a

    def drop(self, frame_ids) -> None:
        for i in frame_ids:
            a = self._d.pop(i, None)
            if a is not None:
                self._bytes -= a.nbytes


class FrameStreamServer:
    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:*",
        *,
        read_frame: Callable[[int], np.ndarray] | None = None,
        session: str = "",
        context: zmq.Context | None = None,
        cache_bytes: int = 512 << 20,
        peer_timeout_s: float = 5.0,
        heartbeat_s: float = 1.0,
        max_series_per_worker: int = 2,
        sndhwm: int = 64,
    ) -> None:
        self._requested = endpoint
        self._read_frame = read_frame
        self.session = session
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._cache = _FrameCache(cache_bytes)
        self._liveness = wire.Liveness(peer_timeout_s)
        self.heartbeat_s = heartbeat_s
        self.max_series_per_worker = max_series_per_worker
        self._sndhwm = sndhwm
        self._lock = threading.Lock()
        self._log: OrderedDict[int, _SeriesLog] = OrderedDict()
        self._workers: dict[bytes, _Worker] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.stats: Counter[str] = Counter()
        self.endpoint: str | None = None
        self._sock: zmq.Socket | None = None
        self._bind()

    # -- life cycle ---------------------------------------------------------------------------------------
    def _bind(self) -> None:
        s = self._ctx.socket(zmq.ROUTER)
        # Upstream messages are tiny (HELLO, CREDIT): a peer sending anything big is not a reconstructor.
        wire.configure(s, max_msg_bytes=64 * 1024, sndhwm=self._sndhwm)
        security.serve(s)
        try:
            s.bind(self._requested)
            security.check_refuses_strangers(s)
        except (zmq.ZMQError, security.SecurityError):
            s.close(linger=0)
            raise
        self._sock = s
        self.endpoint = s.getsockopt_string(zmq.LAST_ENDPOINT)

    def start(self) -> FrameStreamServer:
        self._thread = threading.Thread(target=self._main, name="frame-stream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is not None and (self._thread is None or not self._thread.is_alive()):
            self._sock.close(linger=0)
            self._sock = None
        self._wake_r.close()
        self._wake_w.close()
        if self._own_ctx:
            security.release(self._ctx)
            self._ctx.term()

    def __enter__(self) -> FrameStreamServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already woken (buffer full) or closing

    # -- acquisition side (any thread; never blocks on the network) -----------------------------------------
    def begin_series(self, start: fm.Start) -> None:
        if start.series is None:
            raise ValueError("START needs a series index")
        with self._lock:
            if start.series in self._log:
                raise ValueError(f"series {start.series} already begun")
            self._log[start.series] = _SeriesLog(start=start)
        self._wake()

    def offer_frame(self, msg: fm.FrameMsg, data: np.ndarray) -> None:
        """Offer a frame that is already on disk. ``data`` is kept by reference (zero-copy): do not modify it."""
        with self._lock:
            log = self._log.get(msg.series) if msg.series is not None else None
            if log is None or log.end is not None:
                raise ValueError(f"frame for series {msg.series}, which is not open")
            if msg.index != len(log.frames):
                raise ValueError(f"frame index {msg.index} out of order (expected {len(log.frames)})")
            log.frames.append(msg)
            self._cache.put(msg.frame_id, data)
            self.stats["offered"] += 1
        self._wake()

    def end_series(self, series: int, status: str, reason: str = "") -> None:
        with self._lock:
            log = self._log.get(series)
            if log is None:
                raise ValueError(f"series {series} was never begun")
            if log.end is None:
                log.end = fm.End(
                    session=self.session, series=series, status=status, reason=reason, n_frames=len(log.frames)
                )
        self._wake()

    def series_done(self, series: int) -> bool:
        """Its result reached the controller: stop serving it. False if unknown or done already."""
        with self._lock:
            log = self._log.get(series)
            if log is None or log.done:
                return False
            log.done = True
            for w in self._workers.values():
                if series in w.series:
                    w.series.remove(series)
                    w.cursor.pop(series, None)
            self._cache.drop(f.frame_id for f in log.frames)
        self._wake()
        return True

    def pending(self) -> list[int]:
        """Series begun but without a result yet."""
        with self._lock:
            return [s for s, log in self._log.items() if not log.done]

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "endpoint": self.endpoint,
                "workers": {
                    w.name: {"credit": w.credit, "series": list(w.series), "silent_s": self._liveness.silent_for(i)}
                    for i, w in self._workers.items()
                },
                "pending_series": [s for s, log in self._log.items() if not log.done],
                "stats": dict(self.stats),
            }

    # -- stream thread --------------------------------------------------------------------------------------
    def _main(self) -> None:
        sock = self._sock
        assert sock is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        next_hb = time.monotonic() + self.heartbeat_s
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(int(self.heartbeat_s * 1000 / 2)))
                if self._wake_r.fileno() in events:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                if sock in events:
                    for _ in range(256):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(frames)
                now = time.monotonic()
                if now >= next_hb:
                    next_hb = now + self.heartbeat_s
                    self._heartbeat()
                    self._expire()
                self._pump()
        except Exception:
            logger.exception("frame stream thread failed")
            raise
        finally:
            sock.close(linger=0)
            self._sock = None

    def _handle(self, frames: list[Any]) -> None:
        identity = frames[0].bytes
        try:
            msg, _ = fm.UPSTREAM.decode(frames[1:])
        except wire.WireError as exc:
            self.stats["malformed"] += 1
            if self.stats["malformed"] <= 10 or self.stats["malformed"] % 1000 == 0:
                logger.warning("frame stream: malformed message dropped ({} so far): {}", self.stats["malformed"], exc)
            return
        if not security.allowed(frames[1], ("reconstructor",)):
            self.stats["denied"] += 1  # a key that is not a reconstructor's: frames are not for it
            if self.stats["denied"] <= 10 or self.stats["denied"] % 1000 == 0:
                who = security.sender_of(frames[1])
                logger.warning("frame stream: {} from key {} refused", type(msg).__name__,
                               f"{who.name} ({who.role})" if who else "unknown")
            return
        with self._lock:
            self._liveness.heard(identity)
            if isinstance(msg, fm.Hello):
                if identity in self._workers:
                    self._release(identity, "said HELLO again")
                self._workers[identity] = _Worker(name=msg.worker, credit=msg.window)
                self.stats["hellos"] += 1
                logger.info("reconstructor {} connected (window {})", msg.worker, msg.window)
                return
            worker = self._workers.get(identity)
            if worker is None:
                # A peer we dropped (frozen, then thawed) or never met: it must start over.
                self._liveness.forget(identity)
                self.stats["resets"] += 1
                self._send(identity, None, fm.Reset(session=self.session))
                return
            if isinstance(msg, fm.Credit):
                worker.credit = min(worker.credit + msg.credit, 64)
            elif isinstance(msg, fm.Bye):
                self._release(identity, "said BYE")
                del self._workers[identity]
                self._liveness.forget(identity)

    def _release(self, identity: bytes, why: str) -> None:
        """Give the worker's unfinished series back to the pool (lock held)."""
        w = self._workers.get(identity)
        if w is None:
            return
        for s in w.series:
            log = self._log.get(s)
            if log is not None and log.worker == identity:
                log.worker = None
                self.stats["series_released"] += 1
        if w.series:
            logger.warning("reconstructor {} {}; series {} will be replayed", w.name, why, w.series)
        w.series.clear()
        w.cursor.clear()

    def _expire(self) -> None:
        with self._lock:
            for identity in self._liveness.expired():
                w = self._workers.get(identity)
                self._liveness.forget(identity)
                if w is None:
                    continue
                self._release(identity, f"silent for over {self._liveness.timeout_s:g} s")
                del self._workers[identity]
                self.stats["workers_expired"] += 1

    def _heartbeat(self) -> None:
        with self._lock:
            for identity in list(self._workers):
                self._send(identity, self._workers.get(identity), fm.Heartbeat(session=self.session))

    def _send(self, identity: bytes, worker: _Worker | None, msg: wire.Envelope, arrays=()) -> bool:
        assert self._sock is not None
        if worker is not None:
            msg = msg.model_copy(update={"seq": worker.seq})
        try:
            self._sock.send_multipart([identity, *fm.DOWNSTREAM.encode(msg, arrays)], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.stats["send_full"] += 1
            return False
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone
            self.stats["send_unroutable"] += 1
            if worker is not None:
                logger.warning("reconstructor {} unreachable: {}", worker.name, exc)
                self._release(identity, "became unreachable")
                self._workers.pop(identity, None)
                self._liveness.forget(identity)
            return False
        if worker is not None:
            worker.seq += 1
        return True

    def _assign(self, identity: bytes, w: _Worker) -> None:
        while len(w.series) < self.max_series_per_worker:
            nxt = next((s for s, log in self._log.items() if not log.done and log.worker is None), None)
            if nxt is None:
                return
            log = self._log[nxt]
            log.worker = identity
            if log.sent_before:
                self.stats["series_replayed"] += 1
                logger.info("series {} replayed to {}", nxt, w.name)
            log.sent_before = True
            w.series.append(nxt)
            w.cursor[nxt] = 0

    def _item(self, log: _SeriesLog, k: int) -> tuple[wire.Envelope, list[np.ndarray]] | None:
        if k == 0:
            return log.start, []
        if k <= len(log.frames):
            msg = log.frames[k - 1]
            data = self._cache.get(msg.frame_id)
            if data is None:
                if self._read_frame is None:
                    logger.error("frame {} is not cached and there is no run file to read it from", msg.frame_id)
                    return None
                data = np.ascontiguousarray(self._read_frame(msg.frame_id), dtype=np.float32)
                self.stats["read_back"] += 1
            return msg, [data]
        return log.end, []

    def _pump(self) -> None:
        with self._lock:
            for identity, w in list(self._workers.items()):
                if w.credit <= 0:
                    continue
                self._assign(identity, w)
                for s in list(w.series):
                    log = self._log[s]
                    while w.credit > 0 and w.cursor[s] < log.available():
                        item = self._item(log, w.cursor[s])
                        if item is None:
                            break
                        msg, arrays = item
                        if not self._send(identity, w, msg, arrays):
                            return
                        if isinstance(msg, fm.FrameMsg):
                            self.stats["frames_sent"] += 1
                            self.stats["bytes_sent"] += sum(a.nbytes for a in arrays)
                        w.cursor[s] += 1
                        w.credit -= 1
                    if identity not in self._workers or w.cursor.get(s, 0) < log.available() or not log.complete():
                        break  # keep the order: the next series only after this one's END
