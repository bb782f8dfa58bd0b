"""Remote proxies: :class:`RemoteMicroscope` and :class:`RemoteCamera` implement the same protocols as a local
backend, over a ZeroMQ DEALER connected to an :class:`drivers.server.InstrumentServer`.

Reliability (zguide "Lazy/Paranoid Pirate"): every call has a deadline and waits on a poller, never on a bare
``recv``; while it waits it pings the server's I/O loop every ``heartbeat_s``; if nothing at all comes back for
``liveness_s`` the server is declared dead (:class:`ServerUnreachable`) long before a slow call's deadline. After
any timeout the socket is discarded and re-created, so a late reply or a queued stale request can never be
mistaken for the answer to a later call. Calls are not retried automatically: the caller decides (a repeated
``set_defocus`` is idempotent, a repeated acquisition costs dose).

Never late: a request that acts on the instrument (``ACTING_METHODS``) carries ``start_by_s``, the latest time
on the server's monotonic clock at which it may start. The client bounds the clock offset from the ``mono_s``
of every pong (``server clock - client clock >= mono_s - time of receipt``: a lower bound whatever the
network's asymmetry, so its start-by is never later than it means), and sets start-by to the send time plus
``min(budget, liveness_s)``. Every way this client gives up - silence for ``liveness_s``, the budget - comes
after that time: a frozen server that wakes up finds the request expired and drops it unexecuted.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import numpy as np
import zmq
from loguru import logger
from pydantic import ValidationError

from drivers.errors import InstrumentTimeout, OutOfRange, ProtocolError, ServerUnreachable, error_from_wire
from drivers.interface import (
    CameraInfo,
    Capability,
    Frame,
    FrameMetadata,
    LensMode,
    OpticsState,
    Roi,
    SettleSpec,
    StageMove,
    StagePosition,
    check_finite,
)
from drivers.protocol import (
    ACTING_METHODS,
    METHOD_ARGS,
    PROTOCOL_ID,
    PROTOCOL_VERSION,
    Reply,
    Request,
    decode_array,
    decode_header,
    encode_header,
)
from ltemlive.wire import security

__all__ = ["InstrumentClient", "RemoteCamera", "RemoteMicroscope", "connect"]

#: Extra seconds the client waits beyond the server-side budget, for transport and queueing.
TRANSPORT_MARGIN_S = 2.0
#: Largest frame of a reply this client accepts: a 8192^2 float64 frame and its header fit.
MAX_REPLY_FRAME_BYTES = 8192 * 8192 * 8 + (1 << 20)


class InstrumentClient:
    """One connection to an instrument server, shared by a RemoteMicroscope/RemoteCamera pair."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 10.0,
        heartbeat_s: float = 0.5,
        liveness_s: float = 3.0,
        context: zmq.Context | None = None,
        server_key: str = "instrument",
    ) -> None:
        self.endpoint = endpoint
        #: the name of the server's key in the keyring, when CURVE is on (ltemlive.wire.security)
        self.server_key = server_key
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self.liveness_s = liveness_s
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._sock: zmq.Socket | None = None
        self._lock = threading.Lock()  # zmq sockets are not thread-safe; calls are serialised
        self._refs = 0
        self._closed = False
        self._hello: dict[str, Any] | None = None
        self._server_id: str | None = None  # instance id of the server last heard from (from pongs)
        #: lower bound of (server monotonic clock - this client's), from pongs; None until the first
        self._offset_lb: float | None = None

    # -- socket management --------------------------------------------------------------------------------
    def _socket(self) -> zmq.Socket:
        if self._closed:
            raise ServerUnreachable("client is closed")
        if self._sock is None:
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
            s.setsockopt(zmq.RECONNECT_IVL, 100)
            s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            s.setsockopt(zmq.SNDHWM, 16)
            s.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_FRAME_BYTES)  # a server gone wrong cannot exhaust our memory
            security.connect(s, self.server_key)
            s.connect(self.endpoint)
            self._sock = s
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def acquire_ref(self) -> InstrumentClient:
        self._refs += 1
        return self

    def release_ref(self) -> None:
        self._refs -= 1
        if self._refs <= 0:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._reset()
            self._closed = True
            if self._own_ctx:
                self._ctx.term()

    def __enter__(self) -> InstrumentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ----------------------------------------------------------------------------------------------
    def _send(
        self, sock: zmq.Socket, method: str, args: dict[str, Any], timeout_s: float, start_by_s: float | None = None
    ) -> str:
        rid = uuid.uuid4().hex
        try:
            req = Request(v=PROTOCOL_VERSION, id=rid, method=method, args=args, timeout_s=timeout_s,
                          start_by_s=start_by_s)
            req.parsed_args()  # the server parses the same way: refuse here, in one line, what it would refuse
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "request"
            raise OutOfRange(f"{method}: {where}: {err['msg']}") from None
        try:
            sock.send_multipart([PROTOCOL_ID, encode_header(req)], zmq.NOBLOCK)
        except zmq.Again:
            raise ServerUnreachable(f"cannot send to {self.endpoint}: no connection or send queue full") from None
        return rid

    def call(self, method: str, args: dict[str, Any] | None = None, timeout_s: float | None = None) -> Reply:
        """Send one request and wait for its reply; raises the remote typed error, InstrumentTimeout after
        ``timeout_s`` (+ transport margin) or ServerUnreachable after ``liveness_s`` of silence."""
        reply, buffers = self._roundtrip(method, args or {}, timeout_s)
        if buffers:
            raise ProtocolError(f"{method}: unexpected payload frames")
        return reply

    def call_arrays(
        self, method: str, args: dict[str, Any], timeout_s: float | None = None
    ) -> tuple[Any, list[np.ndarray]]:
        """Like :meth:`call` for replies that carry arrays; each is checked against its header."""
        reply, buffers = self._roundtrip(method, args, timeout_s)
        arrays = [decode_array(h, b.buffer) for h, b in zip(reply.arrays, buffers, strict=True)]
        return reply.result, arrays

    def _roundtrip(self, method: str, args: dict[str, Any], timeout_s: float | None) -> tuple[Reply, list[Any]]:
        if method not in METHOD_ARGS:
            raise ProtocolError(f"unknown method {method}")
        budget = self.timeout_s if timeout_s is None else float(timeout_s)
        with self._lock:
            start_by = None
            if method in ACTING_METHODS:
                if self._offset_lb is None:
                    self._sync_clock()
                assert self._offset_lb is not None
                # Every give-up below (silence >= liveness_s after the send, or the budget) comes after this.
                start_by = time.monotonic() + min(budget, self.liveness_s) + self._offset_lb
            sock = self._socket()
            start = time.monotonic()
            rid = self._send(sock, method, args, budget, start_by)
            deadline = start + budget + (TRANSPORT_MARGIN_S if method != "ping" else 0.0)
            last_heard = last_ping = start
            while True:
                now = time.monotonic()
                if now >= deadline:
                    self._reset()
                    raise InstrumentTimeout(f"{method}: no reply from {self.endpoint} within {deadline - start:.2f} s")
                if now - last_heard >= self.liveness_s:
                    self._reset()
                    late = " (the request is dropped if the server wakes up: its start-by time has passed)"
                    raise ServerUnreachable(
                        f"{method}: instrument server at {self.endpoint} silent for {now - last_heard:.2f} s"
                        + (late if start_by is not None else "")
                    )
                wait = min(deadline, last_heard + self.liveness_s, now + self.heartbeat_s) - now
                if sock.poll(max(1, int(wait * 1000)), zmq.POLLIN):
                    frames = sock.recv_multipart(copy=False)
                    last_heard = time.monotonic()
                    parsed = self._parse(frames, rid)
                    if parsed is None:
                        continue
                    reply, buffers = parsed
                    self._learn_clock(reply, last_heard)
                    if reply.id != rid:
                        # A pong, or a late reply to an abandoned call: liveness only. A pong from a server
                        # *instance* that started after this request was sent means the request died with
                        # its predecessor: say so now rather than at the deadline.
                        self._check_restart(reply, method, time.monotonic() - start)
                        continue
                    if not reply.ok:
                        err = reply.error
                        if err is None:
                            raise ProtocolError(f"{method}: error reply without detail")
                        raise error_from_wire(err.type, err.message)
                    if len(buffers) != len(reply.arrays):
                        raise ProtocolError(
                            f"{method}: {len(buffers)} payload frames for {len(reply.arrays)} array headers"
                        )
                    return reply, buffers
                if method != "ping" and time.monotonic() - last_ping >= self.heartbeat_s:
                    # Application-level ping: answered by the server's I/O loop even while the backend is busy.
                    last_ping = time.monotonic()
                    self._send(sock, "ping", {}, self.liveness_s)

    def _check_restart(self, pong: Reply, method: str, elapsed_s: float) -> None:
        if not (pong.ok and isinstance(pong.result, dict) and "server_id" in pong.result):
            return
        sid, uptime = pong.result["server_id"], float(pong.result.get("uptime_s", 0.0))
        previous, self._server_id = self._server_id, sid
        if previous is not None and sid != previous and uptime < elapsed_s:
            self._reset()
            raise ServerUnreachable(
                f"{method}: instrument server restarted (instance {previous} -> {sid}) while the request "
                "was in flight; it was lost"
            )

    def _learn_clock(self, reply: Reply, received: float) -> None:
        if reply.ok and isinstance(reply.result, dict) and isinstance(reply.result.get("mono_s"), int | float):
            if reply.result.get("server_id") not in (None, self._server_id) and self._server_id is not None:
                self._offset_lb = None  # another server instance (perhaps on another host): learn again
            lb = float(reply.result["mono_s"]) - received
            self._offset_lb = lb if self._offset_lb is None else max(self._offset_lb, lb)

    def _sync_clock(self) -> None:
        """One ping, inside the call lock: the first bound of the server's clock offset."""
        sock = self._socket()
        rid = self._send(sock, "ping", {}, self.liveness_s)
        t0 = time.monotonic()
        while (left := t0 + self.liveness_s - time.monotonic()) > 0:
            if not sock.poll(max(1, int(left * 1000)), zmq.POLLIN):
                break
            received = time.monotonic()
            parsed = self._parse(sock.recv_multipart(copy=False), rid)
            if parsed is not None and parsed[0].id == rid:
                self._learn_clock(parsed[0], received)
                if parsed[0].ok and isinstance(parsed[0].result, dict):
                    self._server_id = parsed[0].result.get("server_id", self._server_id)
                if self._offset_lb is None:
                    raise ProtocolError("the instrument server's pong carries no clock (mono_s): an older server?")
                return
        self._reset()
        raise ServerUnreachable(f"instrument server at {self.endpoint} silent for {self.liveness_s:.2f} s")

    def _parse(self, frames: list[Any], rid: str = "") -> tuple[Reply, list[Any]] | None:
        if len(frames) < 2 or frames[0].bytes != PROTOCOL_ID:
            logger.warning("ignoring a malformed reply from {}", self.endpoint)
            return None
        try:
            reply: Reply = decode_header(frames[1].bytes, Reply)
        except ProtocolError as exc:
            if rid and rid in bytes(frames[1].bytes[:4096]).decode("utf-8", "replace"):
                # the answer to this call, unreadable: say so now rather than time out
                self._reset()
                raise ProtocolError(f"invalid reply from {self.endpoint}: {exc}") from None
            logger.warning("ignoring a malformed reply: {}", exc)
            return None
        return reply, list(frames[2:])

    def ping(self, timeout_s: float = 2.0) -> dict[str, Any]:
        result = self.call("ping", {}, timeout_s).result
        self._server_id = result.get("server_id")
        return result

    def hello(self) -> dict[str, Any]:
        if self._hello is None:
            self._hello = self.call("hello").result
        return self._hello

    def set_faults(self, **faults: Any) -> None:
        """Simulator only: switch fault injection on the server's backend."""
        self.call("sim.set_faults", {"faults": faults})


