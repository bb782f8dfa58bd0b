"""The end-of-run summary (ltemlive.summary.write_summary) on small synthetic run files built here with h5py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from ltemlive import pictures
from ltemlive.summary import write_summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STR = h5py.string_dtype("utf-8")

H = W = 64
PIXEL = 5e-9
PLANNED = (-1.6e-3, -0.8e-3, 0.8e-3, 1.6e-3)
# Simulator truth: true = planned * (1 + g) + offset, the error shrinking as the calibration converges.
TRUE_SCALE_ERROR = (0.03, 0.012, 0.004)
TRUE_OFFSET_M = (4e-6, 2e-6, 0.5e-6)
CAL_SCALE = (1.021, 1.021, 1.028)  # calibration in force after each record; record 1 rejected
CAL_OFFSET_M = (3e-6, 3e-6, 3.6e-6)
CAL_ACCEPTED = (1, 0, 1)
STATUSES = ("complete", "aborted", "complete")


def vortex_phase(h: int = H, w: int = W, phi0: float = 3.0, radius_px: float = 24.0) -> np.ndarray:
    """A cone of phase over a disc (a vortex's uniform curling induction inside, none outside)."""
    y, x = np.mgrid[:h, :w]
    r = np.hypot(x - (w - 1) / 2, y - (h - 1) / 2)
    return (phi0 * np.clip(1.0 - r / radius_px, 0.0, None)).astype(np.float32)


def str_dataset(group: h5py.Group, name: str, values) -> None:
    group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STR)


