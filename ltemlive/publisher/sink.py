"""EventSink: how a source (the controller, the reconstructor service) hands events to the publisher.

A PUSH socket connected to the publisher's ingest address. :meth:`EventSink.emit` never blocks: it sends with
``zmq.NOBLOCK`` and returns ``False`` (counting ``dropped``) when the queue is full - the publisher is slow,
gone or not started yet (up to ``hwm`` events wait for it and go out once it is there). Events are
advisory: losing one must never matter to the acquisition.

Not thread-safe (a ZeroMQ socket belongs to one thread): use one sink per thread, e.g. one in the acquisition
loop and another in the feedback thread, with the same ``source`` name if you like.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq
from loguru import logger

from ltemlive import wire
from ltemlive.publisher.publisher import RateLimitedLog
from ltemlive.wire import security
from ltemlive.wire.updates import INGEST, TOPICS, Event

__all__ = ["EventSink", "downsample"]


def downsample(a: np.ndarray, max_px: int = 256) -> np.ndarray:
    """A preview of a 2-D image no larger than ``max_px`` per side: block means by an integer factor
    (the edges that do not fill a block are cut off), as float32, NaN/inf replaced by 0."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {a.shape}")
    factor = max(1, -(-max(a.shape) // int(max_px)))  # ceil division
    out = a.astype(np.float32, copy=False)
    if factor > 1:
        h, w = (a.shape[0] // factor) * factor, (a.shape[1] // factor) * factor
        out = out[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3), dtype=np.float64)
        out = out.astype(np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


class EventSink:
    """Send events to the publisher's ingest socket without ever blocking. One sink per thread.

    ``emit`` returns True when the event was queued, False when it was dropped: queue full or publisher not
    there (``dropped``), or a payload/array that cannot go on the wire (``errors``, logged, rate-limited).
    A topic that does not exist (or ``"hb"``, which is the publisher's) is a programming error: ValueError.
    Arrays are copied at ``emit``: the caller may reuse its buffers at once.
    """

    def __init__(
        self,
        endpoint: str,
        source: str,
        session: str = "",
        *,
        context: zmq.Context | None = None,
        hwm: int = 16,
    ):
        # Validates source (<= 64 chars) and session (ID pattern) once, here, not at every emit.
        try:
            Event(topic="status", source=source, session=session)
        except ValueError as exc:
            raise ValueError(f"invalid sink source/session: {exc}") from None
        self.endpoint = endpoint
        self.source = source
        self.session = session
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self._seq = 0
        self._warn = RateLimitedLog()
        ctx = context if context is not None else zmq.Context.instance()
        self._sock: zmq.Socket | None = ctx.socket(zmq.PUSH)
        try:
            wire.configure(self._sock, sndhwm=hwm)
            security.connect(self._sock, "publisher")
            self._sock.connect(endpoint)
        except BaseException:
            self._sock.close(linger=0)
            self._sock = None
            raise

    @property
    def closed(self) -> bool:
        return self._sock is None

    def emit(
        self, topic: str, payload: dict[str, Any] | None = None, arrays: Sequence[np.ndarray] = (),
        series: int | None = None,
    ) -> bool:
        """Queue one event; never blocks. True if queued, False if dropped (see the class docstring)."""
        if topic not in TOPICS or topic == "hb":
            raise ValueError(f"unknown topic {topic!r}; topics are {[t for t in TOPICS if t != 'hb']}")
        if self._sock is None:
            self.dropped += 1
            return False
        self._seq += 1
        try:
            safe = wire.json_safe(dict(payload or {}))
            if series is None and isinstance(safe.get("series"), int) and safe["series"] >= 0:
                series = safe["series"]
            msg = Event(topic=topic, source=self.source, session=self.session, seq=self._seq, series=series,
                        payload=safe)
            frames = INGEST.encode(msg, arrays)
            if len(frames[1]) > wire.MAX_HEADER_BYTES:
                raise ValueError(f"header of {len(frames[1])} bytes exceeds {wire.MAX_HEADER_BYTES}")
        except (ValueError, TypeError) as exc:  # pydantic's errors are ValueErrors
            self.errors += 1
            self._warn.warning("encode", "sink {}: {} event not sent: {}", self.source, topic, str(exc)[:300])
            return False
        try:
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:
            self.dropped += 1
            return False
        except zmq.ZMQError as exc:
            self.dropped += 1
            self._warn.warning("send", "sink {}: send failed: {}", self.source, exc)
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        """Close the socket (what is still queued is dropped). Idempotent."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
            logger.debug(
                "sink {} closed: sent {}, dropped {}, errors {}", self.source, self.sent, self.dropped, self.errors
            )

    def __enter__(self) -> EventSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
