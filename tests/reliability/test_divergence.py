"""A non-finite loss or weight stops training with a message naming the epoch; the last
good last.ckpt stays as it was, byte for byte."""

from __future__ import annotations

import hashlib

import pytest
import torch

import anomem.cli.train as cli
from anomem import AnoMem, load_config
from anomem.cli import main
from anomem.engine import Stage1Trainer, TrainingDivergedError
from anomem.io.checkpoint import load_checkpoint
from anomem.model.losses import ContrastedMemoryLoss, LossTerms

from synthetic import stripes


def _poison_loss_from_epoch(monkeypatch, first_bad_epoch: int) -> None:
    """From the given epoch on, the stage-1 loss is NaN (so gradients and weights are too)."""
    real_forward, real_run_epoch = ContrastedMemoryLoss.forward, Stage1Trainer.run_epoch
    running = {"epoch": 0}

    def run_epoch(self):
        running["epoch"] = self.epoch + 1
        return real_run_epoch(self)

    def forward(self, *args, **kwargs):
        terms = real_forward(self, *args, **kwargs)
        if running["epoch"] >= first_bad_epoch:
            return LossTerms(terms.total * float("nan"), terms.contrastive, terms.variance)
        return terms

    monkeypatch.setattr(Stage1Trainer, "run_epoch", run_epoch)
    monkeypatch.setattr(ContrastedMemoryLoss, "forward", forward)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_nan_loss_stops_cli_with_epoch_and_keeps_last_good_checkpoint(folder_dataset, tiny_train, tmp_path, monkeypatch,
                                                                       capsys):
    run = tmp_path / "run"
    _poison_loss_from_epoch(monkeypatch, first_bad_epoch=3)
    saved = []
    real_save = cli.save_checkpoint

    def recording_save(obj, path):
        real_save(obj, path)
        saved.append((obj["trainer"]["epoch"], _digest(path)))

    monkeypatch.setattr(cli, "save_checkpoint", recording_save)
    code = main(["train", "--data", str(folder_dataset), "--epochs", "4", "--out", str(run), *tiny_train])
    err = capsys.readouterr().err
    assert code == 2 and "non-finite at epoch 3" in err and "Traceback" not in err, err
    assert [e for e, _ in saved] == [1, 2]
    assert _digest(run / "last.ckpt") == saved[-1][1]  # byte-identical to the last good save
    last = load_checkpoint(run / "last.ckpt")
    assert last["trainer"]["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in last["net"].values() if t.is_floating_point())
    assert not (run / "model.ckpt").exists()


def test_huge_learning_rate_is_caught(folder_dataset, tiny_train, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data", str(folder_dataset), "--epochs", "2", "--out", str(run), *tiny_train,
                 "--set", "train.lr=1e30", "--set", "train.warmup_epochs=0"])
    err = capsys.readouterr().err
    assert code == 2 and "became non-finite at epoch" in err and "lower train.lr" in err
    if (run / "last.ckpt").exists():  # only epochs that ended finite were saved
        last = load_checkpoint(run / "last.ckpt")
        assert all(torch.isfinite(t).all() for t in last["net"].values() if t.is_floating_point())


def test_finite_loss_but_overflowed_weights_are_not_checkpointed(monkeypatch):
    """The loss is computed before the step: a step that overflows the weights must still
    stop training before the epoch's checkpoint is written."""
    real_step = torch.optim.SGD.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # 16 images, batch 16: one step per epoch, so this ends epoch 2
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    cfg = load_config("tiny", None, ["train.epochs=3", "train.batch_size=16", "heads.steps=5", "train.device=cpu",
                                     "threshold.calibration_fraction=0", "pseudo.enabled=false"])  # 16 images: 1 step/epoch
    epochs_saved = []
    with pytest.raises(TrainingDivergedError, match="weights became non-finite at epoch 2"):
        AnoMem(cfg, progress=False).fit(stripes(16, False), on_epoch_end=lambda d, t, log: epochs_saved.append(t.epoch))
    assert epochs_saved == [1]
