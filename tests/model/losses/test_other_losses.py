"""Variance term (Eq. 6), double hinge (Eq. 11), Barlow Twins and L_COM-MS (Eq. 7)."""

import math

import torch

from anomem.model.losses import (
    ContrastedMemoryLoss,
    NTXent,
    ScalePairs,
    barlow_twins,
    double_hinge,
    local_hinge,
    variance_loss,
)


def test_variance_loss_finite_on_full_collapse_and_worse_than_spread():
    normal = torch.ones(8, dtype=torch.bool)
    collapsed = torch.randn(1, 1, 5).expand(3, 8, 5).clone().requires_grad_(True)
    loss_c = variance_loss(collapsed, normal, eps=1e-4)
    loss_c.sum().backward()
    assert torch.isfinite(loss_c).all() and torch.isfinite(collapsed.grad).all()
    torch.testing.assert_close(loss_c, torch.full((3,), -math.sqrt(1e-4)))
    spread = torch.randn(3, 8, 5)
    assert (variance_loss(spread, normal) < loss_c.detach()).all()


def test_variance_loss_uses_normals_only_and_matches_formula():
    mem = torch.randn(2, 6, 4)
    normal = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    want = -torch.sqrt(mem[:, normal].var(1, unbiased=False) + 1e-4).mean(-1)
    torch.testing.assert_close(variance_loss(mem, normal, 1e-4), want)
    # fewer than two normals: no variance to measure
    one = torch.tensor([1, 0, 0, 0, 0, 0], dtype=torch.bool)
    torch.testing.assert_close(variance_loss(mem, one), torch.zeros(2))


def test_variance_loss_per_position_labels_match_the_formula_position_by_position():
    mem = torch.randn(3, 6, 4)
    normal = torch.rand(3, 6, generator=torch.Generator().manual_seed(1)) > 0.3
    normal[2] = False
    normal[2, 0] = True  # one normal at the last position: no variance there
    got = variance_loss(mem, normal, 1e-4)
    for p in range(2):
        want = -torch.sqrt(mem[p, normal[p]].var(0, unbiased=False) + 1e-4).mean()
        torch.testing.assert_close(got[p], want)
    assert got[2] == 0
    # a (P, B) label equal at every position gives the (B,) result
    same = normal[0]
    torch.testing.assert_close(variance_loss(mem, same.expand(3, 6)), variance_loss(mem, same))


def test_local_hinge_averages_each_side_over_its_own_positions():
    dev = torch.tensor([[0.2, 0.7, 0.9], [1.3, 0.4, 0.1]])
    normal = torch.tensor([[True, True, False], [False, True, True]])
    # normals: 0.2 -> 0, 0.7 -> 0.2, 0.4 -> 0, 0.1 -> 0 (mean over 4); altered: 0.9 -> 0.1, 1.3 -> 0 (mean over 2)
    torch.testing.assert_close(local_hinge(dev, normal, (0.5, 1.0)), torch.tensor(0.2 / 4 + 0.1 / 2))
    torch.testing.assert_close(local_hinge(dev, torch.ones_like(normal), (0.5, 1.0)), torch.tensor((0.2 + 0.4 + 0.8) / 6))
    torch.testing.assert_close(local_hinge(dev, normal, (0.0, 2.0)), torch.tensor((0.2 + 0.7 + 0.4 + 0.1) / 4 + (1.1 + 0.7) / 2))
    # a partly covered position (0.9, row 0) is on neither side: the altered side is 1.3 alone
    partial = torch.tensor([[False, False, True], [False, False, False]])
    torch.testing.assert_close(local_hinge(dev, normal, (0.5, 1.0), partial), torch.tensor(0.2 / 4 + 0.0))
    torch.testing.assert_close(local_hinge(dev, normal, (0.0, 2.0), partial), torch.tensor(1.4 / 4 + 0.7))


def test_multiscale_loss_adds_the_local_hinge_where_pairs_carry_positions():
    torch.manual_seed(0)
    y = torch.rand(3, 6) > 0.3
    dev = torch.rand(3, 6) * 1.5
    p1 = ScalePairs(torch.randn(3, 6, 4), torch.randn(3, 6, 4), y, dev)
    p2 = ScalePairs(torch.randn(5, 6, 8), torch.randn(5, 6, 8))  # image labels only: no local term
    normal = torch.ones(6, dtype=torch.bool)
    off = ContrastedMemoryLoss(NTXent(0.1), (1.0, 3.0), local_weight=0.0)([p1, p2], normal)
    on = ContrastedMemoryLoss(NTXent(0.1), (1.0, 3.0), local_weight=2.0)([p1, p2], normal)
    torch.testing.assert_close(on.total, off.total + 2.0 * 1.0 / 4.0 * local_hinge(dev, y, (0.5, 1.0)))
    torch.testing.assert_close(on.contrastive, off.contrastive)


def test_double_hinge_values_at_and_beyond_margins():
    m = 2.0
    d = torch.tensor([0.0, 0.5, 1.0, 3.0, 0.0, 1.0, 2.0, 5.0])
    y = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    want = torch.tensor([0.0, 0.0, 0.5, 2.5, 2.0, 1.0, 0.0, 0.0])
    torch.testing.assert_close(double_hinge(d, y, m), want)


def test_barlow_identity_cross_correlation_is_minimal():
    torch.manual_seed(0)
    a = torch.randn(2, 512, 4)
    perfect = barlow_twins(a, a)
    noisy = barlow_twins(a, torch.randn(2, 512, 4))
    assert (perfect < 0.1).all() and (noisy > 3).all()
    b = torch.randn(2, 512, 4)
    torch.testing.assert_close(barlow_twins(a, b), barlow_twins(b, a), rtol=1e-4, atol=1e-4)


def test_multiscale_loss_weights_and_normalisation():
    torch.manual_seed(0)
    p1 = ScalePairs(torch.randn(3, 6, 4), torch.randn(3, 6, 4))
    p2 = ScalePairs(torch.randn(5, 6, 8), torch.randn(5, 6, 8))
    normal = torch.ones(6, dtype=torch.bool)
    loss = ContrastedMemoryLoss(NTXent(0.1), (1.0, 2.0), variance_weight=0.05, variance_eps=1e-4)
    got = loss([p1, p2], normal)
    from anomem.model.losses import nt_xent
    from anomem.model.losses import variance_loss as vl

    want_com = (nt_xent(p1.mem, p1.other, 0.1).sum() + 2 * nt_xent(p2.mem, p2.other, 0.1).sum()) / 8
    want_var = (vl(p1.mem, normal).sum() + 2 * vl(p2.mem, normal).sum()) / 8
    torch.testing.assert_close(got.total, want_com + 0.05 * want_var)
    torch.testing.assert_close(got.contrastive, want_com)
