"""Messages of the frame stream (acquisition -> reconstructors), protocol ``LTEMFRM`` v1.

The acquisition side binds a ROUTER; each reconstructor connects a DEALER (docs/protocols.md):

    reconstructor -> acquisition   HELLO {worker, window}      grants ``window`` credits, asks for work
                                   CREDIT {credit}             one more credit per message it has consumed
                                   PING                        liveness while it computes
                                   BYE                         leaving; its series go to someone else
    acquisition -> reconstructor   START {series metadata}     a series assigned to this reconstructor
                                   FRAME {frame metadata} + 1 array
                                   END {status}                complete | aborted | error
                                   HB                          liveness of the acquisition side
                                   RESET                       "I do not know you": say HELLO again

START, FRAME and END each spend one credit; HB and RESET spend none. ``seq`` counts the messages sent to one
reconstructor, so it can see a gap; a replayed series is sent again from its START with new seq numbers and
the same (series, index), by which the reconstructor drops a duplicate.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from ltemlive.wire import ID_PATTERN, Channel, Envelope, FiniteFloat, Strict

PROTOCOL_ID = b"LTEMFRM"
VERSION = 1

_WorkerId = Annotated[str, Field(pattern=ID_PATTERN.pattern)]


class OpticsInfo(Strict):
    """What the reconstructor needs to know about the microscope (ltemlive.optics.MicroscopeParams)."""

    voltage_v: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    cs_m: FiniteFloat = 1.0e-3
    theta_c_rad: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0e-5
    focal_spread_m: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class Start(Envelope):
    type: Literal["start"] = "start"
    run_id: str
    n_planned: Annotated[int, Field(ge=1, le=10_000)]
    defocus_planned_m: list[FiniteFloat]
    frame_shape: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]
    pixel_size_m: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    optics: OpticsInfo
    #: electrons per pixel of the unscattered beam, when the camera counts electrons
    dose_e_per_px: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    calibration_scale: FiniteFloat = 1.0
    calibration_offset_m: FiniteFloat = 0.0
    hook: dict[str, Any] = Field(default_factory=dict)


class FrameMsg(Envelope):
    type: Literal["frame"] = "frame"
    index: Annotated[int, Field(ge=0, le=10_000)]
    frame_id: Annotated[int, Field(ge=0)]
    #: the instrument's own defocus for this image (confirmed read-back, else commanded): the nominal value
    #: the reconstructor starts from and refines; comparable across series whatever the calibration
    defocus_nominal_m: FiniteFloat
    defocus_planned_m: FiniteFloat
    defocus_commanded_m: FiniteFloat
    exposure_s: FiniteFloat


class End(Envelope):
    type: Literal["end"] = "end"
    status: Literal["complete", "aborted", "error"]
    reason: Annotated[str, Field(max_length=2000)] = ""
    n_frames: Annotated[int, Field(ge=0)]


class Heartbeat(Envelope):
    type: Literal["hb"] = "hb"


class Reset(Envelope):
    type: Literal["reset"] = "reset"


class Hello(Envelope):
    type: Literal["hello"] = "hello"
    worker: _WorkerId
    window: Annotated[int, Field(ge=1, le=64)] = 4


class Credit(Envelope):
    type: Literal["credit"] = "credit"
    credit: Annotated[int, Field(ge=0, le=64)] = 1


class Ping(Envelope):
    type: Literal["ping"] = "ping"


class Bye(Envelope):
    type: Literal["bye"] = "bye"


DOWNSTREAM = Channel(PROTOCOL_ID, VERSION, [Start, FrameMsg, End, Heartbeat, Reset])
UPSTREAM = Channel(PROTOCOL_ID, VERSION, [Hello, Credit, Ping, Bye])
