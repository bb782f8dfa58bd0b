from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Fake:
    calls: list[str] = field(default_factory=list)
    lens: dict[str, int] = field(default_factory=lambda: {"OLc": 0x8000, "OLf": 0x8000, "OM": 0x8000})
    pos: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0, 0.0])  # nm, nm, nm, deg, deg
    status: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0])
    function_mode: int = 2
    mag: float = 4000.0
    blank: int = 0
    exposure_us: int = 1_000_000
    stuck_stage: bool = False
    snapshot_delay_s: float = 0.0
    corrupt: bool = False
    detectors: list[str] = field(default_factory=lambda: ["camera"])
    shape: tuple[int, int] = (64, 64)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


FAKE = _Fake()
