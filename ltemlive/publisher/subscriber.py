"""Subscriber: the client side of the update stream (zguide "Clone"), for ``ltemlive run`` and monitors.

1. subscribe (SUB) first, then request a snapshot (DEALER to the snapshot ROUTER) and, while it comes, leave
   the updates queued in the SUB socket;
2. the snapshot (latest event per topic, last log events, then ``SnapshotEnd(last_seq=L)``) becomes
   :attr:`Subscriber.state`; queued updates with ``seq <= L`` are skipped, later ones applied;
3. a gap - a seq jump on the full stream, a heartbeat announcing a seq (or a topic's latest seq) this
   subscriber has not seen, or a new publisher instance - triggers a new snapshot (counted in ``gaps``, or
   ``restarts``); a snapshot that does not complete within ``snapshot_timeout_s`` is requested again on a
   fresh socket (``snapshot_retries``);
4. :attr:`Subscriber.alive` is False once nothing has been heard for 3 heartbeat intervals (the interval is
   learnt from the heartbeats themselves).

Everything happens inside :meth:`Subscriber.poll`, which waits at most ``timeout_s``; nothing blocks longer.
Not thread-safe: use it from one thread.

A watcher that knows only the publisher's snapshot address (what ``ltemlive run`` prints) uses
:meth:`Subscriber.at`, which asks the publisher where its update stream is (``InfoReq``) first;
:func:`fetch_result` gets a finished reconstruction at full resolution.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

import numpy as np
import zmq

from ltemlive import wire
from ltemlive.publisher.publisher import RateLimitedLog
from ltemlive.wire import security
from ltemlive.wire.updates import (
    SNAPSHOT_REQUESTS,
    TOPICS,
    UPDATES,
    Event,
    Info,
    InfoReq,
    ResultReq,
    SnapshotEnd,
    SnapshotReq,
)

__all__ = ["PublisherUnreachable", "Subscriber", "fetch_result", "publisher_info"]


class PublisherUnreachable(TimeoutError):
    """Nothing that speaks the update protocol answered at the address in time."""


def _ask(address: str, request, timeout_s: float, context: zmq.Context | None,
         max_msg_bytes: int = 1 << 30) -> list[tuple[Any, list[np.ndarray]]]:
    """One request on the snapshot socket; the replies up to and including the one that ends it."""
    ctx = context if context is not None else zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    try:
        wire.configure(sock, max_msg_bytes=max_msg_bytes, sndhwm=4)
        security.connect(sock, "publisher")
        sock.connect(address)
        sock.send_multipart(SNAPSHOT_REQUESTS.encode(request), zmq.NOBLOCK)
        deadline = time.monotonic() + timeout_s
        out: list[tuple[Any, list[np.ndarray]]] = []
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(math.ceil(left * 1000), zmq.POLLIN):
                break
            try:
                msg, arrays = UPDATES.decode(sock.recv_multipart(copy=False))
            except wire.WireError:
                continue
            out.append((msg, [a.copy() for a in arrays]))
            if isinstance(msg, Info | SnapshotEnd):
                return out
        raise PublisherUnreachable(f"no ltemlive publisher answered at {address} within {timeout_s:g} s")
    except zmq.ZMQError as exc:
        raise PublisherUnreachable(f"cannot reach {address}: {exc}") from None
    finally:
        sock.close(linger=0)


def publisher_info(address: str, *, timeout_s: float = 3.0, context: zmq.Context | None = None) -> Info:
    """The publisher's ``Info`` (update stream port, heartbeat, instance); PublisherUnreachable if none."""
    msg, _ = _ask(address, InfoReq(), timeout_s, context)[-1]
    assert isinstance(msg, Info)
    return msg


def updates_endpoint_for(address: str, info: Info) -> str:
    """The update stream's address as seen from this client: the host it reached ``address`` at."""
    if address.startswith("tcp://") and info.updates_port is not None:
        host = address[len("tcp://"):].rsplit(":", 1)[0]
        return f"tcp://{host}:{info.updates_port}"
    return info.updates_endpoint