def _settle_budget(settle: SettleSpec | None, default_s: float) -> float:
    if settle is None:
        return default_s
    return settle.settle_s + settle.timeout_s + 1.0


class RemoteMicroscope:
    """:class:`drivers.interface.Microscope` over the wire."""

    def __init__(self, client: InstrumentClient, *, write_timeout_s: float = 60.0) -> None:
        self.client = client.acquire_ref()
        self.write_timeout_s = write_timeout_s
        self._closed = False

    @property
    def instrument_id(self) -> str:
        return str(self.client.hello()["instrument_id"])

    def _call(self, method: str, timeout_s: float | None = None, **args: Any) -> Any:
        return self.client.call(f"microscope.{method}", args, timeout_s).result

    def capabilities(self) -> frozenset[Capability]:
        return frozenset(Capability(c) for c in self._call("capabilities"))

    def get_defocus(self) -> float:
        return float(self._call("get_defocus"))

    def set_defocus(self, defocus_m: float, settle: SettleSpec | None = None) -> float:
        defocus_m = check_finite("defocus_m", defocus_m)
        return float(
            self._call(
                "set_defocus",
                _settle_budget(settle, self.write_timeout_s),
                defocus_m=defocus_m,
                settle=None if settle is None else settle.model_dump(),
            )
        )

    def get_lens_mode(self) -> LensMode:
        return LensMode(self._call("get_lens_mode"))

    def set_lens_mode(self, mode: LensMode) -> LensMode:
        return LensMode(self._call("set_lens_mode", self.write_timeout_s, mode=LensMode(mode).value))

    def get_magnification(self) -> float:
        return float(self._call("get_magnification"))

    def get_pixel_size(self) -> float:
        return float(self._call("get_pixel_size"))

    def get_stage(self) -> StagePosition:
        return StagePosition.model_validate(self._call("get_stage"))

    def move_stage(self, target: StageMove, settle: SettleSpec | None = None) -> StagePosition:
        result = self._call(
            "move_stage",
            _settle_budget(settle, self.write_timeout_s),
            target=target.model_dump(),
            settle=None if settle is None else settle.model_dump(),
        )
        return StagePosition.model_validate(result)

    def get_beam_blanked(self) -> bool:
        return bool(self._call("get_beam_blanked"))

    def set_beam_blanked(self, blanked: bool) -> bool:
        return bool(self._call("set_beam_blanked", self.write_timeout_s, blanked=bool(blanked)))

    def optics_state(self) -> OpticsState:
        return OpticsState.model_validate(self._call("optics_state"))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.release_ref()


