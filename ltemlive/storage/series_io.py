"""Through-focus series on disk.

Formats read:
- HDF5 written by ltemlive (`format = "ltemlive-series"`), with ground truth when simulated;
- a TIFF stack with a YAML sidecar of the same stem (`SERIES.tif` + `SERIES.yaml`), SI units;
- DM3/DM4, MRC, EMD and others through RosettaSciIO when it is installed (defocus from a sidecar).

Sidecar keys: `defocus_m` (list, one per image, docs/conventions.md sign: positive = over-focus),
`pixel_size_m`, `voltage_v`, `cs_m`; optional `theta_c_rad`, `focal_spread_m`, `astig_m`, `astig_azimuth_rad`,
`aperture_q_max`, `dose_e_per_px`. Every value is a plain number (a boolean is not a number).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tifffile
import yaml
from pydantic import ValidationError

from ltemlive.optics.params import MicroscopeParams
from ltemlive.series import GroundTruth, Series

FORMAT = "ltemlive-series"
FORMAT_VERSION = 1
REQUIRED_SIDECAR_KEYS = ("defocus_m", "pixel_size_m", "voltage_v", "cs_m")
OPTIONAL_MICROSCOPE_KEYS = ("theta_c_rad", "focal_spread_m", "astig_m", "astig_azimuth_rad", "aperture_q_max")


class SeriesFormatError(ValueError):
    """A series file or its metadata is missing, unreadable or inconsistent."""


# -- HDF5 ---------------------------------------------------------------------------------------------
def write_series_h5(path: str | Path, series: Series, provenance: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["pixel_size_m"] = series.pixel_size_m
        f.attrs["microscope"] = series.microscope.model_dump_json()
        f.attrs["metadata"] = json.dumps(series.metadata, default=_json_default)
        f.attrs["provenance"] = json.dumps(provenance or {}, default=_json_default)
        if series.dose_e_per_px is not None:
            f.attrs["dose_e_per_px"] = series.dose_e_per_px
        f.create_dataset("images", data=series.images, chunks=(1, *series.shape), compression="gzip", shuffle=True)
        f.create_dataset("defocus_m", data=series.defocus_m)
        if series.truth is not None:
            g = f.create_group("ground_truth")
            g.create_dataset("phase", data=series.truth.phase)
            g.create_dataset("amplitude", data=series.truth.amplitude)
            g.create_dataset("defocus_m", data=series.truth.defocus_m)
            if series.truth.shifts_px is not None:
                g.create_dataset("shifts_px", data=series.truth.shifts_px)
    return path


def _read_h5(path: Path) -> Series:
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise SeriesFormatError(f"{path} is an HDF5 file but not an ltemlive series (no format='{FORMAT}')")
        truth = None
        if "ground_truth" in f:
            g = f["ground_truth"]
            truth = GroundTruth(
                phase=g["phase"][()],
                amplitude=g["amplitude"][()],
                defocus_m=g["defocus_m"][()],
                shifts_px=g["shifts_px"][()] if "shifts_px" in g else None,
            )
        dose = f.attrs.get("dose_e_per_px")
        return Series(
            images=f["images"][()],
            defocus_m=f["defocus_m"][()],
            pixel_size_m=float(f.attrs["pixel_size_m"]),
            microscope=MicroscopeParams.model_validate_json(f.attrs["microscope"]),
            dose_e_per_px=None if dose is None else float(dose),
            truth=truth,
            metadata=json.loads(f.attrs.get("metadata", "{}")),
        )


# -- TIFF + sidecar -----------------------------------------------------------------------------------
def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".yaml")


def write_series_tiff(path: str | Path, series: Series) -> Path:
    """Write the images as a float32 TIFF stack and the metadata as a YAML sidecar (for interchange)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # minisblack: an (N, H, W) stack of grey images, never one RGB(A) image when N is 3 or 4
    tifffile.imwrite(path, series.images.astype(np.float32), photometric="minisblack")
    micro = series.microscope
    meta: dict[str, Any] = {
        "defocus_m": [float(d) for d in series.defocus_m],
        "pixel_size_m": float(series.pixel_size_m),
        "voltage_v": float(micro.voltage_v),
        "cs_m": float(micro.cs_m),
    }
    for key in OPTIONAL_MICROSCOPE_KEYS:
        value = getattr(micro, key)
        if value is not None:
            meta[key] = float(value)
    if series.dose_e_per_px is not None:
        meta["dose_e_per_px"] = float(series.dose_e_per_px)
    sidecar_path(path).write_text(yaml.safe_dump(meta, sort_keys=False))
    return path


