"""Wire format of the instrument server (see docs/adr/0003-instrument-wire-format.md).

Every message is a ZeroMQ multipart message::

    client -> server   [PROTOCOL_ID, header]                 header: Request as JSON (UTF-8)
    server -> client   [PROTOCOL_ID, header, *buffers]       header: Reply as JSON; one raw buffer per array

(The ROUTER socket prepends the peer identity on the server side.) Arrays travel as raw C-contiguous bytes in
their own frame, described in the reply header by an :class:`ArrayHeader` (dtype from an allow-list, shape,
nbytes) that the receiver checks before it touches the bytes. Nothing is ever pickled: a header is plain JSON
validated against a pydantic schema, and an error crosses the wire as ``{type, message}`` where ``type`` is
one of :data:`drivers.errors.ERROR_TYPES`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from drivers.errors import InstrumentError, ProtocolError
from drivers.interface import LensMode, Roi, SettleSpec, StageMove

__all__ = [
    "ALLOWED_DTYPES",
    "ID_PATTERN",
    "MAX_DIM",
    "MAX_HEADER_BYTES",
    "METHOD_ARGS",
    "PROTOCOL_ID",
    "PROTOCOL_VERSION",
    "ArrayHeader",
    "ErrorInfo",
    "Reply",
    "Request",
    "decode_array",
    "decode_header",
    "encode_array",
    "encode_header",
    "error_info",
]

PROTOCOL_ID = b"LTEMDRV"
PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
#: Largest accepted image side; 16384^2 float64 is 2 GiB, far beyond any camera we drive.
MAX_DIM = 16384
ALLOWED_DTYPES = frozenset({"uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"})
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- per-method argument schemas: validated before anything reaches the backend ----------------------------
class NoArgs(_Strict):
    pass


class SetDefocusArgs(_Strict):
    defocus_m: Annotated[float, Field(allow_inf_nan=False)]
    settle: SettleSpec | None = None


class SetLensModeArgs(_Strict):
    mode: LensMode


class MoveStageArgs(_Strict):
    target: StageMove
    settle: SettleSpec | None = None


class SetBeamBlankedArgs(_Strict):
    blanked: bool


class AcquireArgs(_Strict):
    # Types and finiteness only: the range checks are the backend's, so a bad value raises the same
    # OutOfRange remotely as in-process.
    exposure_s: Annotated[float, Field(allow_inf_nan=False)]
    binning: int = 1
    roi: Roi | None = None
    timeout_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] | None = None


class SetFaultsArgs(_Strict):
    faults: dict[str, Any]


#: method name -> argument schema. The server dispatches only these names; the client sends only these.
METHOD_ARGS: dict[str, type[BaseModel]] = {
    "ping": NoArgs,
    "hello": NoArgs,
    "microscope.capabilities": NoArgs,
    "microscope.get_defocus": NoArgs,
    "microscope.set_defocus": SetDefocusArgs,
    "microscope.get_lens_mode": NoArgs,
    "microscope.set_lens_mode": SetLensModeArgs,
    "microscope.get_magnification": NoArgs,
    "microscope.get_pixel_size": NoArgs,
    "microscope.get_stage": NoArgs,
    "microscope.move_stage": MoveStageArgs,
    "microscope.get_beam_blanked": NoArgs,
    "microscope.set_beam_blanked": SetBeamBlankedArgs,
    "microscope.optics_state": NoArgs,
    "camera.capabilities": NoArgs,
    "camera.info": NoArgs,
    "camera.acquire": AcquireArgs,
    # Simulator-only test hook; a server whose backend has no fault injection answers NotAvailable.
    "sim.set_faults": SetFaultsArgs,
}


class Request(_Strict):
    v: Literal[1]
    id: str
    method: str
    args: dict[str, Any] = Field(default_factory=dict)
    #: Relative budget in seconds, counted from receipt by the server. Relative rather than an absolute
    #: deadline because the microscope PC and the acquisition host do not share a clock.
    timeout_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)]

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ID_PATTERN.match(v):
            raise ValueError("request id must be 1-64 characters of [A-Za-z0-9_.:-]")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in METHOD_ARGS:
            raise ValueError(f"unknown method {v[:64]!r}")
        return v

    def parsed_args(self) -> BaseModel:
        return METHOD_ARGS[self.method].model_validate(self.args)


class ErrorInfo(_Strict):
    type: str
    message: str


class ArrayHeader(_Strict):
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


class Reply(_Strict):
    v: Literal[1] = 1
    id: str
    ok: bool
    result: Any = None
    error: ErrorInfo | None = None
    arrays: list[ArrayHeader] = Field(default_factory=list)


def encode_header(model: BaseModel) -> bytes:
    # allow_nan=False: NaN/inf are not JSON and must never sneak through as a value.
    return json.dumps(model.model_dump(mode="json"), allow_nan=False, separators=(",", ":")).encode()


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


def decode_header(raw: bytes | memoryview, model: type[BaseModel]) -> Any:
    """Parse and validate a JSON header; any failure is a ProtocolError (never another exception type)."""
    raw = bytes(raw)
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"header is not valid JSON: {str(exc)[:200]}") from None
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ProtocolError(f"invalid {model.__name__}: {str(exc)[:500]}") from None


def encode_array(a: np.ndarray) -> tuple[ArrayHeader, memoryview]:
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":  # the wire is little-endian
        a = a.astype(a.dtype.newbyteorder("<"))
    header = ArrayHeader(dtype=str(a.dtype), shape=tuple(int(s) for s in a.shape), nbytes=int(a.nbytes))
    return header, memoryview(a).cast("B")


def decode_array(header: ArrayHeader, buf: bytes | memoryview) -> np.ndarray:
    """Check the declared size against the dtype/shape and the received bytes, then view them as an array."""
    dtype = np.dtype(header.dtype).newbyteorder("<")
    expected = math.prod(header.shape) * dtype.itemsize
    if header.nbytes != expected:
        raise ProtocolError(f"array header nbytes {header.nbytes} != prod(shape) * itemsize = {expected}")
    mv = memoryview(buf)
    if mv.nbytes != expected:
        raise ProtocolError(f"array payload has {mv.nbytes} bytes, header declares {expected}")
    return np.frombuffer(mv, dtype=dtype).reshape(header.shape)


def error_info(exc: BaseException) -> ErrorInfo:
    """Wire form of an exception. Only InstrumentError subclasses keep their type; anything else is a fault
    of the backend and becomes HardwareFault, with the original class in the message for the log."""
    if isinstance(exc, InstrumentError):
        return ErrorInfo(type=type(exc).__name__, message=str(exc)[:2000])
    return ErrorInfo(type="HardwareFault", message=f"{type(exc).__name__}: {str(exc)[:2000]}")
