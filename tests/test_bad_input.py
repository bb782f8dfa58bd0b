"""Bad input to read_series (ltemlive/storage/series_io.py): every problem is a SeriesFormatError (a ValueError)
whose one-line message starts with the path at fault and names the field and the allowed (or likely) values.

Sidecars: unknown keys with a did-you-mean, numbers in any usual notation, unit mistakes. Images: the rule on
negative values. Files: empty, damaged or missing TIFF / HDF5 / DM / MRC / EMD files, directories, unknown types.
"""

from __future__ import annotations

import gc
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ltemlive.optics import MicroscopeParams
from ltemlive.series import Series
from ltemlive.storage import read_series, write_series_h5
from ltemlive.storage.series_io import ALLOWED_SIDECAR_KEYS, SeriesFormatError

DEFOCUS_M = [-1.6e-3, -0.15e-3, 0.15e-3, 1.6e-3]
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def images(n=4, h=16, w=20, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 1.5, size=(n, h, w)).astype(np.float32)


def sidecar(**overrides):
    meta = {"defocus_m": list(DEFOCUS_M), "pixel_size_m": 5e-9, "voltage_v": 200e3, "cs_m": 1e-3}
    meta.update(overrides)
    return meta


def write_pair(tmp_path: Path, stack=None, meta=None, name="series", suffix=".tif") -> Path:
    """An image file and its sidecar (`meta` a dict, YAML text, or None for no sidecar)."""
    path = tmp_path / f"{name}{suffix}"
    stack = images() if stack is None else stack
    if suffix == ".mrc":
        write_mrc(path, stack)
    else:
        tifffile.imwrite(path, np.asarray(stack, dtype=np.float32), photometric="minisblack")
    if meta is not None:
        text = meta if isinstance(meta, str) else yaml.safe_dump(meta, sort_keys=False)
        (tmp_path / f"{name}.yaml").write_text(text)
    return path


def write_mrc(path: Path, stack) -> None:
    """A minimal MRC2014 file (float32, mode 2) of an (N, H, W) stack."""
    data = np.asarray(stack, dtype="<f4")
    nz, ny, nx = data.shape
    header = bytearray(1024)
    struct.pack_into("<4i", header, 0, nx, ny, nz, 2)
    struct.pack_into("<3i", header, 28, nx, ny, nz)
    struct.pack_into("<3f", header, 40, float(nx), float(ny), float(nz))
    struct.pack_into("<3i", header, 64, 1, 2, 3)
    header[208:216] = b"MAP " + bytes([0x44, 0x44, 0, 0])
    path.write_bytes(bytes(header) + data.tobytes())


def refused(path, *words: str) -> str:
    """read_series(path) raises SeriesFormatError, one line starting with the path at fault, with every word."""
    with pytest.raises(SeriesFormatError) as exc:
        read_series(path)
    msg = str(exc.value)
    assert isinstance(exc.value, ValueError)
    assert "\n" not in msg, msg
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"
    return msg


# ----------------------------------------------------------------------------------------------------------
# sidecars: unknown keys, numbers, units

