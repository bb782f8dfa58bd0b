"""Writing a reconstruction: the maps as calibrated TIFF (pixel size in nm, see ltemlive.storage.tiff) and as
HyperSpy .hspy files (axes in nm), everything with provenance in HDF5, the refined parameters as YAML, and the
pictures."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

import ltemlive
from ltemlive import pictures
from ltemlive.induction import induction_map, save_induction_png
from ltemlive.series import Series
from ltemlive.storage.tiff import write_tiff


def provenance(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Who made this, when, with what: enough to reproduce it."""
    import torch

    out = {
        "software": "ltemlive",
        "version": ltemlive.__version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "command": " ".join(sys.argv),
    }
    out.update(extra or {})
    return out


#: HyperSpy's HDF5 ("hspy") format version written by write_hspy: 3.1 reads without a warning in HyperSpy >= 1.7
#: and every RosettaSciIO release.
HSPY_FORMAT_VERSION = "3.1"

#: every file write_reconstruction writes, relative to its output folder
RECONSTRUCTION_FILES = (
    "phase.tif",
    "amplitude.tif",
    "induction_bx_t.tif",
    "induction_by_t.tif",
    "phase_sigma.tif",
    "parameters.yaml",
    "reconstruction.h5",
    "phase.hspy",
    "amplitude.hspy",
    "phase.png",
    "induction.png",
    "loss.png",
    "comparison.png",
)


def existing_outputs(out_dir: str | Path) -> list[Path]:
    """The files of RECONSTRUCTION_FILES already in out_dir (write_reconstruction refuses to replace them unless
    overwrite=True); call it before a long reconstruction to fail early."""
    out = Path(out_dir)
    return [out / name for name in RECONSTRUCTION_FILES if (out / name).exists()]


def _refuse_existing(paths: list[Path]) -> None:
    if paths:
        names = ", ".join(str(p) for p in paths)
        raise FileExistsError(f"would overwrite existing output: {names} (pass overwrite=True to replace)")


def _h5_attr(group, key: str, value) -> None:
    group.attrs[key] = "_None_" if value is None else value


