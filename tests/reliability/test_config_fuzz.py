"""Property tests of the config parser: any input gives a valid config or a ConfigError.

``parse_overrides`` and ``load_config`` are where strings from the command line and YAML
files enter. Whatever they are given, the only outcomes allowed are a validated
:class:`AnoMemConfig` or a :class:`ConfigError` (which the CLI turns into exit code 2);
any other exception would reach the user as a traceback.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anomem.config import AnoMemConfig, load_config, parse_overrides
from anomem.errors import ConfigError

SECTIONS = {f.name: f.default_factory() for f in dataclasses.fields(AnoMemConfig) if f.name != "preset"}
KNOWN_KEYS = [f"{s}.{f.name}" for s, obj in SECTIONS.items() for f in dataclasses.fields(obj)]

# Values shaped like what people type: YAML scalars, lists, special floats, dates, junk.
scalar_text = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from([".nan", ".inf", "-.inf", "1e-3", "1e400", "true", "no", "null", "~", "",
                     "2020-13-45", "2021-02-30 25:61:00", "[", "]", "{a: [1, 2]}", "!!python/object:os.system",
                     "[1, 2, 3]", "[0.5]", "[0.5, 0.1]", "[layer3]", "[layer4, layer3]", "cuda:x", "cuda:0",
                     "'\\x00'", "&a [*a]", "*a", "- - -", "? a", "0x1F", "0o17", "1_000", "+12"]),
    st.text(max_size=20),
)
key_text = st.one_of(st.sampled_from(KNOWN_KEYS + ["preset", "train", "train.epochs.x", ".a", "a.", "a..b"]),
                     st.text(max_size=15))
override = st.one_of(st.tuples(key_text, scalar_text).map(lambda kv: f"{kv[0]}={kv[1]}"), st.text(max_size=30))


def _assert_valid(cfg: AnoMemConfig) -> None:
    assert isinstance(cfg, AnoMemConfig)
    # a valid config survives its own round trip and has only finite numbers
    assert AnoMemConfig.from_dict(cfg.to_dict()) == cfg

    def finite(v):
        if isinstance(v, dict):
            return all(finite(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return all(finite(x) for x in v)
        return not isinstance(v, float) or math.isfinite(v)

    assert finite(cfg.to_dict())


@settings(max_examples=300, deadline=None)
@given(st.lists(override, max_size=4))
def test_overrides_give_config_or_config_error(items):
    try:
        cfg = load_config("tiny", None, items)
    except ConfigError as e:
        assert str(e)
        return
    _assert_valid(cfg)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=3))
def test_parse_overrides_on_arbitrary_strings(items):
    try:
        out = parse_overrides(items)
    except ConfigError:
        return
    assert isinstance(out, dict)


yaml_docs = st.one_of(
    st.text(max_size=200),
    st.lists(st.tuples(st.sampled_from(KNOWN_KEYS + ["preset", "train", "memory"]), scalar_text), max_size=5).map(
        lambda kvs: "\n".join(f"{k.split('.')[0]}:\n  {k.split('.')[-1]}: {v}" if "." in k else f"{k}: {v}" for k, v in kvs)
    ),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
)


@settings(max_examples=200, deadline=None)
@given(doc=yaml_docs, raw=st.booleans())
def test_yaml_config_file_gives_config_or_config_error(doc, raw):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cfg.yaml"
        path.write_bytes(doc.encode("latin-1", "replace") if raw else doc.encode("utf-8", "surrogatepass"))
        try:
            cfg = load_config(None, path)
        except ConfigError as e:
            assert str(e)
            return
    _assert_valid(cfg)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lr=.inf", "train.lr"),
        ("train.lr=.nan", "train.lr"),
        ("augment.crop_scale=[0.5]", "augment.crop_scale"),
        ("augment.blur_sigma=[1.0]", "augment.blur_sigma"),
        ("weights.scales=[a, b]", "weights.scales"),
        ("train.device=cuda:x", "train.device"),
        ("train.epochs=2020-13-45", "train.epochs"),
        ("train.nope=1", "unknown config key"),
    ],
)
def test_named_bad_overrides_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config("tiny", None, [override])


def test_scientific_notation_is_a_number():
    # YAML 1.1 reads "1e-3" as a string; a learning rate typed that way must still work.
    assert load_config("tiny", None, ["train.lr=1e-3"]).train.lr == pytest.approx(1e-3)


def test_yaml_file_with_non_string_keys_and_unhashable_preset(tmp_path):
    for text, message in [("1: 2\n", "key"), ("preset: [a]\n", "preset"), ("train:\n  3: 4\n", "key")]:
        p = tmp_path / "c.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(None, p)
