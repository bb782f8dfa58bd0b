"""Reconstruction while the series arrives.

Images are added one at a time (from the acquisition, or replayed from disk); the state keeps iterating
with what it has, warm-starts from its own last result each time an image arrives, and can warm-start the
next series of the same area. Snapshots come out at a bounded rate for monitors.

The same Reconstructor does the work, so a stream that has received every image and run to convergence
computes what the batch call computes; if every image is present before the first iteration it is the
batch call, step for step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from ltemlive.optics.params import MicroscopeParams
from ltemlive.reconstruct.config import ReconstructionConfig
from ltemlive.reconstruct.solver import ReconstructionResult, Reconstructor, Snapshot
from ltemlive.series import Series


class StreamingReconstruction:
    def __init__(
        self,
        microscope: MicroscopeParams,
        pixel_size_m: float,
        *,
        config: ReconstructionConfig | None = None,
        dose_e_per_px: float | None = None,
        warm_start: ReconstructionResult | None = None,
        snapshot_interval_s: float = 0.5,
    ):
        self.microscope = microscope
        self.pixel_size_m = float(pixel_size_m)
        self.cfg = config or ReconstructionConfig()
        self.dose = dose_e_per_px
        self.snapshot_interval_s = float(snapshot_interval_s)
        self.images: list[np.ndarray] = []
        self.defocus: list[float] = []
        self._warm = warm_start
        # The reconstruction of the images before the last add_image: its state warm-starts the next one, and
        # its full result (uncertainties included) is computed only if someone asks for it.
        self._prev: Reconstructor | None = None
        self._rec: Reconstructor | None = None
        self._steps: Iterator[Snapshot] | None = None
        self._last_emit = -np.inf
        self.last_snapshot: Snapshot | None = None
        self.done = False

    # -- input ----------------------------------------------------------------------------------------
    def add_image(self, image: np.ndarray, defocus_m: float) -> None:
        image = np.asarray(image, dtype=np.float32)
        if self.images and image.shape != self.images[0].shape:
            raise ValueError(f"image shape {image.shape} differs from the series' {self.images[0].shape}")
        if not np.isfinite(defocus_m):
            raise ValueError(f"defocus_m must be finite, got {defocus_m}")
        if self._rec is not None:
            self._prev = self._rec  # keep what has been learnt so far; nothing is computed here
        self.images.append(image)
        self.defocus.append(float(defocus_m))
        self._rec = None
        self._steps = None
        self.done = False

    @property
    def ready(self) -> bool:
        """At least two images at different defocus: enough to start."""
        return len(set(self.defocus)) >= 2

    def series(self) -> Series:
        return Series(
            images=np.stack(self.images),
            defocus_m=np.asarray(self.defocus),
            pixel_size_m=self.pixel_size_m,
            microscope=self.microscope,
            dose_e_per_px=self.dose,
        )

    # -- work -----------------------------------------------------------------------------------------
    def step(self) -> Snapshot | None:
        """Advance by one block of iterations; returns its snapshot (None when not ready or finished)."""
        if not self.ready or self.done:
            return None
        if self._rec is None:
            if self._prev is not None:
                # A warm start needs the state, not its uncertainties: those cost more than a block of iterations
                # and would be recomputed on every image.
                self._warm = self._prev.result(uncertainties=False)
                self._prev = None
            self._rec = Reconstructor(self.series(), self.cfg, warm_start=self._warm)
            self._steps = self._rec.steps()
        try:
            snap = next(self._steps)
        except StopIteration:
            self.done = True
            return None
        self.last_snapshot = snap
        return snap

    def snapshots(self, with_phase: bool = True) -> Iterator[Snapshot]:
        """Iterate to convergence on the images present, yielding snapshots at most every
        `snapshot_interval_s` (and always the last one)."""
        while True:
            snap = self.step()
            if snap is None:
                break
            now = time.perf_counter()
            if now - self._last_emit >= self.snapshot_interval_s:
                self._last_emit = now
                yield self._with_phase(snap) if with_phase else snap
        if self.last_snapshot is not None:
            yield self._with_phase(self.last_snapshot) if with_phase else self.last_snapshot

    def _with_phase(self, snap: Snapshot) -> Snapshot:
        if snap.phase is None and self._rec is not None:
            snap.phase = self._rec.model.phase_fov().detach().cpu().numpy()
        return snap

    def run(self) -> ReconstructionResult:
        for _ in self.snapshots(with_phase=False):
            pass
        return self.result()

    def result(self) -> ReconstructionResult:
        if self._rec is None:
            if self._prev is not None:
                return self._prev.result()
            if self._warm is None:
                raise RuntimeError("no reconstruction yet: add at least two images at different defocus")
            return self._warm
        return self._rec.result()

    def next_series(self) -> StreamingReconstruction:
        """A fresh stream for the next series of the same area, warm-started from this one's result
        (phase, defocus calibration, theta_c, astigmatism, shifts)."""
        return StreamingReconstruction(
            self.microscope,
            self.pixel_size_m,
            config=self.cfg,
            dose_e_per_px=self.dose,
            warm_start=self.result(),
            snapshot_interval_s=self.snapshot_interval_s,
        )
