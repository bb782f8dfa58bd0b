"""The one wire format of every ltemlive channel (instrument, frame stream, control, updates).

A message is a ZeroMQ multipart message::

    [PROTOCOL_ID, header, *buffers]        (a ROUTER prepends the peer identity; a PUB a topic frame)

* ``PROTOCOL_ID`` names the channel (``b"LTEMDRV"``, ``b"LTEMFRM"``, ...) so a message sent to the wrong
  socket is refused before its header is parsed;
* ``header`` is UTF-8 JSON (at most :data:`MAX_HEADER_BYTES`, NaN/Infinity refused) validated against a strict
  pydantic model (``extra="forbid"``): never pickle, never ``eval``;
* each array travels as raw little-endian C-contiguous bytes in its own frame (zero-copy on both sides),
  described in the header by an :class:`ArrayHeader` — dtype from an allow-list, 2-D shape within
  :data:`MAX_DIM`, ``nbytes == prod(shape) * itemsize == len(frame)`` — which the receiver checks before it
  touches the bytes.

The instrument channel (drivers/protocol.py) keeps its request/reply headers; the service channels share
:class:`Envelope` (protocol version, type, session, series, seq, timestamps) through :class:`Channel`, which
encodes and decodes a whole message. Every decoding failure is a :class:`WireError`, never another exception
type, so a receiver counts and drops it with one ``except``. :class:`Liveness` is the application-level
heartbeat bookkeeping that ZMTP heartbeats cannot replace (a peer whose I/O thread answers while its main loop
is stuck); :func:`configure` sets the socket options every channel needs.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import numpy as np
import zmq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "ALLOWED_DTYPES",
    "ID_PATTERN",
    "MAX_DIM",
    "MAX_HEADER_BYTES",
    "ArrayHeader",
    "Channel",
    "Envelope",
    "Liveness",
    "Strict",
    "WireError",
    "buffer_of",
    "configure",
    "decode_array",
    "decode_header",
    "encode_array",
    "encode_header",
    "json_safe",
    "parse_json",
    "stamp",
    "validate",
]

MAX_HEADER_BYTES = 64 * 1024
#: Largest accepted image side; 16384^2 float64 is 2 GiB, far beyond any camera we drive.
MAX_DIM = 16384
ALLOWED_DTYPES = frozenset({"uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"})
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class WireError(ValueError):
    """A message that does not follow the wire format. Count it, drop it, keep serving."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArrayHeader(Strict):
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in ALLOWED_DTYPES:
            raise ValueError(f"dtype {v!r} not allowed")
        return v

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) != 2 or not all(1 <= s <= MAX_DIM for s in v):
            raise ValueError(f"array shape {v} not a 2-D image within {MAX_DIM} px")
        return v


