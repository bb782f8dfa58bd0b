"""The end-of-run summary: pictures and a YAML digest of one live run's HDF5 file.

`write_summary(run_file, out_dir)` reads the run file ("ltemlive-run" v1) with h5py alone, so it does not
depend on the writer, and writes into out_dir:

- phase.png        the last reconstruction's phase, colour bar in rad, scale bar;
- induction.png    the colour-wheel picture of that phase's in-plane induction, wheel and magnitude beside it;
- calibration.png  calibration scale and offset against series index (accepted / rejected records), and the
                   per-image defocus error against simulator truth when the frames carry it;
- summary.yaml     counts, per-series defocus (planned, commanded, readback, true, refined), the final
                   calibration, what was missing, and the files written.

Missing pieces (no reconstruction, no calibration record, no truth, no frames) are reported, not fatal.
Nothing in out_dir is overwritten unless overwrite=True.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

__all__ = ["SERIES_STATUSES", "SUMMARY_FILES", "read_run", "summarise", "write_summary"]

SERIES_STATUSES = ("acquiring", "complete", "aborted", "error")
SUMMARY_FILES = ("phase.png", "induction.png", "calibration.png", "summary.yaml")


# ----------------------------------------------------------------------------------------------------------
# reading


@dataclass
class RunContents:
    """What the summary needs from a run file, in memory (the frame images themselves are not read)."""

    path: Path
    attrs: dict[str, Any]
    frames: dict[str, np.ndarray]
    true_defocus_m: np.ndarray  # (N,), NaN where the frame has no simulator truth
    series: dict[str, Any]
    recon_series_index: np.ndarray
    recon_provenance: list[dict]
    last_phase: np.ndarray | None
    calibration: dict[str, np.ndarray]
    calibration_records: list[dict]
    event_kinds: list[str] = field(default_factory=list)


def _attr(f: h5py.File, name: str, default=None):
    if name not in f.attrs:
        return default
    v = f.attrs[name]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    return _plain(v)


def _numbers(f: h5py.File, path: str, dtype=np.float64) -> np.ndarray:
    if path not in f:
        return np.zeros(0, dtype=dtype)
    return np.asarray(f[path][...], dtype=dtype).reshape(-1)


def _strings(f: h5py.File, path: str) -> list[str]:
    if path not in f:
        return []
    d = f[path]
    try:
        values = d.asstr()[...]
    except TypeError:  # not a string dataset: stringify whatever is there
        values = d[...]
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1)]


def _json(text: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _true_defocus(metadata: dict) -> float:
    truth = metadata.get("truth")
    if isinstance(truth, dict):
        try:
            return float(truth.get("true_defocus_m"))
        except (TypeError, ValueError):
            pass
    return math.nan


def read_run(run_file: str | Path) -> RunContents:
    """Read the run file's metadata, frame records, series, reconstructions (last phase only), calibration
    records and event kinds. Absent groups and datasets read as empty."""
    path = Path(run_file)
    with h5py.File(path, "r", libver="latest", swmr=True) as f:  # also a live or crashed run
        attrs = {
            name: _attr(f, name)
            for name in (
                "format",
                "format_version",
                "run_id",
                "session",
                "created_utc",
                "software_version",
                "frame_shape",
                "pixel_size_m",
            )
        }
        frames = {
            "series_index": _numbers(f, "frames/series_index", np.int64),
            "index_in_series": _numbers(f, "frames/index_in_series", np.int64),
        }
        for key in (
            "defocus_planned_m",
            "defocus_commanded_m",
            "defocus_readback_m",
            "calibration_scale",
            "calibration_offset_m",
            "exposure_s",
            "t_start_epoch_s",
            "t_end_epoch_s",
        ):
            frames[key] = _numbers(f, f"frames/{key}")
        n = len(frames["series_index"])
        metadata = _strings(f, "frames/metadata_json")
        true_df = np.full(n, math.nan)
        for i, text in enumerate(metadata[:n]):
            true_df[i] = _true_defocus(_json(text))

        series = {
            "index": _numbers(f, "series/index", np.int64),
            "status": _strings(f, "series/status"),
            "reason": _strings(f, "series/reason"),
            "first_frame": _numbers(f, "series/first_frame", np.int64),
            "n_frames": _numbers(f, "series/n_frames", np.int64),
            "t_start_epoch_s": _numbers(f, "series/t_start_epoch_s"),
            "t_end_epoch_s": _numbers(f, "series/t_end_epoch_s"),
        }

        recon_series = _numbers(f, "reconstructions/series_index", np.int64)
        provenance = [_json(t) for t in _strings(f, "reconstructions/provenance_json")]
        last_phase = None
        if "reconstructions/phase" in f and f["reconstructions/phase"].shape[0] > 0:
            last_phase = np.asarray(f["reconstructions/phase"][-1], dtype=np.float64)

        calibration = {
            "t_epoch_s": _numbers(f, "calibration/t_epoch_s"),
            "series_index": _numbers(f, "calibration/series_index", np.int64),
            "scale": _numbers(f, "calibration/scale"),
            "offset_m": _numbers(f, "calibration/offset_m"),
            "accepted": _numbers(f, "calibration/accepted", np.int64).astype(bool),
        }
        records = [_json(t) for t in _strings(f, "calibration/record_json")]
        event_kinds = _strings(f, "events/kind")

    n_cal = len(calibration["scale"])
    records = (records + [{}] * n_cal)[:n_cal]
    return RunContents(
        path=path,
        attrs=attrs,
        frames=frames,
        true_defocus_m=true_df,
        series=series,
        recon_series_index=recon_series,
        recon_provenance=(provenance + [{}] * len(recon_series))[: len(recon_series)],
        last_phase=last_phase,
        calibration=calibration,
        calibration_records=records,
        event_kinds=event_kinds,
    )


# ----------------------------------------------------------------------------------------------------------
# the digest


def _plain(x):
    """A YAML-safe plain Python value: numpy scalars to int/float/bool, non-finite floats to None."""
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.ndarray):
        return [_plain(v) for v in x.tolist()]
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    return x


def _relative_error_pct(value: np.ndarray, reference: np.ndarray) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    out = np.full(np.broadcast(value, reference).shape, math.nan)
    ok = np.isfinite(value) & np.isfinite(reference) & (reference != 0)
    np.divide((value - reference) * 100.0, reference, out=out, where=ok)
    # Derived, so rounded to 6 significant digits: 2.75, not 2.749999999999999.
    return np.array([float(f"{v:.6g}") for v in out.ravel()]).reshape(out.shape)


def _series_rows(run: RunContents, s: int) -> np.ndarray:
    """Frame rows of series s, in acquisition order within the series."""
    rows = np.flatnonzero(run.frames["series_index"] == s)
    return rows[np.argsort(run.frames["index_in_series"][rows], kind="stable")]


def _frame_rows_for_ids(run: RunContents, s: int, frame_ids, series_rows: np.ndarray) -> np.ndarray | None:
    """Frame rows matching a reconstruction's frame_ids: rows of /frames if they are, else series order."""
    try:
        ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        return None
    n = len(run.frames["series_index"])
    if ids.size and (ids >= 0).all() and (ids < n).all() and (run.frames["series_index"][ids] == s).all():
        return ids
    if ids.size == series_rows.size:
        return series_rows
    return None


