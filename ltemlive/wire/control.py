"""Messages of the control channel, protocol ``LTEMCTL`` v1: the controller binds a ROUTER; the
reconstructor service and operators (CLI, monitor, dashboard) connect DEALERs. Separate from the frame
stream so that a 16 MB frame never delays a command or a calibration.

    reconstructor -> controller   RESULT {series, status, parameters, provenance} + [phase, amplitude]
                                  (``ok`` results carry both arrays; others none). Re-sent until ACKed:
                                  the controller keeps the first of a series and ACKs the rest (counted).
    controller -> reconstructor   ACK {series}
    operator -> controller        COMMAND {id, action}
    controller -> operator        REPLY {id, ok, message, status}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from ltemlive.wire import ID_PATTERN, Channel, Envelope

PROTOCOL_ID = b"LTEMCTL"
VERSION = 1

ACTIONS = (
    "status",
    "pause",
    "resume",
    "abort",  # abort the current series and the plan; the column's defocus is restored
    "stop",  # abort, drain the reconstructions, close the run (what Ctrl-C does)
    "freeze_feedback",
    "unfreeze_feedback",
    "reset_feedback",
)


class Result(Envelope):
    type: Literal["result"] = "result"
    worker: Annotated[str, Field(pattern=ID_PATTERN.pattern)]
    status: Literal["ok", "skipped", "aborted", "error"]
    reason: Annotated[str, Field(max_length=4000)] = ""
    #: refined parameters (ReconstructionResult.parameters(): defocus_m, defocus_sigma_m, defocus_nominal_m,
    #: theta_c_rad, ...); empty unless ok
    parameters: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)


class Ack(Envelope):
    type: Literal["ack"] = "ack"
    duplicate: bool = False


class Command(Envelope):
    type: Literal["command"] = "command"
    id: Annotated[str, Field(pattern=ID_PATTERN.pattern)]
    action: Literal[ACTIONS]  # type: ignore[valid-type]


class Reply(Envelope):
    type: Literal["reply"] = "reply"
    id: str
    ok: bool
    message: str = ""
    status: dict[str, Any] = Field(default_factory=dict)


TO_CONTROLLER = Channel(PROTOCOL_ID, VERSION, [Result, Command])
FROM_CONTROLLER = Channel(PROTOCOL_ID, VERSION, [Ack, Reply])
