"""The results publisher: sources PUSH events in, monitors SUBscribe to one numbered stream (zguide "Clone").

Three sockets, all bound here (the publisher is the stable side; sources and monitors connect):

* **ingest** (PULL): :class:`~ltemlive.publisher.sink.EventSink` s of the controller and the reconstructor
  service push ``Event`` s (channel ``INGEST``). Every message is decoded by the wire module; a malformed one
  is counted (``malformed_ingest``), logged (rate-limited) and dropped; the loop never dies of its input;
* **updates** (PUB): ``[topic, LTEMUPD, EVENT, *arrays]``. The publisher gives everything it publishes ONE
  sequence number across all topics (``Event.seq``: 1, 2, 3, ...). PUB drops for a subscriber whose
  high-water mark is full and every send is ``NOBLOCK``: a slow or frozen monitor never slows the publisher
  nor grows its memory beyond ``sndhwm`` messages per subscriber. Every ``heartbeat_s`` (from the main loop,
  so a stuck loop goes silent) it publishes ``Event(topic="hb", seq=<last seq>)`` whose payload carries
  ``last_seq``, ``heartbeat_s``, ``instance`` (changes when the publisher restarts), ``topic_seq`` (the seq
  of the latest event of each topic) and ``stats``. The heartbeat re-states the last seq; it does not take
  a number of its own;
* **snapshot** (ROUTER, ROUTER_MANDATORY): a ``SnapshotReq(topics)`` is answered, as separate messages to the
  requester, with the stored events of those topics in seq order (the latest of each topic from each source;
  the last ``log_keep`` of ``log``) and then ``SnapshotEnd(last_seq=n)``. ``InfoReq`` is answered with
  ``Info`` (the update stream's port, the heartbeat, the instance): a client needs only this one address.
  ``ResultReq(series)`` is answered with that series' ``result`` event at full resolution (the last
  ``results_keep`` are held) and ``SnapshotEnd``, or ``SnapshotEnd`` alone. A vanished peer or a full queue is
  counted (``snapshot_errors``), never raised.

Results (topic ``result``): sources send the finished maps at full resolution; the stream and the snapshots
carry them downsampled to ``result_preview_px``; the full ones are kept for ``ResultReq``.

Previews (events carrying arrays on ``preview_topics``, by default ``frame`` and ``recon``): at most one per
``preview_interval_s`` per topic is published. One that arrives sooner is held back and published when the
interval has passed, unless a newer one replaces it first (the replaced one is dropped and counted as
``throttled``): the newest preview always gets through, late by at most the interval. Events without arrays,
and events of other topics (``result``, ``calibration``, ...), are never throttled. Arrays wider or higher than
``max_preview_px`` on the preview topics are refused (``oversize``): sources downsample (see
:func:`ltemlive.publisher.sink.downsample`).

``Publisher(config).start()`` runs the loop in a background thread (tests, in-process use); :func:`serve`
runs it in the calling thread (the ``ltemlive serve publisher`` process, with SIGINT/SIGTERM handling).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from loguru import logger
from pydantic import BaseModel, Field, ValidationError, field_validator

from ltemlive import wire
from ltemlive.wire import security
from ltemlive.wire.updates import (
    INGEST,
    SNAPSHOT_REQUESTS,
    TOPICS,
    UPDATES,
    Event,
    Info,
    InfoReq,
    ResultReq,
    SnapshotEnd,
)

__all__ = ["STAT_KEYS", "Publisher", "PublisherConfig", "RateLimitedLog", "main", "serve"]

#: Counters of :attr:`Publisher.stats` (all present from the start, so reading them from another thread is safe).
STAT_KEYS = (
    "received",  # messages taken from the ingest socket, valid or not
    "published",  # events published on the update stream (heartbeats not included)
    "malformed",  # malformed_ingest + malformed_snapshot
    "malformed_ingest",
    "malformed_snapshot",
    "refused",  # well-formed events the publisher does not accept (topic "hb" from a source)
    "oversize",  # preview arrays larger than max_preview_px
    "throttled",  # array events replaced by a newer one before their turn came
    "send_errors",  # errors on the PUB socket (PUB normally drops silently instead)
    "snapshot_requests",  # messages taken from the snapshot socket, valid or not
    "snapshots_served",  # replies sent completely
    "info_served",
    "results_served",  # full-resolution results sent on request
    "results_missing",  # result requests for a series no longer (or never) held
    "snapshot_errors",  # replies cut short: peer vanished (EHOSTUNREACH) or its queue full (EAGAIN)
    "heartbeats",
    "errors",  # unexpected exceptions while handling one message (a bug: logged with a traceback)
)

#: with CURVE on: the roles whose keys may publish events (any key may subscribe and ask for snapshots)
SOURCE_ROLES = ("acquisition", "reconstructor")
#: Snapshot requests are tiny JSON headers; a peer sending more is disconnected by libzmq.
MAX_SNAPSHOT_REQUEST_BYTES = 64 * 1024
#: Messages handled per socket before the loop looks at the other socket, the heartbeat and the stop flag.
_BATCH = 256
#: Longest poll: bounds how long stop() waits for the loop.
_MAX_WAIT_S = 0.1


class PublisherConfig(BaseModel, extra="forbid"):
    """Configuration of the results publisher (``publisher`` section of a service config)."""

    ingest_endpoint: str = Field(
        "tcp://127.0.0.1:*",
        description="Bind address of the PULL socket that sources (EventSink) connect to. Port * picks a free one.",
    )
    updates_endpoint: str = Field(
        "tcp://127.0.0.1:*", description="Bind address of the PUB socket of the update stream (monitors connect)."
    )
    snapshot_endpoint: str = Field(
        "tcp://127.0.0.1:*",
        description="Bind address of the ROUTER socket that serves the current state to late joiners.",
    )
    heartbeat_s: float = Field(
        1.0, gt=0, le=60, description="Seconds between two heartbeats (topic 'hb', payload last_seq and stats)."
    )
    sndhwm: int = Field(
        100,
        ge=1,
        description="High-water mark of the PUB socket, in messages per subscriber: a slower subscriber loses "
        "the newest messages beyond it (and detects the gap by seq); bounds the publisher's memory.",
    )
    ingest_hwm: int = Field(1000, ge=1, description="Receive high-water mark of the ingest socket, in messages.")
    snapshot_hwm: int = Field(
        1000, ge=1, description="Send high-water mark of the snapshot socket per requester, in messages."
    )
    max_ingest_bytes: int = Field(
        64 * 1024 * 1024,
        ge=MAX_SNAPSHOT_REQUEST_BYTES,
        description="MAXMSGSIZE of the ingest socket: a source sending a larger message part is disconnected.",
    )
    preview_interval_s: float = Field(
        0.5,
        ge=0,
        description="Minimum seconds between two published events carrying arrays on the same preview topic "
        "(preview_topics). One arriving sooner waits for its turn; one replaced by a newer before then is dropped "
        "(counted 'throttled'). Events without arrays, and other topics ('result'...), are never throttled. "
        "0 disables throttling.",
    )
    max_preview_px: int = Field(
        1024,
        ge=1,
        description="Largest array side accepted on preview_topics; larger ones are refused (counted "
        "'oversize'). Sources downsample their previews.",
    )
    preview_topics: tuple[str, ...] = Field(
        ("frame", "recon"),
        description="Topics whose arrays are previews: throttled by preview_interval_s, limited by max_preview_px.",
    )
    log_keep: int = Field(50, ge=1, le=10000, description="Number of 'log' events kept for snapshots.")
    results_keep: int = Field(
        4, ge=0, le=100,
        description="Finished reconstructions kept at full resolution for result requests (the memory they take "
        "is results_keep x the size of one result).",
    )
    result_preview_px: int = Field(
        512, ge=16, description="Largest side of the result maps on the update stream and in snapshots."
    )
    require_finite: bool = Field(
        True, description="Refuse (as malformed) events whose float arrays contain NaN or infinity."
    )

    @field_validator("preview_topics")
    @classmethod
    def _topics(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(v) - set(TOPICS)
        if unknown:
            raise ValueError(f"unknown topic(s) {sorted(unknown)}; topics are {TOPICS}")
        return v


class RateLimitedLog:
    """Warnings at most once per ``interval_s`` per key; the next one says how many were suppressed."""

    def __init__(self, interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = float(interval_s)
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, key: str, fmt: str, *args: Any) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        suffix = f" ({n} similar suppressed)" if n else ""
        logger.opt(depth=1).warning(fmt + suffix, *args)


class Publisher:
    """The publisher's sockets and loop. Binds in the constructor (``endpoints`` is valid at once).

    Use ``start()``/``stop()`` (background thread) or ``run(stop_event)`` then ``close()`` (calling thread);
    it is also a context manager (``with Publisher(cfg).start() as pub: ...`` stops and closes on exit).
    Only the loop touches the sockets; ``stats`` may be read from any thread.
    """

    def __init__(self, config: PublisherConfig | None = None, *, context: zmq.Context | None = None):
        self.config = config if config is not None else PublisherConfig()
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        #: changes at every start: subscribers that see a new one know the publisher restarted
        self.instance = uuid.uuid4().hex[:12]
        self.stats: Counter[str] = Counter(dict.fromkeys(STAT_KEYS, 0))
        self._seq = 0
        self._state: dict[tuple[str, str], tuple[int, list[Any]]] = {}  # (topic, source) -> (seq, encoded parts)
        self._results: dict[int, tuple[int, list[Any]]] = {}  # series -> (seq, full-resolution parts)
        self._log: deque[tuple[int, list[Any]]] = deque(maxlen=self.config.log_keep)
        self._topic_seq: dict[str, int] = {}
        self._last_array_t: dict[str, float] = {}
        self._pending: dict[str, tuple[float, Event, list[np.ndarray]]] = {}  # topic -> (due, event, arrays)
        self._warn = RateLimitedLog()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._close_lock = threading.Lock()
        self._sockets: list[zmq.Socket] = []
        self._closed = False
        cfg = self.config
        try:
            self._ingest = self._bind(
                zmq.PULL, cfg.ingest_endpoint, max_msg_bytes=cfg.max_ingest_bytes, rcvhwm=cfg.ingest_hwm
            )
            self._updates = self._bind(zmq.PUB, cfg.updates_endpoint, sndhwm=cfg.sndhwm)
            self._snapshot = self._bind(
                zmq.ROUTER, cfg.snapshot_endpoint, max_msg_bytes=MAX_SNAPSHOT_REQUEST_BYTES, sndhwm=cfg.snapshot_hwm
            )
        except BaseException:
            self.close()
            raise
        #: the bound addresses (ports resolved): {"ingest": ..., "updates": ..., "snapshot": ...}
        self.endpoints: dict[str, str] = {
            "ingest": self._ingest.getsockopt_string(zmq.LAST_ENDPOINT),
            "updates": self._updates.getsockopt_string(zmq.LAST_ENDPOINT),
            "snapshot": self._snapshot.getsockopt_string(zmq.LAST_ENDPOINT),
        }

    def _bind(self, kind: int, endpoint: str, **options: Any) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        self._sockets.append(sock)
        wire.configure(sock, **options)
        security.serve(sock)
        sock.bind(endpoint)
        security.check_refuses_strangers(sock)
        return sock

    # -- life cycle -----------------------------------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        return self._seq

    def start(self) -> Publisher:
        """Run the loop in a daemon thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("publisher already started")
        if self._closed:
            raise RuntimeError("publisher is closed")
        self._thread = threading.Thread(target=self._run_thread, name="ltemlive-publisher", daemon=True)
        self._thread.start()
        return self

    def _run_thread(self) -> None:
        try:
            self.run()
        except Exception:
            logger.exception("publisher loop failed")

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop the loop and close the sockets. Joins the thread of :meth:`start`; when :meth:`run` is serving
        in another thread, waits (at most ``timeout_s``) for it to return. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                logger.error("publisher loop did not stop within {} s; sockets left open", timeout_s)
                return
        elif self._running.is_set() and thread is not threading.current_thread():
            deadline = time.monotonic() + timeout_s
            while self._running.is_set() and time.monotonic() < deadline:
                time.sleep(0.005)
            if self._running.is_set():
                logger.error("publisher loop did not stop within {} s; sockets left open", timeout_s)
                return
        self.close()

    def close(self) -> None:
        """Close the sockets (and the context if the publisher made it) once the loop has ended. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            if self._running.is_set():
                raise RuntimeError("close() while the loop runs: set its stop event (or call stop()) first")
            self._closed = True
            for sock in self._sockets:
                sock.close(linger=0)
            self._sockets.clear()
            if self._own_context:
                security.release(self._ctx)
                self._ctx.term()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self, stop_event: threading.Event | None = None) -> None:
        """Serve in the calling thread until ``stop_event`` (or :meth:`stop`) is set. Does not close."""
        stop = stop_event if stop_event is not None else self._stop
        if self._closed:
            raise RuntimeError("publisher is closed")
        poller = zmq.Poller()
        poller.register(self._ingest, zmq.POLLIN)
        poller.register(self._snapshot, zmq.POLLIN)
        hb_s = self.config.heartbeat_s
        next_hb = time.monotonic()
        self._running.set()
        try:
            while not (stop.is_set() or self._stop.is_set()):
                try:
                    next_hb = self._iteration(poller, next_hb, hb_s)
                except zmq.ContextTerminated:
                    raise
                except Exception as exc:  # a bug: count it, keep serving, do not spin
                    self.stats["errors"] += 1
                    self._warn.warning("loop", "publisher: unexpected {} in the loop: {}", type(exc).__name__, exc)
                    time.sleep(0.01)
        except zmq.ContextTerminated:
            logger.info("publisher context terminated, loop ends")
        finally:
            self._running.clear()

    def _iteration(self, poller: zmq.Poller, next_hb: float, hb_s: float) -> float:
        now = time.monotonic()
        if now >= next_hb:
            next_hb += hb_s
            if next_hb <= now:  # fell behind (suspended?): do not burst heartbeats
                next_hb = now + hb_s
            self._heartbeat()
        if self._pending:
            self._flush_pending(now)
        wake = min([next_hb, now + _MAX_WAIT_S, *(due for due, _, _ in self._pending.values())])
        ready = dict(poller.poll(max(0, math.ceil((wake - now) * 1000))))
        if self._ingest in ready:
            self._drain(self._ingest, self._ingest_one)
        if self._snapshot in ready:
            self._drain(self._snapshot, self._snapshot_one)
        return next_hb

    def _drain(self, sock: zmq.Socket, handle: Callable[[list[zmq.Frame]], None]) -> None:
        for _ in range(_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                handle(frames)
            except Exception as exc:  # a bug, not bad input (that is a WireError): keep serving
                self.stats["errors"] += 1
                self._warn.warning("error", "publisher: unexpected {}: {}", type(exc).__name__, exc)

    # -- ingest ---------------------------------------------------------------------------------------------
    def _ingest_one(self, frames: list[zmq.Frame]) -> None:
        try:
            self._ingest_checked(frames)
        finally:  # counted once handled: when "received" reaches n, the other counters are final for those n
            self.stats["received"] += 1

    def _ingest_checked(self, frames: list[zmq.Frame]) -> None:
        cfg = self.config
        try:
            msg, arrays = INGEST.decode(frames, require_finite=cfg.require_finite)
        except wire.WireError as exc:
            self.stats["malformed"] += 1
            self.stats["malformed_ingest"] += 1
            self._warn.warning("malformed_ingest", "publisher: malformed message on ingest dropped: {}", exc)
            return
        assert isinstance(msg, Event)
        if not security.allowed(frames[0], SOURCE_ROLES):
            self.stats["refused"] += 1
            self._warn.warning("denied", "publisher: event from a key that is not a source's refused")
            return
        if msg.topic == "hb":
            self.stats["refused"] += 1
            self._warn.warning("refused", "publisher: event on reserved topic 'hb' from {!r} refused", msg.source)
            return
        if arrays and msg.topic in cfg.preview_topics and any(max(a.shape) > cfg.max_preview_px for a in arrays):
            self.stats["oversize"] += 1
            self._warn.warning(
                "oversize",
                "publisher: {} preview of {} from {!r} exceeds {} px, refused (downsample at the source)",
                msg.topic,
                [a.shape for a in arrays],
                msg.source,
                cfg.max_preview_px,
            )
            return
        if arrays and cfg.preview_interval_s > 0 and msg.topic in cfg.preview_topics:
            now = time.monotonic()
            held = self._pending.get(msg.topic)
            if held is not None and held[0] <= now:  # its turn has come: publish it, then handle this one
                del self._pending[msg.topic]
                self._publish(held[1], held[2])
            elif held is not None:
                due = held[0]
                self.stats["throttled"] += 1  # the held-back one is replaced by this newer one
                self._pending[msg.topic] = (due, msg, arrays)
                return
            last = self._last_array_t.get(msg.topic)
            if last is not None and now - last < cfg.preview_interval_s:
                self._pending[msg.topic] = (last + cfg.preview_interval_s, msg, arrays)
                return
        self._publish(msg, arrays)

    def _flush_pending(self, now: float) -> None:
        for topic, (due, msg, arrays) in list(self._pending.items()):
            if due <= now:
                del self._pending[topic]
                self._publish(msg, arrays)

    def _publish(self, msg: Event, arrays: Sequence[np.ndarray]) -> None:
        self._seq += 1
        seq = self._seq
        msg = msg.model_copy(update={"seq": seq})
        if msg.topic == "result" and arrays:
            from ltemlive.publisher.sink import downsample  # sink imports this module

            self._keep_result(msg, arrays)
            px = self.config.result_preview_px
            arrays = [downsample(a, px) if a.ndim == 2 and max(a.shape) > px else a for a in arrays]
        parts = UPDATES.encode(msg, arrays)
        self.stats["published"] += 1  # before sending: a subscriber holding the event sees it counted
        self._topic_seq[msg.topic] = seq
        try:
            self._updates.send_multipart([msg.topic.encode(), *parts], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # PUB drops rather than raising; kept for safety
            self.stats["send_errors"] += 1
        if arrays:
            self._last_array_t[msg.topic] = time.monotonic()
        if msg.topic == "log":
            self._log.append((seq, parts))
        else:
            self._state[(msg.topic, msg.source)] = (seq, parts)

    def _keep_result(self, msg: Event, arrays: Sequence[np.ndarray]) -> None:
        keep = self.config.results_keep
        if keep == 0 or msg.series is None:
            return
        self._results.pop(msg.series, None)
        self._results[msg.series] = (msg.seq, UPDATES.encode(msg, arrays))
        while len(self._results) > keep:
            self._results.pop(next(iter(self._results)))

    def _heartbeat(self) -> None:
        payload = {
            "last_seq": self._seq,
            "heartbeat_s": self.config.heartbeat_s,
            "instance": self.instance,
            "topic_seq": dict(self._topic_seq),
            "stats": dict(self.stats),
        }
        hb = Event(topic="hb", source="publisher", seq=self._seq, payload=payload)
        try:
            self._updates.send_multipart([b"hb", *UPDATES.encode(hb)], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.stats["send_errors"] += 1
        self.stats["heartbeats"] += 1

    # -- snapshots ------------------------------------------------------------------------------------------
    def _snapshot_one(self, frames: list[Any]) -> None:
        try:
            self._snapshot_checked(frames)
        finally:  # counted once handled (see _ingest_one)
            self.stats["snapshot_requests"] += 1

    def _snapshot_checked(self, frames: list[Any]) -> None:
        try:
            if len(frames) < 3:
                raise wire.WireError(f"expected [identity, protocol id, header], got {len(frames)} frame(s)")
            req, arrays = SNAPSHOT_REQUESTS.decode(frames[1:])
            if arrays:
                raise wire.WireError("a snapshot request carries no arrays")
        except wire.WireError as exc:
            self.stats["malformed"] += 1
            self.stats["malformed_snapshot"] += 1
            self._warn.warning("malformed_snapshot", "publisher: malformed snapshot request dropped: {}", exc)
            return
        identity = bytes(wire.buffer_of(frames[0]))
        if isinstance(req, InfoReq):
            self._send_reply(identity, [UPDATES.encode(self._info())])
            self.stats["info_served"] += 1
            return
        end = UPDATES.encode(SnapshotEnd(last_seq=self._seq, seq=self._seq))
        if isinstance(req, ResultReq):
            series = req.series if req.series is not None else next(reversed(self._results), None)
            held = self._results.get(series) if series is not None else None
            self.stats["results_served" if held else "results_missing"] += 1
            self._send_reply(identity, [held[1], end] if held else [end])
            return
        wanted = [t for t in dict.fromkeys(req.topics) if t != "hb"]
        items = [v for (topic, _), v in self._state.items() if topic in wanted]
        if "log" in wanted:
            items.extend(self._log)
        items.sort(key=lambda item: item[0])
        if self._send_reply(identity, [*(parts for _, parts in items), end]):
            self.stats["snapshots_served"] += 1

    def _info(self) -> Info:
        endpoint = self.endpoints["updates"]
        port = None
        if endpoint.startswith("tcp://"):
            port = int(endpoint.rsplit(":", 1)[1])
        return Info(updates_port=port, updates_endpoint=endpoint, heartbeat_s=self.config.heartbeat_s,
                    instance=self.instance, last_seq=self._seq, seq=self._seq)

    def _send_reply(self, identity: bytes, messages: list[list[Any]]) -> bool:
        for parts in messages:
            try:
                self._snapshot.send_multipart([identity, *parts], flags=zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone; EAGAIN: its queue is full
                self.stats["snapshot_errors"] += 1
                self._warn.warning("snapshot_error", "publisher: snapshot reply not sent: {}", exc)
                return False
        return True


# -- the process -------------------------------------------------------------------------------------------
def serve(
    config: PublisherConfig | None = None,
    stop_event: threading.Event | None = None,
    on_ready: Callable[[dict[str, str]], None] | None = None,
    *,
    context: zmq.Context | None = None,
    handle_signals: bool = True,
) -> Counter[str]:
    """Bind, call ``on_ready(endpoints)`` once, serve until ``stop_event`` is set, close; returns the stats.

    With ``handle_signals`` (and when called from the main thread) SIGINT and SIGTERM set ``stop_event``; the
    previous handlers are restored on return. Bind errors propagate before ``on_ready``.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    previous: dict[int, Any] = {}
    if handle_signals and threading.current_thread() is threading.main_thread():

        def _on_signal(signum: int, _frame: object) -> None:
            logger.info("publisher: signal {} received, stopping", signum)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    try:
        pub = Publisher(config, context=context)
        try:
            if on_ready is not None:
                on_ready(dict(pub.endpoints))
            pub.run(stop)
        finally:
            pub.close()
        return pub.stats
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _load_mapping(path: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    if isinstance(data, dict) and isinstance(data.get("publisher"), dict):
        data = data["publisher"]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping (or a mapping with a 'publisher' section)")
    return data


def main(argv: list[str] | None = None) -> int:
    """Entry point of the publisher process. Prints ``READY {"ingest": ..., "updates": ..., "snapshot": ...}``
    (one JSON line) on stdout once bound; ``FAILED <reason>`` and exit status 2 if it cannot start."""
    parser = argparse.ArgumentParser(prog="ltemlive serve publisher", description="ltemlive results publisher")
    parser.add_argument("--config", help="YAML/JSON file: PublisherConfig fields, or a 'publisher' section")
    parser.add_argument("--config-json", help="PublisherConfig fields as a JSON object")
    parser.add_argument("--ingest", help="bind address of the ingest (PULL) socket")
    parser.add_argument("--updates", help="bind address of the update (PUB) socket")
    parser.add_argument("--snapshot", help="bind address of the snapshot (ROUTER) socket")
    parser.add_argument("--heartbeat-s", type=float, help="seconds between heartbeats")
    parser.add_argument("--log-level", default="INFO")
    ns = parser.parse_args(argv)

    logger.remove()
    logger.add(sys.stderr, level=ns.log_level.upper(), diagnose=False)
    try:
        data: dict[str, Any] = {}
        if ns.config:
            data.update(_load_mapping(ns.config))
        if ns.config_json:
            extra = json.loads(ns.config_json)
            if not isinstance(extra, dict):
                raise ValueError("--config-json must be a JSON object")
            data.update(extra)
        for key, value in (
            ("ingest_endpoint", ns.ingest),
            ("updates_endpoint", ns.updates),
            ("snapshot_endpoint", ns.snapshot),
            ("heartbeat_s", ns.heartbeat_s),
        ):
            if value is not None:
                data[key] = value
        config = PublisherConfig.model_validate(data)
    except (OSError, ValueError, ValidationError) as exc:
        print(f"FAILED {type(exc).__name__}: {exc}", flush=True)
        return 2

    def ready(endpoints: dict[str, str]) -> None:
        # A supervisor waits for this line; keep its format stable.
        print("READY " + json.dumps(endpoints), flush=True)
        logger.info("publisher serving: {}", endpoints)

    try:
        serve(config, on_ready=ready)
    except zmq.ZMQError as exc:
        print(f"FAILED {type(exc).__name__}: {exc}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
