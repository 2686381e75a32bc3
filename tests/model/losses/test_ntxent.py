"""NT-Xent (Eq. 4-5) against a hand-written reference and closed forms."""

import math

import torch

from anomem.model.losses import nt_xent


def reference_ntxent(a, b, tau):
    """Literal Eq. 4-5 for one position, with Python loops."""
    v = torch.cat([a, b])
    n = a.shape[0]
    total = 0.0
    for u in range(2 * n):
        pos = (u + n) % (2 * n)
        sims = [torch.cosine_similarity(v[u], v[p], dim=0) / tau for p in range(2 * n)]
        num = torch.exp(sims[pos])
        den = sum(torch.exp(sims[p]) for p in range(2 * n) if p != u)
        total = total - torch.log(num / den)
    return total / (2 * n)


def test_matches_reference_per_position():
    torch.manual_seed(0)
    a, b = torch.randn(3, 6, 5), torch.randn(3, 6, 5)
    got = nt_xent(a, b, 0.1)
    want = torch.stack([reference_ntxent(a[p], b[p], 0.1) for p in range(3)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_collapsed_batch_closed_form_log_2n_minus_1():
    # every vector identical: all similarities equal, loss = log(2B - 1)
    v = torch.randn(1, 1, 7).expand(2, 8, 7)
    torch.testing.assert_close(nt_xent(v, v, 0.1), torch.full((2,), math.log(15.0)))


def test_symmetric_and_scale_invariant():
    torch.manual_seed(1)
    a, b = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    torch.testing.assert_close(nt_xent(a, b, 0.2), nt_xent(b, a, 0.2))
    torch.testing.assert_close(nt_xent(3 * a, 0.5 * b, 0.2), nt_xent(a, b, 0.2))


def test_aligned_orthogonal_views_beat_random():
    e = torch.eye(8)[None]  # (1, 8, 8): B=8 orthogonal vectors, views identical
    aligned = nt_xent(e, e, 0.1)
    shuffled = nt_xent(e, e[:, torch.randperm(8)], 0.1)
    # aligned: positive sim 1/τ, 2B-2 negatives at 0: closed form
    want = -math.log(math.exp(10) / (math.exp(10) + 14))
    torch.testing.assert_close(aligned, torch.tensor([want]))
    assert shuffled > aligned
