"""Calibrated TIFF output: ImageJ-style float32 TIFFs that Fiji/ImageJ (and other readers of the ImageJ
convention) open with the pixel size in nm.

The calibration lives where ImageJ looks for it: XResolution = YResolution = 1 / (pixel size in nm), i.e. pixels
per nm, with ``unit=nm`` in ImageJ's ImageDescription (ResolutionUnit is NONE, as ImageJ itself writes it for
units other than inch and cm). ltemlive's own metadata is kept as JSON in ImageJ's "Info" entry (the private
IJMetadata tag 50839), so it does not clash with ImageJ's ImageDescription; Fiji shows it under Image > Show Info.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

#: nm per unit, for the length units ImageJ (and other writers) put into a TIFF
_NM_PER_UNIT = {
    "pm": 1e-3,
    "a": 0.1,
    "å": 0.1,
    "angstrom": 0.1,
    "nm": 1.0,
    "nanometer": 1.0,
    "um": 1e3,
    "µm": 1e3,
    "μm": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "mm": 1e6,
    "cm": 1e7,
    "m": 1e9,
    "inch": 2.54e7,
    "in": 2.54e7,
}


def _json_default(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_tiff(
    path: str | Path,
    array,
    pixel_size_m: float,
    *,
    description: dict | None = None,
    unit_label: str = "",
    overwrite: bool = False,
) -> Path:
    """Write a 2-D image (axes YX) or a 3-D stack (axes ZYX) as a calibrated float32 ImageJ TIFF.

    pixel_size_m: the (square) pixel size in metres; it is stored as 1/(pixel size in nm) pixels per nm.
    description: extra ltemlive metadata, stored as JSON (together with pixel_size_m and unit_label) in ImageJ's
    "Info" entry. unit_label: the unit of the pixel values ("rad", "T m", ...), also given to ImageJ as "vunit".
    Refuses to replace an existing file (FileExistsError) unless overwrite=True. Returns the path.
    """
    path = Path(path)
    arr = np.asarray(array)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: expected a 2-D image or a 3-D stack, got an array of shape {arr.shape}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{path}: complex data cannot be written as a float32 TIFF")
    try:
        px = float(pixel_size_m)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: pixel_size_m must be a number, got {pixel_size_m!r}") from None
    if not (math.isfinite(px) and px > 0):
        raise ValueError(f"{path}: pixel_size_m must be finite and > 0, got {pixel_size_m!r}")
    px_nm = px * 1e9
    data = arr.astype(np.float32)

    info = {"software": "ltemlive", "pixel_size_m": px, "pixel_size_nm": px_nm, "unit": unit_label}
    info.update(description or {})
    metadata: dict[str, Any] = {
        "axes": "ZYX" if data.ndim == 3 else "YX",
        "unit": "nm",
        "Info": json.dumps(info, default=_json_default),
    }
    if unit_label:
        metadata["vunit"] = unit_label
    finite = data[np.isfinite(data)]
    if finite.size:  # ImageJ's display range
        metadata["min"] = float(finite.min())
        metadata["max"] = float(finite.max())

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fh = open(path, "wb" if overwrite else "xb")
    except FileExistsError:
        raise FileExistsError(f"{path} exists already (pass overwrite=True to replace it)") from None
    with fh:
        tifffile.imwrite(
            fh,
            data,
            imagej=True,
            resolution=(1.0 / px_nm, 1.0 / px_nm),
            metadata=metadata,
            photometric="minisblack",
        )
    return path


def read_tiff_pixel_size_nm(path: str | Path) -> float | None:
    """The pixel size in nm that a TIFF's XResolution (with ImageJ's unit, or the TIFF ResolutionUnit) says;
    None when the file carries no length calibration (no resolution tags, or 1/1 pixels without a unit)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tag = page.tags.get("XResolution")
        if tag is None:
            return None
        num, den = tag.value
        if not num or not den:
            return None
        px_per_unit = num / den
        ij_unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
        res_unit = page.tags.get("ResolutionUnit")
        res_unit = int(res_unit.value) if res_unit is not None else 2  # the TIFF default is inch
    if ij_unit:
        unit = str(ij_unit).strip().lower().replace("\\u00b5", "µ")  # ImageJ writes µm as "\u00B5m"
        factor = _NM_PER_UNIT.get(unit)
        if factor is None:
            return None  # "pixel", "pixels" or an unknown unit: not a length calibration
    elif res_unit == 3:
        factor = _NM_PER_UNIT["cm"]
    else:
        return None  # no unit, or inch (a print resolution in dpi, not a pixel size)
    return factor / px_per_unit
