"""Phase-vortex removal: a phase without branch cuts is left alone; vortex pairs are removed; jumps of more
than pi that carry no vortex (a ramp's periodic border, a steep edge, a 2 pi patch) are kept."""

from __future__ import annotations

import math

import numpy as np
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