def build_run(
    path: Path,
    *,
    n_series: int = 3,
    reconstructions: bool = True,
    calibration: bool = True,
    truth: bool = True,
) -> Path:
    """A run file following the "ltemlive-run" v1 layout, small enough to write in milliseconds."""
    n_per = len(PLANNED)
    n = n_series * n_per
    series_index = np.repeat(np.arange(n_series), n_per).astype(np.int32)
    index_in_series = np.tile(np.arange(n_per), n_series).astype(np.int32)
    planned = np.tile(PLANNED, n_series)
    cal_scale = np.ones(n)
    cal_offset = np.zeros(n)
    for s in range(1, n_series):  # the calibration in force for series s is the one after record s-1
        cal_scale[series_index == s] = CAL_SCALE[s - 1]
        cal_offset[series_index == s] = CAL_OFFSET_M[s - 1]
    commanded = (planned - cal_offset) / cal_scale
    readback = commanded + 1e-8 * np.arange(n)
    true = np.array([planned[i] * (1 + TRUE_SCALE_ERROR[s]) + TRUE_OFFSET_M[s] for i, s in enumerate(series_index)])
    t0 = 1.7e9
    t_start = t0 + 2.0 * np.arange(n)
    phase = vortex_phase()
    rng = np.random.default_rng(1)

    with h5py.File(path, "w") as f:
        f.attrs["format"] = "ltemlive-run"
        f.attrs["format_version"] = 1
        f.attrs["run_id"] = "run-20250101-0001"
        f.attrs["session"] = "test-session"
        f.attrs["created_utc"] = "2025-01-01T00:00:00+00:00"
        f.attrs["software_version"] = "0.1.0"
        f.attrs["config_yaml"] = "series:\n  defocus_m: [-1.6e-3, -0.8e-3, 0.8e-3, 1.6e-3]\n"
        f.attrs["instrument_json"] = json.dumps({"backend": "simulator"})
        f.attrs["frame_shape"] = np.array([H, W], dtype=np.int64)
        f.attrs["pixel_size_m"] = PIXEL

        fr = f.create_group("frames")
        fr.create_dataset("data", data=(1 + 0.1 * rng.standard_normal((n, H, W))).astype(np.float32))
        fr.create_dataset("series_index", data=series_index)
        fr.create_dataset("index_in_series", data=index_in_series)
        for name, values in (
            ("defocus_planned_m", planned),
            ("defocus_commanded_m", commanded),
            ("defocus_readback_m", readback),
            ("calibration_scale", cal_scale),
            ("calibration_offset_m", cal_offset),
            ("exposure_s", np.full(n, 0.5)),
            ("t_start_epoch_s", t_start),
            ("t_end_epoch_s", t_start + 0.5),
            ("t_written_epoch_s", t_start + 0.6),
        ):
            fr.create_dataset(name, data=np.asarray(values, dtype=np.float64))
        meta = [{"camera": "sim"} | ({"truth": {"true_defocus_m": float(true[i])}} if truth else {}) for i in range(n)]
        str_dataset(fr, "metadata_json", (json.dumps(m) for m in meta))

        se = f.create_group("series")
        se.create_dataset("index", data=np.arange(n_series, dtype=np.int32))
        str_dataset(se, "status", STATUSES[:n_series])
        str_dataset(se, "reason", ["" if s != "aborted" else "operator stop" for s in STATUSES[:n_series]])
        se.create_dataset("first_frame", data=(np.arange(n_series) * n_per).astype(np.int64))
        se.create_dataset("n_frames", data=np.full(n_series, n_per, dtype=np.int32))
        se.create_dataset("t_start_epoch_s", data=t_start[::n_per])
        se.create_dataset("t_end_epoch_s", data=t_start[n_per - 1 :: n_per] + 0.5)
        str_dataset(se, "plan_json", (json.dumps({"defocus_m": list(PLANNED)}) for _ in range(n_series)))

        rc = f.create_group("reconstructions")
        done = [s for s in range(n_series) if STATUSES[s] == "complete"] if reconstructions else []
        rc.create_dataset("series_index", data=np.array(done, dtype=np.int32))
        phases = np.array([phase * (1 + 0.05 * k) for k in done], dtype=np.float32).reshape(-1, H, W)
        rc.create_dataset("phase", data=phases)
        rc.create_dataset("amplitude", data=np.ones((len(done), H, W), dtype=np.float32))
        prov = []
        for s in done:
            rows = np.flatnonzero(series_index == s)
            prov.append(
                {
                    "series_index": s,
                    "frame_ids": rows.tolist(),
                    "software_version": "0.1.0",
                    "config": {},
                    "parameters": {
                        "defocus_m": (true[rows] * 1.001).tolist(),
                        "defocus_sigma_m": [2e-6] * n_per,
                        "defocus_nominal_m": planned[rows].tolist(),
                        "theta_c_rad": 1e-6,
                        "theta_c_sigma_rad": 1e-7,
                    },
                    "elapsed_s": 1.5,
                    "iterations": 120,
                    "stopped_because": "converged",
                }
            )
        str_dataset(rc, "provenance_json", (json.dumps(p) for p in prov))

        ca = f.create_group("calibration")
        k = n_series if calibration else 0
        ca.create_dataset("t_epoch_s", data=t_start[n_per - 1 :: n_per][:k] + 1.0)
        ca.create_dataset("series_index", data=np.arange(k, dtype=np.int32))
        ca.create_dataset("scale", data=np.array(CAL_SCALE[:k], dtype=np.float64))
        ca.create_dataset("offset_m", data=np.array(CAL_OFFSET_M[:k], dtype=np.float64))
        ca.create_dataset("accepted", data=np.array(CAL_ACCEPTED[:k], dtype=np.int8))
        records = [
            {
                "accepted": bool(CAL_ACCEPTED[i]),
                "reason": "ok" if CAL_ACCEPTED[i] else "sigma too large",
                "estimate_scale": CAL_SCALE[i] + (0.0 if CAL_ACCEPTED[i] else 0.04),
                "estimate_offset_m": CAL_OFFSET_M[i] + (0.0 if CAL_ACCEPTED[i] else 2e-6),
                "sigma_scale": 0.003 if CAL_ACCEPTED[i] else 0.02,
            }
            for i in range(k)
        ]
        str_dataset(ca, "record_json", (json.dumps(r) for r in records))

        ev = f.create_group("events")
        ev.create_dataset("t_epoch_s", data=np.array([t0, t0 + 1.0]))
        str_dataset(ev, "kind", ["run_start", "series_start"])
        str_dataset(ev, "message", ["started", "series 0"])
        str_dataset(ev, "fields_json", ["{}", "{}"])
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("summary")
    run_file = build_run(tmp / "run.h5")
    out = tmp / "out"
    return run_file, out, write_summary(run_file, out)


