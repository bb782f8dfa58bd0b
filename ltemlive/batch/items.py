"""What a batch reprocesses: one work item per series, found from the inputs without reading any image.

Discovery runs on the client and reads only metadata (the run file's series table, an HDF5 file's format
attribute), so that it is quick and so that the images never pass through the Dask scheduler: each task gets a
:class:`WorkItem` (paths, a series index, a config dict) and reads its own data with :func:`load_series`.

- A run file (``format = "ltemlive-run"``) gives one item per series that ended ``complete`` with every planned
  frame in the file; aborted, failed or incomplete series are listed as skipped, with the reason.
- A recorded series (an ltemlive series ``.h5`` from ``ltemlive simulate``, or ``.tif`` + ``.yaml`` sidecar)
  gives one item.
- An input that cannot be opened at all (truncated, garbage) is a *broken* input: reported as a failure of the
  batch, which goes on with the others.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from ltemlive.storage.runfile import FORMAT as RUN_FORMAT
from ltemlive.storage.series_io import FORMAT as SERIES_FORMAT
from ltemlive.storage.series_io import H5_SUFFIXES, TIFF_SUFFIXES

#: suffixes taken when a folder is given as an input (not recursive)
INPUT_SUFFIXES = (*H5_SUFFIXES, *TIFF_SUFFIXES)


@dataclass(frozen=True)
class WorkItem:
    """One series to reconstruct: small and picklable (it travels to a Dask worker)."""

    kind: Literal["runfile", "series"]
    input: str  # absolute path of the run file or series file
    out_dir: str  # absolute path of the result folder
    config: dict[str, Any]  # ReconstructionConfig as JSON-able dict, resolved on the client
    config_source: str  # where the config came from (file, "recorded in the run file", "defaults")
    series_index: int | None = None  # run files only
    n_frames: int = 0  # run files only: frames the series must have

    @property
    def label(self) -> str:
        name = Path(self.input).name
        return name if self.series_index is None else f"{name} series {self.series_index}"


@dataclass
class Discovery:
    items: list[WorkItem] = field(default_factory=list)
    #: (label, why): series not reconstructed because the acquisition did not finish them (not an error)
    not_eligible: list[tuple[str, str]] = field(default_factory=list)
    #: (label, why): inputs that cannot be read at all (counted as failures)
    broken: list[tuple[str, str]] = field(default_factory=list)


class BrokenInput(Exception):
    """An input file exists but cannot be read as what its name says."""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """The input files: each path as given, a folder as its series/run files. A missing path or an unknown
    suffix is a usage error (ValueError: exit 2 before any cluster starts)."""
    files: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in INPUT_SUFFIXES)
            if not found:
                raise ValueError(f"{p}: a folder without run or series files ({', '.join(INPUT_SUFFIXES)})")
            files.extend(found)
        elif not p.exists():
            raise ValueError(f"{p}: no such file")
        elif p.suffix.lower() not in INPUT_SUFFIXES:
            raise ValueError(
                f"{p}: unknown input {p.suffix or '(no extension)'!r}; give run files (.h5) or recorded series "
                "(.h5 from ltemlive simulate, .tif/.tiff with a .yaml sidecar)"
            )
        else:
            files.append(p)
    unique = list(dict.fromkeys(f.resolve() for f in files))  # the same file twice is one input
    return unique


def hdf5_format(path: Path) -> str:
    """The ``format`` attribute of an HDF5 file. SWMR first: a run file whose writer died still carries the
    writer's mark and refuses a plain open (docs/runfile.md); an older-format file refuses SWMR."""
    if not h5py.is_hdf5(path):
        raise BrokenInput(f"{path}: not an HDF5 file (truncated or damaged?)")
    errors = []
    for kw in ({"libver": "latest", "swmr": True}, {}):
        try:
            with h5py.File(path, "r", **kw) as f:
                fmt = f.attrs.get("format", "")
                return fmt.decode() if isinstance(fmt, bytes) else str(fmt)
        except (OSError, RuntimeError) as exc:  # h5py raises either for a damaged superblock
            errors.append(one_line(exc))
    raise BrokenInput(f"{path}: cannot open as HDF5 (truncated or damaged?): {errors[-1]}")


