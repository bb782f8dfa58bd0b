"""Typed errors of the driver layer.

Every failure a caller can act on has its own class, so acquisition code can tell a transient timeout (retry)
from a missing control (degrade gracefully) from a refused command (fix the plan) from a broken instrument
(stop and alert). The classes cross the instrument-server wire by *name* (see ``error_from_wire``); nothing is
ever unpickled.
"""

from __future__ import annotations

__all__ = [
    "ERROR_TYPES",
    "HardwareFault",
    "InstrumentError",
    "InstrumentTimeout",
    "LimitViolation",
    "NotAvailable",
    "OutOfRange",
    "PermissionDenied",
    "ProtocolError",
    "ServerUnreachable",
    "error_from_wire",
]


class InstrumentError(Exception):
    """Base class of every error the driver layer raises on purpose."""


class InstrumentTimeout(InstrumentError):
    """A call, a settle/confirm loop or an acquisition did not complete within its timeout."""


class ServerUnreachable(InstrumentTimeout):
    """The instrument server stopped answering (dead, hung or unreachable); a timeout of the transport."""


class NotAvailable(InstrumentError):
    """The control, mode or backend does not exist here (missing capability or optional vendor package)."""


class OutOfRange(InstrumentError):
    """A value lies outside what the instrument itself accepts (e.g. a lens DAC range)."""


class LimitViolation(OutOfRange):
    """A command was refused by the driver layer's safety limits before it reached the instrument."""


class HardwareFault(InstrumentError):
    """The instrument reported an error, or returned data that fails integrity checks (dropped/corrupt frame)."""


class ProtocolError(InstrumentError):
    """A message on the instrument-server wire was malformed, unsupported or failed validation."""


class PermissionDenied(InstrumentError):
    """The sender's key (its role) may not make this request: a monitor key asking to move the lens."""


#: Wire name -> class. Only these names are ever re-raised by a client; anything else becomes HardwareFault.
ERROR_TYPES: dict[str, type[InstrumentError]] = {
    cls.__name__: cls
    for cls in (
        InstrumentError,
        InstrumentTimeout,
        ServerUnreachable,
        NotAvailable,
        OutOfRange,
        LimitViolation,
        HardwareFault,
        ProtocolError,
        PermissionDenied,
    )
}


def error_from_wire(type_name: str, message: str) -> InstrumentError:
    """Rebuild a typed error from its wire form; unknown names map to HardwareFault (never to arbitrary code)."""
    cls = ERROR_TYPES.get(type_name)
    if cls is None:
        return HardwareFault(f"{type_name}: {message}")
    return cls(message)