def write_hspy(
    path: str | Path,
    array,
    pixel_size_m: float,
    *,
    title: str,
    quantity: str = "",
    original_metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a 2-D map as a HyperSpy/RosettaSciIO ".hspy" file (HDF5, written with plain h5py): one experiment
    whose axes y (axis-0) and x (axis-1) are calibrated in nm, so that `hyperspy.api.load(path)` or
    `rsciio.hspy.file_reader(path)` gives scale = pixel size in nm and units "nm". quantity (e.g. "Phase (rad)")
    goes to metadata.Signal.quantity; original_metadata (str values, e.g. JSON) to original_metadata."""
    path = Path(path)
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{path}: write_hspy writes 2-D maps, got shape {arr.shape}")
    px_nm = float(pixel_size_m) * 1e9
    if not (np.isfinite(px_nm) and px_nm > 0):
        raise ValueError(f"{path}: pixel_size_m must be finite and > 0, got {pixel_size_m!r}")
    try:
        f = h5py.File(path, "w" if overwrite else "w-")
    except OSError:
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists already (pass overwrite=True to replace it)") from None
        raise
    with f:
        f.attrs["file_format"] = "HyperSpy"
        f.attrs["file_format_version"] = HSPY_FORMAT_VERSION
        exp = f.create_group("Experiments").create_group(title or "__unnamed__")
        exp.attrs["package"] = ""  # the plain hyperspy Signal2D
        exp.attrs["package_version"] = ""
        exp.create_dataset("data", data=arr, chunks=arr.shape, compression="gzip", shuffle=True)
        for i, (name, size) in enumerate(zip(("y", "x"), arr.shape, strict=True)):
            ax = exp.create_group(f"axis-{i}")
            ax.attrs["name"] = name
            ax.attrs["units"] = "nm"
            ax.attrs["scale"] = px_nm
            ax.attrs["offset"] = 0.0
            ax.attrs["size"] = int(size)
            ax.attrs["navigate"] = np.bool_(False)
            ax.attrs["is_binned"] = np.bool_(False)
        md = exp.create_group("metadata")
        general = md.create_group("General")
        general.attrs["title"] = title or "__unnamed__"
        sig = md.create_group("Signal")
        sig.attrs["signal_type"] = ""
        _h5_attr(sig, "quantity", quantity or None)
        md.create_group("_HyperSpy").create_group("Folding").attrs["unfolded"] = np.bool_(False)
        om = exp.create_group("original_metadata")
        for key, value in (original_metadata or {}).items():
            om.attrs[key] = value
    return path


def write_reconstruction(
    out_dir: str | Path, series: Series, result, config, extra: dict | None = None, *, overwrite: bool = False
) -> dict:
    """Write phase.tif, amplitude.tif, induction_bx_t.tif / induction_by_t.tif (calibrated ImageJ TIFFs, see
    write_tiff), reconstruction.h5, phase.hspy / amplitude.hspy (HyperSpy files with axes in nm), parameters.yaml
    and PNGs into out_dir; returns {name: path}. Refuses (FileExistsError, before writing anything) when any of
    these files exists already, unless overwrite=True."""
    out = Path(out_dir)
    if not overwrite:
        _refuse_existing(existing_outputs(out))
    out.mkdir(parents=True, exist_ok=True)
    px = series.pixel_size_m
    bx, by = induction_map(result.phase, px)
    files: dict[str, Path] = {}

    params = result.parameters()
    params.update(
        {
            "pixel_size_m": px,
            "voltage_v": series.microscope.voltage_v,
            "cs_m": series.microscope.cs_m,
            "defocus_convention": "positive = over-focus (a positive phase bump looks bright)",
        }
    )
    prov = provenance(extra)

    def tif(name: str, arr: np.ndarray, unit: str, quantity: str):
        desc = {"quantity": quantity, "version": ltemlive.__version__, "created_utc": prov["created_utc"]}
        files[name] = write_tiff(out / name, arr, px, description=desc, unit_label=unit, overwrite=overwrite)

    tif("phase.tif", result.phase, "rad", "phase")
    tif("amplitude.tif", result.amplitude, "1", "amplitude")
    tif("induction_bx_t.tif", bx, "T m", "induction B_x t")
    tif("induction_by_t.tif", by, "T m", "induction B_y t")
    if result.phase_sigma is not None:
        tif("phase_sigma.tif", result.phase_sigma, "rad", "phase one-sigma uncertainty")

    (out / "parameters.yaml").write_text(
        "# Refined microscope parameters (SI units) with one-sigma uncertainties.\n"
        + yaml.safe_dump(params, sort_keys=False)
    )
    files["parameters.yaml"] = out / "parameters.yaml"

    h5 = out / "reconstruction.h5"
    with h5py.File(h5, "w" if overwrite else "w-") as f:
        f.attrs["format"] = "ltemlive-reconstruction"
        f.attrs["format_version"] = 1
        f.attrs["provenance"] = json.dumps(prov)
        f.attrs["config"] = config.model_dump_json()
        f.attrs["parameters"] = json.dumps(params)
        f.attrs["microscope"] = series.microscope.model_dump_json()
        f.attrs["source_metadata"] = json.dumps(series.metadata, default=str)
        for name, arr, unit in (
            ("phase", result.phase, "rad"),
            ("amplitude", result.amplitude, "1"),
            ("tie_phase", result.tie_phase, "rad"),
            ("induction_bx_t", bx, "T m"),
            ("induction_by_t", by, "T m"),
            *((("phase_sigma", result.phase_sigma, "rad"),) if result.phase_sigma is not None else ()),
        ):
            d = f.create_dataset(name, data=arr.astype(np.float32))
            d.attrs["unit"] = unit
            d.attrs["pixel_size_m"] = px
        f.create_dataset("defocus_m", data=result.defocus_m)
        f.create_dataset("defocus_sigma_m", data=result.defocus_sigma_m)
        f.create_dataset("defocus_nominal_m", data=result.defocus_nominal_m)
        f.create_dataset("shifts_px", data=result.shifts_px)
        hist = f.create_group("history")
        for key in ("iteration", "loss", "data_loss", "reg_loss", "elapsed_s"):
            hist.create_dataset(key, data=np.array([h[key] for h in result.history]))
        hist.create_dataset("stage", data=np.array([h["stage"] for h in result.history], dtype="S"))
        src = f.create_group("series")
        src.create_dataset("images", data=series.images, compression="gzip", shuffle=True)
    files["reconstruction.h5"] = h5

    om = {"provenance": json.dumps(prov), "parameters": json.dumps(params)}
    for name, arr, quantity in (("phase", result.phase, "Phase (rad)"), ("amplitude", result.amplitude, "Amplitude")):
        files[f"{name}.hspy"] = write_hspy(
            out / f"{name}.hspy", arr, px, title=name, quantity=quantity, original_metadata=om, overwrite=overwrite
        )

    files["phase.png"] = pictures.save_phase_png(out / "phase.png", result.phase, px, "AD phase (rad)")
    files["induction.png"] = save_induction_png(out / "induction.png", bx, by, px, title="B_perp t (colour wheel)")
    files["loss.png"] = pictures.save_loss_png(out / "loss.png", result.history)
    panels = [("TIE start", result.tie_phase), ("AD", result.phase)]
    if series.truth is not None:
        panels.insert(0, ("truth", series.truth.phase))
    files["comparison.png"] = pictures.save_comparison_png(out / "comparison.png", panels, px)
    return files
