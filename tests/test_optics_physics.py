"""Physics checks of the torch optics (ltemlive.optics) against docs/conventions.md and the reference
checks of ltem-physics.md section 5: constants, df = 0 identity (3), TIE consistency (4), envelope (5),
astigmatism axis (6), defocus sign (7), Cs sign, dtype/device, padding modes, input errors, batching.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltemlive import constants
from ltemlive.optics import MicroscopeParams
from ltemlive.optics.forward import PADDINGS, ImageModel, fft_friendly
from ltemlive.optics.transfer import (
    FrequencyGrid,
    astig_cartesian,
    astig_polar,
    chi,
    envelope,
    transfer_function,
)

VOLTAGE_V = 200e3
LAMBDA_M = constants.wavelength(VOLTAGE_V)
PIXEL_M = 5e-9
F64 = torch.float64

COHERENT = dict(cs_m=0.0, theta_c_rad=0.0, focal_spread_m=0.0)  # no aberration, no envelope


pytestmark = pytest.mark.usefixtures("single_thread")


def gauss(n, cy, cx, sigma):
    y, x = np.mgrid[:n, :n]
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))


def model(n=64, padding="periodic", dtype=F64, **params):
    return ImageModel((n, n), PIXEL_M, MicroscopeParams(**params), padding=padding, dtype=dtype)


def axis_of(img: np.ndarray) -> tuple[float, float]:
    """Orientation (degrees in [0, 180), x = columns towards y = rows) and elongation (eigenvalue ratio >= 1)
    of the second moments of |I - 1| about the image centre."""
    n = img.shape[0]
    y, x = np.mgrid[:n, :n] - n / 2
    w = np.abs(img - 1.0)
    w = w / w.sum()
    mxx, myy, mxy = (w * x * x).sum(), (w * y * y).sum(), (w * x * y).sum()
    angle = math.degrees(0.5 * math.atan2(2 * mxy, mxx - myy)) % 180.0
    lo, hi = np.linalg.eigvalsh([[mxx, mxy], [mxy, myy]])
    return angle, hi / lo


def angle_diff(a: float, b: float) -> float:
    """Distance of two axis orientations (degrees, modulo 180)."""
    d = (a - b) % 180.0
    return min(d, 180.0 - d)


# ----------------------------------------------------------------------------------------------------------
# constants


@pytest.mark.parametrize(
    ("kv", "lambda_pm", "sigma_rad_per_v_nm"),
    [(80, 4.1757, 0.01009), (120, 3.3492, 0.00864), (200, 2.5079, 0.00729), (300, 1.9687, 0.00653)],
)
def test_wavelength_and_interaction_constant(kv, lambda_pm, sigma_rad_per_v_nm):
    assert constants.wavelength(kv * 1e3) * 1e12 == pytest.approx(lambda_pm, rel=1e-4)
    # rad / (V m) -> rad / (V nm)
    assert constants.interaction_constant(kv * 1e3) * 1e-9 == pytest.approx(sigma_rad_per_v_nm, rel=2e-3)


def test_e_over_hbar_and_flux_quantum():
    assert constants.E_OVER_HBAR * 1e-18 == pytest.approx(1.5193e-3, rel=1e-4)  # rad / (T nm^2)
    assert constants.E_OVER_HBAR * constants.FLUX_QUANTUM == pytest.approx(2 * math.pi, rel=1e-12)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_constants_reject_bad_voltage(bad):
    with pytest.raises(ValueError, match="voltage_v"):
        constants.wavelength(bad)
    with pytest.raises(ValueError, match="voltage_v"):
        constants.interaction_constant(bad)


# ----------------------------------------------------------------------------------------------------------
# check 3: df = 0 without aberrations is the identity; +df then -df is the identity


def test_in_focus_image_is_amplitude_squared():
    n = 64
    rng = np.random.default_rng(0)
    phase = 3.0 * rng.standard_normal((n, n))  # any phase, even a wild one
    amplitude = 0.5 + 0.5 * rng.random((n, n))
    m = model(n, **COHERENT)
    img = m.images(phase, amplitude, [0.0])[0].numpy()
    np.testing.assert_allclose(img, amplitude**2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("padding", ["mirror", "zero"])
def test_in_focus_image_is_amplitude_squared_with_padding(padding):
    n = 48
    phase = 2.0 * gauss(n, 20, 27, 5)
    amplitude = 1.0 - 0.3 * gauss(n, 30, 18, 6)
    m = model(n, padding=padding, **COHERENT)
    img = m.images(phase, amplitude, [0.0])[0].numpy()
    np.testing.assert_allclose(img, amplitude**2, rtol=0, atol=1e-12)


def test_transfer_plus_minus_defocus_is_identity():
    grid = FrequencyGrid.build((64, 64), PIXEL_M, dtype=F64)
    df = torch.tensor([0.3e-3, 1.6e-3, -2e-3], dtype=F64)
    a_c, a_s = astig_cartesian(2e-7, 0.4)
    t_plus = transfer_function(grid, LAMBDA_M, df, a_c=a_c, a_s=a_s)
    t_minus = transfer_function(grid, LAMBDA_M, -df, a_c=-a_c, a_s=-a_s)
    prod = (t_plus * t_minus).numpy()
    np.testing.assert_allclose(prod, np.ones_like(prod), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.abs(t_plus.numpy()), 1.0, rtol=0, atol=1e-14)  # no envelope: pure phase


def test_propagate_forth_and_back_is_identity_on_the_wave():
    n = 64
    rng = np.random.default_rng(1)
    psi = torch.tensor(rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n)), dtype=torch.complex128)
    grid = FrequencyGrid.build((n, n), PIXEL_M, dtype=F64)
    for df in (0.15e-3, 1.6e-3):
        t1 = transfer_function(grid, LAMBDA_M, [df])[0]
        t2 = transfer_function(grid, LAMBDA_M, [-df])[0]
        forth = torch.fft.ifft2(torch.fft.fft2(psi) * t1)
        assert (forth - psi).abs().max() > 0.1  # it really propagated
        back = torch.fft.ifft2(torch.fft.fft2(forth) * t2)
        np.testing.assert_allclose(back.numpy(), psi.numpy(), rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------
# check 4: TIE consistency on the torch model


def test_tie_consistency_error_scales_as_df_squared():
    n = 128
    phase = 1.0 * gauss(n, 56, 60, 7) - 0.7 * gauss(n, 72, 70, 6) + 0.5 * gauss(n, 60, 76, 5)
    amplitude = 1.0 - 0.1 * gauss(n, 66, 58, 9)
    m = model(n, **COHERENT)
    intensity = amplitude**2

    qy = np.fft.fftfreq(n, d=PIXEL_M)[:, None]
    qx = np.fft.fftfreq(n, d=PIXEL_M)[None, :]

    def d(f, q):
        return np.fft.ifft2(2j * math.pi * q * np.fft.fft2(f)).real

    div = d(intensity * d(phase, qx), qx) + d(intensity * d(phase, qy), qy)
    rhs = -(LAMBDA_M / (2 * math.pi)) * div

    def rel_err(df):
        i_p, i_m = m.images(phase, amplitude, [df, -df]).numpy()
        lhs = (i_p - i_m) / (2 * df)
        return np.linalg.norm(lhs - rhs) / np.linalg.norm(rhs)

    e1, e2 = rel_err(20e-6), rel_err(10e-6)
    assert e1 < 0.05
    assert e1 / e2 == pytest.approx(4.0, rel=0.1)  # O(df^2)


# ----------------------------------------------------------------------------------------------------------
# check 5: envelope


def _envelopes(grid, dfs, theta_c, focal_spread, cs_m=1e-3):
    return envelope(grid, LAMBDA_M, dfs, cs_m=cs_m, theta_c_rad=theta_c, focal_spread_m=focal_spread)


@pytest.mark.parametrize("pixel_m", [1e-9, 5e-9])
def test_envelope_bounded_and_non_increasing_in_theta_c_and_focal_spread(pixel_m):
    """Over the LTEM range (theta_c <= 1e-5, 20 um <= |df| <= 3 mm). Outside it the quasi-coherent mixed
    term u(q) makes E non-monotone in the focal spread (e.g. theta_c = 1e-3, df = 10 um): documented in
    docs/optics.md, not a bug of the damping sign."""
    grid = FrequencyGrid.build((128, 128), pixel_m, dtype=F64)
    dfs = torch.tensor([-3e-3, -1e-3, -1e-4, -20e-6, 20e-6, 1e-4, 1e-3, 3e-3], dtype=F64)
    thetas = np.linspace(0.0, 1e-5, 6)
    spreads = np.linspace(0.0, 1e-6, 6)
    table = torch.stack(
        [torch.stack([_envelopes(grid, dfs, th, fs) for fs in spreads]) for th in thetas]
    )  # (theta, spread, N, H, W)
    assert torch.isfinite(table).all()
    assert (table <= 1.0).all() and (table >= 0.0).all()
    assert (table[1:] - table[:-1]).max() <= 0.0  # non-increasing in theta_c
    assert (table[:, 1:] - table[:, :-1]).max() <= 0.0  # non-increasing in focal spread
    assert table[-1, -1].min() < 0.5  # and it really damps


def test_envelope_damps_high_frequencies_strictly():
    """The '+ sign' bug of earlier codes would make E > 1 and growing with q."""
    grid = FrequencyGrid.build((128, 128), PIXEL_M, dtype=F64)
    e = envelope(grid, LAMBDA_M, [1e-3], cs_m=1e-3, theta_c_rad=1e-5, focal_spread_m=100e-9)[0]
    along_qx = e[0, : 128 // 2 + 1]  # q from 0 to Nyquist along x
    assert along_qx[0] == 1.0
    assert (torch.diff(along_qx) < 0).all()
    assert along_qx[-1] < 1e-3
    assert (e[grid.q2 > 0] < 1.0).all()
    # temporal term alone (theta_c = 0) damps too
    e_t = envelope(grid, LAMBDA_M, [1e-3], cs_m=1e-3, theta_c_rad=0.0, focal_spread_m=1e-6)[0]
    assert (torch.diff(e_t[0, : 128 // 2 + 1]) < 0).all()


def test_envelope_spatial_term_follows_effective_defocus():
    """Spatial-coherence damping is set by df_eff = df + Ca cos 2(theta - phi_a): stronger along phi_a
    when df > 0 and Ca > 0."""
    grid = FrequencyGrid.build((64, 64), PIXEL_M, dtype=F64)
    a_c, a_s = astig_cartesian(2e-4, 0.0)  # phi_a = 0: along q_x
    e = envelope(grid, LAMBDA_M, [1e-3], theta_c_rad=1e-5, a_c=a_c, a_s=a_s)[0]
    assert e[0, 10] < e[10, 0]  # q along x (df_eff = 1.2 mm) damped more than along y (0.8 mm)


# ----------------------------------------------------------------------------------------------------------
# check 6: astigmatism


@pytest.mark.parametrize("phi_deg", [0.0, 20.0, 45.0, 70.0, 110.0, 160.0])
def test_astigmatism_axis_follows_azimuth(phi_deg):
    """Ca elongates the image of a round object along the azimuth of the largest |df_eff|: along phi_a at
    over-focus (df_eff = df + Ca there), along phi_a + 90 deg at under-focus (df_eff = df - Ca)."""
    n = 128
    bump = gauss(n, n / 2, n / 2, 4.0)
    m = model(n, **COHERENT, astig_m=1e-4, astig_azimuth_rad=math.radians(phi_deg))
    over, under = m.images(bump, None, [3e-4, -3e-4]).numpy()
    ang_over, elong_over = axis_of(over)
    ang_under, elong_under = axis_of(under)
    assert elong_over > 1.3 and elong_under > 1.3
    assert angle_diff(ang_over, phi_deg) < 1.0
    assert angle_diff(ang_under, phi_deg + 90.0) < 1.0


def test_rotating_azimuth_rotates_the_image_by_the_same_angle():
    n = 128
    bump = gauss(n, n / 2, n / 2, 4.0)
    angles = []
    for phi_deg in (10.0, 40.0, 85.0):
        m = model(n, **COHERENT, astig_m=1e-4, astig_azimuth_rad=math.radians(phi_deg))
        angles.append(axis_of(m.images(bump, None, [3e-4])[0].numpy())[0])
    assert angle_diff(angles[1] - angles[0], 30.0) < 1.0
    assert angle_diff(angles[2] - angles[0], 75.0) < 1.0
    # exact 90-degree rotation: phi_a -> phi_a + 90 deg is the image rotated by 90 degrees (square grid)
    img0 = model(n, **COHERENT, astig_m=1e-4, astig_azimuth_rad=0.0).images(bump, None, [3e-4])[0].numpy()
    img90 = model(n, **COHERENT, astig_m=1e-4, astig_azimuth_rad=math.pi / 2).images(bump, None, [3e-4])[0].numpy()
    # bump centred at pixel n/2: transposing the image (swap x, y) maps azimuth 0 onto 90 degrees
    np.testing.assert_allclose(img90, img0.T, atol=1e-10)


def test_astigmatism_is_not_extra_isotropic_defocus():
    n = 128
    bump = gauss(n, n / 2, n / 2, 4.0)
    ca, df = 1e-4, 3e-4
    astig = model(n, **COHERENT, astig_m=ca, astig_azimuth_rad=0.3).images(bump, None, [df])[0].numpy()
    iso_model = model(n, **COHERENT)
    isos = iso_model.images(bump, None, [df - ca, df, df + ca]).numpy()
    for iso in isos:
        assert axis_of(iso)[1] < 1.01  # isotropic defocus keeps a round object round
        assert np.abs(astig - iso).max() > 0.05
    assert axis_of(astig)[1] > 1.3


def test_astig_cartesian_polar_round_trip():
    for ca, phi in [(1e-7, 0.0), (2e-7, 0.7), (5e-8, 2.9)]:
        a_c, a_s = astig_cartesian(ca, phi)
        ca2, phi2 = astig_polar(a_c, a_s)
        assert ca2 == pytest.approx(ca, rel=1e-12)
        assert phi2 == pytest.approx(phi % math.pi, abs=1e-12)


# ----------------------------------------------------------------------------------------------------------
# check 7 and Cs sign


@pytest.mark.parametrize("padding", ["periodic", "mirror"])
def test_positive_phase_bump_bright_over_focus_dark_under_focus(padding):
    n = 64
    bump = 1.0 * gauss(n, n / 2, n / 2, 3.0)
    m = model(n, padding=padding)  # default microscope: 200 kV, Cs 1 mm, theta_c 1e-5, Delta 100 nm
    over, under = m.images(bump, None, [0.2e-3, -0.2e-3]).numpy()
    c = n // 2
    assert over[c, c] > 1.2
    assert under[c, c] < 0.8
    # a negative bump (diverging object) is the reverse
    over_n, under_n = m.images(-bump, None, [0.2e-3, -0.2e-3]).numpy()
    assert over_n[c, c] < 0.8 and under_n[c, c] > 1.2


def test_cs_adds_to_over_focus():
    # a fine pixel (0.2 nm) and small df so that the Cs term is visible at the highest q
    grid = FrequencyGrid.build((64, 64), 0.2e-9, dtype=F64)
    df, cs = 1e-6, 1e-3
    c = chi(grid, LAMBDA_M, [df], cs_m=cs)[0]
    c0 = math.pi * LAMBDA_M * df * grid.q2
    extra = c - c0
    mask = grid.q2 > 0
    assert (extra[mask] > 0).all()
    cs_term = (0.5 * math.pi * cs * LAMBDA_M**3 * grid.q2**2).numpy()
    np.testing.assert_allclose(extra.numpy(), cs_term, rtol=1e-6, atol=1e-12 * float(c.abs().max()))
    # at the highest q the Cs term is a sizeable part of chi
    assert (c[mask] / c0[mask]).max() > 1.01


def test_chi_sign_matches_free_space_propagation():
    """chi = +pi lambda df q^2: T = exp(-i chi) is exp(-i pi lambda z q^2) for z = df."""
    grid = FrequencyGrid.build((32, 32), PIXEL_M, dtype=F64)
    t = transfer_function(grid, LAMBDA_M, [1e-3])[0]
    expect = torch.polar(torch.ones_like(grid.q2), -math.pi * LAMBDA_M * 1e-3 * grid.q2)
    np.testing.assert_allclose(t.numpy(), expect.numpy(), atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# dtype and device


def test_float32_by_default_float64_on_request():
    n = 32
    bump = gauss(n, 16, 16, 3)
    m32 = ImageModel((n, n), PIXEL_M, MicroscopeParams())
    m64 = ImageModel((n, n), PIXEL_M, MicroscopeParams(), dtype=F64)
    i32 = m32.images(bump, None, [1e-4, -1e-4])
    i64 = m64.images(bump, None, [1e-4, -1e-4])
    assert i32.dtype == torch.float32 and i64.dtype == torch.float64
    assert m32.transfer([1e-4]).dtype == torch.complex64
    assert m64.transfer([1e-4]).dtype == torch.complex128
    np.testing.assert_allclose(i32.numpy(), i64.numpy(), atol=2e-5)


def test_other_dtype_rejected():
    with pytest.raises(ValueError, match="dtype"):
        ImageModel((32, 32), PIXEL_M, MicroscopeParams(), dtype=torch.float16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    n = 64
    bump = gauss(n, 30, 34, 4)
    cpu = ImageModel((n, n), PIXEL_M, MicroscopeParams(), dtype=F64)
    gpu = ImageModel((n, n), PIXEL_M, MicroscopeParams(), dtype=F64, device="cuda")
    out = gpu.images(bump, None, [-1e-3, 1e-3])
    assert out.device.type == "cuda"
    np.testing.assert_allclose(out.cpu().numpy(), cpu.images(bump, None, [-1e-3, 1e-3]).numpy(), atol=1e-10)


# ----------------------------------------------------------------------------------------------------------
# padding


@pytest.mark.parametrize(
    ("padding", "leaks"), [("periodic", True), ("mirror", False), ("zero", False), ("extend", False)]
)
def test_feature_at_one_edge_does_not_wrap_to_the_other(padding, leaks):
    n, df = 64, 2e-3
    m = ImageModel((n, n), PIXEL_M, MicroscopeParams(), padding=padding, max_abs_defocus_m=df, dtype=F64)
    feature = 1.5 * gauss(n, n / 2, 3, 2.0)  # near the left edge

    def img(phase):
        p = torch.as_tensor(phase)
        if padding == "extend":
            p = m.pad(p)  # the caller supplies the whole padded grid
        return m.images(p, None, [df])[0].numpy()

    diff = np.abs(img(feature) - img(np.zeros((n, n))))
    assert diff[:, :8].max() > 0.05  # the feature is imaged where it is
    far = diff[:, -6:].max()  # the opposite (right) edge
    if leaks:
        assert far > 1e-2
    else:
        assert far < 1e-6


def test_zero_padding_valid_mask():
    n = 128
    m = ImageModel((n, n), PIXEL_M, MicroscopeParams(), padding="zero", max_abs_defocus_m=0.5e-3)
    mask = m.valid_mask
    assert mask.shape == (n, n) and mask.dtype == torch.bool
    assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
    assert mask[n // 2 - 10 : n // 2 + 10, n // 2 - 10 : n // 2 + 10].all()
    # the other modes trust every pixel
    for padding in ("mirror", "periodic", "extend"):
        other = ImageModel((n, n), PIXEL_M, MicroscopeParams(), padding=padding, max_abs_defocus_m=0.5e-3)
        assert other.valid_mask.all()


@pytest.mark.parametrize("shape", [(32, 32), (40, 56), (100, 64), (128, 128)])
@pytest.mark.parametrize("padding", ["mirror", "zero", "extend"])
def test_padded_shape_large_enough(shape, padding):
    m = ImageModel(shape, PIXEL_M, MicroscopeParams(), padding=padding, max_abs_defocus_m=1.6e-3)
    assert m.pad_px > 0
    for s, sp in zip(shape, m.padded_shape, strict=True):
        assert sp >= s + 2 * m.pad_px
        assert sp == fft_friendly(sp)
    # the field of view sits inside the padding on every side
    assert m.top >= m.pad_px and m.left >= m.pad_px
    assert m.padded_shape[0] - shape[0] - m.top >= m.pad_px
    assert m.padded_shape[1] - shape[1] - m.left >= m.pad_px
    x = torch.randn(shape, dtype=torch.float32)
    assert torch.equal(m.crop(m.pad(x)), x)
    explicit = ImageModel(shape, PIXEL_M, MicroscopeParams(), padding=padding, pad_px=7)
    assert explicit.pad_px == 7 and all(sp >= s + 14 for s, sp in zip(shape, explicit.padded_shape, strict=True))


def test_periodic_has_no_padding():
    m = ImageModel((40, 56), PIXEL_M, MicroscopeParams(), padding="periodic")
    assert m.padded_shape == (40, 56) and m.pad_px == 0


def test_mirror_pad_reflects_and_zero_pad_fills():
    n = 16
    x = torch.arange(n * n, dtype=F64).reshape(n, n)
    m = ImageModel((n, n), PIXEL_M, MicroscopeParams(), padding="mirror", pad_px=4, dtype=F64)
    p = m.pad(x)
    t, left = m.top, m.left
    assert torch.equal(p[t - 1, left : left + n], x[0])  # symmetric reflection: edge row repeated
    assert torch.equal(p[t + n, left : left + n], x[-1])
    assert torch.equal(p[t : t + n, left - 2], x[:, 1])
    z = ImageModel((n, n), PIXEL_M, MicroscopeParams(), padding="zero", pad_px=4, dtype=F64)
    pz = z.pad(x, fill=1.0)
    assert torch.equal(z.crop(pz), x)
    assert (pz[: z.top] == 1.0).all() and (pz[:, : z.left] == 1.0).all()


def test_zero_padding_is_vacuum_outside():
    """Amplitude pads with 1 and phase with 0 under zero padding: an empty field images as vacuum."""
    n = 32
    m = ImageModel((n, n), PIXEL_M, MicroscopeParams(), padding="zero", dtype=F64)
    img = m.images(np.zeros((n, n)), np.ones((n, n)), [1e-3, -1e-3]).numpy()
    np.testing.assert_allclose(img, 1.0, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_microscope_params_reject_bad_voltage(bad):
    with pytest.raises(ValueError, match="voltage_v"):
        MicroscopeParams(voltage_v=bad)


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("cs_m", -1e-3),
        ("theta_c_rad", -1e-6),
        ("focal_spread_m", float("inf")),
        ("astig_m", float("nan")),
        ("aperture_q_max", 0.0),
    ],
)
def test_microscope_params_reject_bad_values(field, bad):
    with pytest.raises(ValueError, match=field):
        MicroscopeParams(**{field: bad})


def test_microscope_params_reject_unknown_key():
    with pytest.raises(ValueError, match="defocus_m"):
        MicroscopeParams(defocus_m=1e-3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_transfer_rejects_non_finite_defocus(bad):
    m = model(32)
    with pytest.raises(ValueError, match="defocus_m"):
        m.transfer([1e-3, bad])
    with pytest.raises(ValueError, match="defocus_m"):
        m.images(np.zeros((32, 32)), None, [bad])


def test_wrong_phase_or_amplitude_shape_is_named():
    m = ImageModel((32, 32), PIXEL_M, MicroscopeParams(), padding="mirror")
    with pytest.raises(ValueError, match="phase"):
        m.images(np.zeros((31, 32)), None, [1e-3])
    with pytest.raises(ValueError, match="amplitude"):
        m.images(np.zeros((32, 32)), np.ones((30, 30)), [1e-3])
    ext = ImageModel((32, 32), PIXEL_M, MicroscopeParams(), padding="extend")
    with pytest.raises(ValueError, match="phase"):  # extend needs the whole padded grid
        ext.images(np.zeros((32, 32)), None, [1e-3])


@pytest.mark.parametrize("bad", ["reflect", "Mirror", "", None])
def test_bad_padding_name_rejected(bad):
    with pytest.raises(ValueError, match="padding"):
        ImageModel((32, 32), PIXEL_M, MicroscopeParams(), padding=bad)
    assert "mirror" in PADDINGS


@pytest.mark.parametrize(
    ("shape", "px", "word"),
    [
        ((32,), PIXEL_M, "shape"),
        ((1, 32), PIXEL_M, "shape"),
        ((32, 32), 0.0, "pixel_size_m"),
        ((32, 32), float("nan"), "pixel_size_m"),
    ],
)
def test_bad_geometry_rejected(shape, px, word):
    with pytest.raises(ValueError, match=word):
        ImageModel(shape, px, MicroscopeParams())


# ----------------------------------------------------------------------------------------------------------
# batching


@pytest.mark.parametrize("padding", ["periodic", "mirror"])
def test_batched_images_equal_single_calls(padding):
    n = 48
    phase = 1.2 * gauss(n, 20, 26, 5) - 0.5 * gauss(n, 30, 16, 4)
    amplitude = 1.0 - 0.2 * gauss(n, 24, 24, 8)
    dfs = [-1.6e-3, -0.15e-3, 0.0, 0.15e-3, 1.6e-3]
    shifts = torch.tensor([[0.0, 0.0], [0.3, -1.2], [0.0, 0.0], [2.0, 0.5], [-0.7, 0.25]], dtype=F64)
    m = model(n, padding=padding, astig_m=5e-8, astig_azimuth_rad=0.5)
    batch = m.images(phase, amplitude, dfs, shifts_px=shifts).numpy()
    assert batch.shape == (len(dfs), n, n)
    for k, df in enumerate(dfs):
        single = m.images(phase, amplitude, [df], shifts_px=shifts[k : k + 1]).numpy()[0]
        np.testing.assert_allclose(batch[k], single, rtol=0, atol=1e-13)
    # propagate with a cached transfer function is the same thing
    cached = m.propagate(m.wave_spectrum(phase, amplitude), m.transfer(dfs), shifts).numpy()
    np.testing.assert_allclose(cached, batch, rtol=0, atol=1e-13)


def test_integer_shift_moves_the_image():
    """A positive dx moves features towards larger x (conventions.md)."""
    n = 64
    bump = gauss(n, 30, 30, 3)
    m = model(n)
    base, moved = m.images(bump, None, [2e-4, 2e-4], shifts_px=[[0.0, 0.0], [3.0, 5.0]]).numpy()
    np.testing.assert_allclose(moved, np.roll(base, (3, 5), axis=(0, 1)), atol=1e-10)


@pytest.mark.parametrize("coherence", ["blur", "envelope"])
def test_pixel_detector_integrates_over_the_pixel(coherence):
    """detector="pixel": the in-focus image of an amplitude pattern is the pattern filtered by the square
    pixel's transfer sinc(qx px) sinc(qy px) - the mean (q = 0) kept, a Nyquist stripe damped to 2/pi."""
    n = 32
    px = 5e-9
    yy, xx = np.mgrid[:n, :n]
    amp2 = 1.0 + 0.2 * np.cos(np.pi * xx) + 0.1 * np.cos(2 * np.pi * 4 * yy / n)  # Nyquist in x, 4 cycles in y
    kw = dict(padding="periodic", dtype=torch.float64, coherence=coherence)
    params = MicroscopeParams(voltage_v=200e3, cs_m=0.0, theta_c_rad=0.0, focal_spread_m=0.0)
    point = ImageModel((n, n), px, params, **kw).images(np.zeros((n, n)), np.sqrt(amp2), [0.0])[0].numpy()
    pixel = ImageModel((n, n), px, params, detector="pixel", **kw).images(
        np.zeros((n, n)), np.sqrt(amp2), [0.0])[0].numpy()
    np.testing.assert_allclose(point, amp2, atol=1e-12)
    expected = 1.0 + 0.2 * (2 / np.pi) * np.cos(np.pi * xx) + 0.1 * np.sinc(4 / n) * np.cos(2 * np.pi * 4 * yy / n)
    np.testing.assert_allclose(pixel, expected, atol=1e-12)
    with pytest.raises(ValueError, match="detector"):
        ImageModel((n, n), px, params, detector="ccd")
