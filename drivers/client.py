"""Remote proxies: :class:`RemoteMicroscope` and :class:`RemoteCamera` implement the same protocols as a local
backend, over a ZeroMQ DEALER connected to an :class:`drivers.server.InstrumentServer`.

Reliability (zguide "Lazy/Paranoid Pirate"): every call has a deadline and waits on a poller, never on a bare
``recv``; while it waits it pings the server's I/O loop every ``heartbeat_s``; if nothing at all comes back for
``liveness_s`` the server is declared dead (:class:`ServerUnreachable`) long before a slow call's deadline. After
any timeout the socket is discarded and re-created, so a late reply or a queued stale request can never be
mistaken for the answer to a later call. Calls are not retried automatically: the caller decides (a repeated
``set_defocus`` is idempotent, a repeated acquisition costs dose).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import numpy as np
import zmq
from loguru import logger

from drivers.errors import InstrumentTimeout, ProtocolError, ServerUnreachable, error_from_wire
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
    METHOD_ARGS,
    PROTOCOL_ID,
    PROTOCOL_VERSION,
    Reply,
    Request,
    decode_array,
    decode_header,
    encode_header,
)

__all__ = ["InstrumentClient", "RemoteCamera", "RemoteMicroscope", "connect"]

#: Extra seconds the client waits beyond the server-side budget, for transport and queueing.
TRANSPORT_MARGIN_S = 2.0


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
    ) -> None:
        self.endpoint = endpoint
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
    def _send(self, sock: zmq.Socket, method: str, args: dict[str, Any], timeout_s: float) -> str:
        rid = uuid.uuid4().hex
        req = Request(v=PROTOCOL_VERSION, id=rid, method=method, args=args, timeout_s=timeout_s)
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
            sock = self._socket()
            start = time.monotonic()
            rid = self._send(sock, method, args, budget)
            deadline = start + budget + (TRANSPORT_MARGIN_S if method != "ping" else 0.0)
            last_heard = last_ping = start
            while True:
                now = time.monotonic()
                if now >= deadline:
                    self._reset()
                    raise InstrumentTimeout(f"{method}: no reply from {self.endpoint} within {deadline - start:.2f} s")
                if now - last_heard >= self.liveness_s:
                    self._reset()
                    raise ServerUnreachable(
                        f"{method}: instrument server at {self.endpoint} silent for {now - last_heard:.2f} s"
                    )
                wait = min(deadline, last_heard + self.liveness_s, now + self.heartbeat_s) - now
                if sock.poll(max(1, int(wait * 1000)), zmq.POLLIN):
                    frames = sock.recv_multipart(copy=False)
                    last_heard = time.monotonic()
                    parsed = self._parse(frames)
                    if parsed is None:
                        continue
                    reply, buffers = parsed
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

    def _parse(self, frames: list[Any]) -> tuple[Reply, list[Any]] | None:
        if len(frames) < 2 or frames[0].bytes != PROTOCOL_ID:
            logger.warning("ignoring a malformed reply from {}", self.endpoint)
            return None
        try:
            reply: Reply = decode_header(frames[1].bytes, Reply)
        except ProtocolError as exc:
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
