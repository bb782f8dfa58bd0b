"""``ltemlive replay RUNFILE``: a recorded run streamed through the same reconstructor service again.

The recorded frames go, series by series, into a NEW run file (the source is only read) and from there onto a
frame stream exactly as the controller offers live frames: on disk first, then offered, with the recorded
read-back defocus as each image's nominal value. The reconstructor service consumes them unchanged (warm start
and calibration carried from series to series) and sends its results to a control socket served here, which
writes them to the new file and runs the defocus feedback rule on them — advisory only, nothing is commanded —
so the calibration history shows what the live loop would have done with these settings.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ltemlive.controller.control import ControlServer
from ltemlive.controller.controller import result_problem
from ltemlive.controller.feedback import DefocusEstimate, DefocusFeedback
from ltemlive.session.config import RunConfig, reconstruction_config
from ltemlive.session.optics import optics_of_run
from ltemlive.storage.runfile import RunFileError, RunReader, RunWriter, new_run_path
from ltemlive.stream.server import FrameStreamServer
from ltemlive.wire import frames as fm
from ltemlive.wire import security

__all__ = ["replay"]


class _ReplayController:
    """What the control socket needs: results in; commands answered (only stop/abort mean something here)."""

    def __init__(self, writer: RunWriter, feedback: DefocusFeedback, stream: FrameStreamServer, session: str, console):
        self.writer, self.feedback, self.stream, self.session = writer, feedback, stream, session
        self.console = console
        self.results: dict[int, str] = {}
        self.frame_ids: dict[int, list[int]] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.duplicates = 0

    def accept_result(self, series, status, reason, parameters, provenance, arrays) -> bool:
        with self.lock:
            if series in self.results:
                self.duplicates += 1
                return False
            if series not in self.frame_ids:
                return True
            if status == "ok" and (problem := result_problem(parameters, arrays)):
                status, reason = "error", f"result refused: {problem}"
            self.results[series] = status
        if status == "ok":
            self.writer.write_reconstruction(
                series, arrays[0], arrays[1],
                {**provenance, "series_index": series, "frame_ids": self.frame_ids[series], "parameters": parameters,
                 "replay": True},
            )
            try:
                d = self.feedback.update(DefocusEstimate.from_parameters(series, parameters))
                self.writer.append_calibration(series, d.after.scale, d.after.offset_m, d.accepted,
                                               {**d.model_dump(mode="json"), "advisory_only": True})
            except (KeyError, ValueError) as exc:
                self.writer.log_event("feedback", f"series {series}: estimate unusable: {exc}")
            df = ", ".join(f"{v * 1e3:+.4f}" for v in parameters.get("defocus_m", []))
            self.console.print(f"  series {series} reconstructed: refined defocus [{df}] mm")
        else:
            self.console.print(f"  series {series}: {status} {reason}")
        self.writer.log_event("result", f"series {series}: reconstruction {status} {reason}".strip(), series=series)
        self.stream.series_done(series)
        return True

    def status(self) -> dict[str, Any]:
        return {"state": "replaying", "results": {str(k): v for k, v in self.results.items()}}

    def stop(self) -> str:
        self.stopped.set()
        return "stopping"

    abort = stop

    def _not_here(self, *_a: Any) -> str:
        return "cannot do that in a replay"

    pause = resume = reset_feedback = freeze_feedback = _not_here


def replay(runfile: Path, cfg: RunConfig, console, *, out_dir: Path | None = None, max_iter: int | None = None) -> int:
    from ltemlive.recon_service.service import ReconstructorService
    from ltemlive.summary import write_summary

    try:
        src = RunReader(runfile)
    except RunFileError as exc:
        raise ValueError(str(exc)) from None
    recon_cfg = reconstruction_config(cfg)
    if max_iter is not None:
        recon_cfg = recon_cfg.model_copy(update={"max_iter": max_iter})
    with src:
        attrs = src.attrs
        series = [s for s in src.series() if s["n_frames"] >= 2]
        if not series:
            raise ValueError(f"{runfile}: no series with at least two frames to replay")
        out = Path(out_dir) if out_dir is not None else Path(runfile).resolve().parent
        session = f"{attrs.get('session') or 'run'}-replay"[:64]
        path = new_run_path(out, session)
        shape = tuple(int(v) for v in attrs["frame_shape"])
        px = float(attrs["pixel_size_m"])
        ctx = zmq.Context()
        writer = RunWriter(path, run_id=path.stem, session=session, frame_shape=shape, pixel_size_m=px,
                           config_yaml=cfg.dump_yaml(), instrument={"replay_of": str(runfile)})
        stream = FrameStreamServer(read_frame=lambda i: writer.read_frame(i)[0], session="", context=ctx).start()
        rc = _ReplayController(writer, DefocusFeedback(cfg.feedback), stream, session, console)
        control = ControlServer(rc, context=ctx).start()
        service = ReconstructorService(cfg.reconstructor, recon_cfg, frames_endpoint=stream.endpoint,
                                       control_endpoint=control.endpoint, context=ctx)
        stop = threading.Event()
        console.print(f"[bold]replay[/] of {runfile}: {len(series)} series -> {path}")
        optics = optics_of_run(src.attrs, cfg)
        try:
            for s in series:
                k = s["index"]
                ids = src.frames_of_series(k)
                recs = [src.frame_record(i) for i in ids]
                plan = s.get("plan") or {}
                writer.begin_series(k, {**plan, "replay_of": str(runfile)})
                stream.begin_series(fm.Start(
                    series=k, run_id=path.stem, n_planned=len(ids),
                    defocus_planned_m=[r["defocus_planned_m"] for r in recs], frame_shape=shape, pixel_size_m=px,
                    optics=optics, dose_e_per_px=plan.get("dose_e_per_px") or cfg.plan.dose_e_per_px,
                ))
                rc.frame_ids[k] = []
                for j, (i, r) in enumerate(zip(ids, recs, strict=True)):
                    data = np.asarray(src.frame(i), dtype=np.float32)
                    rb = r.get("defocus_readback_m")
                    nominal = rb if rb is not None else r["defocus_commanded_m"]
                    fid = writer.append_frame(
                        data, series_index=k, index_in_series=j, defocus_planned_m=r["defocus_planned_m"],
                        defocus_commanded_m=r["defocus_commanded_m"], defocus_readback_m=rb,
                        calibration_scale=r["calibration_scale"], calibration_offset_m=r["calibration_offset_m"],
                        exposure_s=r["exposure_s"], t_start_epoch_s=r["t_start_epoch_s"],
                        t_end_epoch_s=r["t_end_epoch_s"], metadata=r.get("metadata") or {},
                    )
                    rc.frame_ids[k].append(fid)
                    stream.offer_frame(fm.FrameMsg(
                        series=k, index=j, frame_id=fid, defocus_nominal_m=nominal,
                        defocus_planned_m=r["defocus_planned_m"], defocus_commanded_m=r["defocus_commanded_m"],
                        exposure_s=r["exposure_s"]), data)
                status = s["status"] if s["status"] in ("complete", "aborted", "error") else "aborted"
                writer.end_series(k, status, s.get("reason") or "")
                stream.end_series(k, status, s.get("reason") or "")

            def watch() -> None:
                while not stop.is_set():
                    if rc.stopped.is_set() or len(rc.results) == len(series):
                        stop.set()
                    time.sleep(0.1)

            threading.Thread(target=watch, daemon=True).start()
            try:
                service.run(stop)
            except KeyboardInterrupt:
                stop.set()
        finally:
            control.stop()
            stream.stop()
            writer.close()
            security.release(ctx)
            ctx.destroy(linger=0)
    done = sum(v == "ok" for v in rc.results.values())
    console.print(f"replay: {done} of {len(series)} series reconstructed -> {path}")
    try:
        files = write_summary(path, path.with_suffix(""))
        console.print(f"summary: {path.with_suffix('')}/ ({', '.join(sorted(files.get('files', {})))})")
    except Exception as exc:
        console.print(f"[yellow]summary not written: {exc}[/]")
    return 0 if done == len([s for s in series if s["status"] == "complete"]) else 1
