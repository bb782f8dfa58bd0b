"""What ``ltemlive run`` shows while the session runs: the publisher's update stream, as any monitor sees it.

One line per notable event (frames, series, reconstruction progress at most every few seconds, results,
calibration decisions, warnings), so it reads the same in an 80-column terminal and in a log file.
"""

from __future__ import annotations

import time

from rich.markup import escape

from ltemlive.publisher.subscriber import Subscriber
from ltemlive.session.config import RunConfig

__all__ = ["Progress"]

LOG_KINDS = {"run", "series", "calibration", "error", "defocus", "state", "feedback", "command", "previous_run"}


def _mm(values) -> str:
    return "[" + ", ".join(f"{v * 1e3:+.4f}" for v in values) + "] mm"


class Progress:
    def __init__(self, cfg: RunConfig, console, *, recon_every_s: float = 5.0):
        self.console = console
        self.recon_every_s = recon_every_s
        self._last_recon = -1e9
        self.sub = Subscriber(cfg.endpoints.updates, cfg.endpoints.snapshot)
        self.t0 = time.monotonic()

    def _say(self, text: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.t0:6.1f}s[/] {text}", highlight=False)

    def sync(self, timeout_s: float = 5.0) -> bool:
        """Take the publisher's snapshot before the acquisition starts, so no early event is folded into it."""
        deadline = time.monotonic() + timeout_s
        while not self.sub.synced and time.monotonic() < deadline:
            self.poll(0.05)
        return self.sub.synced

    def poll(self, timeout_s: float) -> None:
        for ev, _arrays in self.sub.poll(timeout_s):
            p = ev.payload
            if ev.topic == "frame":
                rb = p.get("defocus_readback_m")
                self._say(
                    f"series {p['series']} ({p['series'] + 1}/{p['n_series']}) image {p['index'] + 1}/{p['n_frames']}: "
                    f"planned {p['defocus_planned_m'] * 1e3:+.4f} mm, "
                    f"commanded {p['defocus_commanded_m'] * 1e3:+.4f} mm"
                    + (f" (read-back {rb * 1e3:+.4f})" if isinstance(rb, float) else "")
                    + " -> disk, stream"
                )
            elif ev.topic == "recon":
                now = time.monotonic()
                if now - self._last_recon >= self.recon_every_s:
                    self._last_recon = now
                    self._say(
                        f"  reconstructing series {p['series']} ({p.get('n_images')} images): it {p['iteration']}, "
                        f"{p['stage']}, loss {p['data_loss']:.4g}"
                    )
            elif ev.topic == "result":
                self._say(
                    f"[green]series {p['series']} reconstructed[/] ({p.get('iterations')} it): refined defocus "
                    f"{_mm(p['defocus_m'])} from nominal {_mm(p['defocus_nominal_m'])}"
                )
            elif ev.topic == "log" and p.get("kind") in LOG_KINDS:
                colour = {"error": "red", "previous_run": "yellow", "calibration": "cyan"}.get(p["kind"], "")
                msg = escape(str(p.get("message", "")))
                self._say(f"[{colour}]{msg}[/]" if colour else msg)

    def close(self) -> None:
        self.sub.close()