def test_writes_every_file(full):
    _, out, result = full
    names = ["phase.png", "induction.png", "calibration.png", "summary.yaml"]
    assert list(result["files"]) == names
    for name in names:
        assert result["files"][name] == out / name
        assert (out / name).is_file()
    for name in names[:3]:
        w, h = png_size(out / name)
        assert 400 <= w <= 2500 and 300 <= h <= 2500, (name, w, h)
    assert yaml.safe_load((out / "summary.yaml").read_text())["files"] == names


def test_summary_numbers_match_the_run_file(full):
    run_file, out, result = full
    doc = yaml.safe_load((out / "summary.yaml").read_text())
    assert {k: v for k, v in doc.items() if k != "files"} == {k: v for k, v in result.items() if k != "files"}
    assert doc["run_id"] == "run-20250101-0001"
    assert doc["session"] == "test-session"
    assert doc["n_frames"] == 12
    assert doc["n_series"] == 3
    assert doc["n_series_by_status"] == {"acquiring": 0, "complete": 2, "aborted": 1, "error": 0}
    assert doc["n_reconstructions"] == 2
    assert (doc["n_calibration_records"], doc["n_calibration_accepted"], doc["n_calibration_rejected"]) == (3, 2, 1)
    assert doc["truth_known"] is True
    assert doc["missing"] == []
    assert doc["last_reconstruction"]["series_index"] == 2
    assert doc["last_reconstruction"]["induction_saturation_T_m"] > 0

    with h5py.File(run_file, "r") as f:
        planned = f["frames/defocus_planned_m"][...]
        commanded = f["frames/defocus_commanded_m"][...]
        readback = f["frames/defocus_readback_m"][...]
        true = np.array([json.loads(m)["truth"]["true_defocus_m"] for m in f["frames/metadata_json"].asstr()[...]])
        prov = [json.loads(p) for p in f["reconstructions/provenance_json"].asstr()[...]]
    for s, entry in enumerate(doc["series"]):
        rows = slice(4 * s, 4 * s + 4)
        assert entry["index"] == s
        assert entry["status"] == STATUSES[s]
        assert entry["frames"] == list(range(4 * s, 4 * s + 4))
        np.testing.assert_allclose(entry["planned_defocus_m"], planned[rows])
        np.testing.assert_allclose(entry["commanded_defocus_m"], commanded[rows])
        np.testing.assert_allclose(entry["readback_defocus_m"], readback[rows])
        np.testing.assert_allclose(entry["true_defocus_m"], true[rows])
        np.testing.assert_allclose(
            entry["true_relative_error_pct"], 100 * (true[rows] - planned[rows]) / planned[rows], rtol=1e-12
        )
    assert doc["series"][1]["reason"] == "operator stop"
    assert doc["series"][1]["reconstruction"] is None
    rec = doc["series"][2]["reconstruction"]
    np.testing.assert_allclose(rec["refined_defocus_m"], prov[1]["parameters"]["defocus_m"])
    np.testing.assert_allclose(rec["defocus_sigma_m"], prov[1]["parameters"]["defocus_sigma_m"])
    np.testing.assert_allclose(rec["refined_vs_true_pct"], 0.1, rtol=1e-9)
    assert rec["theta_c_rad"] == pytest.approx(1e-6)
    assert rec["stopped_because"] == "converged"

    cal = doc["final_calibration"]
    assert cal["scale"] == pytest.approx(CAL_SCALE[-1])
    assert cal["offset_m"] == pytest.approx(CAL_OFFSET_M[-1])
    assert cal["after_series_index"] == 2
    assert cal["last_record"]["reason"] == "ok"


