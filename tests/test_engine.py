"""Stage-1 mechanics: gradients reach encoder and memories, the loss goes down."""

import math

import pytest
import torch
import torch.nn.functional as F

from anomem.config import load_config
from anomem.engine import Stage1Trainer
from anomem.errors import ConfigError
from anomem.factory import build_net
from anomem.model.losses import ContrastedMemoryLoss, NTXent
from anomem.model.schedule import cosine_with_warmup
from anomem.stage2.heads import DeviationHead, fit_heads
from anomem.stage2.memory import one_class_scores

from synthetic import stripes


def _net(cfg):
    torch.manual_seed(0)
    return build_net(cfg, in_channels=1)


def test_gradients_reach_memories_and_encoder_but_not_through_anomalies_memory():
    cfg = load_config("tiny")
    net = _net(cfg)
    x = stripes(8, False).float() / 255
    normal = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0], dtype=torch.bool)
    pairs = net.contrast_pairs(x, x.flip(3), normal, cfg.memory.sample_ratios)
    loss = ContrastedMemoryLoss(NTXent(0.1), (1.0, 2.0))(pairs, normal).total
    loss.backward()
    for m in net.memories:
        assert m.patterns.grad is not None and m.patterns.grad.abs().sum() > 0
    assert net.backbone.stem[0].weight.grad.abs().sum() > 0
    assert net.backbone.layers["layer3"][0].conv1.weight.grad.abs().sum() > 0


def test_mem_is_memory_for_normals_and_identity_for_anomalies():
    cfg = load_config("tiny", None, ["memory.sample_ratios=[1.0, 1.0]"])
    net = _net(cfg).eval()
    x = stripes(4, False).float() / 255
    normal = torch.tensor([True, False, True, False])
    with torch.no_grad():
        pairs = net.contrast_pairs(x, x, normal, (1.0, 1.0))
        feats = net.features(torch.cat([x, x]))
    for p, f, mem in zip(pairs, feats, net.memories):
        z = f[:4].flatten(2).permute(2, 0, 1)  # (P, B, C) in raster order
        # positions are a permutation: compare as sets via sorting on a key
        q = mem.project(z)
        for b in (1, 3):  # anomalies: Mem(z, 0) = z (projected)
            got = p.mem[:, b].sort(0).values
            torch.testing.assert_close(got, q[:, b].sort(0).values)
        for b in (0, 2):  # normals: recollection differs from the query
            assert not torch.allclose(p.mem[:, b].sort(0).values, q[:, b].sort(0).values)


