"""The run file (ltemlive/storage/runfile.py): round trip of every field, never overwriting, a reader in another
process (h5py alone) seeing frames while they are written (SWMR), a file whose writer was SIGKILLed still being
readable, concurrent writers in two threads, and clear errors for bad inputs and bad files.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from ltemlive.storage import runfile
from ltemlive.storage.runfile import (
    FORMAT,
    RunFileError,
    RunFileExists,
    RunReader,
    RunWriter,
    new_run_path,
    to_json,
)

REPO = Path(__file__).resolve().parents[1]
SHAPE = (6, 8)


def frame_kw(k: int, series_index: int = 0, **over):
    kw = dict(
        series_index=series_index,
        index_in_series=k,
        defocus_planned_m=1e-3 * (k - 1),
        defocus_commanded_m=1.1e-3 * (k - 1) + 2e-6,
        defocus_readback_m=1.09e-3 * k if k % 2 else None,
        calibration_scale=0.95,
        calibration_offset_m=-3e-6,
        exposure_s=0.25 + k,
        t_start_epoch_s=1.7e9 + k,
        t_end_epoch_s=1.7e9 + k + 0.25,
        metadata={"seq": k, "truth": {"true_defocus_m": np.float64(1e-3 * k)}},
    )
    kw.update(over)
    return kw


def image(k: float) -> np.ndarray:
    return np.arange(SHAPE[0] * SHAPE[1], dtype=np.float32).reshape(SHAPE) + np.float32(1000 * k)


def writer(path: Path, **over) -> RunWriter:
    kw = dict(run_id="run-1", session="sess", frame_shape=SHAPE, pixel_size_m=2.5e-9)
    kw.update(over)
    return RunWriter(path, **kw)


# -- round trip ------------------------------------------------------------------------------------------------
def test_round_trip_of_every_field(tmp_path):
    path = tmp_path / "run.h5"
    config = "solver:\n  iterations: 200\n" + "# padding\n" * 5000  # a big attribute (dense storage)
    plan = {
        "defocus_planned_m": np.array([-1e-3, 0.0, 1e-3]),
        "exposure_s": 0.5,
        "binning": 2,
        "hooks": {"drift": float("nan")},
        "calibration": {"scale": 0.95, "offset_m": -3e-6},
    }
    with writer(
        path, config_yaml=config, instrument={"name": "sim", "voltage_v": np.float32(200e3)}, software_version="9.9"
    ) as w:
        assert w.path == path and w.run_id == "run-1" and w.n_frames == 0
        w.begin_series(0, plan)
        assert w.series_status(0) == "acquiring"
        ids = [w.append_frame(image(k), **frame_kw(k)) for k in range(3)]
        assert ids == [0, 1, 2] and w.n_frames == 3
        w.end_series(0, "complete", "all frames")
        w.begin_series(1, {"defocus_planned_m": [2e-3]})
        assert w.append_frame(image(3).astype(np.uint16), **frame_kw(0, series_index=1)) == 3
        w.end_series(1, "aborted", "operator")
        assert w.series_status(0) == "complete" and w.series_status(1) == "aborted"
        k = w.write_reconstruction(0, image(0.5) * 1e-3, np.ones(SHAPE), {"input_frames": ids, "sigma": np.nan})
        assert k == 0
        w.append_calibration(0, 0.96, -2e-6, True, {"estimate": np.float32(0.96), "sigma": 0.01})
        w.append_calibration(1, 0.96, -2e-6, False, {"reason": "too uncertain"})
        w.log_event("series_end", "series 0 complete", series_index=np.int64(0), frames=[0, 1, 2])
        data, rec = w.read_frame(1)
        np.testing.assert_array_equal(data, image(1))
        assert rec["defocus_readback_m"] == pytest.approx(1.09e-3) and rec["metadata"]["seq"] == 1

    with RunReader(path) as r:
        a = r.attrs
        assert a["format"] == FORMAT and a["format_version"] == 1 and a["run_id"] == "run-1"
        assert a["session"] == "sess" and a["software_version"] == "9.9" and a["config_yaml"] == config
        assert json.loads(a["instrument_json"]) == {"name": "sim", "voltage_v": 200e3}
        assert a["frame_shape"] == SHAPE and a["pixel_size_m"] == 2.5e-9
        assert dt.datetime.fromisoformat(a["created_utc"]).tzinfo is not None
        assert r.n_frames == 4
        for i in range(3):
            np.testing.assert_array_equal(r.frame(i), image(i))
            rec = r.frame_record(i)
            want = frame_kw(i)
            for key in (
                "series_index",
                "index_in_series",
                "defocus_planned_m",
                "defocus_commanded_m",
                "defocus_readback_m",
                "calibration_scale",
                "calibration_offset_m",
                "exposure_s",
                "t_start_epoch_s",
                "t_end_epoch_s",
            ):
                assert rec[key] == want[key], key
            assert rec["frame_id"] == i
            assert rec["metadata"] == {"seq": i, "truth": {"true_defocus_m": 1e-3 * i}}
            assert rec["t_end_epoch_s"] < rec["t_written_epoch_s"]
        np.testing.assert_array_equal(r.frame(3), image(3).astype(np.uint16).astype(np.float32))
        assert r.frame(0).dtype == np.float32
        assert r.frames_of_series(0) == [0, 1, 2] and r.frames_of_series(1) == [3] and r.frames_of_series(7) == []

        s0, s1 = r.series()
        assert (s0["index"], s0["status"], s0["reason"], s0["first_frame"], s0["n_frames"]) == (
            0,
            "complete",
            "all frames",
            0,
            3,
        )
        assert (s1["index"], s1["status"], s1["reason"], s1["first_frame"], s1["n_frames"]) == (
            1,
            "aborted",
            "operator",
            3,
            1,
        )
        assert s0["t_start_epoch_s"] <= s0["t_end_epoch_s"] <= s1["t_start_epoch_s"]
        assert s0["plan"] == {
            "defocus_planned_m": [-1e-3, 0.0, 1e-3],
            "exposure_s": 0.5,
            "binning": 2,
            "hooks": {"drift": None},
            "calibration": {"scale": 0.95, "offset_m": -3e-6},
        }

        (rr,) = r.reconstructions()
        assert rr == {"id": 0, "series_index": 0, "provenance": {"input_frames": [0, 1, 2], "sigma": None}}
        phase, amp, prov = r.reconstruction(0)
        np.testing.assert_allclose(phase, image(0.5) * 1e-3, rtol=1e-6)
        np.testing.assert_array_equal(amp, np.ones(SHAPE, np.float32))
        assert prov == rr["provenance"] and phase.dtype == np.float32

        c0, c1 = r.calibration()
        assert (c0["series_index"], c0["scale"], c0["offset_m"], c0["accepted"]) == (0, 0.96, -2e-6, True)
        assert c0["record"] == {"estimate": pytest.approx(0.96), "sigma": 0.01}
        assert c1["accepted"] is False and c1["record"] == {"reason": "too uncertain"}
        assert c0["t_epoch_s"] <= c1["t_epoch_s"]

        (ev,) = r.events()
        assert (ev["kind"], ev["message"]) == ("series_end", "series 0 complete")
        assert ev["fields"] == {"series_index": 0, "frames": [0, 1, 2]} and ev["t_epoch_s"] > 1.7e9

    # the documented layout, with h5py alone
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        for gname, columns in runfile._GROUPS.items():
            for name, _dtype, units, _desc in columns:
                ds = f[gname][name]
                assert ds.maxshape[0] is None and "description" in ds.attrs, ds.name
                if units is not None:
                    assert ds.attrs["units"] == units, ds.name
        assert f["frames/data"].dtype == np.float32 and f["frames/data"].chunks == (1, *SHAPE)
        assert f["frames/data"].maxshape == (None, *SHAPE)
        assert f["frames/series_index"].dtype == np.int32 and f["series/first_frame"].dtype == np.int64
        assert f["calibration/accepted"].dtype == np.int8 and f["frames/exposure_s"].dtype == np.float64
        assert math.isnan(f["frames/defocus_readback_m"][0])
        assert json.loads(f["frames/metadata_json"].asstr()[2])["seq"] == 2
        assert list(f["series/status"].asstr()[:]) == ["complete", "aborted"]


def test_unknown_pixel_size_is_nan_and_json_is_strict(tmp_path):
    with writer(tmp_path / "a.h5", pixel_size_m=None):
        pass
    with RunReader(tmp_path / "a.h5") as r:
        assert math.isnan(r.attrs["pixel_size_m"]) and json.loads(r.attrs["instrument_json"]) == {}
    text = to_json({"a": np.arange(3), "b": [np.inf, -np.inf, np.nan], "c": np.bool_(True), 4: (1, 2)})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}")) == {
        "a": [0, 1, 2],
        "b": [None, None, None],
        "c": True,
        "4": [1, 2],
    }
    with pytest.raises(TypeError, match=r"metadata\.x.*object"):
        to_json({"x": object()}, what="metadata")


def test_closing_with_a_series_open_marks_it(tmp_path):
    with writer(tmp_path / "a.h5") as w:
        w.begin_series(0, {})
        w.append_frame(image(0), **frame_kw(0))
    with pytest.raises(RuntimeError), writer(tmp_path / "b.h5") as w:
        w.begin_series(0, {})
        raise RuntimeError("camera on fire")
    with RunReader(tmp_path / "a.h5") as r:
        assert r.series()[0]["status"] == "aborted"
    with RunReader(tmp_path / "b.h5") as r:
        (s,) = r.series()
        assert s["status"] == "error" and "camera on fire" in s["reason"] and s["first_frame"] == -1
    w.close()  # idempotent


# -- never overwrite -------------------------------------------------------------------------------------------
def test_a_new_run_never_overwrites(tmp_path):
    path = tmp_path / "run.h5"
    path.write_bytes(b"precious data")
    with pytest.raises(RunFileExists, match=re.escape(str(path))):
        writer(path)
    assert path.read_bytes() == b"precious data"
    with writer(tmp_path / "b.h5") as w:
        w.begin_series(0, {})
        w.append_frame(image(0), **frame_kw(0))
    before = (tmp_path / "b.h5").read_bytes()
    with pytest.raises(FileExistsError):
        writer(tmp_path / "b.h5")
    assert (tmp_path / "b.h5").read_bytes() == before


def test_new_run_path_is_unique_and_named(tmp_path, monkeypatch):
    d = tmp_path / "runs" / "deep"
    now = dt.datetime(2025, 3, 4, 5, 6, 7)
    paths = {new_run_path(d, "my session/1", now) for _ in range(50)}
    assert d.is_dir() and len(paths) == 50
    for p in paths:
        assert p.parent == d and re.fullmatch(r"my_session_1-20250304-050607-[0-9a-f]{6}\.h5", p.name), p.name
    assert re.fullmatch(r"x-\d{8}-\d{6}-[0-9a-f]{6}\.h5", new_run_path(tmp_path, "x").name)  # default: now (UTC)
    # a name that exists is never returned
    taken = d / "s-20250304-050607-aaaaaa.h5"
    taken.write_bytes(b"")
    tokens = iter(["aaaaaa", "bbbbbb"])
    monkeypatch.setattr(runfile.secrets, "token_hex", lambda n: next(tokens))
    assert new_run_path(d, "s", now).name == "s-20250304-050607-bbbbbb.h5"
    with pytest.raises(ValueError, match="empty"):
        new_run_path(d, "//")


# -- SWMR: a reader in another process, with h5py alone -------------------------------------------------------
READER = r"""
import json, sys
import h5py
f = h5py.File(sys.argv[1], "r", libver="latest", swmr=True)
d, m, t = f["frames/data"], f["frames/metadata_json"], f["frames/t_written_epoch_s"]
for line in sys.stdin:
    for ds in (d, m, t):
        ds.refresh()
    n = t.shape[0]
    print(json.dumps({"n": n, "px": [float(d[i][0, 0]) for i in range(n)],
                      "seq": [json.loads(m.asstr()[i])["seq"] for i in range(n)]}), flush=True)
