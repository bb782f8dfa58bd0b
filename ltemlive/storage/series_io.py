"""Through-focus series on disk.

Formats read:
- HDF5 written by ltemlive (`format = "ltemlive-series"`), with ground truth when simulated;
- a TIFF stack with a YAML sidecar of the same stem (`SERIES.tif` + `SERIES.yaml`), SI units;
- DM3/DM4, MRC, EMD and others through RosettaSciIO when it is installed (defocus from a sidecar).

Sidecar keys: `defocus_m` (list, one per image, docs/conventions.md sign: positive = over-focus),
`pixel_size_m`, `voltage_v`, `cs_m`; optional `theta_c_rad`, `focal_spread_m`, `astig_m`, `astig_azimuth_rad`,
`aperture_q_max`, `dose_e_per_px`. Every value is a number, in any usual notation (`2e-3`, `1E-3`, `+5e-9`, also
when YAML 1.1 reads it as a string); a boolean is not a number.

Sidecars are strict: an unknown (e.g. misspelled) key is an error, so that a typo such as `dose_e_per_pix` cannot
silently switch the reconstruction to another noise model. Values far outside what an LTEM records in SI units
(200 for the voltage, 5.0 for the pixel size, 1.6 for a defocus) are errors that name the unit they look like.

Images read from a file must be intensities: see `ltemlive.series.negative_intensity_problem` for the rule on
negative values (small read-noise negatives are allowed; any negative value is refused when a dose is given).

Every problem is a `SeriesFormatError` whose one-line message starts with the path of the file at fault.
"""

from __future__ import annotations

import difflib
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
from ltemlive.series import GroundTruth, Series, negative_intensity_problem

FORMAT = "ltemlive-series"
FORMAT_VERSION = 1
REQUIRED_SIDECAR_KEYS = ("defocus_m", "pixel_size_m", "voltage_v", "cs_m")
OPTIONAL_MICROSCOPE_KEYS = ("theta_c_rad", "focal_spread_m", "astig_m", "astig_azimuth_rad", "aperture_q_max")
ALLOWED_SIDECAR_KEYS = (*REQUIRED_SIDECAR_KEYS, *OPTIONAL_MICROSCOPE_KEYS, "dose_e_per_px")