BAD_SIDECARS = [
    # misspelled or unknown keys: did-you-mean and the allowed keys
    (sidecar(dose_e_per_pix=50.0), ["'dose_e_per_pix'", "did you mean 'dose_e_per_px'", "allowed keys", "cs_m"]),
    (sidecar(theta_c=1e-5), ["'theta_c'", "did you mean 'theta_c_rad'", "allowed keys"]),
    (sidecar(Voltage_V=200e3), ["'Voltage_V'", "did you mean 'voltage_v'"]),
    (sidecar(focal_spread=1e-7), ["did you mean 'focal_spread_m'"]),
    (sidecar(comment="trial 3"), ["unknown key 'comment'", "allowed keys: defocus_m, pixel_size_m"]),
    (sidecar(theta_c=1e-5, dose=3), ["unknown keys", "'theta_c'", "'dose'", "allowed keys"]),
    # unit mistakes: the unit the value looks like, and the SI value
    (sidecar(voltage_v=200), ["voltage_v", "looks like kV", "give volts, 200e3", "1e3 to 3e6"]),
    (sidecar(voltage_v="300"), ["voltage_v", "looks like kV", "300e3"]),
    (sidecar(pixel_size_m=5.0), ["pixel_size_m", "looks like nm", "5e-9"]),
    (sidecar(pixel_size_m="2e-3"), ["pixel_size_m", "looks like nm"]),
    (sidecar(defocus_m=[-1.6, -0.15, 0.15, 1.6]), ["defocus_m", "looks like mm", "-1.6e-3", "0.05 m"]),
    (sidecar(defocus_m=[-1600, -150, 150, 1600]), ["defocus_m", "looks like um", "e-6"]),
    (sidecar(cs_m=1.2), ["cs_m", "mm", "1.2e-3", "0.1 m"]),
    (sidecar(theta_c_rad=10), ["theta_c_rad", "urad", "10e-6", "radians"]),
    (sidecar(theta_c_rad=1.0), ["theta_c_rad", "radians"]),
    (sidecar(focal_spread_m=50.0), ["focal_spread_m", "looks like nm"]),
    (sidecar(astig_m=30.0), ["astig_m", "looks like nm"]),
    (sidecar(astig_azimuth_rad=45.0), ["astig_azimuth_rad", "degrees", "0.7854"]),
    # non-numbers
    (sidecar(pixel_size_m="5 nm"), ["pixel_size_m", "'5 nm'", "not a number", "without units"]),
    (sidecar(defocus_m=["a", "b", "c", "d"]), ["defocus_m", "numbers in metres", "'a'"]),
    (sidecar(voltage_v=True), ["voltage_v", "a number (SI units)", "True"]),
    (sidecar(cs_m=[1e-3]), ["cs_m", "a number"]),
    (sidecar(dose_e_per_px="lots"), ["dose_e_per_px", "electrons per pixel", "'lots'"]),
    (sidecar(dose_e_per_px="-5e1"), ["dose_e_per_px", "positive", "-50"]),
    (sidecar(defocus_m=["nan", 1e-3, 0, 0]), ["defocus_m", "'nan'"]),
    (sidecar(pixel_size_m="inf"), ["pixel_size_m", "'inf'"]),
    (sidecar(pixel_size_m=None), ["pixel_size_m", "positive length in metres"]),
    # structure
    ("defocus_m: [1, 2\n", ["not valid YAML"]),
    ("- a\n- list\n", ["mapping", "allowed keys"]),
    ({"defocus_m": DEFOCUS_M, "voltage_v": 200e3, "cs_m": 1e-3}, ["missing metadata key", "pixel_size_m"]),
]


@pytest.mark.parametrize(("meta", "words"), BAD_SIDECARS)
def test_bad_sidecar_is_refused_with_a_named_field(tmp_path, meta, words):
    tif = write_pair(tmp_path, meta=meta)
    msg = refused(tif, *words)
    assert msg.startswith(str(tmp_path / "series.yaml")), msg  # the sidecar is the file at fault


def test_sidecar_problems_come_before_reading_a_damaged_image(tmp_path):
    (tmp_path / "s.tif").write_bytes(b"not a tiff at all")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sidecar(dose_e_per_pix=5)))
    refused(tmp_path / "s.tif", "did you mean 'dose_e_per_px'")


