"""Settings of the reconstructor service (the ``reconstructor`` section of a session config). Importing this
does not import torch, so a config can be checked anywhere."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ltemlive import wire

__all__ = ["ReconstructorServiceConfig", "worker_names"]


class ReconstructorServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker: Annotated[str, Field(pattern=wire.ID_PATTERN.pattern)] = Field(
        "recon-1", description="this worker's name (1-64 characters of A-Z a-z 0-9 _ . : -)"
    )
    count: Annotated[int, Field(ge=1, le=64)] = Field(
        1,
        description="how many reconstructor processes `ltemlive run` starts on this host (named recon-1, "
        "recon-2, ... from `worker`); each takes whole series by credit. Other hosts run `ltemlive serve "
        "reconstructor` with their own worker name",
    )
    window: Annotated[int, Field(ge=1, le=64)] = Field(4, description="frames in flight to this worker (credit)")
    live: bool = Field(True, description="iterate while the series arrives and publish previews")
    warm_start: bool = Field(
        True,
        description="start each series from this worker's last result (faster); false: every series from its "
        "own images alone, so the result does not depend on which worker did which series",
    )
    preview_interval_s: Annotated[float, Field(ge=0.05, le=600)] = Field(1.0, description="between two previews")
    preview_px: Annotated[int, Field(ge=16, le=4096)] = Field(256, description="previews are downsampled to this")
    result_retry_s: Annotated[float, Field(gt=0, le=600)] = Field(2.0, description="re-send an unacked result")
    peer_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        10.0, description="the acquisition side is reported gone after this much silence"
    )
    threads: Annotated[int, Field(ge=1, le=256)] | None = Field(
        1,
        description="torch CPU threads; null: torch's default (all cores). One is the robust choice on a machine "
        "the reconstructor shares: with a busy core, two spinning threads ran 3.5x slower than one (measured)",
    )


def worker_names(name: str, count: int) -> list[str]:
    """``count`` worker names from one: recon-1 -> recon-1, recon-2, ...; gpu -> gpu-1, gpu-2, ..."""
    if count == 1:
        return [name]
    stem, number = re.fullmatch(r"(.*?)-?(\d*)", name).groups()  # type: ignore[union-attr]
    first = int(number) if number else 1
    return [f"{stem}-{first + i}" for i in range(count)]
