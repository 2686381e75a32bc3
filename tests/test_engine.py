"""Stage-1 mechanics: gradients reach encoder and memories, the loss goes down."""

import torch

from anomem.config import load_config
from anomem.engine import Stage1Trainer
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
