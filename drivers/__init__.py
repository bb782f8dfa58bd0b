"""ltemlive driver layer: one typed microscope/camera interface, implemented by a simulated instrument,
a remote proxy (instrument server over ZeroMQ) and vendor adapters. See docs/drivers.md.

Importing this package is cheap: the simulator, ZeroMQ and vendor packages load only when a backend that
needs them is built (``drivers.factory.build``).
"""

from drivers.errors import (
    HardwareFault,
    InstrumentError,
    InstrumentTimeout,
    LimitViolation,
    NotAvailable,
    OutOfRange,
    ProtocolError,
    ServerUnreachable,
)
from drivers.interface import (
    Calibration,
    Camera,
    CameraInfo,
    Capability,
    Frame,
    FrameMetadata,
    LensMode,
    Microscope,
    OpticsState,
    Roi,
    SettleSpec,
    StageMove,
    StagePosition,
    set_and_confirm,
)
from drivers.limits import LimitedMicroscope, SafetyLimits

__all__ = [
    "Calibration",
    "Camera",
    "CameraInfo",
    "Capability",
    "Frame",
    "FrameMetadata",
    "HardwareFault",
    "InstrumentError",
    "InstrumentTimeout",
    "LensMode",
    "LimitViolation",
    "LimitedMicroscope",
    "Microscope",
    "NotAvailable",
    "OpticsState",
    "OutOfRange",
    "ProtocolError",
    "Roi",
    "SafetyLimits",
    "ServerUnreachable",
    "SettleSpec",
    "StageMove",
    "StagePosition",
    "set_and_confirm",
]
