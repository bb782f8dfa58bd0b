"""The controller's persisted run state: one small JSON file per session, replaced atomically.

Written after every frame and state change (write to a temporary file, fsync, rename), so a controller that
crashed or was killed leaves a record of where it stood, and the next controller of the same session reports
it (and logs it in its own run file) before it starts.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ltemlive.wire import json_safe

__all__ = ["RunStateFile"]

TERMINAL = ("done", "error")


class RunStateFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"state": "unreadable"}
        return data if isinstance(data, dict) else {"state": "unreadable"}

    def previous_run(self) -> dict[str, Any] | None:
        """What the last controller of this session left behind, as ``{"summary": str, "state": dict}``."""
        st = self.read()
        if st is None:
            return None
        where = (
            f"series {st.get('series_index')} frame {st.get('frame_index')}, {st.get('frames_written')} frames written"
        )
        if st.get("state") in TERMINAL:
            summary = f"previous run {st.get('run_id')} ended {st.get('state')} ({st.get('outcome')}) at {where}"
        else:
            summary = (
                f"previous run {st.get('run_id')} was interrupted while {st.get('state')} at {where}; "
                f"its run file {st.get('run_file')} holds every frame written"
            )
        small = {k: st.get(k) for k in ("run_id", "run_file", "state", "outcome", "series_index", "frame_index",
                                         "frames_written")}
        return {"summary": summary, "state": small}

    def write(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(json_safe(state), indent=1, allow_nan=False)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