# -- headers -----------------------------------------------------------------------------------------------
def json_safe(obj: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays to numbers and lists, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def encode_header(model: BaseModel) -> bytes:
    # allow_nan=False: NaN/inf are not JSON and must never sneak through as a value.
    return json.dumps(model.model_dump(mode="json"), allow_nan=False, separators=(",", ":")).encode()


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_json(raw: bytes | memoryview) -> Any:
    raw = bytes(raw)
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(f"header is not valid JSON: {str(exc)[:200]}") from None


def validate(obj: Any, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise WireError(f"invalid {model.__name__}: {str(exc)[:500]}") from None


def decode_header(raw: bytes | memoryview, model: type[BaseModel]) -> Any:
    """Parse and validate a JSON header; any failure is a WireError."""
    return validate(parse_json(raw), model)


# -- arrays ------------------------------------------------------------------------------------------------
def encode_array(a: np.ndarray) -> tuple[ArrayHeader, memoryview]:
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":  # the wire is little-endian
        a = a.astype(a.dtype.newbyteorder("<"))
    header = ArrayHeader(dtype=str(a.dtype), shape=tuple(int(s) for s in a.shape), nbytes=int(a.nbytes))
    return header, memoryview(a).cast("B")


def buffer_of(frame: Any) -> memoryview:
    """The bytes of a received frame without copying (a zmq.Frame from ``copy=False``, bytes or a view)."""
    buf = getattr(frame, "buffer", frame)
    return memoryview(buf)


def decode_array(header: ArrayHeader, buf: Any, *, require_finite: bool = False) -> np.ndarray:
    """Check the declared size against the dtype/shape and the received bytes, then view them as an array."""
    dtype = np.dtype(header.dtype).newbyteorder("<")
    expected = math.prod(header.shape) * dtype.itemsize
    if header.nbytes != expected:
        raise WireError(f"array header nbytes {header.nbytes} != prod(shape) * itemsize = {expected}")
    mv = buffer_of(buf)
    if mv.nbytes != expected:
        raise WireError(f"array payload has {mv.nbytes} bytes, header declares {expected}")
    a = np.frombuffer(mv, dtype=dtype).reshape(header.shape)
    a.flags.writeable = False  # a view of the received bytes: copy before modifying
    if require_finite and a.dtype.kind == "f" and not np.isfinite(a).all():
        raise WireError("array contains NaN or infinite values")
    return a


# -- the envelope of the service channels -------------------------------------------------------------------
class Envelope(Strict):
    """Fields every service message carries. Subclasses fix ``type`` with a Literal."""

    v: int = 1
    type: str
    session: str = ""
    #: series index the message belongs to, where it belongs to one
    series: Annotated[int, Field(ge=0)] | None = None
    #: per-sender message counter: receivers detect gaps and duplicates with it
    seq: Annotated[int, Field(ge=0)] = 0
    t_epoch_s: FiniteFloat = 0.0
    #: the sender's monotonic clock (hosts do not share one; only differences on one host mean anything)
    t_mono_s: FiniteFloat = 0.0
    arrays: list[ArrayHeader] = Field(default_factory=list)

    @field_validator("session")
    @classmethod
    def _session(cls, v: str) -> str:
        if v and not ID_PATTERN.match(v):
            raise ValueError("session must be 1-64 characters of [A-Za-z0-9_.:-]")
        return v


def stamp() -> dict[str, float]:
    return {"t_epoch_s": time.time(), "t_mono_s": time.monotonic()}


class Channel:
    """Encoder/decoder of one channel: its protocol id, version and message types (by ``type``).

    ``encode`` fills in the array headers and timestamps; ``decode`` checks the protocol id, the header
    against the model its ``type`` names, the number of array frames and each array's size, in that order,
    before anything is returned. Arrays come back as read-only views of the received frames (zero-copy).
    """

    def __init__(self, protocol_id: bytes, version: int, messages: Iterable[type[Envelope]]):
        self.protocol_id = protocol_id
        self.version = version
        self.types: dict[str, type[Envelope]] = {}
        for m in messages:
            name = m.model_fields["type"].default
            if not isinstance(name, str):
                raise TypeError(f"{m.__name__}.type needs a default (its Literal value)")
            self.types[name] = m

    def encode(self, msg: Envelope, arrays: Sequence[np.ndarray] = ()) -> list[Any]:
        if msg.type not in self.types:
            raise TypeError(f"{msg.type!r} is not a message of this channel")
        headers, buffers = [], []
        for a in arrays:
            h, b = encode_array(a)
            headers.append(h)
            buffers.append(b)
        update: dict[str, Any] = {"arrays": headers, "v": self.version}
        if msg.t_epoch_s == 0.0:
            update.update(stamp())
        msg = msg.model_copy(update=update)
        return [self.protocol_id, encode_header(msg), *buffers]

    def decode(self, frames: Sequence[Any], *, require_finite: bool = False) -> tuple[Envelope, list[np.ndarray]]:
        if len(frames) < 2:
            raise WireError(f"expected [protocol id, header, *arrays], got {len(frames)} frame(s)")
        if bytes(buffer_of(frames[0])[:16]) != self.protocol_id:
            raise WireError(f"protocol id is not {self.protocol_id!r}")
        obj = parse_json(buffer_of(frames[1]))
        if not isinstance(obj, dict):
            raise WireError("header is not a JSON object")
        kind = obj.get("type")
        model = self.types.get(kind) if isinstance(kind, str) else None
        if model is None:
            raise WireError(f"unknown message type {str(kind)[:32]!r}")
        if obj.get("v") != self.version:
            raise WireError(f"protocol version {str(obj.get('v'))[:16]} is not {self.version}")
        msg = validate(obj, model)
        buffers = frames[2:]
        if len(buffers) != len(msg.arrays):
            raise WireError(f"header declares {len(msg.arrays)} array(s), {len(buffers)} frame(s) follow")
        arrays = [decode_array(h, b, require_finite=require_finite) for h, b in zip(msg.arrays, buffers, strict=True)]
        return msg, arrays


# -- liveness ---------------------------------------------------------------------------------------------
class Liveness:
    """When a peer was last heard from, and whether it is overdue. ZMTP heartbeats catch a dead host or
    process; this catches a process whose I/O is alive but whose main loop is not (zguide "Paranoid
    Pirate"), because the peer's application sends its heartbeats from that loop."""

    def __init__(self, timeout_s: float, clock=time.monotonic):
        self.timeout_s = float(timeout_s)
        self._clock = clock
        self._last: dict[Any, float] = {}

    def heard(self, peer: Any) -> None:
        self._last[peer] = self._clock()

    def forget(self, peer: Any) -> None:
        self._last.pop(peer, None)

    def silent_for(self, peer: Any) -> float:
        last = self._last.get(peer)
        return math.inf if last is None else self._clock() - last

    def expired(self) -> list[Any]:
        now = self._clock()
        return [p for p, t in self._last.items() if now - t > self.timeout_s]

    def peers(self) -> list[Any]:
        return list(self._last)


def configure(
    sock: zmq.Socket,
    *,
    max_msg_bytes: int | None = None,
    sndhwm: int | None = None,
    rcvhwm: int | None = None,
    heartbeat_ivl_ms: int = 1000,
    heartbeat_timeout_ms: int = 3000,
) -> zmq.Socket:
    """Options every channel wants: no linger at close, ZMTP heartbeats, a size limit on what a peer may
    send (libzmq disconnects an oversize sender), bounded queues, and ROUTER_MANDATORY on ROUTERs so a
    reply to a vanished peer is an error rather than a silent drop."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ivl_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, heartbeat_timeout_ms)
    if max_msg_bytes is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, int(max_msg_bytes))
    if sndhwm is not None:
        sock.setsockopt(zmq.SNDHWM, int(sndhwm))
    if rcvhwm is not None:
        sock.setsockopt(zmq.RCVHWM, int(rcvhwm))
    if sock.type == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    return sock