f.close()
"""


def test_reader_in_another_process_sees_frames_while_they_are_written(tmp_path):
    path = tmp_path / "live.h5"
    with writer(path) as w:
        w.begin_series(0, {})
        for k in range(3):
            w.append_frame(image(k), **frame_kw(k))
        with subprocess.Popen(
            [sys.executable, "-c", READER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as p:
            try:
                p.stdin.write("\n")
                p.stdin.flush()
                first = json.loads(p.stdout.readline() or "null")
                for k in range(3, 5):
                    w.append_frame(image(k), **frame_kw(k))
                p.stdin.write("\n")
                p.stdin.flush()
                second = json.loads(p.stdout.readline() or "null")
                p.stdin.close()
                err = p.stderr.read()
            finally:
                p.kill() if p.poll() is None else None
        assert p.returncode == 0, err
        assert first == {"n": 3, "px": [0.0, 1000.0, 2000.0], "seq": [0, 1, 2]}, err
        assert second == {"n": 5, "px": [0.0, 1000.0, 2000.0, 3000.0, 4000.0], "seq": [0, 1, 2, 3, 4]}, err

        # and the package's reader, in this process, sees the live file too
        with RunReader(path) as r:
            assert r.n_frames == 5 and r.series()[0]["status"] == "acquiring"
            w.append_frame(image(5), **frame_kw(5))
            r.refresh()
            assert r.n_frames == 6 and r.series()[0]["n_frames"] == 6
            np.testing.assert_array_equal(r.frame(5), image(5))


# -- a writer killed mid-run -----------------------------------------------------------------------------------
WRITER = r"""
import sys
import numpy as np
from ltemlive.storage.runfile import RunWriter
w = RunWriter(sys.argv[1], run_id="killed", session="s", frame_shape=(16, 16), pixel_size_m=1e-9)
w.begin_series(0, {"n": 100000})
w.log_event("start", "writing until killed")
for k in range(100000):
    w.append_frame(np.full((16, 16), k, np.float32), series_index=0, index_in_series=k, defocus_planned_m=1e-6 * k,
                   defocus_commanded_m=1e-6 * k, defocus_readback_m=None, calibration_scale=1.0,
                   calibration_offset_m=0.0, exposure_s=0.01, t_start_epoch_s=1.0 * k, t_end_epoch_s=1.0 * k + 0.01,
                   metadata={"seq": k})
    print(k, flush=True)
