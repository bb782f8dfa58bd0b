"""Transport-of-intensity reconstruction: physics consistency (reference check 4), accuracy, boundaries,
regularisation, sign, magnetic/electrostatic separation and input validation.

Images come from an exact Fresnel propagator written here from docs/conventions.md, independent of
ltemlive.optics: psi(df) = IFFT(FFT(psi0) exp(-i pi lambda df q^2)), I = |psi|^2, df > 0 over-focus.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltemlive.constants import wavelength
from ltemlive.tie import separate_magnetic_electrostatic, tie_reconstruct, tie_reconstruct_flipped

VOLTAGE_V = 200e3
LAMBDA_M = wavelength(VOLTAGE_V)
PIXEL_M = 5e-9
N = 128


# ----------------------------------------------------------------------------------------------------------
# helpers


def gauss(shape, cy, cx, sigma):
    y, x = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))


def fresnel_intensity(psi0, df_m, pixel_m=PIXEL_M):
    """Exact (periodic) free-space propagation by df, conventions.md sign."""
    qy = np.fft.fftfreq(psi0.shape[0], d=pixel_m)[:, None]
    qx = np.fft.fftfreq(psi0.shape[1], d=pixel_m)[None, :]
    kernel = np.exp(-1j * math.pi * LAMBDA_M * df_m * (qx**2 + qy**2))
    return np.abs(np.fft.ifft2(np.fft.fft2(psi0) * kernel)) ** 2


def series(phase, amplitude, defocus_m):
    psi0 = amplitude * np.exp(1j * phase)
    return np.stack([fresnel_intensity(psi0, df) for df in defocus_m])


def smooth_object(n=N):
    """Gaussian phase bumps (both signs) and a mild amplitude dip, all inside a padded field so the object
    is periodic to machine precision."""
    shape = (n, n)
    c = n / 2
    phase = (
        1.0 * gauss(shape, c - 8, c - 4, 7) - 0.7 * gauss(shape, c + 8, c + 6, 6) + 0.6 * gauss(shape, c - 4, c + 12, 5)
    )
    amplitude = 1.0 - 0.1 * gauss(shape, c + 2, c - 6, 9)
    return phase, amplitude


def ncc(a, b):
    a = np.asarray(a) - np.mean(a)
    b = np.asarray(b) - np.mean(b)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def rmse(a, b):
    a = np.asarray(a) - np.mean(a)
    b = np.asarray(b) - np.mean(b)
    return float(np.sqrt(np.mean((a - b) ** 2)))


def spectral_derivative(f, axis, pixel_m=PIXEL_M):
    q = np.fft.fftfreq(f.shape[axis], d=pixel_m)
    q = q[:, None] if axis == 0 else q[None, :]
    return np.fft.ifft2(2j * math.pi * q * np.fft.fft2(f)).real


def tie_rhs(phase, intensity):
    """-(lambda / 2 pi) div(I grad phi), spectrally."""
    fx = intensity * spectral_derivative(phase, 1)
    fy = intensity * spectral_derivative(phase, 0)
    return -(LAMBDA_M / (2 * math.pi)) * (spectral_derivative(fx, 1) + spectral_derivative(fy, 0))


# ----------------------------------------------------------------------------------------------------------
# reference check 4: the TIE follows from exact propagation, to O(df^2)


def test_tie_consistency_finite_difference_converges_as_df_squared():
    phase, amplitude = smooth_object()
    psi0 = amplitude * np.exp(1j * phase)
    rhs = tie_rhs(phase, amplitude**2)

    def rel_error(df):
        fd = (fresnel_intensity(psi0, df) - fresnel_intensity(psi0, -df)) / (2 * df)
        return np.linalg.norm(fd - rhs) / np.linalg.norm(rhs)

    e_small, e_large = rel_error(10e-6), rel_error(20e-6)
    assert e_small < 1e-4  # measured 2.7e-5
    assert e_large / e_small == pytest.approx(4.0, rel=0.05)  # halving df quarters the error


def test_defocus_sign_positive_bump_is_bright_over_focus():
    """The propagator above follows the convention: a positive phase bump is bright at df > 0."""
    phase = 0.5 * gauss((N, N), N / 2, N / 2, 6)
    over, under = series(phase, np.ones((N, N)), [20e-6, -20e-6])
    assert over[N // 2, N // 2] > 1.0 > under[N // 2, N // 2]


# ----------------------------------------------------------------------------------------------------------
# accuracy


@pytest.mark.parametrize(
    ("defocus_m", "method", "max_rmse"),
    [
        ([-20e-6, 20e-6], "symmetric", 2e-3),
        ([-20e-6, 0.0, 20e-6], "symmetric", 2e-3),
        ([-60e-6, -25e-6, 10e-6, 30e-6, 50e-6], "least_squares", 2e-3),  # uneven, unbalanced
    ],
)
def test_tie_recovers_smooth_phase(defocus_m, method, max_rmse):
    phase, amplitude = smooth_object()
    result = tie_reconstruct(series(phase, amplitude, defocus_m), defocus_m, PIXEL_M, VOLTAGE_V, method=method)
    assert result.method == method
    recovered = result.phase.numpy()
    # measured (phase peak-to-peak 1.66 rad): NCC 0.99998, RMSE 0.71e-3 rad for all three series; the
    # residual is the rotational part of I grad(phi) that the two-Poisson TIE neglects, not df
    assert ncc(recovered, phase) > 0.999
    assert rmse(recovered, phase) < max_rmse
    assert abs(float(recovered.mean())) < 1e-12


def test_two_poisson_solve_beats_uniform_intensity_shortcut():
    """With a strong amplitude variation, dividing by the in-focus intensity between the two solves matters."""
    phase, _ = smooth_object()
    amplitude = 1.0 - 0.4 * gauss((N, N), N / 2 + 2, N / 2 - 6, 12)
    df = [-20e-6, 20e-6]
    result = tie_reconstruct(series(phase, amplitude, df), df, PIXEL_M, VOLTAGE_V, mirror=False)
    # uniform-intensity shortcut: phi = -(2 pi / lambda) lap^-1 dI/dz
    q2 = np.fft.fftfreq(N, PIXEL_M)[:, None] ** 2 + np.fft.fftfreq(N, PIXEL_M)[None, :] ** 2
    inv = np.divide(1.0, q2, out=np.zeros_like(q2), where=q2 > 0)
    shortcut = np.fft.ifft2(np.fft.fft2(result.dIdz.numpy()) * inv).real / (2 * math.pi * LAMBDA_M)
    full_err, shortcut_err = rmse(result.phase.numpy(), phase), rmse(shortcut, phase)
    assert full_err < 0.5 * shortcut_err  # measured 0.010 vs 0.042 rad


def test_least_squares_matches_symmetric_on_symmetric_triplet():
    phase, amplitude = smooth_object()
    df = [-20e-6, 0.0, 20e-6]
    images = series(phase, amplitude, df)
    sym = tie_reconstruct(images, df, PIXEL_M, VOLTAGE_V, method="symmetric")
    lsq = tie_reconstruct(images, df, PIXEL_M, VOLTAGE_V, method="least_squares")
    torch.testing.assert_close(lsq.dIdz, sym.dIdz, rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(lsq.phase, sym.phase, rtol=1e-9, atol=1e-12)


def test_positive_bump_gives_positive_phase():
    bump = 0.8 * gauss((N, N), N / 2, N / 2, 6)
    df = [-20e-6, 20e-6]
    phase = tie_reconstruct(series(bump, np.ones((N, N)), df), df, PIXEL_M, VOLTAGE_V).phase.numpy()
    assert phase[N // 2, N // 2] > 0.5
    assert ncc(phase, bump) > 0.99


def test_mirror_boundaries_beat_periodic_on_non_periodic_object():
    """A field of view cut from a larger specimen: the phase differs between opposite edges (a smooth 4 rad
    step, as across a thickness edge, plus bumps cut by no edge) and the illumination has a gradient, so
    the periodic FFT sees jumps in both.

    A pure linear phase ramp would not do: it is a beam tilt, invisible to the TIE under uniform intensity,
    so neither boundary recovers it and the comparison would measure nothing."""
    big = 2 * N
    y, x = np.mgrid[:big, :big]
    phase = 2.0 * np.tanh((x - big / 2) / 15)
    for a, dy, dx, s in [(1.5, -20, -10, 10), (1.0, 20, 30, 8), (-1.2, 10, -30, 12), (0.8, -30, 30, 9)]:
        phase += a * gauss((big, big), big / 2 + dy, big / 2 + dx, s)
    amplitude = 1.0 - 0.1 * (y - big / 2) / N
    crop = (slice(big // 2 - N // 2, big // 2 + N // 2),) * 2
    df = [-10e-6, 10e-6]
    images = series(phase, amplitude, df)[(slice(None), *crop)]
    truth = phase[crop]
    err = {
        m: rmse(tie_reconstruct(images, df, PIXEL_M, VOLTAGE_V, mirror=m).phase.numpy(), truth) for m in (True, False)
    }
    mirrored = tie_reconstruct(images, df, PIXEL_M, VOLTAGE_V, mirror=True)
    assert mirrored.boundary == "mirror"
    assert ncc(mirrored.phase.numpy(), truth) > 0.999  # measured 0.99998
    assert err[True] < 0.1 * err[False]  # measured 0.021 vs 1.15 rad


def test_tikhonov_lowers_error_on_noisy_data():
    shape = (N, N)
    phase = sum(a * gauss(shape, cy, cx, s) for a, cy, cx, s in [(1.5, 44, 50, 5), (1.0, 84, 90, 4), (-1.2, 74, 34, 6)])
    amplitude = 1.0 - 0.1 * gauss(shape, 70, 60, 20)
    df = [-20e-6, 20e-6]
    rng = np.random.default_rng(0)
    noisy = series(phase, amplitude, df) + 0.01 * rng.standard_normal((2, *shape))
    q_cut = 2.0 / (N * PIXEL_M)  # two cycles per field of view
    plain = rmse(tie_reconstruct(noisy, df, PIXEL_M, VOLTAGE_V).phase.numpy(), phase)
    regularised_result = tie_reconstruct(noisy, df, PIXEL_M, VOLTAGE_V, tikhonov_q_cut=q_cut)
    regularised = rmse(regularised_result.phase.numpy(), phase)
    assert regularised_result.tikhonov_q_cut == q_cut
    assert regularised < 0.5 * plain  # measured 0.092 vs 0.286 rad (1 % noise, 4.5 % contrast)


# ----------------------------------------------------------------------------------------------------------
# magnetic / electrostatic separation


def test_separate_magnetic_electrostatic_algebra():
    rng = np.random.default_rng(1)
    phi_e, phi_m = rng.standard_normal((2, 8, 9))
    flipped_raw = np.flip(phi_e - phi_m, axis=1)  # reconstructed from the turned-over specimen
    m, e = separate_magnetic_electrostatic(phi_e + phi_m, flipped_raw, flip_axis=1)
    np.testing.assert_allclose(m.numpy(), phi_m, atol=1e-12)
    np.testing.assert_allclose(e.numpy(), phi_e, atol=1e-12)
    m0, e0 = separate_magnetic_electrostatic(phi_e + phi_m, phi_e - phi_m, flip_axis=None)
    np.testing.assert_allclose(m0.numpy(), phi_m, atol=1e-12)
    np.testing.assert_allclose(e0.numpy(), phi_e, atol=1e-12)


def test_tie_reconstruct_flipped_recovers_both_components():
    shape = (N, N)
    c = N / 2
    phi_e = 0.8 * gauss(shape, c - 6, c - 10, 7) + 0.5 * gauss(shape, c + 10, c + 4, 6)
    phi_m = 0.7 * gauss(shape, c + 4, c - 2, 9) - 0.6 * gauss(shape, c - 10, c + 12, 6)
    amplitude = 1.0 - 0.1 * gauss(shape, c, c + 8, 8)
    df = [-20e-6, 0.0, 20e-6]
    up = series(phi_e + phi_m, amplitude, df)
    # turning the specimen over mirrors it left-right and reverses its magnetic phase
    down = series(np.flip(phi_e - phi_m, axis=1), np.flip(amplitude, axis=1), df)
    result = tie_reconstruct_flipped(up, down, df, PIXEL_M, VOLTAGE_V, flip_axis=1)
    assert ncc(result.phase_magnetic.numpy(), phi_m) > 0.999
    assert ncc(result.phase_electrostatic.numpy(), phi_e) > 0.999
    # measured: NCC 0.99998 / 0.99999, RMSE 0.6e-3 / 0.3e-3 rad (magnetic / electrostatic)
    assert rmse(result.phase_magnetic.numpy(), phi_m) < 2e-3
    assert rmse(result.phase_electrostatic.numpy(), phi_e) < 2e-3


# ----------------------------------------------------------------------------------------------------------
# method choice, types, devices


@pytest.mark.parametrize(
    ("defocus_m", "expected"),
    [
        ([-1e-5, 1e-5], "symmetric"),
        ([1e-5, -1.0001e-5], "symmetric"),  # within the pair tolerance
        ([-1e-5, 0.0, 1e-5], "symmetric"),
        ([-1e-5, 2e-5], "least_squares"),
        ([-2e-5, -1e-5, 1e-5, 2e-5], "least_squares"),
        ([-1e-5, 0.0, 1e-5, 3e-5], "least_squares"),
    ],
)
def test_auto_method(defocus_m, expected):
    images = np.ones((len(defocus_m), 16, 16)) + 0.01 * np.random.default_rng(2).random((len(defocus_m), 16, 16))
    result = tie_reconstruct(images, defocus_m, PIXEL_M, VOLTAGE_V)
    assert result.method == expected


def test_symmetric_uses_smallest_pair_and_in_focus_image():
    images = np.ones((5, 16, 16)) + 0.01 * np.random.default_rng(3).random((5, 16, 16))
    df = [-4e-5, -1e-5, 0.0, 1e-5, 4e-5]
    result = tie_reconstruct(images, df, PIXEL_M, VOLTAGE_V, method="symmetric")
    assert result.defocus_used_m == (-1e-5, 1e-5)
    expected = images[2] / images[2].mean()
    np.testing.assert_allclose(result.in_focus.numpy(), expected, rtol=1e-12)


def test_torch_input_float32_and_intensity_units():
    phase, amplitude = smooth_object()
    df = [-20e-6, 20e-6]
    images = series(phase, amplitude, df)
    ref = tie_reconstruct(images, df, PIXEL_M, VOLTAGE_V).phase
    # counts instead of normalised intensity, and a dose change between frames: normalised away
    scaled = torch.from_numpy(images * np.array([300.0, 410.0])[:, None, None])
    out = tie_reconstruct(scaled, torch.tensor(df), PIXEL_M, VOLTAGE_V, dtype=torch.float32)
    assert out.phase.dtype == torch.float32
    assert out.phase.shape == (N, N)
    torch.testing.assert_close(out.phase.double(), ref, atol=2e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# input validation: each error names the offending parameter

GOOD = np.ones((2, 16, 16))
GOOD_DF = [-1e-5, 1e-5]


def _with(array_update):
    a = GOOD.copy()
    array_update(a)
    return a


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        ((np.ones((16, 16)), GOOD_DF), {}, "images"),
        (([np.ones((16, 16)), np.ones((16, 17))], GOOD_DF), {}, "images"),
        ((_with(lambda a: a.__setitem__((0, 3, 3), np.nan)), GOOD_DF), {}, "images"),
        ((_with(lambda a: a.__setitem__((1, 3, 3), -0.1)), GOOD_DF), {}, "images"),
        ((GOOD, [-1e-5, 0.0, 1e-5]), {}, "defocus_m"),
        ((GOOD, [-1e-5, np.nan]), {}, "defocus_m"),
        ((GOOD, [-1e-5, np.inf]), {}, "defocus_m"),
        ((GOOD, [-1e-5, 3e-5]), {"method": "symmetric"}, "defocus_m"),
        ((GOOD, [1e-5, 1e-5]), {"method": "least_squares"}, "defocus_m"),
        ((GOOD, [0.0, 0.0]), {}, "defocus_m"),
        ((GOOD, GOOD_DF), {"pixel_size_m": 0.0}, "pixel_size_m"),
        ((GOOD, GOOD_DF), {"pixel_size_m": -5e-9}, "pixel_size_m"),
        ((GOOD, GOOD_DF), {"pixel_size_m": np.nan}, "pixel_size_m"),
        ((GOOD, GOOD_DF), {"voltage_v": 0.0}, "voltage_v"),
        ((GOOD, GOOD_DF), {"voltage_v": -200e3}, "voltage_v"),
        ((GOOD, GOOD_DF), {"method": "fourier"}, "method"),
        ((GOOD, GOOD_DF), {"tikhonov_q_cut": -1.0}, "tikhonov_q_cut"),
        ((GOOD, GOOD_DF), {"in_focus_index": 2}, "in_focus_index"),
        ((GOOD, GOOD_DF), {"eps": 0.0}, "eps"),
        ((GOOD, GOOD_DF), {"method": "least_squares", "ls_degree": 2}, "ls_degree"),
        (([], GOOD_DF), {}, "images"),
    ],
)
def test_bad_input_names_parameter(args, kwargs, name):
    call = {"pixel_size_m": PIXEL_M, "voltage_v": VOLTAGE_V, **kwargs}
    pixel, voltage = call.pop("pixel_size_m"), call.pop("voltage_v")
    with pytest.raises(ValueError, match=name):
        tie_reconstruct(*args, pixel, voltage, **call)


def test_separation_bad_input_names_parameter():
    with pytest.raises(ValueError, match="phase_flipped"):
        separate_magnetic_electrostatic(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="flip_axis"):
        separate_magnetic_electrostatic(np.zeros((4, 4)), np.zeros((4, 4)), flip_axis=2)
    with pytest.raises(ValueError, match="images_flipped"):
        tie_reconstruct_flipped(GOOD, np.ones((2, 16, 8)), GOOD_DF, PIXEL_M, VOLTAGE_V)
