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
    assert c.loss.temperature == 0.1 and c.loss.variance_weight == 0.05 and c.heads.margin == 2.0
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
        ("heads.margin=1", "margin M must be > 1"),
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


def test_every_section_has_at_most_twelve_fields():
    import dataclasses

    for f in dataclasses.fields(AnoMemConfig):
        section = getattr(AnoMemConfig(), f.name)
        if dataclasses.is_dataclass(section):
            assert len(dataclasses.fields(section)) <= 12, f.name


def test_keys_of_the_old_layout_are_moved():
    cfg = load_config("tiny", overrides=["scorer.steps=7", "scorer.bank_weight=0.25", "scorer.target_fpr=0.05",
                                         "scorer.pixel_weight=0.2", "scorer.map_pixel_weight=0.1"])
    assert (cfg.heads.steps, cfg.bank.weight, cfg.threshold.target_fpr) == (7, 0.25, 0.05)
    assert (cfg.pixels.weight, cfg.pixels.map_weight) == (0.2, 0.1)
    old = {"scorer": {"merge": "weighted", "bank": 2048, "pixel_weight": 0.5, "steps": 9}}
    new = AnoMemConfig.from_dict(old)  # settings the old layout ignored are made what they did
    assert new.bank.size == 0 and new.pixels.weight == 0.0 and new.heads.steps == 9
    from anomem.config import config_differences

    assert config_differences({"scorer": {"steps": 9}}, {"heads": {"steps": 9}}) == []


@pytest.mark.parametrize("overrides, message", [
    (["scorer.merge=weighted"], "set bank.size=0 too"),
    (["bank.size=0"], "pixels.weight=0"),
])
def test_settings_that_would_be_ignored_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides=overrides)
    load_config("tiny", overrides=["bank.size=0", "pixels.weight=0", "pixels.map_weight=0", "pixels.contrast_weight=0"])


def test_the_demo_and_the_papers_method_are_defined_with_the_presets():
    from anomem.config import paper_literal

    demo = load_config("demo-digits")
    assert demo.backbone.width == 16 and demo.pixels.weight == 0.9 and demo.augment.flip_p == 0
    paper = paper_literal(load_config("cpu-small"))
    assert not paper.pseudo.enabled and paper.bank.size == 0 and paper.patches.pixel_bank == 0
    assert paper.pixels.weight == paper.pixels.map_weight == 0 and paper.train == load_config("cpu-small").train
