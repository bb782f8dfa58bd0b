"""The `ltemlive` command (ltemlive/cli.py), run in-process through `main([...])`: help text, `simulate` to
HDF5 and TIFF, `reconstruct` round trips on TIFF stacks with a YAML sidecar (four images, a +-df pair only,
uneven spacing), `tie`, and errors that come back as exit code 2 with a message naming the problem.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
import yaml

from ltemlive.cli import main
from ltemlive.sim_bridge import simulate
from ltemlive.storage import read_series, write_series_tiff
from simulator.series import SimulationConfig

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PIXEL_M = 10e-9
DEFOCUS_M = [-4e-4, -4e-5, 4e-5, 4e-4]


pytestmark = pytest.mark.usefixtures("single_thread")


def one_line(text: str) -> str:
    """Console output with line breaks and runs of spaces collapsed, for substring checks."""
    return " ".join(text.split())


def simulated_tiff(tmp_path: Path, defocus_m=DEFOCUS_M, name="series", size=64) -> Path:
    cfg = SimulationConfig(shape=(size, size), pixel_size_m=PIXEL_M, defocus_m=list(defocus_m), dose_e_per_px=100.0)
    return write_series_tiff(tmp_path / f"{name}.tif", simulate(cfg))


def edit_sidecar(tif: Path, **changes) -> None:
    sc = tif.with_suffix(".yaml")
    meta = yaml.safe_load(sc.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    sc.write_text(yaml.safe_dump(meta))


def assert_png(path: Path) -> None:
    assert path.exists(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path


def assert_error(capsys, argv: list[str], *words: str) -> str:
    """main(argv) fails with exit code 2 and a message (on stderr) that contains every one of `words`."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = one_line(captured.err)
    assert "error" in err
    for word in words:
        assert word in err, f"{word!r} not in error message: {err}"
    return err


# ----------------------------------------------------------------------------------------------------------
# help