def test_run_without_reconstructions_or_calibration(tmp_path):
    run_file = build_run(tmp_path / "run.h5", reconstructions=False, calibration=False, truth=False)
    result = write_summary(run_file, tmp_path / "out")
    assert list(result["files"]) == ["summary.yaml"]
    doc = yaml.safe_load((tmp_path / "out" / "summary.yaml").read_text())
    assert doc["files"] == ["summary.yaml"]
    assert doc["n_reconstructions"] == 0 and doc["n_calibration_records"] == 0
    assert doc["last_reconstruction"] is None
    assert doc["truth_known"] is False
    missing = " | ".join(doc["missing"])
    for words in ("no reconstructions", "no calibration records", "no simulator truth", "calibration.png"):
        assert words in missing
    assert doc["final_calibration"]["source"].startswith("last frame")
    assert all(entry["reconstruction"] is None and "true_defocus_m" not in entry for entry in doc["series"])
    assert not (tmp_path / "out" / "phase.png").exists()


def test_truth_alone_still_gives_the_calibration_picture(tmp_path):
    run_file = build_run(tmp_path / "run.h5", reconstructions=False, calibration=False)
    result = write_summary(run_file, tmp_path / "out")
    assert list(result["files"]) == ["calibration.png", "summary.yaml"]
    assert result["missing"] == [
        "no reconstructions: phase.png and induction.png not written",
        "no calibration records",
    ]
    png_size(tmp_path / "out" / "calibration.png")


def test_refuses_to_overwrite(full, tmp_path):
    run_file, out, _ = full
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(FileExistsError, match=r"phase\.png"):
        write_summary(run_file, out)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    bare = build_run(tmp_path / "bare.h5", reconstructions=False, calibration=False, truth=False)
    (tmp_path / "summary.yaml").write_text("old")
    with pytest.raises(FileExistsError, match=r"summary\.yaml"):
        write_summary(bare, tmp_path)
    result = write_summary(bare, tmp_path, overwrite=True)
    assert yaml.safe_load((tmp_path / "summary.yaml").read_text())["run_id"] == result["run_id"]


@pytest.mark.parametrize(
    ("target", "expected"), [(64e-9, 50e-9), (3.1e-7, 2e-7), (3.6e-7, 5e-7), (1.4e-6, 1e-6), (8e-10, 1e-9)]
)
def test_nice_length(target, expected):
    assert pictures.nice_length(target) == pytest.approx(expected)


def test_format_length():
    assert pictures.format_length(50e-9) == "50 nm"
    assert pictures.format_length(2e-6) == "2 µm"
    assert pictures.format_length(0.5e-9) == "0.5 nm"


def test_scale_bar_length_in_any_image_units():
    fig = pictures.phase_figure(vortex_phase(), PIXEL)  # axes in nm: 320 nm field, bar 50 nm
    ax = fig.axes[0]
    (bar,) = ax.patches
    assert bar.get_width() == pytest.approx(50.0)
    assert [t.get_text() for t in ax.texts] == ["50 nm"]
    pix = pictures.Figure().add_subplot()
    pix.imshow(np.zeros((100, 400)))  # axes in pixels: 2 µm field at 5 nm/px, bar 500 nm = 100 px
    assert pictures.add_scale_bar(pix, PIXEL, (100, 400)) == (pytest.approx(5e-7), "500 nm")
    assert pix.patches[0].get_width() == pytest.approx(100.0)


def test_induction_side_panel_stays_off_the_data():
    fig, sat = pictures.induction_figure(vortex_phase(), PIXEL)
    assert sat > 0
    fig.canvas.draw()
    (ax,) = fig.axes
    data = ax.get_window_extent()
    assert len(ax.child_axes) == 2
    for child in ax.child_axes:
        assert child.get_window_extent().x0 > data.x1
    assert any(f"{sat / 1e-9:.3g} T·nm" in t.get_text() for child in ax.child_axes for t in child.texts)