def fetch_result(
    address: str, series: int | None = None, *, timeout_s: float = 10.0, context: zmq.Context | None = None
) -> Update | None:
    """A finished reconstruction at full resolution from the publisher at ``address`` (its snapshot socket):
    ``(event, [phase, amplitude])``, or None when the publisher no longer holds that series."""
    replies = _ask(address, ResultReq(series=series), timeout_s, context)
    for msg, arrays in replies:
        if isinstance(msg, Event) and msg.topic == "result":
            return msg, arrays
    return None

Update = tuple[Event, list[np.ndarray]]

_BATCH = 1000


class Subscriber:
    """Follow the publisher's update stream with a consistent view of its state.

    ``poll(timeout_s)`` returns the events applied since the last call, in seq order, each at most once:
    live updates, and after a (re)snapshot the snapshot's events not returned before. ``state`` maps each
    topic to its latest ``(Event, arrays)``; ``log`` keeps the last ``log_keep`` log events. Arrays are
    read-only views of the received frames. Topic ``"hb"`` is handled internally and never returned.

    ``topics=None`` follows the whole stream: every seq jump is a gap, detected at once. With a subset of
    topics the stream's seq numbers jump by design, and gaps are found at the next heartbeat (which lists the
    latest seq of each topic).
    """

    def __init__(
        self,
        updates_endpoint: str,
        snapshot_endpoint: str,
        topics: Iterable[str] | None = None,
        *,
        context: zmq.Context | None = None,
        heartbeat_s: float = 1.0,
        snapshot_timeout_s: float = 1.0,
        rcvhwm: int = 1000,
        max_msg_bytes: int = 64 * 1024 * 1024,
        log_keep: int = 50,
    ):
        wanted = [t for t in TOPICS if t != "hb"] if topics is None else list(dict.fromkeys(topics))
        unknown = set(wanted) - set(TOPICS)
        if unknown:
            raise ValueError(f"unknown topic(s) {sorted(unknown)}; topics are {TOPICS}")
        self.topics: tuple[str, ...] = tuple(t for t in wanted if t != "hb")
        self._full = set(self.topics) >= set(TOPICS) - {"hb"}
        self.updates_endpoint = updates_endpoint
        self.snapshot_endpoint = snapshot_endpoint
        self.snapshot_timeout_s = float(snapshot_timeout_s)
        self._max_msg_bytes = int(max_msg_bytes)
        self._ctx = context if context is not None else zmq.Context.instance()
        self._warn = RateLimitedLog()
        self.stats: Counter[str] = Counter()
        self.state: dict[str, Update] = {}
        self.log: deque[Update] = deque(maxlen=log_keep)
        #: the last heartbeat's payload (publisher stats, last_seq, ...), {} before the first
        self.last_heartbeat: dict[str, Any] = {}
        self._heartbeat_s = float(heartbeat_s)
        self._live = wire.Liveness(3 * self._heartbeat_s)
        self._last_seq = 0  # highest seq applied (snapshot's last_seq or a live update)
        self._topic_seq: dict[str, int] = {}  # per topic, the highest seq held
        self._instance: str | None = None
        self._joined = False  # a live message arrived after the first snapshot: the subscription is active
        self._syncing = False
        self._snap_deadline = 0.0
        self._snap_events: list[Update] = []
        self._dealer: zmq.Socket | None = None
        self._closed = False

        self._sub: zmq.Socket = self._ctx.socket(zmq.SUB)
        try:
            wire.configure(self._sub, max_msg_bytes=self._max_msg_bytes, rcvhwm=rcvhwm)
            if self._full:
                self._sub.setsockopt(zmq.SUBSCRIBE, b"")
            else:
                for t in (*self.topics, "hb"):
                    self._sub.setsockopt(zmq.SUBSCRIBE, t.encode())
            security.connect(self._sub, "publisher")
            self._sub.connect(updates_endpoint)
            self._request_snapshot()  # after subscribing (Clone): no update falls between the two
        except BaseException:
            self.close()
            raise

    @classmethod
    def at(cls, address: str, topics: Iterable[str] | None = None, *, timeout_s: float = 3.0,
           context: zmq.Context | None = None, **kwargs: Any) -> Subscriber:
        """Follow the publisher whose snapshot socket is at ``address``: asks it where its update stream is.
        Raises PublisherUnreachable when nothing answers within ``timeout_s``."""
        info = publisher_info(address, timeout_s=timeout_s, context=context)
        kwargs.setdefault("heartbeat_s", info.heartbeat_s)
        sub = cls(updates_endpoint_for(address, info), address, topics, context=context, **kwargs)
        # a restart before the first heartbeat is then a restart too (not old seqs taken for stale ones)
        sub._instance = sub._instance or info.instance or None
        return sub

    # -- properties -----------------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """Heard from the publisher (heartbeat, update or snapshot) within 3 heartbeat intervals."""
        return self._live.silent_for("publisher") <= self._live.timeout_s

    @property
    def synced(self) -> bool:
        """A snapshot has been applied and no re-snapshot is under way."""
        return not self._syncing and self.stats["snapshots"] > 0

    @property
    def gaps(self) -> int:
        return self.stats["gaps"]

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def heartbeat_s(self) -> float:
        return self._heartbeat_s

    # -- snapshot -------------------------------------------------------------------------------------------
    def resync(self) -> None:
        """Fetch a new snapshot (done by poll); the current state stays until it has arrived."""
        if not self._syncing:
            self._request_snapshot()

    def _new_dealer(self) -> None:
        if self._dealer is not None:
            self._dealer.close(linger=0)  # a fresh socket: no stale reply of an abandoned request
        self._dealer = self._ctx.socket(zmq.DEALER)
        wire.configure(self._dealer, max_msg_bytes=self._max_msg_bytes, sndhwm=4)
        security.connect(self._dealer, "publisher")
        self._dealer.connect(self.snapshot_endpoint)

    def _request_snapshot(self) -> None:
        if self._dealer is None or self._syncing:  # first request, or a retry after a timeout
            self._new_dealer()
        assert self._dealer is not None
        self._syncing = True
        self._snap_events = []
        self._snap_deadline = time.monotonic() + self.snapshot_timeout_s
        self.stats["snapshot_requests"] += 1
        try:
            self._dealer.send_multipart(SNAPSHOT_REQUESTS.encode(SnapshotReq(topics=list(self.topics))), zmq.NOBLOCK)
        except zmq.Again:  # not connected yet and the queue is full: the timeout retries
            pass

    def _on_snapshot_message(self, frames: list[Any], out: list[Update]) -> None:
        try:
            msg, arrays = UPDATES.decode(frames)
        except wire.WireError as exc:
            self.stats["malformed"] += 1
            self._warn.warning("malformed_snapshot", "subscriber: malformed snapshot message dropped: {}", exc)
            return
        self._live.heard("publisher")
        if isinstance(msg, Event):
            if msg.topic in self.topics:
                self._snap_events.append((msg, arrays))
            return
        if isinstance(msg, SnapshotEnd):
            self._apply_snapshot(msg.last_seq, out)

    def _apply_snapshot(self, last_seq: int, out: list[Update]) -> None:
        events = sorted(self._snap_events, key=lambda u: u[0].seq)
        seen = dict(self._topic_seq)
        log_seen = max((e.seq for e, _ in self.log), default=0)
        state: dict[str, Update] = {}
        log: deque[Update] = deque(maxlen=self.log.maxlen)
        topic_seq: dict[str, int] = {}
        for ev, arrays in events:
            state[ev.topic] = (ev, arrays)
            topic_seq[ev.topic] = ev.seq
            if ev.topic == "log":
                log.append((ev, arrays))
                if ev.seq > log_seen:
                    out.append((ev, arrays))
            elif ev.seq > seen.get(ev.topic, 0):
                out.append((ev, arrays))
        self.state, self.log, self._topic_seq = state, log, topic_seq
        self._last_seq = last_seq
        self._snap_events = []
        self._syncing = False
        self.stats["snapshots"] += 1

    # -- updates --------------------------------------------------------------------------------------------
    def _gap(self, why: str) -> None:
        if self._joined:
            self.stats["gaps"] += 1
            self._warn.warning("gap", "subscriber: {}; fetching a new snapshot", why)
        else:  # updates published between the first snapshot and the subscription taking effect
            self.stats["join_resyncs"] += 1
        self._request_snapshot()

    def _on_update(self, frames: list[Any], out: list[Update]) -> None:
        """Handle one SUB message; a gap starts a snapshot (and poll then reads the snapshot socket)."""
        try:
            if len(frames) < 3:
                raise wire.WireError(f"expected [topic, protocol id, header, *arrays], got {len(frames)} frame(s)")
            msg, arrays = UPDATES.decode(frames[1:])
            if not isinstance(msg, Event) or msg.topic.encode() != bytes(wire.buffer_of(frames[0])):
                raise wire.WireError("not an event, or its topic frame does not match its header")
        except wire.WireError as exc:
            self.stats["malformed"] += 1
            self._warn.warning("malformed_update", "subscriber: malformed update dropped: {}", exc)
            return
        self._live.heard("publisher")
        if msg.topic == "hb":
            self._on_heartbeat(msg)
            return
        if msg.topic not in self.topics:
            return
        if msg.seq <= self._last_seq:  # already in the snapshot
            self.stats["stale"] += 1
            return
        if self._full and msg.seq != self._last_seq + 1:
            self._gap(f"seq jumped from {self._last_seq} to {msg.seq}")
            return
        self._joined = True
        self._last_seq = msg.seq
        self._topic_seq[msg.topic] = msg.seq
        self.state[msg.topic] = (msg, arrays)
        if msg.topic == "log":
            self.log.append((msg, arrays))
        self.stats["updates"] += 1
        out.append((msg, arrays))

    def _on_heartbeat(self, hb: Event) -> None:
        p = hb.payload
        self.stats["heartbeats"] += 1
        self.last_heartbeat = p
        interval = p.get("heartbeat_s")
        if isinstance(interval, int | float) and 0 < interval <= 60:
            self._heartbeat_s = float(interval)
            self._live.timeout_s = 3 * self._heartbeat_s
        instance = p.get("instance")
        if isinstance(instance, str) and instance != self._instance:
            first = self._instance is None
            self._instance = instance
            if not first:
                self.stats["restarts"] += 1
                self._warn.warning("restart", "subscriber: publisher restarted; fetching a new snapshot")
                self._last_seq = 0
                self._topic_seq = {}
                self.log.clear()
                self._request_snapshot()
                return
        if self._full:
            if hb.seq > self._last_seq:
                self._gap(f"heartbeat announces seq {hb.seq}, last seen {self._last_seq}")
                return
        elif isinstance(topic_seq := p.get("topic_seq"), dict):
            for t in self.topics:
                s = topic_seq.get(t)
                if isinstance(s, int) and s > self._topic_seq.get(t, 0):
                    self._gap(f"heartbeat announces {t} seq {s}, last seen {self._topic_seq.get(t, 0)}")
                    return
        self._joined = True

    # -- the one entry point --------------------------------------------------------------------------------
    def poll(self, timeout_s: float = 0.0) -> list[Update]:
        """Wait at most ``timeout_s`` for updates; return those applied (possibly none)."""
        if self._closed:
            raise RuntimeError("subscriber is closed")
        out: list[Update] = []
        deadline = time.monotonic() + max(0.0, float(timeout_s))
        while True:
            self._pump(out)
            if out:
                return out
            now = time.monotonic()
            if now >= deadline:
                return out
            wait = deadline - now
            if self._syncing:
                wait = min(wait, max(0.0, self._snap_deadline - now))
            sock = self._dealer if self._syncing else self._sub
            assert sock is not None
            sock.poll(math.ceil(wait * 1000), zmq.POLLIN)

    def _pump(self, out: list[Update]) -> None:
        """Handle what has arrived, without waiting: snapshot replies while syncing, else updates."""
        for _ in range(_BATCH):
            if self._syncing and time.monotonic() >= self._snap_deadline:
                self.stats["snapshot_retries"] += 1
                self._request_snapshot()
            sock = self._dealer if self._syncing else self._sub
            assert sock is not None
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if self._syncing:
                self._on_snapshot_message(frames, out)
            else:
                self._on_update(frames, out)

    # -- closing --------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock in (self._dealer, getattr(self, "_sub", None)):
            if sock is not None:
                sock.close(linger=0)
        self._dealer = None

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
