"""Wire format of the instrument server (see docs/adr/0003-instrument-wire-format.md).

Every message is a ZeroMQ multipart message::

    client -> server   [PROTOCOL_ID, header]                 header: Request as JSON (UTF-8)
    server -> client   [PROTOCOL_ID, header, *buffers]       header: Reply as JSON; one raw buffer per array

(The ROUTER socket prepends the peer identity on the server side.) The framing (JSON headers, raw array frames with
their dtype/shape/nbytes checks) is the project's one wire module, :mod:`ltemlive.wire`, shared with the frame
stream, control and update channels; this module adds the instrument channel's request/reply headers and its
method table, and turns a :class:`ltemlive.wire.WireError` into the driver layer's :class:`ProtocolError`.
Nothing is ever pickled: an error crosses the wire as ``{type, message}`` where ``type`` is one of
:data:`drivers.errors.ERROR_TYPES`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.errors import InstrumentError, ProtocolError
from drivers.interface import LensMode, Roi, SettleSpec, StageMove
from ltemlive import wire
from ltemlive.wire import ALLOWED_DTYPES, ID_PATTERN, MAX_DIM, MAX_HEADER_BYTES, ArrayHeader, WireError, encode_header

__all__ = [
    "ACTING_METHODS",
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


#: Methods that change the instrument or spend dose: they carry ``start_by_s`` and are never started late.
ACTING_METHODS = frozenset({
    "microscope.set_defocus",
    "microscope.set_lens_mode",
    "microscope.move_stage",
    "microscope.set_beam_blanked",
    "camera.acquire",
    "sim.set_faults",
})

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
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # "timeout_s": "5" is refused

    v: Literal[1]
    id: str
    method: str
    args: dict[str, Any] = Field(default_factory=dict)
    #: Relative budget in seconds for the call, counted from receipt by the server.
    timeout_s: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)]
    #: The latest time, on the SERVER's monotonic clock, at which the server may start this request; after it
    #: the request is dropped unexecuted. The client learns the clock offset from the ``mono_s`` of pongs (a
    #: lower bound, so its estimate of this time is never later than the truth) and gives up only after this
    #: time has passed: a request its caller was told failed is never started later (ACTING_METHODS need it).
    start_by_s: Annotated[float, Field(allow_inf_nan=False)] | None = None

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
        # Strict, in JSON mode (the args came as JSON): types as declared - "off" is not a boolean, "1e-4" not a
        # number - while an enum is still given by its value string.
        return METHOD_ARGS[self.method].model_validate_json(json.dumps(self.args, allow_nan=False), strict=True)


class ErrorInfo(_Strict):
    type: str
    message: str


class Reply(_Strict):
    v: Literal[1] = 1
    id: str
    ok: bool
    result: Any = None
    error: ErrorInfo | None = None
    arrays: list[ArrayHeader] = Field(default_factory=list)


def decode_header(raw: bytes | memoryview, model: type[BaseModel]) -> Any:
    """Parse and validate a JSON header; any failure is a ProtocolError (never another exception type)."""
    try:
        return wire.decode_header(raw, model)
    except WireError as exc:
        raise ProtocolError(str(exc)) from None


def encode_array(a: np.ndarray) -> tuple[ArrayHeader, memoryview]:
    return wire.encode_array(a)


def decode_array(header: ArrayHeader, buf: bytes | memoryview) -> np.ndarray:
    """Check the declared size against the dtype/shape and the received bytes, then view them as an array."""
    try:
        return wire.decode_array(header, buf)
    except WireError as exc:
        raise ProtocolError(str(exc)) from None


def error_info(exc: BaseException) -> ErrorInfo:
    """Wire form of an exception. Only InstrumentError subclasses keep their type; anything else is a fault
    of the backend and becomes HardwareFault, with the original class in the message for the log."""
    if isinstance(exc, InstrumentError):
        return ErrorInfo(type=type(exc).__name__, message=str(exc)[:2000])
    return ErrorInfo(type="HardwareFault", message=f"{type(exc).__name__}: {str(exc)[:2000]}")