def test_help_lists_subcommands_and_defocus_convention(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = one_line(capsys.readouterr().out)
    for command in ("demo", "simulate", "reconstruct", "tie"):
        assert command in text
    assert "positive = over-focus" in text  # the sign convention, docs/conventions.md


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "reconstruct" in capsys.readouterr().out


def test_demo_help_documents_its_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--size", "--dose"):
        assert option in text


# ----------------------------------------------------------------------------------------------------------
# simulate


def test_simulate_writes_h5_with_ground_truth(tmp_path):
    out = tmp_path / "sub" / "series.h5"
    argv = ["simulate", "--size", "64", "--dose", "100", "--defocus", "-2e-4", "2e-4", "--out", str(out)]
    assert main(argv) == 0
    s = read_series(out)
    assert s.images.shape == (2, 64, 64)
    np.testing.assert_allclose(s.defocus_m, [-2e-4, 2e-4])
    assert s.dose_e_per_px == 100.0
    assert s.truth is not None and s.truth.phase.shape == (64, 64)
    assert np.isfinite(s.truth.phase).all()


def test_simulate_writes_tiff_with_sidecar(tmp_path):
    out = tmp_path / "s.tif"
    argv = ["simulate", "--size", "64", "--dose", "100", "--defocus", "-2e-4", "2e-4", "--out", str(out)]
    assert main(argv) == 0
    assert (tmp_path / "s.yaml").exists()
    meta = yaml.safe_load((tmp_path / "s.yaml").read_text())
    assert meta["defocus_m"] == pytest.approx([-2e-4, 2e-4])
    s = read_series(out)
    assert s.images.shape == (2, 64, 64) and s.dose_e_per_px == 100.0
    assert s.truth is None  # a TIFF stack carries no ground truth


# ----------------------------------------------------------------------------------------------------------
# reconstruct


def check_reconstruction(out: Path, n_images: int, size: int = 64) -> None:
    phase = tifffile.imread(out / "phase.tif")
    assert phase.dtype == np.float32 and phase.shape == (size, size)
    assert np.isfinite(phase).all()
    for name in ("amplitude.tif", "induction_bx_t.tif", "induction_by_t.tif"):
        arr = tifffile.imread(out / name)
        assert arr.shape == (size, size) and np.isfinite(arr).all(), name

    with h5py.File(out / "reconstruction.h5", "r") as f:
        for name in ("phase", "defocus_m", "defocus_sigma_m"):
            assert name in f, name
        assert f["phase"].shape == (size, size)
        assert f["defocus_m"].shape == (n_images,)
        assert "ltemlive" in json.loads(f.attrs["provenance"])["software"]
        json.loads(f.attrs["config"])  # the settings used, as JSON

    params = yaml.safe_load((out / "parameters.yaml").read_text())
    assert len(params["defocus_m"]) == n_images
    assert all(isinstance(d, float) and math.isfinite(d) for d in params["defocus_m"])
    assert len(params["defocus_sigma_m"]) == n_images
    for key in ("theta_c_rad", "theta_c_sigma_rad"):
        assert isinstance(params[key], float) and math.isfinite(params[key]), key

    for name in ("phase.png", "induction.png", "loss.png"):
        assert_png(out / name)


def test_reconstruct_tiff_stack_round_trip(tmp_path, capsys):
    tif = simulated_tiff(tmp_path)
    out = tmp_path / "result"
    assert main(["reconstruct", str(tif), "--out", str(out), "--max-iter", "20"]) == 0
    check_reconstruction(out, 4)
    params = yaml.safe_load((out / "parameters.yaml").read_text())
    # noise-limited data, 20 iterations: the refined defocus stays close to the nominal one
    np.testing.assert_allclose(params["defocus_m"], DEFOCUS_M, rtol=0.1)
    assert "refined parameters" in capsys.readouterr().out


def test_reconstruct_defocus_pair_without_in_focus_image(tmp_path):
    tif = simulated_tiff(tmp_path, defocus_m=[-3e-4, 3e-4])
    out = tmp_path / "result"
    assert main(["reconstruct", str(tif), "--out", str(out), "--max-iter", "20"]) == 0
    check_reconstruction(out, 2)


def test_reconstruct_unevenly_spaced_defocus(tmp_path):
    tif = simulated_tiff(tmp_path, defocus_m=[-3e-4, 5e-5, 2e-4])
    out = tmp_path / "result"
    assert main(["reconstruct", str(tif), "--out", str(out), "--max-iter", "20", "--freeze", "shifts"]) == 0
    check_reconstruction(out, 3)
    with h5py.File(out / "reconstruction.h5", "r") as f:
        assert json.loads(f.attrs["config"])["free"]["shifts"] is False
        np.testing.assert_allclose(f["defocus_nominal_m"][()], [-3e-4, 5e-5, 2e-4])


# ----------------------------------------------------------------------------------------------------------
# tie


def test_tie_writes_phase(tmp_path):
    tif = simulated_tiff(tmp_path)
    out = tmp_path / "tie"
    assert main(["tie", str(tif), "--out", str(out)]) == 0
    phase = tifffile.imread(out / "phase.tif")
    assert phase.dtype == np.float32 and phase.shape == (64, 64) and np.isfinite(phase).all()
    assert_png(out / "phase.png")


# ----------------------------------------------------------------------------------------------------------
# errors: exit code 2 and a message that names the problem


def test_missing_sidecar(tmp_path, capsys):
    tif = simulated_tiff(tmp_path)
    tif.with_suffix(".yaml").unlink()
    assert_error(capsys, ["reconstruct", str(tif), "--out", str(tmp_path / "o")], "sidecar", "series.yaml")
    assert not (tmp_path / "o").exists()


def test_missing_series_file(tmp_path, capsys):
    assert_error(capsys, ["tie", str(tmp_path / "nope.tif"), "--out", str(tmp_path / "o")], "no such series file")


def test_sidecar_without_pixel_size(tmp_path, capsys):
    tif = simulated_tiff(tmp_path)
    edit_sidecar(tif, pixel_size_m=None)
    assert_error(capsys, ["reconstruct", str(tif), "--out", str(tmp_path / "o")], "pixel_size_m")


def test_sidecar_with_boolean_voltage(tmp_path, capsys):
    tif = simulated_tiff(tmp_path)
    edit_sidecar(tif, voltage_v=True)
    assert_error(capsys, ["tie", str(tif), "--out", str(tmp_path / "o")], "voltage_v")


def test_defocus_count_not_matching_images(tmp_path, capsys):
    tif = simulated_tiff(tmp_path)
    edit_sidecar(tif, defocus_m=[-4e-4, 4e-4])
    assert_error(capsys, ["reconstruct", str(tif), "--out", str(tmp_path / "o")], "defocus_m has 2 values", "4 images")


def test_nan_in_images(tmp_path, capsys):
    tif = simulated_tiff(tmp_path)
    stack = tifffile.imread(tif)
    stack[1, 10, 10] = np.nan
    tifffile.imwrite(tif, stack, photometric="minisblack")
    assert_error(capsys, ["reconstruct", str(tif), "--out", str(tmp_path / "o")], "NaN")


def test_unknown_freeze_group(tmp_path, capsys):
    tif = simulated_tiff(tmp_path)
    err = assert_error(
        capsys, ["reconstruct", str(tif), "--out", str(tmp_path / "o"), "--freeze", "focus"], "'focus'", "valid"
    )
    for group in ("phase", "defocus", "theta_c", "shifts"):
        assert group in err
    assert not (tmp_path / "o").exists()


def test_unknown_free_group_in_config_file(tmp_path, capsys):
    tif = simulated_tiff(tmp_path)
    cfg = tmp_path / "recon.yaml"
    cfg.write_text("free:\n  wobble: true\n")
    argv = ["reconstruct", str(tif), "--out", str(tmp_path / "o"), "--config", str(cfg)]
    assert_error(capsys, argv, "'wobble'", "valid groups")


def test_config_file_not_a_mapping(tmp_path, capsys):
    tif = simulated_tiff(tmp_path)
    cfg = tmp_path / "recon.yaml"
    cfg.write_text("- max_iter\n- 3\n")
    argv = ["reconstruct", str(tif), "--out", str(tmp_path / "o"), "--config", str(cfg)]
    assert_error(capsys, argv, "recon.yaml", "mapping")


def test_invalid_setting_value(tmp_path, capsys):
    tif = simulated_tiff(tmp_path)
    assert_error(capsys, ["reconstruct", str(tif), "--out", str(tmp_path / "o"), "--max-iter", "0"], "max_iter")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_without_cuda(tmp_path, capsys):
    tif = simulated_tiff(tmp_path)
    assert_error(
        capsys, ["reconstruct", str(tif), "--out", str(tmp_path / "o"), "--device", "cuda"], "--device cuda", "CUDA"
    )


def test_instrument_server_help_is_the_servers(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["instrument-server", "--help"])
    assert exc.value.code == 0
    assert "Instrument server" in capsys.readouterr().out
