"""Writing a reconstruction: the maps as TIFF, everything with provenance in HDF5, the refined parameters
as YAML, and the pictures."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tifffile
import yaml

import ltemlive
from ltemlive import pictures
from ltemlive.induction import induction_map, save_induction_png
from ltemlive.series import Series


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


def write_reconstruction(out_dir: str | Path, series: Series, result, config, extra: dict | None = None) -> dict:
    """Write phase.tif, amplitude.tif, induction_bx_t.tif / induction_by_t.tif, reconstruction.h5,
    parameters.yaml and PNGs into out_dir; returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    px = series.pixel_size_m
    bx, by = induction_map(result.phase, px)
    files: dict[str, Path] = {}

    def tif(name: str, arr: np.ndarray, unit: str):
        p = out / name
        tifffile.imwrite(p, arr.astype(np.float32), metadata={"unit": unit, "pixel_size_m": px})
        files[name] = p

    tif("phase.tif", result.phase, "rad")
    tif("amplitude.tif", result.amplitude, "1")
    tif("induction_bx_t.tif", bx, "T m")
    tif("induction_by_t.tif", by, "T m")

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
    (out / "parameters.yaml").write_text(
        "# Refined microscope parameters (SI units) with one-sigma uncertainties.\n"
        + yaml.safe_dump(params, sort_keys=False)
    )
    files["parameters.yaml"] = out / "parameters.yaml"

    h5 = out / "reconstruction.h5"
    with h5py.File(h5, "w") as f:
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

    files["phase.png"] = pictures.save_phase_png(out / "phase.png", result.phase, px, "AD phase (rad)")
    files["induction.png"] = save_induction_png(out / "induction.png", bx, by, px, title="B_perp t (colour wheel)")
    files["loss.png"] = pictures.save_loss_png(out / "loss.png", result.history)
    panels = [("TIE start", result.tie_phase), ("AD", result.phase)]
    if series.truth is not None:
        panels.insert(0, ("truth", series.truth.phase))
    files["comparison.png"] = pictures.save_comparison_png(out / "comparison.png", panels, px)
    return files
