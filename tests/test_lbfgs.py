"""L-BFGS mechanics (reconstruct/lbfgs.py): a block runs the iterations it is given."""

from __future__ import annotations

import torch

from ltemlive.reconstruct.lbfgs import GroupOptimiser


def _quadratic(x: torch.nn.Parameter):
    # Ill-conditioned (condition number 1e4): L-BFGS needs many iterations, and its first, unscaled step a few
    # line-search evaluations.
    w = torch.logspace(0, 4, x.numel(), dtype=x.dtype)
    return lambda: 0.5 * (w * (x - 1) ** 2).sum()


def test_a_block_set_after_a_short_one_runs_its_length():
    """An optimiser made (or reset) during a short block must not keep that block's evaluation cap: the final
    checks' re-fit ran one iteration instead of seven, and its side of the check lost (solver._against_nominal)."""
    x = torch.nn.Parameter(torch.zeros(50, dtype=torch.float64))
    opt = GroupOptimiser([x], [x], block=2)
    opt.reset()
    opt.set_block(8)
    taken = opt.step(_quadratic(x))
    assert taken >= 6, taken
    opt.set_block(2)
    opt.reset()
    opt.set_block(8)
    assert opt.step(_quadratic(x)) >= 6


def test_a_non_finite_block_is_undone():
    x = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = GroupOptimiser([x], [x], block=5)
    opt.step(lambda: (x * float("nan")).sum())
    assert torch.equal(x.detach(), torch.ones(3, dtype=torch.float64)) and opt.rejected == 1