def result_root(path: Path, out: Path | None) -> Path:
    """Where an input's results go: ``<out>/<stem>`` with --out, else ``<stem>-reprocessed`` next to it."""
    return (out / path.stem) if out is not None else path.parent / f"{path.stem}-reprocessed"


def series_dir(root: Path, series_index: int) -> Path:
    return root / f"series-{series_index:04d}"


def recorded_reconstruction(config_yaml: str) -> dict[str, Any] | None:
    """The ``reconstruction`` section of the session config a run file recorded (None: none recorded)."""
    import yaml

    if not config_yaml.strip():
        return None
    data = yaml.safe_load(config_yaml)
    if not isinstance(data, dict):
        raise ValueError("the recorded config is not a mapping")
    section = data.get("reconstruction")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ValueError("the recorded config's 'reconstruction' is not a mapping")
    return section


def run_file_series(path: Path) -> tuple[dict[str, Any], list[tuple[int, int]], list[tuple[int, str]]]:
    """(root attributes, [(series, n_frames)] complete series, [(series, why not)]) of a run file."""
    from ltemlive.storage.runfile import RunReader

    good: list[tuple[int, int]] = []
    not_eligible: list[tuple[int, str]] = []
    with RunReader(path) as r:
        attrs = r.attrs
        for s in r.series():
            k = s["index"]
            ids = r.frames_of_series(k)
            planned = (s.get("plan") or {}).get("defocus_planned_m")
            expected = len(planned) if isinstance(planned, list) and planned else s["n_frames"]
            if s["status"] != "complete":
                why = s["status"] + (f": {s['reason']}" if s["reason"] else "")
                not_eligible.append((k, why))
            elif len(ids) < expected or s["n_frames"] != len(ids):
                not_eligible.append((k, f"only {len(ids)} of {expected} frames in the file"))
            elif len(ids) < 2:
                not_eligible.append((k, "fewer than two frames"))
            else:
                good.append((k, len(ids)))
    return attrs, good, not_eligible


def load_series(item: WorkItem):
    """The item's Series, read here (on the worker). Raises ValueError (one line) for unusable data."""
    from ltemlive.storage import read_series

    if item.kind == "series":
        return read_series(item.input)
    return _run_file_series(item)


def _run_file_series(item: WorkItem):
    """A run-file series as the live reconstructor sees it: the frames in acquisition order, the read-back
    defocus as nominal (the commanded one when there is no read-back: the controller's rule), the run's optics
    and the plan's dose."""
    from ltemlive.optics.params import MicroscopeParams
    from ltemlive.series import Series
    from ltemlive.session.config import RunConfig
    from ltemlive.session.optics import optics_of_run
    from ltemlive.storage.runfile import RunReader

    assert item.series_index is not None
    k = item.series_index
    with RunReader(item.input) as r:
        ids = r.frames_of_series(k)
        if len(ids) != item.n_frames:
            raise ValueError(f"{item.input}: series {k} has {len(ids)} frames, {item.n_frames} when discovered")
        recs = sorted((r.frame_record(i) for i in ids), key=lambda rec: rec["index_in_series"])
        ids = [int(rec["frame_id"]) for rec in recs]
        try:
            images = np.stack([np.asarray(r.frame(i), dtype=np.float32) for i in ids])
        except (OSError, RuntimeError) as exc:  # HDF5 cannot decode a damaged chunk
            raise ValueError(f"{item.input}: series {k}: cannot read its frames: {one_line(exc)}") from None
        nominal = []
        for rec in recs:
            rb = rec.get("defocus_readback_m")
            nominal.append(rb if rb is not None and math.isfinite(rb) else rec["defocus_commanded_m"])
        plan = next((s.get("plan") or {} for s in r.series() if s["index"] == k), {})
        # Optics: the instrument snapshot, else the recorded session config, else the defaults (as replay).
        optics = optics_of_run(r.attrs, RunConfig())
        attrs = r.attrs
    px = float(attrs["pixel_size_m"])
    if not math.isfinite(px):
        raise ValueError(f"{item.input}: the run file does not record the pixel size (pixel_size_m is NaN)")
    mic = MicroscopeParams(voltage_v=optics.voltage_v, cs_m=optics.cs_m, theta_c_rad=optics.theta_c_rad,
                           focal_spread_m=optics.focal_spread_m)
    try:
        return Series(
            images=images, defocus_m=np.asarray(nominal, dtype=np.float64), pixel_size_m=px, microscope=mic,
            dose_e_per_px=plan.get("dose_e_per_px"),
            metadata={"source": "ltemlive run file", "run_file": item.input, "run_id": attrs.get("run_id"),
                      "series_index": k, "frame_ids": ids, "plan": json.loads(json.dumps(plan, default=str))},
        )
    except ValueError as exc:
        raise ValueError(f"{item.input}: series {k}: {one_line(exc)}") from None