def _reconstruction_entry(run: RunContents, row: int, s: int, series_rows: np.ndarray) -> dict:
    prov = run.recon_provenance[row]
    params = prov.get("parameters") if isinstance(prov.get("parameters"), dict) else {}
    entry: dict[str, Any] = {"row": row}
    entry["frame_ids"] = _plain(prov.get("frame_ids"))
    for out_key, key in (
        ("refined_defocus_m", "defocus_m"),
        ("defocus_sigma_m", "defocus_sigma_m"),
        ("defocus_nominal_m", "defocus_nominal_m"),
        ("theta_c_rad", "theta_c_rad"),
        ("theta_c_sigma_rad", "theta_c_sigma_rad"),
    ):
        entry[out_key] = _plain(params.get(key))
    for key in ("iterations", "elapsed_s", "stopped_because", "software_version"):
        entry[key] = _plain(prov.get(key))
    refined = params.get("defocus_m")
    rows = _frame_rows_for_ids(run, s, prov.get("frame_ids"), series_rows)
    if refined is not None and rows is not None:
        try:
            refined_a = np.asarray(refined, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            refined_a = None
        if refined_a is not None and refined_a.size == rows.size:
            true = run.true_defocus_m[rows]
            if np.isfinite(true).any():
                entry["refined_vs_true_pct"] = _plain(_relative_error_pct(refined_a, true))
    return entry


def _calibration_summary(run: RunContents) -> dict | None:
    cal = run.calibration
    n = len(cal["scale"])
    if n == 0:
        return None
    last = n - 1
    out: dict[str, Any] = {
        "source": "calibration records",
        "scale": _plain(cal["scale"][last]),
        "offset_m": _plain(cal["offset_m"][last]),
        "after_series_index": _plain(cal["series_index"][last]) if len(cal["series_index"]) > last else None,
        "t_epoch_s": _plain(cal["t_epoch_s"][last]) if len(cal["t_epoch_s"]) > last else None,
        "last_record_accepted": _plain(cal["accepted"][last]) if len(cal["accepted"]) > last else None,
        "last_record": _plain(run.calibration_records[last]),
    }
    accepted = np.flatnonzero(cal["accepted"][:n])
    if accepted.size:
        out["last_accepted_series_index"] = _plain(cal["series_index"][accepted[-1]])
    return out


def _truth_errors(run: RunContents) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """{planned defocus m: (series indices, (true - planned) / planned in %)} over frames with truth."""
    planned = run.frames["defocus_planned_m"]
    err = _relative_error_pct(run.true_defocus_m, planned)
    keep = np.isfinite(err)
    out: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    if not keep.any():
        return out
    # Group on the planned value rounded to 1 pm, so float noise does not split a line in two.
    keys = np.round(planned / 1e-12).astype(np.int64)
    for k in np.unique(keys[keep]):
        sel = keep & (keys == k)
        order = np.argsort(run.frames["series_index"][sel], kind="stable")
        out[float(planned[sel][0])] = (run.frames["series_index"][sel][order], err[sel][order])
    return out


def summarise(run: RunContents) -> dict[str, Any]:
    """The summary.yaml content (without "files") for a run read by read_run."""
    a = run.attrs
    fr = run.frames
    n_frames = len(fr["series_index"])
    truth_known = bool(np.isfinite(run.true_defocus_m).any())
    statuses = run.series["status"]
    by_status = dict.fromkeys(SERIES_STATUSES, 0)
    by_status.update(Counter(statuses))

    def at(arr, i):
        return _plain(arr[i]) if i < len(arr) else None

    series_entries = []
    series_idx = run.series["index"]
    for j, s in enumerate(series_idx.tolist()):
        rows = _series_rows(run, s)
        t0, t1 = at(run.series["t_start_epoch_s"], j), at(run.series["t_end_epoch_s"], j)
        entry: dict[str, Any] = {
            "index": s,
            "status": at(statuses, j),
            "reason": at(run.series["reason"], j) or "",
            "n_frames": at(run.series["n_frames"], j),
            "first_frame": at(run.series["first_frame"], j),
            "t_start_epoch_s": t0,
            "t_end_epoch_s": t1,
            "duration_s": (t1 - t0) if t0 is not None and t1 is not None else None,
            "frames": _plain(rows),
            "planned_defocus_m": _plain(fr["defocus_planned_m"][rows]),
            "commanded_defocus_m": _plain(fr["defocus_commanded_m"][rows]),
            "readback_defocus_m": _plain(fr["defocus_readback_m"][rows]),
        }
        true = run.true_defocus_m[rows]
        if np.isfinite(true).any():
            entry["true_defocus_m"] = _plain(true)
            entry["true_relative_error_pct"] = _plain(_relative_error_pct(true, fr["defocus_planned_m"][rows]))
        recon_rows = np.flatnonzero(run.recon_series_index == s)
        entry["n_reconstructions"] = int(recon_rows.size)
        entry["reconstruction"] = _reconstruction_entry(run, int(recon_rows[-1]), s, rows) if recon_rows.size else None
        series_entries.append(entry)

    n_recon = len(run.recon_series_index)
    cal = run.calibration
    n_cal = len(cal["scale"])
    n_accepted = int(cal["accepted"][:n_cal].sum())
    final_cal = _calibration_summary(run)
    if final_cal is None and n_frames:
        final_cal = {
            "source": "last frame (no calibration records)",
            "scale": _plain(fr["calibration_scale"][-1]) if len(fr["calibration_scale"]) else None,
            "offset_m": _plain(fr["calibration_offset_m"][-1]) if len(fr["calibration_offset_m"]) else None,
        }

    missing = []
    if n_frames == 0:
        missing.append("no frames")
    if len(series_idx) == 0:
        missing.append("no series")
    if n_recon == 0 or run.last_phase is None:
        missing.append("no reconstructions: phase.png and induction.png not written")
    if n_cal == 0:
        missing.append("no calibration records")
    if not truth_known:
        missing.append("no simulator truth in the frame metadata")
    if n_cal == 0 and not truth_known:
        missing.append("calibration.png not written (no calibration records and no truth)")

    last_recon = None
    if n_recon and run.last_phase is not None:
        phi = run.last_phase
        last_recon = {
            "row": n_recon - 1,
            "series_index": int(run.recon_series_index[-1]),
            "phase_min_rad": _plain(np.nanmin(phi)) if np.isfinite(phi).any() else None,
            "phase_max_rad": _plain(np.nanmax(phi)) if np.isfinite(phi).any() else None,
        }

    return {
        "run_id": a.get("run_id"),
        "session": a.get("session"),
        "run_file": str(run.path),
        "format": a.get("format"),
        "format_version": a.get("format_version"),
        "created_utc": a.get("created_utc"),
        "software_version": a.get("software_version"),
        "frame_shape": a.get("frame_shape"),
        "pixel_size_m": a.get("pixel_size_m"),
        "n_frames": n_frames,
        "n_series": len(series_idx),
        "n_series_by_status": by_status,
        "n_reconstructions": n_recon,
        "n_calibration_records": n_cal,
        "n_calibration_accepted": n_accepted,
        "n_calibration_rejected": n_cal - n_accepted,
        "n_events_by_kind": dict(Counter(run.event_kinds)),
        "truth_known": truth_known,
        "last_reconstruction": last_recon,
        "final_calibration": final_cal,
        "series": series_entries,
        "missing": missing,
    }


# ----------------------------------------------------------------------------------------------------------
# writing


def _pixel_size(run: RunContents) -> float:
    px = run.attrs.get("pixel_size_m")
    try:
        px = float(px)
    except (TypeError, ValueError):
        px = math.nan
    if not math.isfinite(px) or px <= 0:
        raise ValueError(f"run file has no usable pixel_size_m attribute (got {run.attrs.get('pixel_size_m')!r})")
    return px


def _calibration_fig(run: RunContents, truth: dict):
    from ltemlive import pictures

    cal = run.calibration
    n = len(cal["scale"])
    recs = run.calibration_records

    def rec(key):
        vals = []
        for r in recs[:n]:
            try:
                vals.append(float(r.get(key)))
            except (TypeError, ValueError):
                vals.append(math.nan)
        v = np.asarray(vals, dtype=np.float64)
        return v if np.isfinite(v).any() else None

    return pictures.calibration_figure(
        cal["series_index"][:n],
        cal["scale"][:n],
        cal["offset_m"][:n],
        cal["accepted"][:n],
        estimate_scale=rec("estimate_scale"),
        estimate_offset_m=rec("estimate_offset_m"),
        sigma_scale=rec("sigma_scale"),
        sigma_offset_m=rec("sigma_offset_m"),
        truth_error_pct=truth or None,
    )


def write_summary(run_file: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write phase.png, induction.png, calibration.png (those that the run has data for) and summary.yaml
    into out_dir (created if needed) from the run file at run_file.

    Returns the summary.yaml content, whose "files" lists the names written; in the returned dict "files"
    maps each of those names to its Path. Raises FileExistsError, before writing anything, if a file it would
    write already exists and overwrite is False. A figure that fails to draw is left out and named under
    "problems" rather than stopping the summary.
    """
    from ltemlive import pictures

    run = read_run(run_file)
    summary = summarise(run)
    out = Path(out_dir)
    truth = _truth_errors(run)
    has_recon = run.last_phase is not None
    planned = [
        name
        for name, wanted in (
            ("phase.png", has_recon),
            ("induction.png", has_recon),
            ("calibration.png", len(run.calibration["scale"]) > 0 or bool(truth)),
            ("summary.yaml", True),
        )
        if wanted
    ]
    if not overwrite:
        existing = [str(out / name) for name in planned if (out / name).exists()]
        if existing:
            raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (pass overwrite=True)")
    out.mkdir(parents=True, exist_ok=True)

    files: dict[str, Path] = {}
    problems: list[str] = []

    def draw(name: str, make) -> None:
        try:
            fig = make()
            files[name] = pictures.save_figure(fig, out / name, overwrite=True)
        except Exception as exc:  # a figure must not sink the summary: report it and go on
            problems.append(f"{name} not written: {type(exc).__name__}: {exc}")

    if has_recon:
        s = summary["last_reconstruction"]["series_index"]
        phase = run.last_phase

        def phase_fig():
            px = _pixel_size(run)
            return pictures.phase_figure(phase, px, title=f"Reconstructed phase, series {s}")

        def induction_fig():
            px = _pixel_size(run)
            fig, sat = pictures.induction_figure(phase, px, title=f"In-plane induction $B_\\perp t$, series {s}")
            summary["last_reconstruction"]["induction_saturation_T_m"] = _plain(sat)
            return fig

        draw("phase.png", phase_fig)
        draw("induction.png", induction_fig)
    if "calibration.png" in planned:
        draw("calibration.png", lambda: _calibration_fig(run, truth))

    if problems:
        summary["problems"] = problems
    summary["files"] = [*files, "summary.yaml"]
    yaml_path = out / "summary.yaml"
    yaml_path.write_text(
        f"# ltemlive run summary of {run.path.name} (SI units: m, s, rad; errors in %).\n"
        + yaml.safe_dump(summary, sort_keys=False, default_flow_style=None, allow_unicode=True, width=120)
    )
    files["summary.yaml"] = yaml_path
    result = dict(summary)
    result["files"] = files
    return result
