"""Closed-form behaviour of the Hopfield retrieval (Eq. 1)."""

import pytest
import torch

from anomem.model.memory import HopfieldMemory, hopfield_energy, hopfield_retrieve, retrieve_map


def test_single_pattern_is_always_retrieved():
    x = torch.randn(1, 8)
    q = torch.randn(50, 8)
    out = hopfield_retrieve(q, x, beta=2.0, max_steps=1)
    torch.testing.assert_close(out.recollection, x.expand(50, 8))
    torch.testing.assert_close(out.weights, torch.ones(50, 1))


def test_separated_patterns_large_beta_retrieve_nearest():
    torch.manual_seed(0)
    patterns = torch.eye(6) * 3.0  # well separated
    idx = torch.randint(0, 6, (40,))
    q = patterns[idx] + 0.3 * torch.randn(40, 6)
    out = hopfield_retrieve(q, patterns, beta=20.0, max_steps=3)
    torch.testing.assert_close(out.recollection, patterns[idx], atol=1e-4, rtol=0)
    assert (out.weights.argmax(1) == idx).all()


def test_weights_sum_to_one_and_are_softmax_of_scaled_scores():
    q, x = torch.randn(30, 5), torch.randn(7, 5)
    out = hopfield_retrieve(q, x, beta=0.7, max_steps=1)
    torch.testing.assert_close(out.weights.sum(1), torch.ones(30))
    torch.testing.assert_close(out.weights, torch.softmax(0.7 * q @ x.T, 1))
    torch.testing.assert_close(out.recollection, out.weights @ x)


def test_energy_never_increases_over_steps():
    torch.manual_seed(1)
    x, xi = torch.randn(16, 10), torch.randn(64, 10) * 2
    energies = [hopfield_energy(xi, x, 1.5)]
    for _ in range(6):
        xi = hopfield_retrieve(xi, x, 1.5, max_steps=1).recollection
        energies.append(hopfield_energy(xi, x, 1.5))
    e = torch.stack(energies)  # (steps+1, N)
    assert (e[1:] <= e[:-1] + 1e-5).all()


def test_tol_stops_early_and_reports_steps():
    x = torch.eye(4) * 5
    q = x[[0, 1, 2]] + 0.01
    out = hopfield_retrieve(q, x, beta=10.0, max_steps=50, tol=1e-5)
    assert 1 <= out.steps < 50
    assert hopfield_retrieve(q, x, beta=10.0, max_steps=4, tol=0.0).steps == 4


@pytest.mark.parametrize("norm", ["none", "l2", "centered-l2", "layernorm"])
def test_memory_module_normalisation_and_map_batching(norm):
    torch.manual_seed(0)
    mem = HopfieldMemory(12, 6, beta=2.0, normalize=norm, max_steps=2)
    fmap = torch.randn(3, 6, 4, 5)
    q, rec, _ = retrieve_map(mem, fmap)
    assert q.shape == rec.shape == fmap.shape
    # position-by-position retrieval equals the batched one
    i, j = 2, 3
    single = mem(fmap[:, :, i, j]).recollection
    torch.testing.assert_close(rec[:, :, i, j], single)
    if norm in ("l2", "centered-l2"):
        torch.testing.assert_close(q.norm(dim=1), torch.ones(3, 4, 5))
    if norm == "centered-l2":  # cosine of centred vectors = Pearson correlation
        torch.testing.assert_close(q.mean(dim=1), torch.zeros(3, 4, 5), atol=1e-6, rtol=0)
        a, b = fmap[0, :, 0, 0], fmap[1, :, 0, 0]
        torch.testing.assert_close((q[0, :, 0, 0] * q[1, :, 0, 0]).sum(), torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_gradients_reach_patterns_and_beta():
    mem = HopfieldMemory(5, 4, beta=2.0, learn_beta=True, normalize="l2", max_steps=3)
    z = torch.randn(10, 4, requires_grad=True)
    mem(z).recollection.square().sum().backward()
    assert mem.patterns.grad is not None and mem.patterns.grad.abs().sum() > 0
    assert mem.log_beta.grad is not None and mem.log_beta.grad.abs() > 0
    assert z.grad is not None and z.grad.abs().sum() > 0
