"""Two gloo processes x B/2 give the loss and gradients of one process x B (with local
negatives: per-position labels and the local hinge's deviations are gathered too)."""

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from anomem.config import load_config
from anomem.distributed import gather_with_grad, shutdown
from anomem.engine import Stage1Trainer
from anomem.factory import build_net

from synthetic import stripes

CFG = load_config("tiny", None, ["train.batch_size=8", "memory.sample_ratios=[0.5, 1.0]", "train.seed=3",
                                 "loss.local_weight=1.0"])
B = 8


def _views():
    g = torch.Generator().manual_seed(0)
    x = stripes(B, False).float() / 255
    x2 = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    normal = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    altered = torch.zeros(B, 1, *x.shape[2:], dtype=torch.bool)
    altered[1, :, 2:9, 3:12] = True  # a local defect on a normal of each rank's half
    altered[5, :, 10:20, 0:6] = True
    return x, x2, normal, altered


def _one_step(trainer, x1, x2, normal, altered):
    terms = trainer.loss_on_views(x1, x2, normal, step=5, altered=altered)
    terms.total.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.net.named_parameters() if p.grad is not None}
    return terms.total.detach(), grads


def _make_trainer():
    torch.manual_seed(CFG.train.seed)
    net = build_net(CFG, 1)
    return Stage1Trainer(net, CFG, stripes(16, False), torch.ones(16, dtype=torch.bool), torch.device("cpu"))


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    trainer = _make_trainer()
    try:
        x1, x2, normal, altered = _views()
        b = B // world
        sl = slice(rank * b, (rank + 1) * b)
        loss, grads = _one_step(trainer, x1[sl], x2[sl], normal[sl], altered[sl])
        if rank == 0:
            torch.save({"loss": loss, "grads": grads}, out_file)
        # the gather layer itself: values and gradient bookkeeping
        t = torch.full((2, 3), float(rank), requires_grad=True)
        g = gather_with_grad(t, 0)
        assert g.shape == (2 * world, 3) and torch.equal(g[2 * rank : 2 * rank + 2], t.detach())
    finally:
        trainer.close()  # drops DDP, the last holder of the process group
        shutdown()
    # The group really went: its gloo threads would otherwise outlive shutdown and can
    # abort the process at interpreter exit (seen in CI as SIGABRT in ~1 run of 4).
    assert not [n for n in _thread_names() if n.startswith(("pt_gloo", "gloo_"))], _thread_names()


def _thread_names() -> list[str]:
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):  # not Linux: nothing to check
        return []
    return [open(f"{tasks}/{t}/comm").read().strip() for t in os.listdir(tasks)]


def test_two_ranks_match_one_process():
    single = _make_trainer()
    x1, x2, normal, altered = _views()
    loss1, grads1 = _one_step(single, x1, x2, normal, altered)
    plain = _one_step(_make_trainer(), x1, x2, normal, None)[0]
    assert not torch.allclose(plain, loss1)  # the local negatives take part in the compared loss

    with tempfile.TemporaryDirectory() as d:
        init_file, out_file = os.path.join(d, "init"), os.path.join(d, "out.pt")
        mp.spawn(_worker, args=(2, init_file, out_file), nprocs=2, join=True)
        res = torch.load(out_file, weights_only=True)

    torch.testing.assert_close(res["loss"], loss1, rtol=1e-5, atol=1e-6)
    assert set(res["grads"]) == set(grads1)
    for name, g in grads1.items():
        # relative to the tensor's scale: elementwise rtol is meaningless near zero
        err = ((res["grads"][name] - g).abs().max() / g.abs().max()).item()
        assert err < 1e-3, (name, err)  # float reduction order differs with thread count


def test_shutdown_after_a_failure_leaves_the_group_without_a_barrier(tmp_path):
    from anomem.distributed import is_distributed

    shutdown()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        shutdown(ok=False)  # gloo: the local teardown runs, no collective is entered
        assert not is_distributed()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
