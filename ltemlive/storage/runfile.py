"""The run file: one HDF5 file per acquisition run, written live and readable while it is written.

The acquisition controller writes every frame here, with its full metadata, and flushes it *before* the frame
is offered downstream. The file is HDF5 in SWMR mode (single writer, multiple readers): another process can
open it with ``h5py.File(path, "r", libver="latest", swmr=True)`` and call ``refresh()`` on a dataset to see
what the writer has flushed since. A run file is never overwritten, and a file whose writer died (even by
SIGKILL) still holds every frame that was flushed before. Layout and guarantees: docs/runfile.md.

Text columns (``status``, ``reason``, every ``*_json``) are FIXED-LENGTH UTF-8 strings, not variable-length
ones: HDF5 keeps variable-length data in the global heap, which SWMR does not cover (with h5py 3.16 /
HDF5 2.0 a live reader fails with "Can't synchronously read data (address of object past end of allocation)").
The long text columns are gzip-compressed, so the padding costs almost nothing on disk; each has a maximum
size in bytes (``TEXT_MAX_BYTES``). ``ds.asstr()[i]`` reads a row as ``str`` with h5py alone.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
import re
import secrets
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

import ltemlive

FORMAT = "ltemlive-run"
FORMAT_VERSION = 1
SERIES_STATUSES = ("acquiring", "complete", "aborted", "error")
FINAL_STATUSES = ("complete", "aborted", "error")

#: Size in bytes (UTF-8) of each fixed-length text column. A JSON text longer than this is refused with a
#: ValueError before anything is written (events: the fields are replaced by a short note instead); ``reason``
#: and the event ``kind`` / ``message`` are truncated. Reading a whole column at once (``ds.asstr()[...]``)
#: allocates rows x size: read long columns row by row or in slices.
TEXT_MAX_BYTES = {
    "frames/metadata_json": 16 * 1024,
    "series/status": 16,
    "series/reason": 1024,
    "series/plan_json": 64 * 1024,
    "reconstructions/provenance_json": 256 * 1024,
    "calibration/record_json": 16 * 1024,
    "events/kind": 128,
    "events/message": 2048,
    "events/fields_json": 16 * 1024,
}
#: HDF5 format: the oldest that supports SWMR (superblock v3), so that h5py on HDF5 >= 1.10 can read the file.
LIBVER = ("v110", "latest")

_TEXT = "text"


# (name, dtype, units, description). Every group's LAST column is its commit column: written and flushed
# after all the others, with a fill value (NaN / -1) that a row not yet written keeps.
_FRAMES: list[tuple[str, Any, str | None, str]] = [
    ("data", "f4", None, "the frame as acquired (camera counts), float32 (N, H, W)"),
    ("series_index", "i4", None, "series this frame belongs to"),
    ("index_in_series", "i4", None, "position of the frame within its series (0, 1, ...)"),
    ("defocus_planned_m", "f8", "m", "the true defocus the plan asked for"),
    ("defocus_commanded_m", "f8", "m", "the defocus sent to the instrument (plan mapped through the calibration)"),
    ("defocus_readback_m", "f8", "m", "the confirmed defocus read-back; NaN when unknown"),
    ("calibration_scale", "f8", "1", "calibration in force: true = scale * commanded + offset"),
    ("calibration_offset_m", "f8", "m", "calibration in force: true = scale * commanded + offset"),
    ("exposure_s", "f8", "s", "exposure time"),
    ("t_start_epoch_s", "f8", "s", "start of the exposure, Unix time"),
    ("t_end_epoch_s", "f8", "s", "end of the exposure, Unix time"),
    ("metadata_json", _TEXT, None, "JSON of the driver's FrameMetadata (instrument state; simulator: truth)"),
    ("t_written_epoch_s", "f8", "s", "when the frame was written to this file, Unix time (written last)"),
]
_SERIES: list[tuple[str, Any, str | None, str]] = [
    ("index", "i4", None, "series index"),
    ("status", _TEXT, None, "'acquiring' | 'complete' | 'aborted' | 'error'"),
    ("reason", _TEXT, None, "why the series ended as it did (free text)"),
    ("first_frame", "i8", None, "global frame id of the series' first frame (-1 before any)"),
    ("n_frames", "i4", None, "frames written for this series so far"),
    ("t_end_epoch_s", "f8", "s", "end of the series, Unix time; NaN while it runs"),
    ("plan_json", _TEXT, None, "JSON of the series plan (defocus list, exposure, binning, hooks, calibration)"),
    ("t_start_epoch_s", "f8", "s", "start of the series, Unix time"),
]
_RECONSTRUCTIONS: list[tuple[str, Any, str | None, str]] = [
    ("phase", "f4", "rad", "reconstructed phase, float32 (R, H, W)"),
    ("amplitude", "f4", "1", "reconstructed amplitude, float32 (R, H, W)"),
    ("provenance_json", _TEXT, None, "JSON provenance: config, software, input frame ids, refined parameters"),
    ("series_index", "i4", None, "series reconstructed"),
]
_CALIBRATION: list[tuple[str, Any, str | None, str]] = [
    ("series_index", "i4", None, "series whose data gave this record (-1: none)"),
    ("scale", "f8", "1", "calibration scale in force AFTER this record (true = scale * commanded + offset)"),
    ("offset_m", "f8", "m", "calibration offset in force AFTER this record"),
    ("accepted", "i1", None, "1 accepted, 0 rejected"),
    ("record_json", _TEXT, None, "JSON of the full decision (estimate, sigma, reason, before/after)"),
    ("t_epoch_s", "f8", "s", "time of the decision, Unix time"),
]
_EVENTS: list[tuple[str, Any, str | None, str]] = [
    ("kind", _TEXT, None, "event kind"),
    ("message", _TEXT, None, "human-readable message"),
    ("fields_json", _TEXT, None, "JSON of the event's fields"),
    ("t_epoch_s", "f8", "s", "time of the event, Unix time"),
]
_GROUPS = {
    "frames": _FRAMES,
    "series": _SERIES,
    "reconstructions": _RECONSTRUCTIONS,
    "calibration": _CALIBRATION,
    "events": _EVENTS,
}
_IMAGE_COLUMNS = {("frames", "data"), ("reconstructions", "phase"), ("reconstructions", "amplitude")}


class RunFileError(ValueError):
    """A run file that is missing, unreadable, not a run file, or used wrongly; the message names the path."""


class RunFileExists(FileExistsError):
    """A new run would overwrite an existing file."""


# -- JSON -----------------------------------------------------------------------------------------------------
def _plain(obj: Any, where: str, lenient: bool) -> Any:
    """obj as JSON-able Python: numpy -> Python numbers/lists, non-finite floats -> None."""
    if obj is None or isinstance(obj, bool | str):
        return obj.value if isinstance(obj, enum.Enum) else obj
    if isinstance(obj, enum.Enum):
        return _plain(obj.value, where, lenient)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return _plain(obj.item(), where, lenient)
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist(), where, lenient)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if isinstance(k, np.generic):
                k = k.item()
            if isinstance(k, str):
                key = k
            elif isinstance(k, int | float | bool) or k is None:
                key = json.dumps(k)  # as json.dumps would name it
            else:
                key = str(k)
            out[key] = _plain(v, f"{where}.{key}", lenient)
        return out
    if isinstance(obj, list | tuple):
        return [_plain(v, f"{where}[{i}]", lenient) for i, v in enumerate(obj)]
    if isinstance(obj, set | frozenset):
        items = [_plain(v, f"{where}[]", lenient) for v in obj]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, _dt.datetime | _dt.date | _dt.time):
        return obj.isoformat()
    if hasattr(obj, "model_dump"):  # pydantic v2 model
        return _plain(obj.model_dump(mode="json"), where, lenient)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj), where, lenient)
    if lenient:
        return repr(obj)
    raise TypeError(f"cannot store {where} as JSON: {type(obj).__name__} is not a number, string, list or dict")


def to_json(obj: Any, *, lenient: bool = False, what: str = "value") -> str:
    """Strict JSON text of obj: numpy scalars/arrays become numbers/lists, NaN and inf become null, pydantic
    models and dataclasses become dicts. Unknown types raise TypeError (``lenient``: their repr is stored)."""
    return json.dumps(_plain(obj, what, lenient), allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def _from_json(text: str) -> Any:
    return json.loads(text) if text else None


# -- helpers --------------------------------------------------------------------------------------------------
def new_run_path(directory: str | Path, session: str, now: _dt.datetime | None = None) -> Path:
    """``<directory>/<session>-<YYYYmmdd-HHMMSS>-<6 hex>.h5`` that does not exist yet (time: ``now``, default
    the current UTC time). Creates the directory. Characters of ``session`` other than letters, digits, ``.``,
    ``_`` and ``-`` become ``_``. RunWriter still opens with mode "x", so a race cannot overwrite a file."""
    directory = Path(directory)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(session)).strip("._")
    if not safe:
        raise ValueError(f"session name {session!r} gives an empty file name")
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y%m%d-%H%M%S")
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(1000):
        path = directory / f"{safe}-{stamp}-{secrets.token_hex(3)}.h5"
        if not path.exists():
            return path
    raise RunFileExists(f"no free run file name for {safe}-{stamp} in {directory}")


def _text_dtype(key: str) -> np.dtype:
    return h5py.string_dtype("utf-8", TEXT_MAX_BYTES[key])


def _fit(text: str, key: str, path: Path, *, truncate: bool) -> bytes:
    raw = text.encode("utf-8")
    limit = TEXT_MAX_BYTES[key]
    if len(raw) <= limit:
        return raw
    if not truncate:
        raise ValueError(f"{path}: {key} text is {len(raw)} bytes, more than the {limit} this column holds")
    cut = raw[: limit - 3].decode("utf-8", errors="ignore").encode("utf-8")
    return cut + "…".encode()


def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _image(name: str, data: Any, shape: tuple[int, int], *, finite: bool) -> np.ndarray:
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real numbers castable to float32, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, the run's frame shape is {shape}")
    arr = arr.astype(np.float32, copy=False)  # no copy when it is float32 already: h5py copies on write
    if finite and not np.isfinite(arr).all():
        raise ValueError(f"{name} has {int((~np.isfinite(arr)).sum())} non-finite pixel(s) (as float32)")
    return arr


def _nan_to_none(v: float) -> float | None:
    return None if math.isnan(v) else v


def _visible_rows(group: h5py.Group, columns: list[tuple[str, Any, str | None, str]]) -> int:
    """Rows every column of the group holds, less a trailing row whose commit column is still the fill."""
    n = min(group[name].shape[0] for name, *_ in columns)
    commit = group[columns[-1][0]]
    while n > 0:
        v = commit[n - 1]
        if (commit.dtype.kind == "f" and math.isnan(v)) or (commit.dtype.kind == "i" and v == -1):
            n -= 1
        else:
            break
    return n


def _frame_record(g: h5py.Group, i: int) -> dict[str, Any]:
    rec: dict[str, Any] = {"frame_id": i}
    for name, dtype, _units, _desc in _FRAMES:
        if name == "data":
            continue
        if dtype is _TEXT:
            rec["metadata"] = _from_json(g[name].asstr()[i])
        elif dtype.startswith("i"):
            rec[name] = int(g[name][i])
        else:
            rec[name] = float(g[name][i])
    rec["defocus_readback_m"] = _nan_to_none(rec["defocus_readback_m"])
    return rec


def _attrs_dict(f: h5py.File) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in f.attrs.items():
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        elif isinstance(v, np.ndarray):
            v = tuple(x.item() for x in v)
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


# -- writer ---------------------------------------------------------------------------------------------------
class RunWriter:
    """Writes one run file (SWMR). Thread-safe: one lock around every HDF5 call."""

    def __init__(
        self,
        path: str | Path,
        *,
        run_id: str,
        session: str,
        frame_shape: tuple[int, int],
        pixel_size_m: float | None,
        config_yaml: str = "",
        instrument: dict | None = None,
        software_version: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.run_id = str(run_id)
        self._lock = threading.RLock()
        self._f: h5py.File | None = None
        shape = tuple(frame_shape)
        if (
            len(shape) != 2
            or not all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in shape)
            or (min(shape) < 1)
        ):
            raise ValueError(f"frame_shape must be two positive integers (H, W), got {frame_shape!r}")
        self.frame_shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        px = math.nan if pixel_size_m is None else float(pixel_size_m)
        if not (math.isnan(px) or (math.isfinite(px) and px > 0)):
            raise ValueError(f"pixel_size_m must be positive, NaN or None, got {pixel_size_m!r}")
        instrument_json = to_json(instrument or {}, what="instrument")
        if self.path.exists():
            raise RunFileExists(f"run file {self.path} already exists; a new run never overwrites a file")
        try:
            f = h5py.File(self.path, "x", libver=LIBVER)
        except FileExistsError:
            raise RunFileExists(f"run file {self.path} already exists; a new run never overwrites a file") from None
        try:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["run_id"] = self.run_id
            f.attrs["session"] = str(session)
            f.attrs["created_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            f.attrs["software_version"] = software_version or ltemlive.__version__
            f.attrs["config_yaml"] = str(config_yaml)
            f.attrs["instrument_json"] = instrument_json
            f.attrs["frame_shape"] = np.array(self.frame_shape, dtype=np.int64)
            f.attrs["pixel_size_m"] = px
            for gname, columns in _GROUPS.items():
                g = f.create_group(gname)
                for name, dtype, units, desc in columns:
                    self._create(g, gname, name, dtype, units, desc)
            f.swmr_mode = True
            f.flush()
        except BaseException:
            f.close()
            self.path.unlink(missing_ok=True)
            raise
        self._f = f
        self._n_frames = 0
        self._n = {g: 0 for g in _GROUPS}
        self._series: dict[int, dict[str, Any]] = {}

    def _create(self, g: h5py.Group, gname: str, name: str, dtype: Any, units: str | None, desc: str) -> None:
        h, w = self.frame_shape
        if (gname, name) in _IMAGE_COLUMNS:
            ds = g.create_dataset(name, shape=(0, h, w), maxshape=(None, h, w), chunks=(1, h, w), dtype=dtype)
        elif dtype is _TEXT:
            key = f"{gname}/{name}"
            big = TEXT_MAX_BYTES[key] > 256
            ds = g.create_dataset(
                name,
                shape=(0,),
                maxshape=(None,),
                chunks=(1,) if big else (256,),
                dtype=_text_dtype(key),
                **({"compression": "gzip", "compression_opts": 4} if big else {}),
            )
            ds.attrs["encoding"] = "utf-8" + (", JSON" if name.endswith("_json") else "")
        else:
            fill = np.nan if dtype.startswith("f") else -1
            ds = g.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(1024,), dtype=dtype, fillvalue=fill)
        if units is not None:
            ds.attrs["units"] = units
        ds.attrs["description"] = desc

    # -- internals ------------------------------------------------------------------------------------------
    def _file(self) -> h5py.File:
        if self._f is None:
            raise RunFileError(f"run file {self.path} is closed")
        return self._f

    def _append(self, gname: str, values: dict[str, Any]) -> int:
        """Append one row to every column of a group, commit column last; flush. Returns the row."""
        g = self._file()[gname]
        columns = _GROUPS[gname]
        row = self._n[gname]
        touched = []
        for name, *_ in columns[:-1]:
            ds = g[name]
            ds.resize(row + 1, axis=0)
            ds[row] = values[name]
            touched.append(ds)
        for ds in touched:
            ds.flush()
        commit = g[columns[-1][0]]
        commit.resize(row + 1, axis=0)
        value = values[columns[-1][0]]
        commit[row] = value() if callable(value) else value  # a clock read now: after the rest is flushed
        commit.flush()
        self._n[gname] = row + 1
        return row

    def _series_row(self, series_index: int) -> dict[str, Any]:
        try:
            return self._series[series_index]
        except KeyError:
            raise ValueError(f"{self.path}: series {series_index} was never begun (call begin_series first)") from None

    # -- API ------------------------------------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        with self._lock:
            return self._n_frames

    def begin_series(self, series_index: int, plan: dict) -> None:
        """Add the series' row: status 'acquiring', t_start now, the plan as JSON."""
        s = _int("series_index", series_index)
        if s < 0:
            raise ValueError(f"series_index must be >= 0, got {s}")
        plan_text = _fit(to_json(plan, what="plan"), "series/plan_json", self.path, truncate=False)
        with self._lock:
            self._file()
            if s in self._series:
                raise ValueError(f"{self.path}: series {s} was already begun")
            row = self._append(
                "series",
                {
                    "index": s,
                    "status": b"acquiring",
                    "reason": b"",
                    "first_frame": -1,
                    "n_frames": 0,
                    "t_end_epoch_s": math.nan,
                    "plan_json": plan_text,
                    "t_start_epoch_s": time.time(),
                },
            )
            self._series[s] = {"row": row, "status": "acquiring", "first_frame": -1, "n_frames": 0}

    def append_frame(
        self,
        data: np.ndarray,
        *,
        series_index: int,
        index_in_series: int,
        defocus_planned_m: float,
        defocus_commanded_m: float,
        defocus_readback_m: float | None,
        calibration_scale: float,
        calibration_offset_m: float,
        exposure_s: float,
        t_start_epoch_s: float,
        t_end_epoch_s: float,
        metadata: dict,
    ) -> int:
        """Write one frame and its metadata, flush, and return its global frame id (0, 1, 2, ...).
        When this returns, the frame is in the file and visible to SWMR readers."""
        arr = _image("frame data", data, self.frame_shape, finite=True)
        s = _int("series_index", series_index)
        readback = math.nan if defocus_readback_m is None else float(defocus_readback_m)
        if math.isinf(readback):
            raise ValueError(f"defocus_readback_m must be finite, NaN or None, got {defocus_readback_m!r}")
        values = {
            "data": arr,
            "series_index": s,
            "index_in_series": _int("index_in_series", index_in_series),
            "defocus_planned_m": _finite("defocus_planned_m", defocus_planned_m),
            "defocus_commanded_m": _finite("defocus_commanded_m", defocus_commanded_m),
            "defocus_readback_m": readback,
            "calibration_scale": _finite("calibration_scale", calibration_scale),
            "calibration_offset_m": _finite("calibration_offset_m", calibration_offset_m),
            "exposure_s": _finite("exposure_s", exposure_s),
            "t_start_epoch_s": _finite("t_start_epoch_s", t_start_epoch_s),
            "t_end_epoch_s": _finite("t_end_epoch_s", t_end_epoch_s),
            "metadata_json": _fit(
                to_json(metadata, what="metadata"), "frames/metadata_json", self.path, truncate=False
            ),
        }
        with self._lock:
            f = self._file()
            ser = self._series_row(s)
            if ser["status"] != "acquiring":
                raise ValueError(f"{self.path}: series {s} has ended ({ser['status']}); no more frames")
            values["t_written_epoch_s"] = time.time  # stamped once the data and metadata are flushed
            frame_id = self._append("frames", values)
            self._n_frames = frame_id + 1
            if ser["first_frame"] < 0:
                ser["first_frame"] = frame_id
                f["series/first_frame"][ser["row"]] = frame_id
                f["series/first_frame"].flush()
            ser["n_frames"] += 1
            f["series/n_frames"][ser["row"]] = ser["n_frames"]
            f["series/n_frames"].flush()
            return frame_id

    def end_series(self, series_index: int, status: str, reason: str = "") -> None:
        """Close the series' row: status 'complete' | 'aborted' | 'error', a reason, t_end now."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"series status must be one of {', '.join(FINAL_STATUSES)}, got {status!r}")
        s = _int("series_index", series_index)
        with self._lock:
            self._file()
            ser = self._series_row(s)
            if ser["status"] != "acquiring":
                raise ValueError(f"{self.path}: series {s} has already ended ({ser['status']})")
            self._set_status(ser, status, reason)

    def _set_status(self, ser: dict[str, Any], status: str, reason: str) -> None:
        g = self._file()["series"]
        r = ser["row"]
        g["reason"][r] = _fit(str(reason), "series/reason", self.path, truncate=True)
        g["t_end_epoch_s"][r] = time.time()
        g["status"][r] = status.encode()
        for name in ("reason", "t_end_epoch_s", "status"):
            g[name].flush()
        ser["status"] = status

    def write_reconstruction(
        self, series_index: int, phase: np.ndarray, amplitude: np.ndarray, provenance: dict
    ) -> int:
        """Store a reconstruction of a series (on the frame grid); returns its id (0, 1, ...)."""
        s = _int("series_index", series_index)
        values = {
            "phase": _image("phase", phase, self.frame_shape, finite=False),
            "amplitude": _image("amplitude", amplitude, self.frame_shape, finite=False),
            "provenance_json": _fit(
                to_json(provenance, what="provenance"), "reconstructions/provenance_json", self.path, truncate=False
            ),
            "series_index": s,
        }
        with self._lock:
            self._file()
            self._series_row(s)
            return self._append("reconstructions", values)

    def append_calibration(
        self, series_index: int, scale: float, offset_m: float, accepted: bool, record: dict
    ) -> None:
        """Record a calibration decision; scale/offset are the calibration in force AFTER it (series -1: none)."""
        values = {
            "series_index": _int("series_index", series_index),
            "scale": _finite("scale", scale),
            "offset_m": _finite("offset_m", offset_m),
            "accepted": 1 if accepted else 0,
            "record_json": _fit(to_json(record, what="record"), "calibration/record_json", self.path, truncate=False),
        }
        with self._lock:
            self._file()
            values["t_epoch_s"] = time.time()
            self._append("calibration", values)

    def log_event(self, kind: str, message: str, **fields: Any) -> None:
        """Record an event. Never refuses for size: long kind/message are truncated, oversized fields replaced
        by a note; unknown field types are stored as their repr."""
        fields_text = to_json(fields, lenient=True, what="fields")
        limit = TEXT_MAX_BYTES["events/fields_json"]
        if len(fields_text.encode()) > limit:
            fields_text = to_json(
                {"_truncated": True, "_json_bytes": len(fields_text.encode()), "_keys": sorted(fields)[:100]},
                lenient=True,
            )
        values = {
            "kind": _fit(str(kind), "events/kind", self.path, truncate=True),
            "message": _fit(str(message), "events/message", self.path, truncate=True),
            "fields_json": _fit(fields_text, "events/fields_json", self.path, truncate=False),
        }
        with self._lock:
            self._file()
            values["t_epoch_s"] = time.time()
            self._append("events", values)

    def read_frame(self, frame_id: int) -> tuple[np.ndarray, dict[str, Any]]:
        """A frame written by this writer: (data float32 (H, W), every per-frame column; metadata parsed)."""
        i = _int("frame_id", frame_id)
        with self._lock:
            f = self._file()
            if not 0 <= i < self._n_frames:
                raise IndexError(f"{self.path}: frame {i} not in the run (0 .. {self._n_frames - 1})")
            return f["frames/data"][i], _frame_record(f["frames"], i)

    def series_status(self, series_index: int) -> str:
        with self._lock:
            self._file()
            return self._series_row(_int("series_index", series_index))["status"]

    def close(self) -> None:
        """Close the file (idempotent). A series still 'acquiring' is marked 'aborted' first."""
        self._close("aborted", "run file closed before the series ended")

    def _close(self, status: str, reason: str) -> None:
        with self._lock:
            if self._f is None:
                return
            try:
                for ser in self._series.values():
                    if ser["status"] == "acquiring":
                        self._set_status(ser, status, reason)
                self._f.flush()
            finally:
                self._f.close()
                self._f = None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._close("error", f"{exc_type.__name__}: {exc}")

    def __repr__(self) -> str:
        state = "closed" if self._f is None else f"{self._n_frames} frames"
        return f"RunWriter({str(self.path)!r}, run_id={self.run_id!r}, {state})"


# -- reader ---------------------------------------------------------------------------------------------------
class RunReader:
    """Reads a run file, live (SWMR: call refresh() to see newer rows) or finished."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._f: h5py.File | None = None
        if not self.path.exists():
            raise RunFileError(f"run file {self.path} does not exist")
        if not self.path.is_file():
            raise RunFileError(f"run file {self.path} is not a file")
        if not h5py.is_hdf5(self.path):
            raise RunFileError(f"{self.path} is not an HDF5 file, so not an ltemlive run file")
        try:
            f = h5py.File(self.path, "r", libver="latest", swmr=True)
            self._swmr = True
        except OSError as swmr_error:
            try:  # e.g. an HDF5 file in a pre-1.10 format, which cannot be read in SWMR mode
                f = h5py.File(self.path, "r")
                self._swmr = False
            except OSError as e:
                raise RunFileError(f"cannot open {self.path} as HDF5: {swmr_error}; {e}") from e
        try:
            fmt = f.attrs.get("format")
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
            if fmt != FORMAT:
                raise RunFileError(
                    f"{self.path} is an HDF5 file but not an ltemlive run file (format={fmt!r}, expected {FORMAT!r})"
                )
            version = int(f.attrs.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise RunFileError(
                    f"{self.path}: run file format_version {version}, this reader knows {FORMAT_VERSION}"
                )
            missing = [f"{g}/{n}" for g, cols in _GROUPS.items() for n, *_ in cols if f"{g}/{n}" not in f]
            if missing:
                raise RunFileError(f"{self.path}: run file lacks dataset(s) {', '.join(missing)}")
        except BaseException:
            f.close()
            raise
        self._f = f
        self._attrs = _attrs_dict(f)

    def _file(self) -> h5py.File:
        if self._f is None:
            raise RunFileError(f"run file {self.path} is closed (reader)")
        return self._f

    def refresh(self) -> None:
        """See what the writer has flushed since the file was opened or last refreshed."""
        with self._lock:
            f = self._file()
            if self._swmr:
                for gname, columns in _GROUPS.items():
                    for name, *_ in columns:
                        f[gname][name].refresh()

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes as Python values (frame_shape a tuple; pixel_size_m NaN when unknown)."""
        return dict(self._attrs)

    def _rows(self, gname: str) -> int:
        return _visible_rows(self._file()[gname], _GROUPS[gname])

    @property
    def n_frames(self) -> int:
        with self._lock:
            return self._rows("frames")

    def _check(self, gname: str, i: Any) -> int:
        i = _int("index", i)
        n = self._rows(gname)
        if not 0 <= i < n:
            raise IndexError(f"{self.path}: {gname} row {i} not present (0 .. {n - 1}; refresh() for newer rows)")
        return i

    def frame(self, i: int) -> np.ndarray:
        with self._lock:
            return self._file()["frames/data"][self._check("frames", i)]

    def frame_record(self, i: int) -> dict[str, Any]:
        """Every per-frame column except the data; metadata parsed; defocus_readback_m None when unknown."""
        with self._lock:
            return _frame_record(self._file()["frames"], self._check("frames", i))

    def frames_of_series(self, series_index: int) -> list[int]:
        with self._lock:
            n = self._rows("frames")
            col = self._file()["frames/series_index"][:n]
        return [int(i) for i in np.flatnonzero(col == int(series_index))]

    def series(self) -> list[dict[str, Any]]:
        """One dict per series: index, status, reason, first_frame, n_frames, t_start_epoch_s,
        t_end_epoch_s (None while running), plan."""
        with self._lock:
            g = self._file()["series"]
            n = self._rows("series")
            out = []
            for r in range(n):
                t_end = float(g["t_end_epoch_s"][r])
                out.append(
                    {
                        "index": int(g["index"][r]),
                        "status": g["status"].asstr()[r],
                        "reason": g["reason"].asstr()[r],
                        "first_frame": int(g["first_frame"][r]),
                        "n_frames": int(g["n_frames"][r]),
                        "t_start_epoch_s": float(g["t_start_epoch_s"][r]),
                        "t_end_epoch_s": _nan_to_none(t_end),
                        "plan": _from_json(g["plan_json"].asstr()[r]),
                    }
                )
            return out

    def reconstructions(self) -> list[dict[str, Any]]:
        """One dict per reconstruction: id, series_index, provenance (arrays: reconstruction(id))."""
        with self._lock:
            g = self._file()["reconstructions"]
            return [
                {
                    "id": k,
                    "series_index": int(g["series_index"][k]),
                    "provenance": _from_json(g["provenance_json"].asstr()[k]),
                }
                for k in range(self._rows("reconstructions"))
            ]

    def reconstruction(self, k: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        with self._lock:
            g = self._file()["reconstructions"]
            k = self._check("reconstructions", k)
            return g["phase"][k], g["amplitude"][k], _from_json(g["provenance_json"].asstr()[k])

    def calibration(self) -> list[dict[str, Any]]:
        """One dict per calibration record: id, t_epoch_s, series_index, scale, offset_m, accepted, record."""
        with self._lock:
            g = self._file()["calibration"]
            return [
                {
                    "id": c,
                    "t_epoch_s": float(g["t_epoch_s"][c]),
                    "series_index": int(g["series_index"][c]),
                    "scale": float(g["scale"][c]),
                    "offset_m": float(g["offset_m"][c]),
                    "accepted": bool(g["accepted"][c]),
                    "record": _from_json(g["record_json"].asstr()[c]),
                }
                for c in range(self._rows("calibration"))
            ]

    def events(self) -> list[dict[str, Any]]:
        """One dict per event: t_epoch_s, kind, message, fields."""
        with self._lock:
            g = self._file()["events"]
            return [
                {
                    "t_epoch_s": float(g["t_epoch_s"][e]),
                    "kind": g["kind"].asstr()[e],
                    "message": g["message"].asstr()[e],
                    "fields": _from_json(g["fields_json"].asstr()[e]),
                }
                for e in range(self._rows("events"))
            ]

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None

    def __enter__(self) -> RunReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunReader({str(self.path)!r})"
