"""Typed config: presets, YAML, overrides, validation messages."""

import pytest

from anomem.config import PRESETS, AnoMemConfig, load_config, with_overrides
from anomem.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_round_trip(name):
    cfg = load_config(name)
    assert cfg.preset == name
    assert AnoMemConfig.from_dict(cfg.to_dict()) == cfg


def test_paper_preset_has_paper_hyperparameters():
    c = load_config("paper-r50")
    assert c.backbone.arch == "resnet50" and c.backbone.taps == ("layer3", "layer4")
    assert c.memory.sizes == (512, 256) and c.memory.sample_ratios == (0.3, 1.0) and c.memory.beta == 2.0
    assert c.memory.normalize == "none"
    assert c.loss.temperature == 0.1 and c.loss.variance_weight == 0.05 and c.scorer.margin == 2.0
    assert c.train.batch_size == 1024 and c.memory.weights(2) == (1.0, 2.0)


def test_overrides_and_yaml(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  epochs: 3\nmemory:\n  normalize: layernorm\n")
    cfg = load_config("cpu-small", y, ["train.lr=0.01", "memory.sizes=[8, 4]"])
    assert cfg.train.epochs == 3 and cfg.memory.normalize == "layernorm"
    assert cfg.train.lr == 0.01 and cfg.memory.sizes == (8, 4)
    assert with_overrides(cfg, ["train.seed=7"]).train.seed == 7


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("train.epochs=abc", "train.epochs must be an integer"),
        ("memory.normalize=cosine", "memory.normalize must be one of"),
        ("memory.sizes=[8]", "memory.sizes has 1 entries but backbone.taps has 2"),
        ("train.bogus=1", "unknown config key"),
        ("backbone.taps=[layer4, layer3]", "ordered shallow to deep"),
        ("scorer.margin=1", "margin M must be > 1"),
        ("loss.temperature=-1", "loss.temperature must be > 0"),
        ("nonsense", "must look like section.key=value"),
    ],
)
def test_bad_values_give_clear_messages(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cpu-small", None, [override])


def test_unknown_preset_and_missing_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("cpu-small", tmp_path / "nope.yaml")