"""


def test_a_file_whose_writer_was_killed_is_readable(tmp_path):
    path = tmp_path / "killed.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as p:
        try:
            last = -1
            while last < 30:
                line = p.stdout.readline()
                if not line:
                    pytest.fail(f"writer ended early: {p.stderr.read()}")
                last = int(line)
            p.send_signal(signal.SIGKILL)  # mid-run: it keeps appending as fast as it can
        finally:
            p.kill() if p.poll() is None else None
    assert p.returncode == -signal.SIGKILL
    with RunReader(path) as r:
        n = r.n_frames
        assert n >= last + 1  # every frame reported flushed is there
        assert r.attrs["run_id"] == "killed"
        for i in range(n):
            assert r.frame(i)[0, 0] == i and r.frame_record(i)["metadata"] == {"seq": i}
        (s,) = r.series()
        assert s["status"] == "acquiring" and s["first_frame"] == 0 and s["n_frames"] >= last + 1
        assert r.events()[0]["kind"] == "start"
    with h5py.File(path, "r", libver="latest", swmr=True) as f:  # h5py alone
        assert f["frames/data"][last, 0, 0] == last


# -- threads ---------------------------------------------------------------------------------------------------
def test_frames_and_reconstructions_from_two_threads(tmp_path):
    n_frames, n_recon = 60, 12
    errors: list[BaseException] = []

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # reported below
                errors.append(e)

        return run

    with writer(tmp_path / "t.h5") as w:
        w.begin_series(0, {})

        @guarded
        def acquire():
            for k in range(n_frames):
                assert w.append_frame(image(k), **frame_kw(k)) >= 0

        @guarded
        def control():
            for k in range(n_recon):
                w.write_reconstruction(0, image(k), image(-k), {"k": k})
                w.log_event("recon", f"reconstruction {k}", k=k, frames=w.n_frames)
                w.append_calibration(0, 1.0, 0.0, k % 2 == 0, {"k": k})

        threads = [threading.Thread(target=acquire), threading.Thread(target=control)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        w.end_series(0, "complete")
    with RunReader(tmp_path / "t.h5") as r:
        assert r.n_frames == n_frames and r.series()[0]["n_frames"] == n_frames
        for i in range(n_frames):
            np.testing.assert_array_equal(r.frame(i), image(i))
            assert r.frame_record(i)["index_in_series"] == i  # one thread appends in order
        recs = r.reconstructions()
        assert [x["provenance"]["k"] for x in recs] == list(range(n_recon))
        for k in range(n_recon):
            phase, amp, _ = r.reconstruction(k)
            np.testing.assert_array_equal(phase, image(k))
            np.testing.assert_array_equal(amp, image(-k))
        assert [e["fields"]["k"] for e in r.events()] == list(range(n_recon))
        assert [c["accepted"] for c in r.calibration()] == [k % 2 == 0 for k in range(n_recon)]


# -- bad inputs ------------------------------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors(tmp_path):
    with writer(tmp_path / "a.h5") as w:
        with pytest.raises(ValueError, match="never begun"):
            w.append_frame(image(0), **frame_kw(0))
        w.begin_series(0, {})
        with pytest.raises(ValueError, match="already begun"):
            w.begin_series(0, {})
        with pytest.raises(ValueError, match=r"shape \(8, 6\).*\(6, 8\)"):
            w.append_frame(image(0).T, **frame_kw(0))
        with pytest.raises(ValueError, match="non-finite"):
            w.append_frame(np.full(SHAPE, np.nan), **frame_kw(0))
        with pytest.raises(ValueError, match="float32"):
            w.append_frame(image(0) + 1j, **frame_kw(0))
        with pytest.raises(ValueError, match="defocus_planned_m must be finite"):
            w.append_frame(image(0), **frame_kw(0, defocus_planned_m=float("inf")))
        with pytest.raises(ValueError, match="exposure_s must be a number"):
            w.append_frame(image(0), **frame_kw(0, exposure_s="long"))
        with pytest.raises(ValueError, match="more than the"):
            w.append_frame(image(0), **frame_kw(0, metadata={"blob": "x" * 20_000}))
        with pytest.raises(TypeError, match="metadata"):
            w.append_frame(image(0), **frame_kw(0, metadata={"camera": object()}))
        assert w.n_frames == 0  # nothing refused was written
        with pytest.raises(ValueError, match="status must be one of"):
            w.end_series(0, "done")
        with pytest.raises(ValueError, match="status must be one of"):
            w.end_series(0, "acquiring")
        w.log_event("big", "m" * 10_000, blob="x" * 100_000)  # events never refuse for size
        w.end_series(0, "complete")
        with pytest.raises(ValueError, match="already ended"):
            w.end_series(0, "error")
        with pytest.raises(ValueError, match="has ended"):
            w.append_frame(image(0), **frame_kw(0))
        with pytest.raises(ValueError, match="shape"):
            w.write_reconstruction(0, np.zeros((2, 2)), np.zeros(SHAPE), {})
        with pytest.raises(ValueError, match="never begun"):
            w.write_reconstruction(3, np.zeros(SHAPE), np.zeros(SHAPE), {})
        with pytest.raises(IndexError):
            w.read_frame(0)
    with pytest.raises(RunFileError, match="closed"):
        w.log_event("late", "after close")
    with RunReader(tmp_path / "a.h5") as r:
        assert r.n_frames == 0
        with pytest.raises(IndexError, match="not present"):
            r.frame(0)
        (ev,) = r.events()
        assert ev["fields"]["_truncated"] is True and len(ev["message"].encode()) <= 2048
    with pytest.raises(ValueError, match="frame_shape"):
        writer(tmp_path / "b.h5", frame_shape=(4,))
    assert not (tmp_path / "b.h5").exists()


def test_bad_files_give_clear_errors(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(RunFileError, match=rf"{re.escape(str(missing))} does not exist"):
        RunReader(missing)
    text = tmp_path / "notes.h5"
    text.write_text("not HDF5")
    with pytest.raises(RunFileError, match=rf"{re.escape(str(text))} is not an HDF5 file"):
        RunReader(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "ltemlive-series"
    with pytest.raises(RunFileError, match=rf"{re.escape(str(other))} is an HDF5 file but not an ltemlive run"):
        RunReader(other)
    newer = tmp_path / "newer.h5"
    with h5py.File(newer, "w", libver="latest") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = 2
    with pytest.raises(RunFileError, match="format_version 2"):
        RunReader(newer)
    with pytest.raises(RunFileError, match="is not a file"):
        RunReader(tmp_path)
