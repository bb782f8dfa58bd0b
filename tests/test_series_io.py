"""The Series container (ltemlive/series.py) and series files (ltemlive/storage/series_io.py): validation
errors that name the problem, HDF5 and TIFF + YAML sidecar round trips, sidecar errors, and a property test
that garbage sidecars only ever raise SeriesFormatError / ValueError.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ltemlive.optics import MicroscopeParams
from ltemlive.series import GroundTruth, Series
from ltemlive.storage import read_series, write_series_h5, write_series_tiff
from ltemlive.storage.series_io import OPTIONAL_MICROSCOPE_KEYS, REQUIRED_SIDECAR_KEYS, SeriesFormatError

PIXEL_M = 5e-9
DEFOCUS_M = [-1.6e-3, -0.15e-3, 0.15e-3, 1.6e-3]


def images(n=4, h=16, w=20, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 1.5, size=(n, h, w)).astype(np.float32)


def make_series(**overrides):
    kw = dict(images=images(), defocus_m=DEFOCUS_M, pixel_size_m=PIXEL_M, microscope=MicroscopeParams())
    kw.update(overrides)
    return Series(**kw)


def sidecar(**overrides):
    meta = {"defocus_m": list(DEFOCUS_M), "pixel_size_m": PIXEL_M, "voltage_v": 200e3, "cs_m": 1e-3}
    meta.update(overrides)
    return meta


def write_tiff_pair(tmp_path: Path, stack, meta, name="series") -> Path:
    tif = tmp_path / f"{name}.tif"
    tifffile.imwrite(tif, np.asarray(stack, dtype=np.float32), photometric="minisblack")
    if meta is not None:
        text = meta if isinstance(meta, str) else yaml.safe_dump(meta)
        (tmp_path / f"{name}.yaml").write_text(text)
    return tif


# ----------------------------------------------------------------------------------------------------------
# Series validation


def test_valid_series_normalises_types():
    s = make_series(images=images().astype(np.float64), defocus_m=tuple(DEFOCUS_M), pixel_size_m=5)
    assert s.images.dtype == np.float32 and s.images.shape == (4, 16, 20)
    assert s.defocus_m.dtype == np.float64 and s.defocus_m.shape == (4,)
    assert isinstance(s.pixel_size_m, float)
    assert s.n_images == 4 and s.shape == (16, 20)


def test_single_2d_image_becomes_a_stack():
    s = make_series(images=images(1)[0], defocus_m=1e-3)
    assert s.images.shape == (1, 16, 20) and s.defocus_m.tolist() == [1e-3]


def test_images_of_different_shapes_rejected():
    ragged = [np.ones((16, 16)), np.ones((16, 18))]
    with pytest.raises(ValueError, match="shape"):
        make_series(images=ragged, defocus_m=[1e-3, -1e-3])


@pytest.mark.parametrize("shape", [(16,), (2, 2, 16, 16), ()])
def test_images_not_a_stack_rejected(shape):
    with pytest.raises(ValueError, match=r"images must be a stack of shape \(N, H, W\)"):
        make_series(images=np.ones(shape), defocus_m=[0.0])


def test_tiny_images_rejected():
    with pytest.raises(ValueError, match="8x8"):
        make_series(images=np.ones((1, 4, 16)), defocus_m=[0.0])


@pytest.mark.parametrize("bad", [np.ones((2, 16, 16), dtype=complex), np.full((2, 16, 16), "a")])
def test_non_real_images_rejected(bad):
    with pytest.raises(ValueError, match="real numbers"):
        make_series(images=bad, defocus_m=[0.0, 1e-3])


@pytest.mark.parametrize("defocus", [[1e-3, -1e-3], [1e-3] * 5, []])
def test_defocus_count_must_match_image_count(defocus):
    with pytest.raises(ValueError, match=r"defocus_m has \d+ values but there are 4 images"):
        make_series(defocus_m=defocus)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_defocus_rejected(bad):
    with pytest.raises(ValueError, match="defocus_m must be finite"):
        make_series(defocus_m=[1e-3, bad, 0.0, -1e-3])


@pytest.mark.parametrize("bad", [0.0, -5e-9, float("nan"), float("inf"), "5e-9", None])
def test_bad_pixel_size_rejected(bad):
    with pytest.raises(ValueError, match="pixel_size_m"):
        make_series(pixel_size_m=bad)


def test_negative_counts_with_dose_rejected():
    imgs = images()
    imgs[1, 3, 4] = -2.0
    with pytest.raises(ValueError, match="negative counts"):
        make_series(images=imgs, dose_e_per_px=100.0)
    # without a dose (normalised, background-subtracted data) negative values are allowed
    assert make_series(images=imgs).images[1, 3, 4] == -2.0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_dose_rejected(bad):
    with pytest.raises(ValueError, match="dose_e_per_px"):
        make_series(dose_e_per_px=bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_images_rejected(bad):
    imgs = images()
    imgs[2, 5, 5] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        make_series(images=imgs)


def test_numpy_float32_pixel_size_accepted():
    s = make_series(pixel_size_m=np.float32(5e-9))
    assert s.pixel_size_m == pytest.approx(5e-9, rel=1e-6)


@pytest.mark.parametrize("px", [np.float16(5e-3), np.float32(5e-9), np.float64(5e-9), np.int64(5), np.int8(1)])
def test_numpy_scalar_pixel_size_accepted(px):
    s = make_series(pixel_size_m=px)
    assert type(s.pixel_size_m) is float and s.pixel_size_m == pytest.approx(float(px), rel=1e-6)


@pytest.mark.parametrize("bad", [True, False, np.True_, np.float32("nan"), np.int64(0), 10**400, [5e-9]])
def test_bool_and_odd_pixel_sizes_rejected(bad):
    with pytest.raises(ValueError, match="pixel_size_m"):
        make_series(pixel_size_m=bad)


@pytest.mark.parametrize("bad", [True, [100.0], "100", 10**400])
def test_non_number_dose_rejected(bad):
    with pytest.raises(ValueError, match="dose_e_per_px"):
        make_series(dose_e_per_px=bad)


def test_numpy_dose_normalised_to_float():
    s = make_series(dose_e_per_px=np.float32(50.0))
    assert type(s.dose_e_per_px) is float and s.dose_e_per_px == 50.0


@pytest.mark.parametrize("bad", [[10**400, 0, 0, 0], [True, False, True, False], ["a", "b", "c", "d"]])
def test_non_number_defocus_rejected(bad):
    with pytest.raises(ValueError, match="defocus_m"):
        make_series(defocus_m=bad)


# ----------------------------------------------------------------------------------------------------------
# HDF5


def test_h5_round_trip_preserves_everything(tmp_path):
    rng = np.random.default_rng(3)
    truth = GroundTruth(
        phase=rng.standard_normal((16, 20)),
        amplitude=rng.uniform(0.8, 1.0, (16, 20)),
        defocus_m=np.array(DEFOCUS_M) * 1.02,
        shifts_px=rng.standard_normal((4, 2)),
    )
    micro = MicroscopeParams(
        voltage_v=300e3,
        cs_m=2.1e-3,
        theta_c_rad=7e-6,
        focal_spread_m=250e-9,
        astig_m=3e-8,
        astig_azimuth_rad=0.7,
        aperture_q_max=4e7,
    )
    meta = {
        "specimen": "vortex_disc",
        "n": 3,
        "list": [1, 2.5],
        "nested": {"a": "b"},
        "arr": np.arange(3),
        "path": Path("/x/y"),
    }
    s = make_series(images=images() * 100, microscope=micro, dose_e_per_px=100.0, truth=truth, metadata=meta)
    path = write_series_h5(tmp_path / "sub" / "s.h5", s, provenance={"git": "abc"})
    assert path.exists()
    r = read_series(path)
    np.testing.assert_array_equal(r.images, s.images)
    np.testing.assert_array_equal(r.defocus_m, s.defocus_m)
    assert r.pixel_size_m == s.pixel_size_m
    assert r.microscope == micro
    assert r.dose_e_per_px == 100.0
    assert r.metadata == {
        "specimen": "vortex_disc",
        "n": 3,
        "list": [1, 2.5],
        "nested": {"a": "b"},
        "arr": [0, 1, 2],
        "path": "/x/y",
    }
    assert r.truth is not None
    for k in ("phase", "amplitude", "defocus_m", "shifts_px"):
        np.testing.assert_array_equal(getattr(r.truth, k), getattr(truth, k))
    with h5py.File(path) as f:
        assert f.attrs["format"] == "ltemlive-series"
        assert "abc" in f.attrs["provenance"]


def test_h5_round_trip_without_optional_parts(tmp_path):
    s = make_series()
    r = read_series(write_series_h5(tmp_path / "s.hdf5", s))
    assert r.truth is None and r.dose_e_per_px is None and r.metadata == {}
    np.testing.assert_array_equal(r.images, s.images)
    truth = GroundTruth(np.zeros((16, 20)), np.ones((16, 20)), np.array(DEFOCUS_M))
    r2 = read_series(write_series_h5(tmp_path / "t.h5", make_series(truth=truth)))
    assert r2.truth is not None and r2.truth.shifts_px is None


def test_foreign_h5_rejected(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.ones((2, 16, 16)))
    with pytest.raises(SeriesFormatError, match="not an ltemlive series"):
        read_series(path)


def test_missing_file_rejected(tmp_path):
    with pytest.raises(SeriesFormatError, match="no such series file"):
        read_series(tmp_path / "nope.h5")


# ----------------------------------------------------------------------------------------------------------
# TIFF + YAML sidecar


def test_tiff_round_trip(tmp_path):
    micro = MicroscopeParams(voltage_v=300e3, cs_m=2.1e-3, theta_c_rad=7e-6)
    s = make_series(images=images() * 50, microscope=micro, dose_e_per_px=50.0)
    path = write_series_tiff(tmp_path / "out" / "s.tif", s)
    assert path.with_suffix(".yaml").exists()
    r = read_series(path)
    np.testing.assert_array_equal(r.images, s.images)
    np.testing.assert_array_equal(r.defocus_m, s.defocus_m)
    assert r.pixel_size_m == s.pixel_size_m
    assert r.dose_e_per_px == 50.0
    assert r.microscope == micro
    assert r.metadata["source"] == str(path)


def test_tiff_round_trip_without_dose_and_tiff_suffix(tmp_path):
    s = make_series()
    r = read_series(write_series_tiff(tmp_path / "s.tiff", s))
    assert r.dose_e_per_px is None
    np.testing.assert_array_equal(r.images, s.images)


def test_tiff_round_trip_preserves_full_microscope(tmp_path):
    micro = MicroscopeParams(focal_spread_m=250e-9, astig_m=3e-8, astig_azimuth_rad=0.7)
    r = read_series(write_series_tiff(tmp_path / "s.tif", make_series(microscope=micro)))
    assert r.microscope == micro


def test_tiff_round_trip_preserves_every_microscope_field(tmp_path):
    micro = MicroscopeParams(
        voltage_v=300e3,
        cs_m=2.1e-3,
        theta_c_rad=7e-6,
        focal_spread_m=250e-9,
        astig_m=3e-8,
        astig_azimuth_rad=0.7,
        aperture_q_max=4e7,
    )
    path = write_series_tiff(tmp_path / "s.tif", make_series(microscope=micro))
    meta = yaml.safe_load(path.with_suffix(".yaml").read_text())
    for key, value in micro.model_dump().items():
        assert meta[key] == value  # every field is in the sidecar, by name
    assert read_series(path).microscope == micro
    # no aperture: the key is left out, and reading it back gives None again
    plain = write_series_tiff(tmp_path / "p.tif", make_series())
    assert "aperture_q_max" not in yaml.safe_load(plain.with_suffix(".yaml").read_text())
    assert read_series(plain).microscope.aperture_q_max is None


def test_tiff_writer_handles_numpy_scalars(tmp_path):
    s = make_series(pixel_size_m=np.float32(5e-9), dose_e_per_px=np.float64(20.0), images=images() * 20)
    r = read_series(write_series_tiff(tmp_path / "s.tif", s))
    assert r.pixel_size_m == pytest.approx(5e-9, rel=1e-6) and r.dose_e_per_px == 20.0


def test_sidecar_optional_microscope_keys_read(tmp_path):
    meta = sidecar(theta_c_rad=2e-6, focal_spread_m=50e-9, astig_m=1e-8, astig_azimuth_rad=0.3, dose_e_per_px=None)
    r = read_series(write_tiff_pair(tmp_path, images(), meta))
    assert r.microscope.theta_c_rad == 2e-6 and r.microscope.focal_spread_m == 50e-9
    assert r.microscope.astig_m == 1e-8 and r.microscope.astig_azimuth_rad == 0.3
    assert r.dose_e_per_px is None


def test_single_image_with_scalar_defocus(tmp_path):
    r = read_series(write_tiff_pair(tmp_path, images(1)[0], sidecar(defocus_m=1.5e-3)))
    assert r.images.shape == (1, 16, 20) and r.defocus_m.tolist() == [1.5e-3]


def test_sidecar_missing(tmp_path):
    tif = write_tiff_pair(tmp_path, images(), None)
    with pytest.raises(SeriesFormatError, match="sidecar") as exc:
        read_series(tif)
    assert "series.yaml" in str(exc.value)


@pytest.mark.parametrize("key", REQUIRED_SIDECAR_KEYS)
def test_sidecar_missing_required_key(tmp_path, key):
    meta = sidecar()
    del meta[key]
    with pytest.raises(SeriesFormatError, match=key):
        read_series(write_tiff_pair(tmp_path, images(), meta))


def test_single_image_without_defocus(tmp_path):
    with pytest.raises(SeriesFormatError, match="single image needs its defocus_m"):
        read_series(write_tiff_pair(tmp_path, images(1), sidecar(defocus_m=[])))


def test_defocus_count_mismatch_from_sidecar(tmp_path):
    with pytest.raises(ValueError, match="defocus_m has 2 values but there are 4 images"):
        read_series(write_tiff_pair(tmp_path, images(), sidecar(defocus_m=[1e-3, -1e-3])))


@pytest.mark.parametrize(
    ("meta", "word"),
    [
        ("defocus_m: [1, 2\n", "not valid YAML"),
        ("- just\n- a list\n", "mapping"),
        (sidecar(defocus_m=["a", "b", "c", "d"]), "defocus_m"),
        (sidecar(defocus_m=None), "defocus_m"),
        (sidecar(pixel_size_m="5 nm"), "pixel_size_m"),
        (sidecar(pixel_size_m=-5e-9), "pixel_size_m"),
        (sidecar(voltage_v=-200e3), "voltage_v"),
        (sidecar(cs_m="big"), "cs_m"),
        (sidecar(theta_c_rad=1.0), "theta_c_rad"),
        (sidecar(dose_e_per_px=-3.0), "dose_e_per_px"),
        (sidecar(dose_e_per_px=0), "dose_e_per_px"),
        (sidecar(dose_e_per_px=True), "dose_e_per_px"),
        (sidecar(voltage_v=True), "voltage_v"),
        (sidecar(cs_m=False), "cs_m"),
        (sidecar(pixel_size_m=True), "pixel_size_m"),
        (sidecar(defocus_m=[True, False, 1e-3, -1e-3]), "defocus_m"),
        (sidecar(theta_c_rad=[1e-6]), "theta_c_rad"),
        (sidecar(aperture_q_max=-1.0), "aperture_q_max"),
        (sidecar(astig_m="none"), "astig_m"),
    ],
)
def test_bad_sidecar_values_named(tmp_path, meta, word):
    with pytest.raises(ValueError, match=word):
        read_series(write_tiff_pair(tmp_path, images(), meta))


def test_nan_and_negative_images_in_tiff(tmp_path):
    bad = images()
    bad[0, 0, 0] = np.nan
    with pytest.raises(SeriesFormatError, match="NaN"):
        read_series(write_tiff_pair(tmp_path, bad, sidecar(), name="nan"))
    neg = images()
    neg[0, 0, 0] = -1.0
    with pytest.raises(SeriesFormatError, match="negative counts"):
        read_series(write_tiff_pair(tmp_path, neg, sidecar(dose_e_per_px=10.0), name="neg"))


def _rsciio_installed() -> bool:
    try:
        import rsciio  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_rsciio_installed(), reason="RosettaSciIO is installed")
@pytest.mark.parametrize("suffix", [".dm4", ".mrc", ".xyz"])
def test_other_format_without_rosettasciio(tmp_path, suffix):
    path = tmp_path / f"series{suffix}"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(SeriesFormatError, match="RosettaSciIO") as exc:
        read_series(path)
    assert "TIFF" in str(exc.value)  # and it says what to do instead


# ----------------------------------------------------------------------------------------------------------
# garbage sidecars: only SeriesFormatError / ValueError (pydantic's ValidationError is a ValueError)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),  # too large for a float
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
_keys = st.sampled_from([*REQUIRED_SIDECAR_KEYS, *OPTIONAL_MICROSCOPE_KEYS, "dose_e_per_px", "other"])


@st.composite
def garbage_meta(draw):
    meta = {}
    for key in draw(st.lists(_keys, max_size=9, unique=True)):
        meta[key] = draw(_values)
    if draw(st.booleans()):  # often start from a valid sidecar and spoil a few keys
        meta = {**sidecar(), **meta}
    return yaml.safe_dump(meta)


_raw_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(garbage_meta(), _raw_text))
def test_garbage_sidecar_only_raises_format_or_value_errors(tmp_path, text):
    tif = tmp_path / "g.tif"
    if not tif.exists():
        tifffile.imwrite(tif, images(), photometric="minisblack")
    (tmp_path / "g.yaml").write_text(text, encoding="utf-8")
    try:
        s = read_series(tif)
    except (SeriesFormatError, ValueError):
        return
    # anything accepted is a valid series
    assert s.n_images == 4 and math.isfinite(s.pixel_size_m) and s.pixel_size_m > 0
    assert np.isfinite(s.defocus_m).all()


@pytest.mark.parametrize("dose", [[100.0], {"a": 1}, "2020-01-01", True, "100 e"])
def test_non_scalar_dose_in_sidecar_is_a_format_error(tmp_path, dose):
    meta = yaml.safe_dump(sidecar(dose_e_per_px=dose))
    if dose == "2020-01-01":  # an unquoted YAML date, loaded as datetime.date
        meta = meta.replace("'2020-01-01'", "2020-01-01")
        assert "dose_e_per_px: 2020-01-01" in meta
    with pytest.raises(SeriesFormatError, match="dose_e_per_px"):
        read_series(write_tiff_pair(tmp_path, images(), meta))


@pytest.mark.parametrize("key", ["defocus_m", "pixel_size_m"])
def test_huge_integer_in_sidecar_is_a_format_error(tmp_path, key):
    value = [10**400, 0, 0, 0] if key == "defocus_m" else 10**400
    with pytest.raises(SeriesFormatError, match=key):
        read_series(write_tiff_pair(tmp_path, images(), sidecar(**{key: value})))


@pytest.mark.parametrize("text", ["[" * 5000, "[" * 5000 + "]" * 5000, "defocus_m: " + "[" * 3000 + "]" * 3000])
def test_deeply_nested_sidecar_is_a_format_error(tmp_path, text):
    with pytest.raises(SeriesFormatError):
        read_series(write_tiff_pair(tmp_path, images(), text))


@pytest.mark.parametrize("n", [1, 3, 4])
def test_tiff_writer_stores_a_stack_of_grey_images(tmp_path, n):
    s = make_series(images=images(n), defocus_m=DEFOCUS_M[:n])
    path = write_series_tiff(tmp_path / "s.tif", s)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
        assert tif.series[0].shape in ((n, 16, 20), (16, 20))
    r = read_series(path)
    assert r.images.shape == (n, 16, 20)
    np.testing.assert_array_equal(r.images, s.images)
