"""One series, reconstructed on whichever process runs it: a Dask worker, or the caller itself.

:func:`process_item` is what the batch submits, one call per series. It reads its own data (only the small
:class:`WorkItem` travels), reconstructs it with the same solver and writes the same files as
``ltemlive reconstruct`` (ltemlive.storage.results.write_reconstruction), then writes ``done.json`` LAST and
atomically: a result folder without it (a worker killed half-way) is not finished and is redone on the next run.
It never raises for a bad series: it returns a record with ``status`` "ok" or "failed" and a one-line reason,
so that one series cannot stop the others.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from ltemlive.batch.items import WorkItem, frame_ids_of, load_series, one_line

#: written last: its presence means every other file of the result is complete
DONE_MARKER = "done.json"


def done_record(out_dir: str | Path) -> dict[str, Any] | None:
    """The completion record of a result folder, or None when the result is absent or unfinished."""
    p = Path(out_dir) / DONE_MARKER
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing, or cut short: redo
    return rec if isinstance(rec, dict) and rec.get("status") == "ok" else None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())  # the marker promises the files before it: make it durable only after them
    os.replace(tmp, path)


def _clear(out: Path) -> None:
    """Before rewriting a result: the marker goes first (a crash now leaves an unfinished folder, redone next
    time), then files an earlier result had and this one may not (phase_sigma.tif)."""
    from ltemlive.storage.results import RECONSTRUCTION_FILES

    (out / DONE_MARKER).unlink(missing_ok=True)
    for name in RECONSTRUCTION_FILES:
        (out / name).unlink(missing_ok=True)


def _where() -> dict[str, Any]:
    """Which process ran the task: the Dask worker's name and address, or the caller."""
    where: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "dask_worker": None}
    try:
        from distributed import get_worker

        w = get_worker()
        where.update(dask_worker=str(w.address), dask_worker_name=str(w.name))
    except (ImportError, ValueError):  # not inside a Dask worker
        pass
    return where


def _device(requested: str, where: dict[str, Any]) -> str:
    """A plain "cuda" on a numbered worker of a LocalCluster: one GPU per worker, round robin. Workers started
    by hand are expected to see one GPU each (CUDA_VISIBLE_DEVICES), so they keep "cuda"."""
    name = where.get("dask_worker_name")
    if requested != "cuda" or name is None or not name.isdigit():
        return requested
    import torch

    n = torch.cuda.device_count()
    return f"cuda:{int(name) % n}" if n > 1 else requested


def process_item(item: WorkItem, *, threads: int = 1, force: bool = False) -> dict[str, Any]:
    """Reconstruct one series and write its result folder; return what happened (never raises for bad data).

    ``threads``: torch's intra-op threads for this task. Results are bit-identical for the same thread count,
    so a batch reproduces a single-process run that uses the same value."""
    import torch

    t0 = time.perf_counter()
    where = _where()
    base = {"label": item.label, "input": item.input, "series_index": item.series_index, "out_dir": item.out_dir,
            **where}
    out = Path(item.out_dir)
    if not force and (rec := done_record(out)) is not None:
        return {**base, "status": "skipped", "reason": "done before", "done": rec, "elapsed_s": 0.0}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return {**base, **_reconstruct(item, out, threads, where, t0)}
    except Exception as exc:  # a corrupt input, a diverged fit, a full disk: this series only
        return {**base, "status": "failed", "reason": one_line(exc), "error_type": type(exc).__name__,
                "elapsed_s": time.perf_counter() - t0}
    finally:
        torch.set_num_threads(before)  # the caller may be a process that does other work (tests, bench)


def _reconstruct(item: WorkItem, out: Path, threads: int, where: dict[str, Any], t0: float) -> dict[str, Any]:
    import numpy as np

    import ltemlive
    from ltemlive.reconstruct import ReconstructionConfig, Reconstructor
    from ltemlive.storage.results import write_reconstruction

    series = load_series(item)
    cfg = ReconstructionConfig.model_validate(item.config)
    device = _device(cfg.device, where)
    if device != cfg.device:
        cfg = cfg.model_copy(update={"device": device})
    result = Reconstructor(series, cfg).run()
    if not (np.isfinite(result.phase).all() and np.isfinite(result.amplitude).all()
            and np.isfinite(result.defocus_m).all()):
        raise ValueError("the reconstruction diverged (non-finite phase, amplitude or defocus)")
    batch = {
        "input": item.input,
        "input_kind": item.kind,
        "series_index": item.series_index,
        "frame_ids": frame_ids_of(series),
        "config_source": item.config_source,
        "config": cfg.model_dump(mode="json"),
        "torch_threads": threads,
        "software_version": ltemlive.__version__,
        **where,
    }
    _clear(out)
    files = write_reconstruction(out, series, result, cfg, extra={"batch": batch}, overwrite=True)
    elapsed = time.perf_counter() - t0
    record = {
        "status": "ok",
        "format": "ltemlive-batch-result",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **batch,
        "elapsed_s": elapsed,
        "reconstruction_s": result.elapsed_s,
        "iterations": result.iterations,
        "stopped_because": result.stopped_because,
        "files": sorted(files),
    }
    _write_atomically(out / DONE_MARKER, json.dumps(record, indent=1) + "\n")
    return {"status": "ok", "reason": "", "elapsed_s": elapsed, "iterations": result.iterations,
            "stopped_because": result.stopped_because, "done": record}