@pytest.mark.parametrize(
    "text",
    [
        "defocus_m: [-2e-3, 2e-3]\n",
        "defocus_m: [-2E-3, +2e-3]\n",
        "defocus_m: ['-2e-3', ' 2e-3 ']\n",
        "defocus_m: [-2.e-3, 2.0e-3]\n",
        "defocus_m: [-0.002, 0.002]\n",
    ],
)
def test_numbers_in_any_usual_notation_are_accepted(tmp_path, text):
    text += "pixel_size_m: 5e-9\nvoltage_v: 3E5\ncs_m: +1.2e-3\ntheta_c_rad: 1e-5\ndose_e_per_px: 1e2\n"
    s = read_series(write_pair(tmp_path, stack=images(2) * 100, meta=text))
    np.testing.assert_allclose(s.defocus_m, [-2e-3, 2e-3])
    assert s.pixel_size_m == 5e-9 and s.microscope.voltage_v == 3e5 and s.microscope.cs_m == 1.2e-3
    assert s.microscope.theta_c_rad == 1e-5 and s.dose_e_per_px == 100.0


_key_chars = st.sampled_from("abcdefghijklmnopqrstuvwxyz_ABCXYZ0123456789")


@st.composite
def unknown_key(draw):
    """A key that is not allowed: a random word, or a typo of an allowed key."""
    if draw(st.booleans()):
        key = draw(st.text(_key_chars, min_size=1, max_size=20))
    else:
        key = list(draw(st.sampled_from(ALLOWED_SIDECAR_KEYS)))
        i = draw(st.integers(0, len(key) - 1))
        edit = draw(st.sampled_from(["drop", "insert", "replace", "upper"]))
        c = draw(_key_chars)
        if edit == "drop":
            del key[i]
        elif edit == "insert":
            key.insert(i, c)
        elif edit == "replace":
            key[i] = c
        else:
            key = [x.upper() for x in key]
        key = "".join(key)
    if key in ALLOWED_SIDECAR_KEYS or key.lower() in ("null", "true", "false", "yes", "no", "on", "off", "y", "n"):
        key += "_x"
    return key


@HYPOTHESIS
@given(key=unknown_key(), value=st.one_of(st.floats(-1e3, 1e3), st.text(max_size=5), st.none()))
def test_any_unknown_sidecar_key_is_refused(tmp_path, key, value):
    tif = write_pair(tmp_path, meta={**sidecar(), key: value})
    msg = refused(tif, repr(key), "allowed keys: " + ", ".join(ALLOWED_SIDECAR_KEYS))
    assert msg.startswith(f"{tmp_path / 'series.yaml'}: unknown key")
    if key.lower() in ALLOWED_SIDECAR_KEYS:  # differs in case only: the suggestion is the key itself
        assert f"did you mean {key.lower()!r}?" in msg


_notation = st.sampled_from(["{:e}", "{:E}", "{:+e}", "{:.3e}", "{:g}", "{:+G}", "{!r}"])


@HYPOTHESIS
@given(
    d=st.floats(1e-6, 4e-2),
    px=st.floats(1e-11, 1e-6),
    fmt=st.tuples(_notation, _notation, _notation),
    quoted=st.booleans(),
)
def test_numeric_strings_read_as_numbers(tmp_path, d, px, fmt, quoted):
    q = "'" if quoted else ""
    text = (
        f"defocus_m: [{q}{fmt[0].format(-d)}{q}, {q}{fmt[0].format(d)}{q}]\n"
        f"pixel_size_m: {q}{fmt[1].format(px)}{q}\nvoltage_v: {fmt[2].format(2e5)}\ncs_m: 1e-3\n"
    )
    s = read_series(write_pair(tmp_path, stack=images(2), meta=text))
    np.testing.assert_allclose(s.defocus_m, [-d, d], rtol=1e-3)
    assert s.pixel_size_m == pytest.approx(px, rel=1e-3) and s.microscope.voltage_v == pytest.approx(2e5)


# ----------------------------------------------------------------------------------------------------------
# images: negative values


def with_negatives(fraction: float, value: float = -2.0, seed=1):
    stack = images()
    mask = np.random.default_rng(seed).random(stack.shape) < fraction
    stack[mask] = value
    return stack


