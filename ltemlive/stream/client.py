"""The reconstructor side of the frame stream: a DEALER that asks for work and grants credit.

:class:`FrameStreamClient` is used from one thread (the reconstructor service's I/O thread). It says HELLO
with its window, returns START/FRAME/END items in order, drops duplicates by (series, index) (counted), and
grants one credit back per item the caller reports consumed. A RESET from the acquisition side (it dropped us
as silent, e.g. after a freeze) is handed to the caller as an item — whatever was half-received is void and
will be replayed — and answered with a new HELLO. A malformed message is counted and dropped.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq
from loguru import logger

from ltemlive import wire
from ltemlive.wire import frames as fm
from ltemlive.wire import security

__all__ = ["FrameStreamClient", "StreamItem"]


@dataclass
class StreamItem:
    kind: str  # "start" | "frame" | "end" | "reset"
    msg: wire.Envelope | None
    data: np.ndarray | None = None


class FrameStreamClient:
    def __init__(
        self,
        endpoint: str,
        worker: str,
        *,
        window: int = 4,
        context: zmq.Context | None = None,
        peer_timeout_s: float = 5.0,
        ping_s: float = 1.0,
        max_frame_bytes: int = 1 << 31,
    ) -> None:
        self.endpoint = endpoint
        self.worker = worker
        self.window = window
        self.ping_s = ping_s
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._liveness = wire.Liveness(peer_timeout_s)
        self._max_frame_bytes = max_frame_bytes
        self.stats: Counter[str] = Counter()
        self._seen: set[tuple[int, int]] = set()
        self._ended: set[int] = set()
        self._last_seq: int | None = None
        self._seq = 0
        self._last_ping = 0.0
        self._sock = self._socket()
        self._hello()

    def _socket(self) -> zmq.Socket:
        s = self._ctx.socket(zmq.DEALER)
        wire.configure(s, max_msg_bytes=self._max_frame_bytes, rcvhwm=max(2 * self.window, 8))
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        security.connect(s, "controller")
        s.connect(self.endpoint)
        return s

    def _send(self, msg: wire.Envelope) -> None:
        msg = msg.model_copy(update={"seq": self._seq})
        self._seq += 1
        try:
            self._sock.send_multipart(fm.UPSTREAM.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            self.stats["send_full"] += 1

    def _hello(self) -> None:
        self._seen.clear()
        self._ended.clear()
        self._last_seq = None
        self._send(fm.Hello(worker=self.worker, window=self.window))
        self._last_ping = time.monotonic()

    @property
    def alive(self) -> bool:
        """Heard from the acquisition side (any message, heartbeats included) within the timeout."""
        return self._liveness.silent_for("server") <= self._liveness.timeout_s

    def consumed(self, n: int = 1) -> None:
        """The caller has taken ``n`` items off its hands: grant that much credit back."""
        while n > 0:
            k = min(n, 64)
            self._send(fm.Credit(credit=k))
            n -= k
        self._last_ping = time.monotonic()

    def poll(self, timeout_s: float) -> list[StreamItem]:
        """Items that arrived within ``timeout_s`` (possibly none); pings the server when due."""
        now = time.monotonic()
        if now - self._last_ping >= self.ping_s:
            self._send(fm.Ping())
            self._last_ping = now
        items: list[StreamItem] = []
        if not self._sock.poll(int(max(timeout_s, 0) * 1000), zmq.POLLIN):
            return items
        for _ in range(256):
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            item = self._accept(frames)
            if item is not None:
                items.append(item)
        return items

    def _accept(self, frames: list[Any]) -> StreamItem | None:
        try:
            msg, arrays = fm.DOWNSTREAM.decode(frames)
        except wire.WireError as exc:
            self.stats["malformed"] += 1
            if self.stats["malformed"] <= 10 or self.stats["malformed"] % 1000 == 0:
                logger.warning("frame stream: malformed message dropped ({}): {}", self.stats["malformed"], exc)
            return None
        self._liveness.heard("server")
        if self._last_seq is not None and msg.seq > self._last_seq + 1:
            self.stats["gaps"] += 1
        self._last_seq = msg.seq
        if isinstance(msg, fm.Heartbeat):
            return None
        if isinstance(msg, fm.Reset):
            self.stats["resets"] += 1
            logger.warning("the acquisition side dropped this reconstructor; starting over (replay follows)")
            self._hello()
            return StreamItem("reset", msg)
        if isinstance(msg, fm.Start):
            if (msg.series, -1) in self._seen:
                return self._duplicate()
            self._seen.add((msg.series, -1))
            return StreamItem("start", msg)
        if isinstance(msg, fm.FrameMsg):
            if (msg.series, msg.index) in self._seen:
                return self._duplicate()
            self._seen.add((msg.series, msg.index))
            # No copy: the read-only view keeps the received zmq frame alive for as long as it is used (a copy
            # per frame cost a third of the stream's throughput at 2048^2, measured in bench/bench_service.py).
            data = arrays[0] if arrays[0].dtype == np.float32 else arrays[0].astype(np.float32)
            return StreamItem("frame", msg, data)
        if isinstance(msg, fm.End):
            if msg.series in self._ended:
                return self._duplicate()
            self._ended.add(msg.series)
            return StreamItem("end", msg)
        return None

    def _duplicate(self) -> None:
        self.stats["duplicates"] += 1
        self.consumed(1)  # it spent a credit; give it back
        return None

    def forget_series(self, series: int) -> None:
        """Drop the dedup state of a finished series (bounded memory on long runs)."""
        self._seen = {k for k in self._seen if k[0] != series}

    def close(self, say_bye: bool = True) -> None:
        if self._sock is None:
            return
        if say_bye:
            self._send(fm.Bye())
        self._sock.close(linger=0 if not say_bye else 200)
        self._sock = None  # type: ignore[assignment]
        if self._own_ctx:
            self._ctx.term()
