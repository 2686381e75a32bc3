"""The README's examples run as written.

Every ``anomem`` line of the README's shell blocks is run in order, in a scratch
directory holding small generated folders under the names the README uses
(``path/to/folder``, ``new_images/``, ``mvtec/bottle``, ...). Lines on a named dataset
(minutes of training on Fashion-MNIST) and ``anomem serve`` (it runs until stopped;
``tests/test_serve.py`` runs the real server) are only parsed, which checks that their
verbs and options exist. The Python blocks are executed with generated images bound to the
names they use.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomem.cli import main
from anomem.cli.parser import build_parser

from synthetic import stripes

README = Path(__file__).resolve().parents[1] / "README.md"
NAMED = ("fashion-mnist", "digits", "cifar10", "mnist")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.M | re.S)


def _commands() -> list[list[str]]:
    lines = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():  # join continued lines
            if line.startswith("anomem "):
                lines.append(shlex.split(line, comments=True)[1:])
    return lines


def _write(folder: Path, images, prefix: str = "i") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im[0].numpy(), mode="L").save(folder / f"{prefix}{i:03d}.png")


def _scratch(root: Path) -> None:
    """The folders the README's commands name, with horizontal-bar normals and vertical-bar anomalies."""
    _write(root / "path/to/folder/train/normal", stripes(48, False, seed=0))
    _write(root / "path/to/folder/test/normal", stripes(8, False, seed=1))
    _write(root / "path/to/folder/test/anomaly", stripes(8, True, seed=2))
    _write(root / "new_images", stripes(6, False, seed=3))
    _write(root / "labelled_defects", stripes(4, True, seed=4))
    _write(root / "mvtec/bottle/train/good", stripes(48, False, seed=5))
    _write(root / "mvtec/bottle/test/good", stripes(6, False, seed=6))
    _write(root / "mvtec/bottle/test/vertical", stripes(6, True, seed=7))
    mask = np.zeros((16, 16), np.uint8)
    mask[:, 4:12] = 255
    (root / "mvtec/bottle/ground_truth/vertical").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(mask).save(root / f"mvtec/bottle/ground_truth/vertical/i{i:03d}_mask.png")
    _write(root / "my_good_images", stripes(40, False, seed=8))
    _write(root / "shots/ok", stripes(40, False, seed=9))
    _write(root / "shots/scratch", stripes(3, True, seed=10))
    _write(root / "shots/dent", stripes(3, True, seed=11))


def test_readme_has_the_documented_verbs():
    verbs = {argv[0] for argv in _commands()}
    assert {"train", "score", "evaluate", "threshold", "refit", "export", "benchmark", "serve"} <= verbs


def test_readme_shell_examples_run(tmp_path, monkeypatch):
    _scratch(tmp_path)
    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    ran = 0
    for argv in _commands():
        if any(name in argv for name in NAMED) or argv[0] == "serve":
            # a named dataset (minutes of training), or a server that runs until stopped
            # (tests/test_serve.py runs it): options checked, not run
            parser.parse_args(argv)
            continue
        assert main(argv + (["--no-progress"] if argv[0] == "train" else [])) == 0, argv
        ran += 1
    assert ran >= 10
    assert (tmp_path / "runs/mine/model.onnx").is_file() and (tmp_path / "runs/bottle-eval/report.html").is_file()
    assert len(list((tmp_path / "heat").glob("*.png"))) == 6


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"normal_images": stripes(64, False, seed=0), "test_images": np.concatenate(
        [stripes(8, False, seed=1), stripes(8, True, seed=2)]), "a_few_labelled_anomalies": stripes(4, True, seed=3)}
    blocks = _blocks("python")
    assert len(blocks) >= 2
    for block in blocks:
        try:
            exec(compile(block, str(README), "exec"), space)  # noqa: S102 - the README's own code
        except Exception as e:  # pragma: no cover - the failure message names the block
            pytest.fail(f"README Python block failed ({type(e).__name__}: {e}):\n{block}")
    assert space["scores"].shape == (16,) and space["det"].get_params()["train__epochs"] == 5
