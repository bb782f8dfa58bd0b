"""Phase-vortex removal: a phase without branch cuts is left alone; vortex pairs are removed; jumps of more
than pi that carry no vortex (a ramp's periodic border, a steep edge, a 2 pi patch) are kept."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltemlive.reconstruct.vortices import branch_cut_count, remove_vortices, residue_count

N = 128


def smooth_phase() -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(N, dtype=torch.float64), torch.arange(N, dtype=torch.float64), indexing="ij")
    bump = 4.0 * torch.exp(-((x - 50) ** 2 + (y - 70) ** 2) / (2 * 12.0**2))
    return bump + 1.5 * torch.sin(2 * math.pi * x / N) * torch.cos(4 * math.pi * y / N)


def test_phase_without_cuts_is_unchanged():
    p = smooth_phase()
    assert branch_cut_count(p) == 0
    torch.testing.assert_close(remove_vortices(p), p, atol=1e-9, rtol=0)


def test_jumps_without_a_vortex_are_kept():
    p = smooth_phase()
    q = p.clone()
    q[40:45, 60:70] -= 4 * math.pi  # a patch: no residue
    _, x = torch.meshgrid(torch.arange(N, dtype=torch.float64), torch.arange(N, dtype=torch.float64), indexing="ij")
    q = q + 0.2 * x  # a ramp: a 25 rad jump across the periodic border
    steep = 20 * torch.sigmoid((x - 90) / 1.5)  # up to 3.3 rad per pixel: a steep real edge
    q = q + steep
    assert branch_cut_count(q) > 0 and residue_count(q) == 0
    torch.testing.assert_close(remove_vortices(q), q, atol=0, rtol=0)


def test_vortex_pair_is_removed_next_to_a_ramp():
    p = smooth_phase()
    y, x = torch.meshgrid(torch.arange(N, dtype=torch.float64), torch.arange(N, dtype=torch.float64), indexing="ij")
    pair = torch.atan2(y - 64.3, x - 58.2) - torch.atan2(y - 64.3, x - 70.7)
    ramp = 0.2 * x
    fixed = remove_vortices(p + ramp + pair)
    assert residue_count(fixed) == 0
    e = fixed - p - ramp
    away = torch.minimum(torch.hypot(y - 64.3, x - 58.2), torch.hypot(y - 64.3, x - 70.7)) > 2
    assert float((e - e.mean())[away].abs().max()) < 0.25


def test_vortex_pair_is_removed():
    p = smooth_phase()
    y, x = torch.meshgrid(torch.arange(N, dtype=torch.float64), torch.arange(N, dtype=torch.float64), indexing="ij")
    pair = torch.atan2(y - 64.3, x - 58.2) - torch.atan2(y - 64.3, x - 70.7)  # cut between the cores
    q = p + pair
    assert branch_cut_count(q) > 0
    # As a real map the pair is a long-range dipole error (about 3 rad here) with a 2 pi cut between the
    # cores. What is left after removal comes from the pair's far field not being periodic on this grid.
    away = torch.minimum(torch.hypot(y - 64.3, x - 58.2), torch.hypot(y - 64.3, x - 70.7)) > 2

    def worst(a):
        e = a - p
        return float((e - e.mean())[away].abs().max())

    fixed = remove_vortices(q)
    assert branch_cut_count(fixed) == 0
    assert worst(q) > 2.5
    assert worst(fixed) < 0.25


def test_float32_and_mean_kept():
    p = smooth_phase().float() + 3.0
    out = remove_vortices(p)
    assert out.dtype == torch.float32
    assert abs(float(out.mean() - p.mean())) < 1e-5
    assert np.isfinite(out.numpy()).all()


def test_cores_outside_the_region_are_left_alone():
    """A phase that does not come back to its value across the periodic border of a padded grid (a needle's
    stray field: 45 rad from one side to the other, varying along the border) puts residues on the border. They
    are in the unobserved margin: with the field of view as the region the phase is returned unchanged."""
    from ltemlive.reconstruct.vortices import plaquettes_inside

    y, x = torch.meshgrid(torch.arange(N, dtype=torch.float64), torch.arange(N, dtype=torch.float64), indexing="ij")
    p = 45 * torch.sigmoid((x - 64) / 6) * (0.6 + 0.4 * torch.sin(math.pi * y / N)) + smooth_phase()
    assert residue_count(p) > 0
    region = plaquettes_inside((N, N), 16, 16, (N - 32, N - 32))
    assert residue_count(p, region) == 0
    torch.testing.assert_close(remove_vortices(p, region), p, atol=0, rtol=0)
    # A vortex pair inside the region is still removed; the border's wrap stays.
    pair = torch.atan2(y - 64.3, x - 40.2) - torch.atan2(y - 64.3, x - 52.7)
    fixed = remove_vortices(p + pair, region)
    assert residue_count(fixed, region) == 0
    e = (fixed - p)[16:-16, 16:-16]
    assert float((e - e.mean()).abs().max()) < 0.5


def _needle_on_extended_grid():
    """A 96^2 field with a fitted 20 px margin, and a phase whose left and right edges differ by 27-45 rad."""
    from ltemlive.optics.forward import ImageModel
    from ltemlive.optics.params import MicroscopeParams

    im = ImageModel((96, 96), 3e-9, MicroscopeParams(), padding="extend", pad_px=20, dtype=torch.float64)
    y, x = torch.meshgrid(torch.arange(96, dtype=torch.float64), torch.arange(96, dtype=torch.float64), indexing="ij")
    return im, 45 * torch.sigmoid((x - 48) / 6) * (0.6 + 0.4 * torch.sin(math.pi * y / 96))


def test_margin_bridges_opposite_edges_that_differ():
    """model.periodic_margin: a phase whose left and right edges differ by 45 rad (a needle's stray field) gets a
    margin that carries the difference across the periodic border smoothly, so the padded wave has no vortex cores
    at all (mirror padding jumps there and puts cores in the margin); a phase whose edges agree is mirror-padded."""
    from ltemlive.reconstruct.model import periodic_margin

    im, needle = _needle_on_extended_grid()
    out = periodic_margin(needle, im)
    torch.testing.assert_close(im.crop(out), needle, atol=0, rtol=0)
    assert residue_count(im.pad(needle)) > 0  # mirror padding: the border's wrap has cores
    assert residue_count(out) == 0 and branch_cut_count(out) == 0
    # Value and slope continue across the field's edge: the first margin column extends the edge's slope.
    edge = out[im.top + 10, im.left + 95 - 2 : im.left + 95 + 2]
    assert float((edge[3] - edge[2]) - (edge[2] - edge[1])) == pytest.approx(0.0, abs=0.05)
    bump = smooth_phase()[:96, :96]
    torch.testing.assert_close(periodic_margin(bump, im), im.pad(bump), atol=0, rtol=0)


def test_prior_leaves_a_bridging_margin_alone():
    """SeriesModel.regularised_phase: with a margin that bridges opposite edges the curvature prior sees the field of
    view only (its bridge would pull the edges together and flatten a net step the images cannot see); otherwise
    the whole grid."""
    from ltemlive.reconstruct.model import SeriesModel

    im, needle = _needle_on_extended_grid()
    for phase, bridged in ((needle, True), (smooth_phase()[:96, :96], False)):
        m = SeriesModel(im, [-1e-5, 1e-5], phase0=phase, amplitude0=torch.ones(96, 96, dtype=torch.float64),
                        theta_c0=1e-5)
        assert m.bridged is bridged
        want = im.shape if bridged else im.padded_shape
        assert tuple(m.regularised_phase().shape) == want
        torch.testing.assert_close(m.phase_fov(), phase, atol=1e-9, rtol=0)