class RemoteCamera:
    """:class:`drivers.interface.Camera` over the wire; frames arrive as raw buffers, checked on receipt."""

    def __init__(self, client: InstrumentClient, *, default_timeout_s: float = 30.0) -> None:
        self.client = client.acquire_ref()
        self.default_timeout_s = default_timeout_s
        self._closed = False

    @property
    def instrument_id(self) -> str:
        return str(self.client.hello()["instrument_id"])

    def capabilities(self) -> frozenset[Capability]:
        return frozenset(Capability(c) for c in self.client.call("camera.capabilities").result)

    def info(self) -> CameraInfo:
        return CameraInfo.model_validate(self.client.call("camera.info").result)

    def acquire(
        self, exposure_s: float, binning: int = 1, roi: Roi | None = None, timeout_s: float | None = None
    ) -> Frame:
        exposure_s = check_finite("exposure_s", exposure_s)
        timeout = self.default_timeout_s + exposure_s if timeout_s is None else check_finite("timeout_s", timeout_s)
        args = {
            "exposure_s": exposure_s,
            "binning": int(binning),
            "roi": None if roi is None else roi.model_dump(),
            "timeout_s": timeout,
        }
        result, arrays = self.client.call_arrays("camera.acquire", args, timeout)
        if len(arrays) != 1:
            raise ProtocolError(f"camera.acquire returned {len(arrays)} arrays, expected 1")
        try:
            meta = FrameMetadata.model_validate(result)
            return Frame(data=arrays[0], metadata=meta)
        except ValueError as exc:
            raise ProtocolError(f"frame header does not match its payload: {str(exc)[:300]}") from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.release_ref()


def connect(endpoint: str, **client_kw: Any) -> tuple[RemoteMicroscope, RemoteCamera]:
    """Connect to an instrument server; closing both proxies closes the connection."""
    client = InstrumentClient(endpoint, **client_kw)
    return RemoteMicroscope(client), RemoteCamera(client)