@pytest.mark.parametrize(
    ("stack", "meta", "words"),
    [
        (images() - images().mean(axis=(1, 2), keepdims=True), sidecar(), ["images", "mean intensity", "phase map"]),
        (images() - 1.0, sidecar(), ["images", "% of its pixels below", "phase map"]),
        (-images(), sidecar(), ["images: image 0 of 4", "negative values", "mean intensity"]),
        (with_negatives(0.05), sidecar(), ["images", "% of its pixels below -0.5 x its mean", "at most 1%"]),
        (with_negatives(0.01, -0.01), sidecar(dose_e_per_px=10.0), ["negative counts", "dose_e_per_px"]),
        (np.full((4, 16, 20), np.nan, np.float32), sidecar(), ["images", "NaN"]),
    ],
)
def test_images_that_cannot_be_intensities_are_refused(tmp_path, stack, meta, words):
    tif = write_pair(tmp_path, stack=stack, meta=meta)
    assert refused(tif, *words).startswith(f"{tif}: ")


@pytest.mark.parametrize(
    "stack",
    [
        with_negatives(0.002),  # a few dead pixels
        with_negatives(0.2, value=-0.05),  # read noise about zero in a normalised image
        images() * 0,  # a blank frame: nothing negative
    ],
)
def test_read_noise_negatives_are_allowed_without_a_dose(tmp_path, stack):
    s = read_series(write_pair(tmp_path, stack=stack, meta=sidecar()))
    assert s.images.min() == stack.min()


def test_negative_rule_applies_to_hdf5(tmp_path):
    s = Series(images=images() - 1.0, defocus_m=DEFOCUS_M, pixel_size_m=5e-9, microscope=MicroscopeParams())
    path = write_series_h5(tmp_path / "s.h5", s)  # in memory (live, simulated) a Series is not checked
    refused(path, str(path), "images", "mean intensity")


# ----------------------------------------------------------------------------------------------------------
# files


@pytest.mark.parametrize(
    ("suffix", "what"),
    [
        (".dm4", "DigitalMicrograph DM4"),
        (".dm3", "DigitalMicrograph DM3"),
        (".mrc", "an MRC file"),
        (".emd", "an EMD file"),
        (".h5", "an ltemlive HDF5 series"),
        (".hdf5", "an ltemlive HDF5 series"),
        (".tif", "a TIFF stack"),
        (".TIFF", "a TIFF stack"),
    ],
)
def test_empty_file_is_refused(tmp_path, suffix, what):
    path = tmp_path / f"series{suffix}"
    path.touch()
    (tmp_path / "series.yaml").write_text(yaml.safe_dump(sidecar()))
    assert refused(path, "empty (0 bytes)", what).startswith(f"{path}: ")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.dm4"
    assert refused(path, "no such series file").startswith(f"{path}: ")


def test_directory_given_as_the_series(tmp_path):
    (tmp_path / "a.tif").touch()
    msg = refused(tmp_path, "is a directory", "a.tif", ".tif/.tiff", ".dm4", ".h5")
    assert msg.startswith(f"{tmp_path}: ")


@pytest.mark.parametrize("name", ["series.xyz", "series.png", "series", "series.yaml", "series.yml"])
def test_unknown_extension_lists_the_supported_ones(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00" * 64)
    msg = refused(path, "unknown series format", "supported", ".h5", ".tif/.tiff", ".dm3/.dm4/.mrc/.emd", "TIFF")
    assert msg.startswith(f"{path}: ")
    if name.endswith((".yaml", ".yml")):
        assert "sidecar" in msg


@pytest.mark.parametrize("suffix", [".tif", ".tiff"])
def test_tiff_without_sidecar_names_the_expected_path(tmp_path, suffix):
    tif = write_pair(tmp_path, suffix=suffix)
    msg = refused(tif, "missing metadata", f"sidecar {tmp_path / 'series.yaml'}", "defocus_m, pixel_size_m")
    assert msg.startswith(f"{tif}: ")


def test_tiff_with_a_yml_sidecar_is_told_to_rename_it(tmp_path):
    tif = write_pair(tmp_path)
    (tmp_path / "series.yml").write_text(yaml.safe_dump(sidecar()))
    refused(tif, "found series.yml: rename it to series.yaml")


def test_damaged_tiff(tmp_path):
    tif = tmp_path / "s.tif"
    tif.write_bytes(b"II*\x00garbage")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sidecar()))
    assert refused(tif, "not readable as a TIFF stack").startswith(f"{tif}: ")