H5_SUFFIXES = (".h5", ".hdf5", ".nxs")
TIFF_SUFFIXES = (".tif", ".tiff")
RSCIIO_PLUGINS = {".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".mrc": "mrc", ".emd": "emd"}
FORMAT_NAMES = {
    ".h5": "an ltemlive HDF5 series",
    ".hdf5": "an ltemlive HDF5 series",
    ".nxs": "an ltemlive HDF5 series",
    ".tif": "a TIFF stack",
    ".tiff": "a TIFF stack",
    ".dm3": "a DigitalMicrograph DM3 file",
    ".dm4": "a DigitalMicrograph DM4 file",
    ".mrc": "an MRC file",
    ".emd": "an EMD file",
}
SUPPORTED_FORMATS = (
    ".h5/.hdf5/.nxs (ltemlive HDF5), .tif/.tiff (TIFF stack + YAML sidecar), "
    ".dm3/.dm4/.mrc/.emd (through RosettaSciIO, + YAML sidecar)"
)

# Unit sanity limits, in SI units: (key, test that flags the value, what it looks like instead). Values beyond
# them are not what an LTEM records in SI units; the message says which unit the number probably is in.
_UNIT_HINTS = {
    "voltage_v": "volts (expected 1e3 to 3e6 V)",
    "pixel_size_m": "metres (expected up to 1e-6 m)",
    "defocus_m": "metres (expected |defocus| up to 0.05 m)",
    "cs_m": "metres (expected 0 to 0.1 m)",
    "theta_c_rad": "radians (expected 0 to 1e-2 rad)",
    "focal_spread_m": "metres (expected 0 to 1e-4 m)",
    "astig_m": "metres (expected 0 to 1e-3 m)",
    "astig_azimuth_rad": "radians (expected -2pi to 2pi)",
}


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
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise SeriesFormatError(
            f"{path}: not a readable HDF5 file ({exc}); a .h5/.hdf5/.nxs series must be an ltemlive HDF5 series "
            f"(format='{FORMAT}'), as written by `ltemlive simulate`"
        ) from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise SeriesFormatError(f"{path}: an HDF5 file but not an ltemlive series (no format='{FORMAT}')")
        absent = [f"dataset {k!r}" for k in ("images", "defocus_m") if k not in f]
        absent += [f"attribute {k!r}" for k in ("pixel_size_m", "microscope") if k not in f.attrs]
        if absent:
            raise SeriesFormatError(
                f"{path}: an ltemlive series without {', '.join(absent)}; it needs the datasets images and "
                "defocus_m and the attributes pixel_size_m and microscope"
            )
        try:
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
            images = f["images"][()]
            defocus = f["defocus_m"][()]
            px = float(f.attrs["pixel_size_m"])
            microscope = MicroscopeParams.model_validate_json(f.attrs["microscope"])
            metadata = json.loads(f.attrs.get("metadata", "{}"))
        except KeyError as exc:  # in ground_truth
            raise SeriesFormatError(f"{path}: incomplete ground_truth group ({' '.join(str(exc).split())})") from None
        except ValidationError as exc:
            raise SeriesFormatError(f"{path}: invalid microscope settings: {_one_line(exc)}") from None
        except (TypeError, ValueError, OSError) as exc:
            raise SeriesFormatError(f"{path}: unreadable ltemlive series ({exc})") from None
    _check_units(path, "pixel_size_m", px)
    for d in np.atleast_1d(np.asarray(defocus, dtype=np.float64)).tolist():
        _check_units(path, "defocus_m", d)
    for key in ("voltage_v", "cs_m", *OPTIONAL_MICROSCOPE_KEYS):
        value = getattr(microscope, key)
        if value is not None:
            _check_units(path, key, value)
    if dose is None:
        problem = negative_intensity_problem(images) if np.asarray(images).ndim in (2, 3) else None
        if problem:
            raise SeriesFormatError(f"{path}: {problem}")
    try:
        return Series(
            images=images,
            defocus_m=defocus,
            pixel_size_m=px,
            microscope=microscope,
            dose_e_per_px=None if dose is None else float(dose),
            truth=truth,
            metadata=metadata,
        )
    except ValueError as exc:
        raise SeriesFormatError(f"{path}: {exc}") from None


def _one_line(exc: ValidationError) -> str:
    """pydantic's errors on one line: 'field: message; field: message'."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())


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
    if not sc.is_file():
        hint = ""
        yml = path.with_suffix(".yml")
        if yml.is_file():
            hint = f" (found {yml.name}: rename it to {sc.name})"
        elif sc.exists():
            hint = " (that path exists but is not a file)"
        raise SeriesFormatError(
            f"{path}: missing metadata: a {path.suffix} series needs a YAML sidecar {sc}{hint} with the keys "
            f"{', '.join(REQUIRED_SIDECAR_KEYS)} (SI units)"
        )
    try:
        meta = yaml.safe_load(sc.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SeriesFormatError(f"{sc}: not valid YAML: {' '.join(str(exc).split())}") from exc
    except RecursionError as exc:
        raise SeriesFormatError(f"{sc}: not a usable sidecar (nested too deeply)") from exc
    except UnicodeDecodeError as exc:
        raise SeriesFormatError(f"{sc}: not a UTF-8 text file: {exc}") from exc
    except OSError as exc:
        raise SeriesFormatError(f"{sc}: cannot read the sidecar ({exc.strerror or exc})") from exc
    if not isinstance(meta, dict):
        raise SeriesFormatError(
            f"{sc}: expected a mapping of keys to values (allowed keys: {', '.join(ALLOWED_SIDECAR_KEYS)})"
        )
    unknown = [k for k in meta if k not in ALLOWED_SIDECAR_KEYS]
    if unknown:
        raise SeriesFormatError(f"{sc}: {_unknown_keys_message(unknown)}")
    missing = [k for k in REQUIRED_SIDECAR_KEYS if k not in meta]
    if missing:
        raise SeriesFormatError(f"{sc}: missing metadata key(s) {', '.join(missing)} (SI units)")
    return meta


def _unknown_keys_message(unknown: list[Any]) -> str:
    lowered = {k.lower(): k for k in ALLOWED_SIDECAR_KEYS}
    parts = []
    for key in unknown:
        text = str(key)
        close = difflib.get_close_matches(text.lower(), list(lowered), n=1, cutoff=0.6)
        parts.append(f"{text!r} (did you mean {lowered[close[0]]!r}?)" if close else repr(text))
    noun = "key" if len(unknown) == 1 else "keys"
    return f"unknown {noun} {', '.join(parts)}; allowed keys: {', '.join(ALLOWED_SIDECAR_KEYS)}"


def _number(value: Any, key: str, source: Path, what: str) -> float:
    """A sidecar value as a finite float: an int or float, or a string that reads as one ("2e-3", "+5e-9": YAML
    1.1 loads exponent notation without a dot as a string). Not a bool, other string, list, mapping or date."""
    if isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            raise SeriesFormatError(
                f"{source}: {key} must be {what}, got {value!r} (not a number; write plain SI numbers such as "
                "5e-9, without units)"
            ) from None
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise SeriesFormatError(f"{source}: {key} must be {what}, got {value!r}")
    else:
        try:
            out = float(value)
        except OverflowError as exc:  # an integer too large for a float
            raise SeriesFormatError(f"{source}: {key} must be {what}, got an integer too large for a float") from exc
    if not math.isfinite(out):
        raise SeriesFormatError(f"{source}: {key} must be {what}, got {value!r}")
    return out


def _unit_mistake(key: str, value: float) -> str | None:
    """What `value` (SI units expected) probably is instead, when it is outside what an LTEM records."""
    a = abs(value)
    if key == "voltage_v" and 0 < value < 1e3:
        return f"looks like kV; give volts, {value:g}e3"
    if key == "pixel_size_m" and value > 1e-6:
        return f"looks like nm; give metres, {value:g}e-9" if value < 1e3 else "give metres, e.g. 5e-9 for 5 nm"
    if key == "defocus_m" and a > 0.05:
        if a <= 50:
            return f"looks like mm; give metres, {value:g}e-3"
        return f"looks like um; give metres, {value:g}e-6"
    if key == "cs_m" and value > 0.1:
        return f"looks like mm (mm?); give metres, {value:g}e-3"
    if key == "theta_c_rad" and value > 1e-2:
        return f"looks like urad (or mrad); give radians, {value:g}e-6 for {value:g} urad"
    if key == "focal_spread_m" and value > 1e-4:
        return f"looks like nm; give metres, {value:g}e-9"
    if key == "astig_m" and value > 1e-3:
        return f"looks like nm; give metres, {value:g}e-9"
    if key == "astig_azimuth_rad" and a > 2 * math.pi:
        return f"looks like degrees; give radians, {math.radians(value):.4g}"
    return None


def _check_units(source: Path, key: str, value: float) -> None:
    mistake = _unit_mistake(key, value)
    if mistake:
        raise SeriesFormatError(f"{source}: {key} = {value:g} is out of range for {_UNIT_HINTS[key]}: {mistake}")


def _series_from(images: np.ndarray, meta: dict[str, Any], source: Path, meta_source: Path | None = None) -> Series:
    try:
        return _validated_series(images, meta, source, meta_source or source)
    except RecursionError as exc:
        raise SeriesFormatError(f"{source}: metadata nested too deeply to be a series sidecar") from exc


def _validated_series(images: np.ndarray, meta: dict[str, Any], source: Path, meta_source: Path) -> Series:
    """`images` (from the file `source`) and their metadata (from `meta_source`, the sidecar) as a Series."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    defocus = meta["defocus_m"]
    if not isinstance(defocus, list | tuple):
        defocus = [defocus]
    defocus = [_number(d, "defocus_m", meta_source, "a list of numbers in metres") for d in defocus]
    if images.shape[0] == 1 and len(defocus) == 0:
        raise SeriesFormatError(f"{meta_source}: a single image needs its defocus_m value")
    for d in defocus:
        _check_units(meta_source, "defocus_m", d)
    dose = meta.get("dose_e_per_px")
    if dose is not None:
        dose = _number(dose, "dose_e_per_px", meta_source, "a positive number of electrons per pixel")
        if dose <= 0:
            raise SeriesFormatError(
                f"{meta_source}: dose_e_per_px must be a positive number of electrons per pixel, got {dose:g}"
            )
    kwargs = {k: _number(meta[k], k, meta_source, "a number (SI units)") for k in ("voltage_v", "cs_m")}
    for k in OPTIONAL_MICROSCOPE_KEYS:
        if meta.get(k) is not None:
            kwargs[k] = _number(meta[k], k, meta_source, "a number (SI units)")
    px = _number(meta["pixel_size_m"], "pixel_size_m", meta_source, "a positive length in metres")
    if px <= 0:
        raise SeriesFormatError(f"{meta_source}: pixel_size_m must be a positive length in metres, got {px!r}")
    _check_units(meta_source, "pixel_size_m", px)
    for k, v in kwargs.items():
        if k in _UNIT_HINTS:
            _check_units(meta_source, k, v)
    try:
        microscope = MicroscopeParams(**kwargs)
    except ValidationError as exc:
        raise SeriesFormatError(f"{meta_source}: invalid microscope settings: {_one_line(exc)}") from exc
    if np.issubdtype(images.dtype, np.number) and not np.iscomplexobj(images) and images.ndim == 3:
        if np.isnan(images).any():
            raise SeriesFormatError(f"{source}: images contain NaN values; every pixel must be a finite intensity")
        if dose is not None and (images < 0).any():
            raise SeriesFormatError(
                f"{source}: images contain negative counts but dose_e_per_px is given (counts must be >= 0: "
                "remove dose_e_per_px for dark-subtracted or normalised data)"
            )
        problem = negative_intensity_problem(images) if dose is None else None
        if problem:
            raise SeriesFormatError(f"{source}: {problem}")
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
    try:
        images = tifffile.imread(path)
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, ... on a damaged file
        raise SeriesFormatError(f"{path}: not readable as a TIFF stack ({' '.join(str(exc).split())})") from None
    if np.asarray(images).size == 0:
        raise SeriesFormatError(f"{path}: not readable as a TIFF stack (no image data; a damaged file?)")
    return _series_from(images, meta, path, sidecar_path(path))


def _read_rsciio(path: Path) -> Series:
    suffix = path.suffix.lower()
    try:
        import importlib

        import rsciio  # noqa: F401  (presence check)
    except ImportError:
        raise SeriesFormatError(
            f"{path}: reading {suffix} files needs RosettaSciIO (pip install 'ltemlive[formats]'), "
            "or convert to a TIFF stack with a YAML sidecar"
        ) from None
    meta = _load_sidecar(path)
    what = FORMAT_NAMES[suffix]
    try:
        reader = importlib.import_module(f"rsciio.{RSCIIO_PLUGINS[suffix]}").file_reader
        signals = reader(str(path))
        arrays = [np.array(s["data"], dtype=np.float32) for s in signals]  # a copy: no memmap left open
        data = np.stack(arrays) if len(arrays) > 1 else arrays[0]
    except Exception as exc:  # a damaged file: RosettaSciIO's readers raise many kinds of errors
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise SeriesFormatError(f"{path}: not readable as {what} ({detail})") from None
    return _series_from(data, meta, path, sidecar_path(path))


def read_series(path: str | Path) -> Series:
    """Read a recorded or simulated through-focus series, whatever its format.

    Raises SeriesFormatError (a ValueError) with a one-line message that starts with the path at fault."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix.lower() in FORMAT_NAMES)[:5]
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise SeriesFormatError(f"{path}: is a directory, not a series file{hint}; give one file: {SUPPORTED_FORMATS}")
    if not path.exists():
        raise SeriesFormatError(f"{path}: no such series file")
    suffix = path.suffix.lower()
    if suffix not in FORMAT_NAMES:
        hint = " (a YAML sidecar: give the image file next to it)" if suffix in (".yaml", ".yml") else ""
        raise SeriesFormatError(
            f"{path}: unknown series format {path.suffix or '(no extension)'!r}{hint}; supported: {SUPPORTED_FORMATS}"
        )
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SeriesFormatError(f"{path}: cannot read the series file ({exc.strerror or exc})") from None
    if size == 0:
        raise SeriesFormatError(f"{path}: the file is empty (0 bytes); expected {FORMAT_NAMES[suffix]}")
    if suffix in H5_SUFFIXES:
        return _read_h5(path)
    if suffix in TIFF_SUFFIXES:
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
