"""Calibrated outputs: ImageJ TIFFs whose XResolution is pixels per nm with unit nm (ltemlive/storage/tiff.py),
write_reconstruction writing every map through them plus HyperSpy .hspy files with axes in nm that RosettaSciIO
reads calibrated, and outputs that are never silently overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import yaml

from ltemlive.optics import MicroscopeParams
from ltemlive.reconstruct import ReconstructionConfig
from ltemlive.reconstruct.solver import ReconstructionResult
from ltemlive.series import Series
from ltemlive.storage.results import RECONSTRUCTION_FILES, existing_outputs, write_hspy, write_reconstruction
from ltemlive.storage.tiff import read_tiff_pixel_size_nm, write_tiff

PIXEL_M = 2.37e-9
PIXEL_NM = 2.37
H, W = 16, 20
MAPS = ("phase.tif", "amplitude.tif", "induction_bx_t.tif", "induction_by_t.tif")


def xres(path) -> float:
    with tifffile.TiffFile(path) as tif:
        num, den = tif.pages[0].tags["XResolution"].value
        ynum, yden = tif.pages[0].tags["YResolution"].value
    assert num / den == pytest.approx(ynum / yden)
    return num / den


def ij_metadata(path) -> dict:
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        return tif.imagej_metadata


# ----------------------------------------------------------------------------------------------------------
# write_tiff


def test_write_tiff_round_trip_calibrated_in_nm(tmp_path):
    img = np.random.default_rng(0).normal(size=(H, W))
    p = write_tiff(tmp_path / "sub" / "m.tif", img, PIXEL_M, description={"quantity": "phase"}, unit_label="rad")
    assert p == tmp_path / "sub" / "m.tif"
    back = tifffile.imread(p)
    assert back.dtype == np.float32 and back.shape == (H, W)
    np.testing.assert_array_equal(back, img.astype(np.float32))
    assert xres(p) == pytest.approx(1 / PIXEL_NM, rel=1e-9)
    assert read_tiff_pixel_size_nm(p) == pytest.approx(PIXEL_NM, rel=1e-9)
    meta = ij_metadata(p)
    assert meta["unit"] == "nm" and meta["vunit"] == "rad"
    info = json.loads(meta["Info"])  # ltemlive's metadata, out of ImageJ's way
    assert info["quantity"] == "phase" and info["unit"] == "rad"
    assert info["pixel_size_m"] == pytest.approx(PIXEL_M)
    with tifffile.TiffFile(p) as tif:
        assert tif.series[0].axes == "YX"
        assert tif.pages[0].description.startswith("ImageJ=")


def test_write_tiff_stack_and_odd_pixel_sizes(tmp_path):
    stack = np.random.default_rng(1).uniform(size=(3, H, W)).astype(np.float64)
    p = write_tiff(tmp_path / "s.tif", stack, 1.234567e-9, description={"n": np.int64(3), "a": np.ones(2)})
    back = tifffile.imread(p)
    assert back.shape == (3, H, W) and back.dtype == np.float32
    with tifffile.TiffFile(p) as tif:
        assert tif.series[0].axes == "ZYX"
    assert read_tiff_pixel_size_nm(p) == pytest.approx(1.234567, rel=1e-7)
    assert json.loads(ij_metadata(p)["Info"])["n"] == 3
    for px_m in (1e-11, 3.3e-7):  # 0.01 nm .. 330 nm
        q = write_tiff(tmp_path / f"{px_m}.tif", stack[0], px_m)
        assert read_tiff_pixel_size_nm(q) == pytest.approx(px_m * 1e9, rel=1e-6)


def test_write_tiff_refuses_to_overwrite(tmp_path):
    p = write_tiff(tmp_path / "m.tif", np.zeros((8, 8)), PIXEL_M)
    with pytest.raises(FileExistsError, match=r"m\.tif"):
        write_tiff(p, np.ones((8, 8)), PIXEL_M)
    assert (tifffile.imread(p) == 0).all()  # untouched
    write_tiff(p, np.ones((8, 8)), 1e-9, overwrite=True)
    assert (tifffile.imread(p) == 1).all() and read_tiff_pixel_size_nm(p) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "array, px, message",
    [
        (np.zeros(8), PIXEL_M, "shape"),
        (np.zeros((2, 2, 8, 8)), PIXEL_M, "shape"),
        (np.zeros((8, 8), complex), PIXEL_M, "complex"),
        (np.zeros((8, 8)), 0.0, "pixel_size_m"),
        (np.zeros((8, 8)), float("nan"), "pixel_size_m"),
        (np.zeros((8, 8)), "x", "pixel_size_m"),
    ],
)
def test_write_tiff_bad_input(tmp_path, array, px, message):
    with pytest.raises(ValueError, match=message):
        write_tiff(tmp_path / "bad.tif", array, px)
    assert not (tmp_path / "bad.tif").exists()


def test_uncalibrated_tiffs_read_as_none(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((8, 8), np.float32), metadata={"unit": "rad", "pixel_size_m": PIXEL_M})
    assert read_tiff_pixel_size_nm(plain) is None  # the old output: XResolution 1/1, no unit
    um = tmp_path / "um.tif"
    tifffile.imwrite(um, np.zeros((8, 8), np.float32), imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um"})
    assert read_tiff_pixel_size_nm(um) == pytest.approx(500.0)
    cm = tmp_path / "cm.tif"
    tifffile.imwrite(cm, np.zeros((8, 8), np.float32), resolution=(1e6, 1e6), resolutionunit="CENTIMETER")
    assert read_tiff_pixel_size_nm(cm) == pytest.approx(10.0)


# ----------------------------------------------------------------------------------------------------------
# write_reconstruction


def tiny_series() -> Series:
    imgs = np.random.default_rng(2).uniform(0.5, 1.5, size=(2, H, W)).astype(np.float32)
    return Series(images=imgs, defocus_m=[-1e-3, 1e-3], pixel_size_m=PIXEL_M, microscope=MicroscopeParams())


def tiny_result() -> ReconstructionResult:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:H, :W]
    phase = np.exp(-((yy - H / 2) ** 2 + (xx - W / 2) ** 2) / 20.0)
    hist = [
        {"iteration": i, "loss": 1.0 / (i + 1), "data_loss": 0.9 / (i + 1), "reg_loss": 0.1, "elapsed_s": 0.1 * i}
        | {"stage": "all"}
        for i in range(3)
    ]
    return ReconstructionResult(
        phase=phase,
        amplitude=1 + 0.01 * rng.normal(size=(H, W)),
        defocus_m=np.array([-1e-3, 1e-3]),
        defocus_sigma_m=np.array([1e-6, 1e-6]),
        defocus_nominal_m=np.array([-1e-3, 1e-3]),
        theta_c_rad=1e-5,
        theta_c_sigma_rad=1e-7,
        astig_m=(0.0, 0.0),
        shifts_px=np.zeros((2, 2)),
        scales=np.ones(2),
        tie_phase=0.9 * phase,
        history=hist,
        stopped_because="max_iter",
        iterations=3,
        elapsed_s=0.3,
        loss_kind="gaussian",
        reg_weight=0.0,
        noise_level=0.01,
        padding="mirror",
        phase_sigma=np.full((H, W), 0.05),
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("recon") / "out"
    files = write_reconstruction(out, tiny_series(), tiny_result(), ReconstructionConfig())
    return out, files


def test_write_reconstruction_writes_calibrated_tiffs(written):
    out, files = written
    assert set(files) == set(RECONSTRUCTION_FILES)
    assert all(Path(p).exists() for p in files.values())
    for name in MAPS:
        assert files[name] == out / name
        arr = tifffile.imread(out / name)
        assert arr.dtype == np.float32 and arr.shape == (H, W), name
        assert xres(out / name) == pytest.approx(1 / PIXEL_NM, rel=1e-9), name
        assert read_tiff_pixel_size_nm(out / name) == pytest.approx(PIXEL_NM, rel=1e-9), name
        assert ij_metadata(out / name)["unit"] == "nm", name
    np.testing.assert_allclose(tifffile.imread(out / "phase.tif"), tiny_result().phase, rtol=1e-6)
    assert ij_metadata(out / "phase.tif")["vunit"] == "rad"
    assert ij_metadata(out / "induction_bx_t.tif")["vunit"] == "T m"
    assert json.loads(ij_metadata(out / "amplitude.tif")["Info"])["quantity"] == "amplitude"


def test_write_reconstruction_keeps_h5_and_yaml(written):
    out, _ = written
    with h5py.File(out / "reconstruction.h5", "r") as f:
        assert f.attrs["format"] == "ltemlive-reconstruction"
        for name in ("phase", "amplitude", "tie_phase", "induction_bx_t", "induction_by_t"):
            assert f[name].shape == (H, W) and f[name].attrs["pixel_size_m"] == pytest.approx(PIXEL_M), name
        assert f["defocus_m"].shape == (2,) and f["series/images"].shape == (2, H, W)
        assert list(f["history/stage"][()]) == [b"all"] * 3
    assert yaml.safe_load((out / "parameters.yaml").read_text())["pixel_size_m"] == pytest.approx(PIXEL_M)


def test_hspy_layout_written_with_h5py(written):
    out, _ = written
    with h5py.File(out / "phase.hspy", "r") as f:
        assert f.attrs["file_format"] == "HyperSpy"
        exp = f["Experiments/phase"]
        assert exp["data"].shape == (H, W)
        for i, (name, size) in enumerate((("y", H), ("x", W))):
            ax = exp[f"axis-{i}"].attrs
            assert ax["name"] == name and ax["size"] == size and ax["units"] == "nm"
            assert ax["scale"] == pytest.approx(PIXEL_NM) and ax["offset"] == 0 and not ax["navigate"]


@pytest.mark.parametrize("name, quantity", [("phase", "Phase (rad)"), ("amplitude", "Amplitude")])
def test_hspy_loads_calibrated_with_rosettasciio(written, name, quantity):
    hspy = pytest.importorskip("rsciio.hspy")
    out, _ = written
    (sig,) = hspy.file_reader(str(out / f"{name}.hspy"))
    assert sig["data"].shape == (H, W)
    expected = tifffile.imread(out / f"{name}.tif")
    np.testing.assert_array_equal(sig["data"], expected)
    assert [a["name"] for a in sig["axes"]] == ["y", "x"]
    for ax, size in zip(sig["axes"], (H, W), strict=True):
        assert ax["units"] == "nm" and float(ax["scale"]) == pytest.approx(PIXEL_NM)
        assert int(ax["size"]) == size and ax["navigate"] is False
    assert sig["metadata"]["General"]["title"] == name
    assert sig["metadata"]["Signal"]["quantity"] == quantity
    assert json.loads(sig["original_metadata"]["provenance"])["software"] == "ltemlive"


def test_rosettasciio_tiff_reader_sees_the_scale(written):
    tiff = pytest.importorskip("rsciio.tiff")
    out, _ = written
    (sig,) = tiff.file_reader(str(out / "phase.tif"))
    # RosettaSciIO takes ImageJ's scale from XResolution, but only maps the unit "micron" (to µm), so the units
    # of an ImageJ "nm" TIFF stay None there: the .hspy files are the calibrated way into HyperSpy
    assert [float(a["scale"]) for a in sig["axes"]] == pytest.approx([PIXEL_NM, PIXEL_NM])


def test_write_reconstruction_refuses_to_overwrite(written, tmp_path):
    out, files = written
    before = {n: Path(p).stat().st_mtime_ns for n, p in files.items()}
    assert existing_outputs(out) == [out / n for n in RECONSTRUCTION_FILES]
    with pytest.raises(FileExistsError, match=r"phase\.tif"):
        write_reconstruction(out, tiny_series(), tiny_result(), ReconstructionConfig())
    assert {n: Path(p).stat().st_mtime_ns for n, p in files.items()} == before  # nothing touched

    # one stray file is enough to refuse, and nothing new gets written next to it
    other = tmp_path / "other"
    other.mkdir()
    (other / "parameters.yaml").write_text("mine\n")
    with pytest.raises(FileExistsError, match=r"parameters\.yaml"):
        write_reconstruction(other, tiny_series(), tiny_result(), ReconstructionConfig())
    assert sorted(p.name for p in other.iterdir()) == ["parameters.yaml"]
    assert (other / "parameters.yaml").read_text() == "mine\n"


def test_write_reconstruction_overwrite_true_replaces(tmp_path):
    out = tmp_path / "o"
    write_reconstruction(out, tiny_series(), tiny_result(), ReconstructionConfig())
    res = tiny_result()
    res.phase = 2 * res.phase
    write_reconstruction(out, tiny_series(), res, ReconstructionConfig(), overwrite=True)
    np.testing.assert_allclose(tifffile.imread(out / "phase.tif"), res.phase, rtol=1e-6)
    with h5py.File(out / "phase.hspy", "r") as f:
        np.testing.assert_allclose(f["Experiments/phase/data"][()], res.phase, rtol=1e-6)


def test_write_hspy_refuses_to_overwrite_and_checks_input(tmp_path):
    p = write_hspy(tmp_path / "m.hspy", np.zeros((8, 8)), PIXEL_M, title="m")
    with pytest.raises(FileExistsError, match=r"m\.hspy"):
        write_hspy(p, np.ones((8, 8)), PIXEL_M, title="m")
    with pytest.raises(ValueError, match="2-D"):
        write_hspy(tmp_path / "s.hspy", np.zeros((2, 8, 8)), PIXEL_M, title="s")
    with pytest.raises(ValueError, match="pixel_size_m"):
        write_hspy(tmp_path / "z.hspy", np.zeros((8, 8)), -1.0, title="z")