def test_garbage_h5(tmp_path):
    path = tmp_path / "s.h5"
    path.write_bytes(b"\x89HDF garbage" * 10)
    assert refused(path, "not a readable HDF5 file", "ltemlive HDF5 series").startswith(f"{path}: ")


def test_h5_without_images(tmp_path):
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "ltemlive-series"
    assert refused(path, "without dataset 'images'", "datasets images and defocus_m").startswith(f"{path}: ")


def test_foreign_h5_names_the_file(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.ones((2, 16, 16)))
    assert refused(path, "not an ltemlive series", "format='ltemlive-series'").startswith(f"{path}: ")


def test_h5_with_a_unit_mistake(tmp_path):
    s = Series(images=images(), defocus_m=DEFOCUS_M, pixel_size_m=5.0, microscope=MicroscopeParams())
    path = write_series_h5(tmp_path / "s.h5", s)
    assert refused(path, "pixel_size_m", "looks like nm").startswith(f"{path}: ")


# -- DM / MRC / EMD through RosettaSciIO (whose readers can leave a damaged file open: not ours to close)
RSCIIO_LEAKS = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
def rsciio():
    """RosettaSciIO, skipping when absent; afterwards its unclosed files are collected here, not in a later test."""
    module = pytest.importorskip("rsciio")
    yield module
    gc.collect()


@pytest.mark.parametrize(("suffix", "what"), [(".dm4", "DM4"), (".dm3", "DM3"), (".mrc", "MRC"), (".emd", "EMD")])
@RSCIIO_LEAKS
def test_damaged_rsciio_file(rsciio, tmp_path, suffix, what):
    path = tmp_path / f"series{suffix}"
    path.write_bytes(b"\x01" * 512)
    (tmp_path / "series.yaml").write_text(yaml.safe_dump(sidecar()))
    assert refused(path, "not readable as", what).startswith(f"{path}: ")


@RSCIIO_LEAKS
@pytest.mark.parametrize("suffix", [".dm4", ".mrc"])
def test_rsciio_file_without_sidecar(rsciio, tmp_path, suffix):
    path = tmp_path / f"series{suffix}"
    path.write_bytes(b"\x01" * 512)
    assert refused(path, "missing metadata", f"{tmp_path / 'series.yaml'}").startswith(f"{path}: ")


@RSCIIO_LEAKS
def test_mrc_series_is_read_and_its_sidecar_checked(rsciio, tmp_path):
    stack = images()
    path = write_pair(tmp_path, stack=stack, meta=sidecar(), suffix=".mrc")
    s = read_series(path)
    np.testing.assert_array_equal(s.images, stack)
    np.testing.assert_array_equal(s.defocus_m, DEFOCUS_M)
    (tmp_path / "series.yaml").write_text(yaml.safe_dump(sidecar(theta_c=1e-5, voltage_v="2e5")))
    refused(path, str(tmp_path / "series.yaml"), "did you mean 'theta_c_rad'")
    (tmp_path / "series.yaml").write_text(yaml.safe_dump(sidecar(voltage_v=200)))
    refused(path, "looks like kV")
    write_pair(tmp_path, stack=stack - 1.0, meta=sidecar(), suffix=".mrc")
    refused(path, f"{path}: images", "mean intensity")
