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
    assert c.train.batch_size == 1024 and c.weights.settings(2)["scales"] == [1.0, 2.0]


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


def test_old_keys_are_moved_only_where_an_old_file_is_read():
    from anomem.config import config_differences
    from anomem.config.legacy import upgrade

    # today, an old key is an error that names its new place
    with pytest.raises(ConfigError, match=r"bank.weight is now weights.bank"):
        load_config("tiny", overrides=["bank.weight=0.25"])
    with pytest.raises(ConfigError, match=r"scorer.steps is now heads.steps"):
        AnoMemConfig.from_dict({"scorer": {"steps": 7}})
    # an old file's config (format 1, format 2) is upgraded where it is read
    v1 = {"scorer": {"steps": 7, "bank_weight": 0.25, "target_fpr": 0.05, "pixel_weight": 0.2, "map_pixel_weight": 0.1}}
    cfg = AnoMemConfig.from_dict(upgrade(v1))
    assert (cfg.heads.steps, cfg.weights.bank, cfg.threshold.target_fpr) == (7, 0.25, 0.05)
    assert (cfg.weights.pixel_global, cfg.weights.map_pixel) == (0.2, 0.1)
    v2 = {"bank": {"weight": 0.3}, "pixels": {"local_weight": 0.1, "contrast_weight": 0.4}, "memory": {"scale_weights": [1, 3]}}
    cfg = AnoMemConfig.from_dict(upgrade(v2))
    assert (cfg.weights.bank, cfg.weights.pixel_local, cfg.weights.contrast, cfg.weights.scales) == (0.3, 0.1, 0.4, (1, 3))
    old = {"scorer": {"merge": "weighted", "bank": 2048, "pixel_weight": 0.5, "steps": 9}}
    new = AnoMemConfig.from_dict(upgrade(old))  # settings the old layout ignored are made what they did
    assert new.bank.size == 0 and new.weights.pixel_global == 0.0 and new.heads.steps == 9
    assert config_differences({"scorer": {"steps": 9}}, {"heads": {"steps": 9}}) == []


def test_reading_a_config_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; from anomem.config import load_config; load_config('cpu-small', overrides=['weights.bank=0.2']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("overrides, message", [
    (["scorer.merge=weighted"], "set bank.size=0 too"),
    (["bank.size=0"], "weights.pixel_global=0"),
])
def test_settings_that_would_be_ignored_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides=overrides)
    load_config("tiny", overrides=["bank.size=0", "weights.pixel_global=0", "weights.map_pixel=0", "weights.contrast=0"])


def test_the_demo_and_the_papers_method_are_defined_with_the_presets():
    from anomem.config import paper_literal

    demo = load_config("demo-digits")
    assert demo.backbone.width == 16 and demo.weights.pixel_global == 0.9 and demo.augment.flip_p == 0
    paper = paper_literal(load_config("cpu-small"))
    assert not paper.pseudo.enabled and paper.bank.size == 0 and paper.patches.pixel_bank == 0
    assert paper.weights.pixel_global == paper.weights.map_pixel == 0 and paper.train == load_config("cpu-small").train


def test_every_count_in_the_config_has_a_ceiling_in_one_table():
    """Every integer setting (or tuple of integers) of every section is in limits.LIMITS,
    and a value above its ceiling is refused with a message naming it."""
    import dataclasses

    from anomem.limits import LIMITS, check_config_limits

    cfg = AnoMemConfig()
    counts = []
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(section):
            continue
        for g in dataclasses.fields(section):
            v = getattr(section, g.name)
            ints = v if isinstance(v, tuple) else (v,)
            if ints and all(isinstance(x, int) and not isinstance(x, bool) for x in ints):
                counts.append((f.name, g.name))
    missing = sorted(set(counts) - set(LIMITS))
    assert not missing, f"counts without a ceiling: {missing}"
    for (section, key), (top, _) in LIMITS.items():
        value = getattr(getattr(cfg, section), key)
        big = int(top) + 1 if isinstance(top, int) or float(top).is_integer() else top * 2
        over = dataclasses.replace(cfg, **{section: dataclasses.replace(
            getattr(cfg, section), **{key: (big,) * len(value) if isinstance(value, tuple) else big})})
        with pytest.raises(ConfigError, match=f"{section}.{key} (= |must lie in)"):
            check_config_limits(over)


def test_local_recipe_turns_on_by_image_size_and_keeps_what_was_set():
    from anomem.config import LOCAL_RECIPE, resolve_local_recipe

    base = with_overrides(load_config("cpu-small"), ["pseudo.local_recipe=never"])
    assert resolve_local_recipe(base, (128, 128)) == base  # never: as configured
    auto = load_config("cpu-small")
    assert auto.pseudo.local_recipe == "auto"  # the default (Decision 16)
    assert resolve_local_recipe(auto, (28, 28)) == auto and resolve_local_recipe(auto, (64, 40)) == auto  # small: as set
    on = resolve_local_recipe(auto, (48, 96))  # one side above 64 px
    assert on.pseudo.local == LOCAL_RECIPE["local"] and on.loss.local_weight == LOCAL_RECIPE["local_weight"]
    assert on.train.min_steps == max(base.train.min_steps, 300) and on.train.batch_size == 64
    assert resolve_local_recipe(on, (48, 96)) == on  # applying it twice changes nothing more
    kept = with_overrides(base, ["pseudo.local_recipe=always", "pseudo.local=0.2", "loss.local_weight=3",
                                 "train.min_steps=500", "train.batch_size=32"])
    assert resolve_local_recipe(kept, (28, 28)) == kept  # always: whatever the size; values set stay
    no_defects = with_overrides(base, ["pseudo.local_recipe=always", "pseudo.defects=[]"])
    assert resolve_local_recipe(no_defects, (128, 128)) == no_defects  # nothing to draw local negatives from
    with pytest.raises(ConfigError, match="pseudo.local_recipe must be one of"):
        with_overrides(base, ["pseudo.local_recipe=sometimes"])