def _load_sidecar(path: Path) -> dict[str, Any]:
    sc = sidecar_path(path)
    if not sc.exists():
        raise SeriesFormatError(
            f"missing metadata: {path.name} needs a YAML sidecar {sc.name} with "
            f"{', '.join(REQUIRED_SIDECAR_KEYS)} (SI units)"
        )
    try:
        meta = yaml.safe_load(sc.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SeriesFormatError(f"{sc}: not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise SeriesFormatError(f"{sc}: not a usable sidecar (nested too deeply)") from exc
    except UnicodeDecodeError as exc:
        raise SeriesFormatError(f"{sc}: not a UTF-8 text file: {exc}") from exc
    if not isinstance(meta, dict):
        raise SeriesFormatError(f"{sc}: expected a mapping of keys to values")
    missing = [k for k in REQUIRED_SIDECAR_KEYS if k not in meta]
    if missing:
        raise SeriesFormatError(f"{sc}: missing metadata key(s) {', '.join(missing)} (SI units)")
    return meta


def _number(value: Any, key: str, source: Path, what: str) -> float:
    """A sidecar value as a finite float: a plain int or float (not a bool, string, list, mapping or date)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SeriesFormatError(f"{source}: {key} must be {what}, got {value!r}")
    try:
        out = float(value)
    except OverflowError as exc:  # an integer too large for a float
        raise SeriesFormatError(f"{source}: {key} must be {what}, got an integer too large for a float") from exc
    if not math.isfinite(out):
        raise SeriesFormatError(f"{source}: {key} must be {what}, got {value!r}")
    return out


def _series_from(images: np.ndarray, meta: dict[str, Any], source: Path) -> Series:
    try:
        return _validated_series(images, meta, source)
    except RecursionError as exc:
        raise SeriesFormatError(f"{source}: metadata nested too deeply to be a series sidecar") from exc


def _validated_series(images: np.ndarray, meta: dict[str, Any], source: Path) -> Series:
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    defocus = meta["defocus_m"]
    if not isinstance(defocus, list | tuple):
        defocus = [defocus]
    defocus = [_number(d, "defocus_m", source, "a list of numbers in metres") for d in defocus]
    if images.shape[0] == 1 and len(defocus) == 0:
        raise SeriesFormatError(f"{source}: a single image needs its defocus_m value")
    if np.isnan(images).any():
        raise SeriesFormatError(f"{source}: images contain NaN values")
    dose = meta.get("dose_e_per_px")
    if dose is not None:
        dose = _number(dose, "dose_e_per_px", source, "a positive number of electrons per pixel")
        if dose <= 0:
            raise SeriesFormatError(f"{source}: dose_e_per_px must be a positive number of electrons per pixel")
        if (images < 0).any():
            raise SeriesFormatError(f"{source}: images contain negative counts but dose_e_per_px is given")
    kwargs = {k: _number(meta[k], k, source, "a number (SI units)") for k in ("voltage_v", "cs_m")}
    for k in OPTIONAL_MICROSCOPE_KEYS:
        if meta.get(k) is not None:
            kwargs[k] = _number(meta[k], k, source, "a number (SI units)")
    try:
        microscope = MicroscopeParams(**kwargs)
    except ValidationError as exc:
        raise SeriesFormatError(f"{source}: invalid microscope settings: {exc}") from exc
    px = _number(meta["pixel_size_m"], "pixel_size_m", source, "a positive length in metres")
    if px <= 0:
        raise SeriesFormatError(f"{source}: pixel_size_m must be a positive length in metres, got {px!r}")
    try:
        return Series(
            images=images,
            defocus_m=np.asarray(defocus, dtype=np.float64),
            pixel_size_m=px,
            microscope=microscope,
            dose_e_per_px=dose,
            metadata={"source": str(source)},
        )
    except ValueError as exc:
        raise SeriesFormatError(f"{source}: {exc}") from exc


def _read_tiff(path: Path) -> Series:
    meta = _load_sidecar(path)
    return _series_from(tifffile.imread(path), meta, path)


def _read_rsciio(path: Path) -> Series:
    try:
        import importlib

        from rsciio import IO_PLUGINS  # noqa: F401  (presence check)

        reader = None
        ext = path.suffix.lower().lstrip(".")
        plugin_for = {"dm3": "digitalmicrograph", "dm4": "digitalmicrograph", "mrc": "mrc", "emd": "emd"}
        if ext in plugin_for:
            reader = importlib.import_module(f"rsciio.{plugin_for[ext]}").file_reader
    except ImportError as exc:
        raise SeriesFormatError(
            f"{path.name}: reading .{path.suffix.lstrip('.')} files needs RosettaSciIO "
            "(pip install 'ltemlive[formats]'), or convert to a TIFF stack with a YAML sidecar"
        ) from exc
    if reader is None:
        raise SeriesFormatError(f"{path.name}: unsupported format {path.suffix!r}")
    signals = reader(str(path))
    data = np.stack([np.asarray(s["data"], dtype=np.float32) for s in signals]) if len(signals) > 1 else None
    if data is None:
        data = np.asarray(signals[0]["data"], dtype=np.float32)
    meta = _load_sidecar(path)
    return _series_from(data, meta, path)


def read_series(path: str | Path) -> Series:
    """Read a recorded or simulated through-focus series, whatever its format."""
    path = Path(path)
    if not path.exists():
        raise SeriesFormatError(f"no such series file: {path}")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".nxs"):
        return _read_h5(path)
    if suffix in (".tif", ".tiff"):
        return _read_tiff(path)
    return _read_rsciio(path)


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