def frame_ids_of(series) -> list[int]:
    return list(series.metadata.get("frame_ids") or [])


def discover(
    inputs: list[str | Path],
    *,
    out: Path | None,
    config: dict[str, Any] | None,
    config_source: str = "",
    overrides: dict[str, Any] | None = None,
) -> Discovery:
    """The work items of a batch. ``config``: the --config settings (None: recorded, else defaults)."""
    from ltemlive.batch.config import resolve

    overrides = overrides or {}
    out = None if out is None else Path(out).resolve()
    found = Discovery()
    defaults = resolve(config if config is not None else {}, overrides, config_source or "defaults")
    for path in expand_inputs(inputs):
        root = result_root(path, out)
        try:
            fmt = hdf5_format(path) if path.suffix.lower() in H5_SUFFIXES else SERIES_FORMAT
        except BrokenInput as exc:
            found.broken.append((path.name, str(exc)))
            continue
        if fmt == SERIES_FORMAT:
            found.items.append(WorkItem("series", str(path), str(root), defaults, config_source or "defaults"))
            continue
        if fmt != RUN_FORMAT:
            found.broken.append((path.name, f"{path}: an HDF5 file but neither an ltemlive run file nor an ltemlive "
                                             f"series (format={fmt!r})"))
            continue
        try:
            attrs, good, not_eligible = run_file_series(path)
        except Exception as exc:  # RunFileError, or h5py on a damaged file: this input only, never the batch
            found.broken.append((path.name, one_line(exc)))
            continue
        found.not_eligible += [(f"{path.name} series {k}", why) for k, why in not_eligible]
        if config is not None:
            cfg, source = defaults, config_source
        else:
            try:
                recorded = recorded_reconstruction(str(attrs.get("config_yaml") or ""))
                source = f"{path.name} (recorded)" if recorded is not None else "defaults"
                cfg = resolve(recorded or {}, overrides, f"{path}: recorded config: reconstruction")
            except ValueError as exc:
                found.broken.append((path.name, f"{one_line(exc)} (give --config to choose the settings)"))
                continue
        for k, n in good:
            found.items.append(WorkItem("runfile", str(path), str(series_dir(root, k)), cfg, source, k, n))
    _refuse_collisions(found.items)
    return found


def _refuse_collisions(items: list[WorkItem]) -> None:
    """Two inputs with the same stem under one --out would write into the same folder."""
    seen: dict[str, WorkItem] = {}
    for it in items:
        other = seen.setdefault(it.out_dir, it)
        if other is not it:
            raise ValueError(f"{other.input} and {it.input} would both write to {it.out_dir}; rename one, "
                             "or reprocess them in two batches with different --out")
