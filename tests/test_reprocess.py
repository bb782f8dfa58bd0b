"""ltemlive reprocess: a batch on a Dask cluster of 2 worker processes reproduces single-process results bit for
bit, skips finished series on a rerun (and redoes an unfinished one), and reports a corrupt input without
stopping the others."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import yaml

from ltemlive.batch import DONE_MARKER, discover, process_item, reprocess
from ltemlive.cli import main
from ltemlive.sim_bridge import simulate
from ltemlive.storage import write_series_h5
from ltemlive.storage.runfile import RunWriter
from simulator.series import SimulationConfig

SIZE = 64
MAX_ITER = 12
DEFOCUS = [-1.2e-3, -0.3e-3, 0.3e-3, 1.2e-3]
RECON = f"reconstruction:\n  max_iter: {MAX_ITER}\n"  # the session config a run file records


def _sim(seed: int):
    # oversample 1 and one source point: the simulation costs milliseconds, not seconds
    return simulate(SimulationConfig(shape=(SIZE, SIZE), specimen="vortex_disc", dose_e_per_px=300.0, seed=seed,
                                     oversample=1, source_points=1, defocus_m=DEFOCUS))


def write_run(path: Path, seeds: list[int], *, aborted_after: int | None = None) -> Path:
    """A run file as the controller writes it: one complete series per seed, and optionally one more series
    aborted after `aborted_after` frames."""
    first = _sim(seeds[0])
    with RunWriter(path, run_id=path.stem, session="batch-test", frame_shape=(SIZE, SIZE),
                   pixel_size_m=first.pixel_size_m, config_yaml=RECON,
                   instrument={"optics": {"voltage_v": first.microscope.voltage_v, "cs_m": first.microscope.cs_m,
                                          "theta_c_rad": first.microscope.theta_c_rad}}) as w:
        plans = [(k, _sim(s), len(DEFOCUS)) for k, s in enumerate(seeds)]
        if aborted_after is not None:
            plans.append((len(seeds), _sim(99), aborted_after))
        for k, s, n in plans:
            w.begin_series(k, {"defocus_planned_m": DEFOCUS, "dose_e_per_px": 300.0})
            for j in range(n):
                t = time.time()
                w.append_frame(s.images[j], series_index=k, index_in_series=j, defocus_planned_m=DEFOCUS[j],
                               defocus_commanded_m=DEFOCUS[j], defocus_readback_m=float(s.defocus_m[j]),
                               calibration_scale=1.0, calibration_offset_m=0.0, exposure_s=0.1,
                               t_start_epoch_s=t, t_end_epoch_s=t + 0.1, metadata={})
            if n == len(DEFOCUS):
                w.end_series(k, "complete")
            else:
                w.end_series(k, "aborted", "operator stop")
    return path


def corrupt_frame(path: Path, frame_id: int) -> None:
    """Overwrite one frame's chunk on disk with 0xFF bytes (NaN as float32), as a damaged disk would."""
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        ds = f["frames/data"]
        info = ds.id.get_chunk_info_by_coord((frame_id, 0, 0))
        offset, size = info.byte_offset, info.size
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * size)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    series_h5 = write_series_h5(d / "recorded.h5", _sim(7))
    garbage = d / "garbage.h5"
    raw = series_h5.read_bytes()
    garbage.write_bytes(raw[: len(raw) // 3])  # a truncated copy: the HDF5 signature, then nothing sane
    damaged = write_run(d / "damaged.h5", [3, 4])
    corrupt_frame(damaged, frame_id=len(DEFOCUS) + 1)  # series 1, its second frame
    return {"run": write_run(d / "run.h5", [1, 2], aborted_after=2), "series": series_h5, "garbage": garbage,
            "damaged": damaged}


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster of 2 single-threaded worker processes for the module (start-up costs seconds)."""
    import dask
    from distributed import LocalCluster

    # as ltemlive.batch starts its own (and docs/scale-out.md asks of workers started by hand): glibc's dynamic
    # mmap threshold left on, or each reconstruction takes twice as long
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0", silence_logs=50
    ) as c:
        yield c.scheduler_address


def cluster_workers(address: str) -> list[str]:
    from distributed import Client

    with Client(address) as c:
        return list(c.scheduler_info(n_workers=-1)["workers"])


class _Console:
    """What reprocess needs of a rich Console, collecting plain text (not a terminal: plain lines)."""

    is_terminal = False

    def __init__(self):
        from rich.console import Console

        self._c = Console(record=True, width=200, file=io.StringIO())

    def print(self, *a, **kw):
        self._c.print(*a, **kw)

    def text(self) -> str:
        return self._c.export_text()


@pytest.fixture
def console():
    return _Console()


def _read_result(folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Every map and refined array of a result, and its parameters less the wall-clock time."""
    params = yaml.safe_load((folder / "parameters.yaml").read_text())
    params.pop("elapsed_s")
    arrays = {"phase.tif": tifffile.imread(folder / "phase.tif")}
    with h5py.File(folder / "reconstruction.h5") as f:
        arrays |= {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
        arrays |= {f"history/{k}": f["history"][k][()] for k in ("iteration", "loss", "data_loss", "reg_loss")}
    return arrays, params


@pytest.fixture(scope="module")
def first_batch(data, cluster, tmp_path_factory):
    """The run file reprocessed once on the cluster: (output folder, report, console text)."""
    out = tmp_path_factory.mktemp("batch")
    c = _Console()
    report = reprocess([data["run"]], c, out=out, scheduler=cluster, max_iter=MAX_ITER)
    return out, report, c.text()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_batch_reproduces_single_process_and_records_provenance(data, cluster, first_batch, tmp_path):
    out, report, text = first_batch
    assert report.exit_code == 0, text
    assert sorted(r["label"] for r in report.done) == ["run.h5 series 0", "run.h5 series 1"]
    assert {r["dask_worker"] for r in report.done} <= set(cluster_workers(cluster))
    assert report.not_eligible == [("run.h5 series 2", "aborted: operator stop")]
    assert "not reprocessed: run.h5 series 2: aborted: operator stop" in text
    assert not report.failed and "reprocess summary" in text

    # The same per-series function, run here with the same thread count: the same bits.
    found = discover([data["run"]], out=tmp_path / "single", config=None, overrides={"max_iter": MAX_ITER})
    assert len(found.items) == 2
    for item in found.items:
        single = process_item(item, threads=1)
        assert single["status"] == "ok", single
        assert single["dask_worker"] is None
        batch_dir = out / Path(item.out_dir).relative_to(tmp_path / "single")
        arrays_b, params_b = _read_result(batch_dir)
        arrays_s, params_s = _read_result(Path(item.out_dir))
        assert arrays_b.keys() == arrays_s.keys()
        for name in arrays_b:
            assert np.array_equal(arrays_b[name], arrays_s[name]), (item.label, name)
        # Every parameter too, the phase ramp included (a closed-form plane fit: bit-reproducible across
        # processes, which LAPACK's lstsq was not).
        assert params_b == params_s, item.label

    # The same files as `ltemlive reconstruct`, and the provenance of the batch.
    s1 = out / "run" / "series-0001"
    for name in ("phase.tif", "amplitude.tif", "reconstruction.h5", "parameters.yaml", "phase.png", DONE_MARKER):
        assert (s1 / name).is_file(), name
    done = json.loads((s1 / DONE_MARKER).read_text())
    assert done["status"] == "ok" and done["series_index"] == 1 and done["input"] == str(data["run"].resolve())
    assert done["frame_ids"] == list(range(len(DEFOCUS), 2 * len(DEFOCUS)))
    assert done["config"]["max_iter"] == MAX_ITER and done["config_source"] == "run.h5 (recorded)"
    assert done["dask_worker"].startswith("tcp://") and done["elapsed_s"] > 0 and done["torch_threads"] == 1
    with h5py.File(s1 / "reconstruction.h5") as f:
        prov = json.loads(f.attrs["provenance"])
    assert prov["batch"]["frame_ids"] == done["frame_ids"] and prov["batch"]["dask_worker"] == done["dask_worker"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_rerun_skips_finished_series_and_redoes_an_unfinished_one(data, cluster, first_batch, tmp_path, console,
                                                                 capsys):
    out = tmp_path / "out"
    shutil.copytree(first_batch[0], out)  # copy2: the modification times come along
    s0, s1 = out / "run" / "series-0000", out / "run" / "series-0001"
    mtimes = {p: p.stat().st_mtime_ns for p in s0.iterdir()}
    # series 1 as a killed worker leaves it: some files, no completion marker
    (s1 / DONE_MARKER).unlink()
    (s1 / "phase.tif").write_bytes(b"half")
    (s1 / "loss.png").unlink()

    # The rerun through the command line, on a local cluster of its own (one worker: one series to redo).
    rc = main(["reprocess", str(data["run"]), "--out", str(out), "--workers", "1", "--max-iter", str(MAX_ITER)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "2 series found, 1 to do, 1 done before" in text
    assert "ok run.h5 series 1" in text
    assert {p: p.stat().st_mtime_ns for p in s0.iterdir()} == mtimes  # not rewritten
    assert json.loads((s1 / DONE_MARKER).read_text())["status"] == "ok"
    assert (s1 / "loss.png").is_file() and tifffile.imread(s1 / "phase.tif").shape == (SIZE, SIZE)

    # Nothing left to do: no cluster is started at all, and --force redoes everything.
    rc = main(["reprocess", str(data["run"]), "--out", str(out), "--max-iter", str(MAX_ITER)])
    text = capsys.readouterr().out
    assert rc == 0 and "0 to do, 2 done before" in text and "starting" not in text
    rc = main(["reprocess", str(data["run"]), "--out", str(out), "--max-iter", str(MAX_ITER + 1)])
    assert rc == 0 and "done before with other settings (--force redoes it)" in capsys.readouterr().out
    forced = reprocess([data["run"]], console, out=out, scheduler=cluster, max_iter=MAX_ITER, force=True)
    assert len(forced.done) == 2 and s0.joinpath("phase.tif").stat().st_mtime_ns != mtimes[s0 / "phase.tif"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_corrupt_inputs_are_reported_and_the_others_complete(data, cluster, tmp_path, console):
    out = tmp_path / "out"
    inputs = [data["garbage"], data["damaged"], data["series"]]
    report = reprocess(inputs, console, out=out, scheduler=cluster, max_iter=MAX_ITER)
    text = console.text()
    assert report.exit_code == 1
    failed = {r["label"]: r["reason"] for r in report.failed}
    assert set(failed) == {"garbage.h5", "damaged.h5 series 1"}, text
    assert "truncated or damaged" in failed["garbage.h5"]
    assert "NaN" in failed["damaged.h5 series 1"] and "series 1" in failed["damaged.h5 series 1"]
    assert sorted(r["label"] for r in report.done) == ["damaged.h5 series 0", "recorded.h5"]
    assert (out / "recorded" / "phase.tif").is_file()  # a recorded series: one folder, no series-NNNN
    assert (out / "damaged" / "series-0000" / DONE_MARKER).is_file()
    assert not (out / "damaged" / "series-0001").exists()  # nothing half-written for the failed one
    for label in failed:
        assert sum(f"FAILED {label}:" in line for line in text.splitlines()) == 1  # one line each as it happens
    assert "failed:" in text.split("reprocess summary")[1]


def test_cli_usage_errors_are_one_line_and_fast(data, tmp_path, capsys, monkeypatch):
    import importlib

    # the module (the package's attribute of that name is the function); 5 s in use, the path is the same
    monkeypatch.setattr(importlib.import_module("ltemlive.batch.reprocess"), "SCHEDULER_TIMEOUT_S", 1.0)

    def run(*argv: str) -> tuple[int, str, float]:
        t = time.perf_counter()
        rc = main(["reprocess", *argv])
        err = capsys.readouterr().err.strip()
        return rc, err, time.perf_counter() - t

    rc, err, _ = run(str(tmp_path / "missing.h5"))
    assert rc == 2 and err == f"error: {tmp_path / 'missing.h5'}: no such file"
    rc, err, _ = run(str(tmp_path))
    assert rc == 2 and "a folder without run or series files" in err and len(err.splitlines()) == 1
    (tmp_path / "notes.txt").write_text("x")
    rc, err, _ = run(str(tmp_path / "notes.txt"))
    assert rc == 2 and "unknown input '.txt'" in err
    rc, err, took = run(str(data["series"]), "--out", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:1")
    assert rc == 2 and len(err.splitlines()) == 1 and "no Dask scheduler answered within 1 s" in err and took < 10
    rc, err, _ = run(str(data["series"]), "--scheduler", "not an address")
    assert rc == 2 and "not a scheduler address" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_itre: 3\n")
    rc, err, _ = run(str(data["series"]), "--config", str(bad))
    assert rc == 2 and f"{bad}: max_itre: unknown field" in err
    rc, err, _ = run(str(data["series"]), "--threads-per-worker", "0")
    assert rc == 2 and "--threads-per-worker 0" in err
    # two inputs that would write into one folder are refused before anything runs
    other = tmp_path / "x"
    other.mkdir()
    shutil.copy(data["series"], other / "recorded.h5")
    rc, err, _ = run(str(data["series"]), str(other / "recorded.h5"), "--out", str(tmp_path / "o2"))
    assert rc == 2 and "would both write to" in err
    assert not (tmp_path / "o2").exists()


def test_importing_the_package_starts_no_cluster():
    import subprocess
    import sys

    code = "import sys, ltemlive.batch; print('distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_discovery_finds_series_and_puts_results_next_to_the_inputs(data, tmp_path):
    from ltemlive.storage import write_series_tiff

    tif = write_series_tiff(tmp_path / "stack.tif", _sim(5))
    found = discover([data["run"], tif, data["garbage"]], out=None, config={"max_iter": 7}, config_source="x.yaml")
    where = {it.label: Path(it.out_dir) for it in found.items}
    assert where == {"run.h5 series 0": data["run"].parent / "run-reprocessed" / "series-0000",
                     "run.h5 series 1": data["run"].parent / "run-reprocessed" / "series-0001",
                     "stack.tif": tmp_path / "stack-reprocessed"}
    assert all(it.config["max_iter"] == 7 and it.config_source == "x.yaml" for it in found.items)
    assert [label for label, _ in found.broken] == ["garbage.h5"]
    assert found.not_eligible == [("run.h5 series 2", "aborted: operator stop")]
    # a folder stands for the run and series files in it (not recursively)
    assert {it.label for it in discover([tmp_path], out=None, config=None).items} == {"stack.tif"}