def test_a_local_defect_makes_only_the_positions_it_touches_anomalous():
    cfg = load_config("tiny", None, ["memory.sample_ratios=[1.0, 1.0]"])
    net = _net(cfg).eval()
    x = stripes(4, False).float() / 255
    normal = torch.tensor([True, True, True, False])
    altered = torch.zeros(4, 1, *x.shape[2:], dtype=torch.bool)
    altered[0, :, :4, :4] = True  # the top-left corner of image 0
    with torch.no_grad():
        pairs = net.contrast_pairs(x, x, normal, (1.0, 1.0), torch.Generator().manual_seed(0), altered)
        plain = net.contrast_pairs(x, x, normal, (1.0, 1.0), torch.Generator().manual_seed(0))
    omega = torch.Generator().manual_seed(0)  # Ω of each scale in turn, drawn as the net draws it
    for mem, p, q, f in zip(net.memories, pairs, plain, net.features(x)):
        h, w = f.shape[-2:]
        pos = torch.randperm(h * w, generator=omega)
        corner = torch.zeros(h, w, dtype=torch.bool)
        corner[: max(1, -(-4 * h // x.shape[-2])), : max(1, -(-4 * w // x.shape[-1]))] = True
        want = normal[None].repeat(h * w, 1)
        want[:, 0] = ~corner.flatten()[pos]
        assert torch.equal(p.normal, want) and q.normal is None
        torch.testing.assert_close(p.mem[want], q.mem[want])  # elsewhere Mem(z, y) is unchanged
        moved = want != normal[None]  # the touched positions of image 0 read z, not HF(z)
        assert moved.any() and not torch.allclose(p.mem[moved], q.mem[moved])
        # the relative deviation ‖ξ - HF(ξ)‖ / ‖ξ‖ at every sampled position (Eq. 8 over the query's length)
        xi = mem.project(f.flatten(2)[:, :, pos].permute(2, 0, 1))
        rec = mem.recall(xi.reshape(-1, xi.shape[-1])).recollection.view_as(xi)
        torch.testing.assert_close(p.deviation, (xi - rec).norm(dim=-1) / xi.norm(dim=-1))
        assert q.deviation is None


def test_positions_a_defect_barely_covers_leave_the_local_hinge():
    cfg = load_config("tiny", None, ["memory.sample_ratios=[1.0, 1.0]"])
    net = _net(cfg).eval()
    x = stripes(2, False).float() / 255
    normal = torch.tensor([True, True])
    side = x.shape[-1]
    altered = torch.zeros(2, 1, side, side, dtype=torch.bool)
    altered[0, :, : side // 2, : side // 8] = True  # a quarter of the top-left cell of a 2 x 2 grid
    with torch.no_grad():
        grids = [f.shape[-2:] for f in net.features(x)]
        for cover in (0.0, 0.3):
            pairs = net.contrast_pairs(x, x, normal, (1.0, 1.0), torch.Generator().manual_seed(0), altered, cover)
            omega = torch.Generator().manual_seed(0)
            for p, (h, w) in zip(pairs, grids):
                pos = torch.randperm(h * w, generator=omega)
                share = F.adaptive_avg_pool2d(altered.float(), (h, w)).flatten(1)[:, pos].T  # (P, B), by hand below
                touched = share > 0
                assert torch.equal(p.normal, ~touched)  # Eq. 3: every touched position is y = 0, whatever the cover
                if cover == 0:
                    assert p.partial is None
                else:
                    assert torch.equal(p.partial, touched & (share < cover))
                    if (h, w) == (2, 2):  # the top-left cell is covered by a quarter: partial
                        assert bool(p.partial.any()) and float(share[p.partial].max()) == 0.25


def test_local_negatives_alter_a_share_of_the_normals_both_views_alike():
    cfg = load_config("tiny", None, ["pseudo.local=0.5", "train.batch_size=32"])
    torch.manual_seed(0)
    x = stripes(32, False)
    normal = torch.ones(32, dtype=torch.bool)
    normal[:8] = False
    tr = Stage1Trainer(build_net(cfg, 1), cfg, x, normal, torch.device("cpu"))
    views = x.float() / 255
    a, b, mask = tr.local_negatives(views, views.clone(), normal, step=3)
    hit = mask.flatten(1).any(1)
    assert not hit[:8].any() and 6 <= int(hit[8:].sum()) <= 18  # normals only, about half of them
    assert torch.equal(a, b) and torch.equal(a[~hit], views[~hit])
    again = tr.local_negatives(views, views.clone(), normal, step=3)
    assert torch.equal(again[2], mask)  # drawn from (seed, step): a resumed run draws the same
    off = load_config("tiny", None, ["train.batch_size=32"])
    assert Stage1Trainer(build_net(off, 1), off, x, normal, torch.device("cpu")).local_negatives(views, views, normal, 3)[2] is None
    assert math.isfinite(tr.run_epoch().loss)  # a step trains with them


def test_loss_goes_down_over_20_steps():
    cfg = load_config("tiny", None, ["train.epochs=20", "train.batch_size=32", "train.warmup_epochs=0", "train.lr=0.1"])
    torch.manual_seed(0)
    net = build_net(cfg, 1)
    tr = Stage1Trainer(net, cfg, stripes(32, False), torch.ones(32, dtype=torch.bool), torch.device("cpu"))
    logs = [tr.run_epoch() for _ in range(20)]
    first, last = sum(lg.loss for lg in logs[:3]) / 3, sum(lg.loss for lg in logs[-3:]) / 3
    assert last < first - 0.1, (first, last)


def test_cosine_schedule_endpoints():
    assert cosine_with_warmup(0, 100, 10) == 0.1
    assert cosine_with_warmup(10, 100, 10) == 1.0
    assert abs(cosine_with_warmup(100, 100, 10)) < 1e-12


def test_scores_eq9():
    d = [torch.ones(2, 3, 2, 2), 2 * torch.ones(2, 5, 1, 1)]
    s = one_class_scores(d)
    torch.testing.assert_close(s, torch.tensor([[12**0.5, 20**0.5]] * 2))


def test_heads_separate_with_double_hinge():
    torch.manual_seed(0)
    heads = torch.nn.ModuleList([DeviationHead(4, 1, 16)])
    normals, anomalies = [torch.randn(200, 4)], [torch.randn(20, 4) + 3]
    cfg = load_config("tiny").heads
    losses = fit_heads(heads, normals, anomalies, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                       weight_decay=cfg.weight_decay, margin=cfg.margin, seed=0)
    assert losses[-1] < 0.1 * losses[0]
    with torch.no_grad():
        dn, da = heads[0].distance(normals[0]), heads[0].distance(anomalies[0])
    assert dn.median() < 1 / cfg.margin + 0.2 and da.median() > cfg.margin - 0.2


def test_frozen_stages_keep_their_start_and_the_rest_trains():
    cfg = load_config("tiny", None, ["train.epochs=2", "train.batch_size=16", "train.warmup_epochs=0",
                                     "backbone.freeze=[stem, layer1]"])
    net = _net(cfg)
    start = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    tr = Stage1Trainer(net, cfg, stripes(16, False), torch.ones(16, dtype=torch.bool), torch.device("cpu"))
    tr.run_epoch()
    tr.run_epoch()
    after = net.backbone.state_dict()
    params = {n for n, _ in net.backbone.named_parameters()}
    frozen = [n for n in params if n.startswith(("stem.", "layers.layer1."))]
    trained = [n for n in params if n.startswith("layers.layer2.")]
    assert frozen and trained
    assert all(torch.equal(after[n], start[n]) for n in frozen)
    assert all(not p.requires_grad for n, p in net.backbone.named_parameters() if n in frozen)
    assert any(not torch.equal(after[n], start[n]) for n in trained)


def test_freeze_names_are_checked():
    with pytest.raises(ConfigError, match="backbone.freeze: unknown stage 'layer5'"):
        load_config("tiny", None, ["backbone.freeze=[layer5]"])
    with pytest.raises(ConfigError, match="twice"):
        load_config("tiny", None, ["backbone.freeze=[stem, stem]"])
