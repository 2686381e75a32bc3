"""The API converts images of another channel count as the README and the CLI do:
colour to grey by ITU-R 601 luma (Pillow's rounding), grey to colour by repetition,
counted the way ``anomem score`` reports conversions."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from anomem import AnoMem, load_config
from anomem.cli import main
from anomem.inputs import geometry_conversions, match_geometry

from synthetic import stripes

FAST = ["train.epochs=1", "train.batch_size=16", "heads.steps=5", "scorer.prototype_cache=0"]


@pytest.fixture(scope="module")
def grey_detector():
    return AnoMem(load_config("tiny", None, FAST), progress=False).fit(stripes(40, False, seed=0))


def _colour(n: int, seed: int) -> torch.Tensor:
    """(n, 3, 16, 16) uint8: grey stripes tinted differently per channel, plus noise."""
    g = torch.Generator().manual_seed(seed)
    grey = stripes(n, False, seed=seed).float()
    tint = torch.tensor([1.0, 0.7, 0.4]).view(1, 3, 1, 1)
    noisy = grey * tint + 20 * torch.rand((n, 3, 16, 16), generator=g)
    return noisy.clamp(0, 255).round().to(torch.uint8)


def test_rgb_to_grey_equals_pillow_exactly():
    rgb = torch.randint(0, 256, (5, 3, 9, 7), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ours = match_geometry(rgb, 1, (9, 7))
    assert ours.shape == (5, 1, 9, 7) and ours.dtype == torch.uint8
    for i in range(5):
        pil = np.asarray(Image.fromarray(rgb[i].permute(1, 2, 0).numpy(), mode="RGB").convert("L"))
        assert np.array_equal(ours[i, 0].numpy(), pil)
    floats = match_geometry(rgb.float() / 255, 1, (9, 7))
    assert floats.dtype == torch.float32 and torch.allclose(floats * 255, ours.float(), atol=0.51)


def test_grey_to_rgb_repeats_and_then_resizes():
    grey = stripes(3, False, seed=1)
    rgb = match_geometry(grey, 3, (16, 16))
    assert rgb.shape == (3, 3, 16, 16) and all(torch.equal(rgb[:, c], grey[:, 0]) for c in range(3))
    small = match_geometry(grey, 3, (8, 8))
    assert small.shape == (3, 3, 8, 8) and small.dtype == torch.float32


def test_conversions_are_counted_like_the_cli():
    assert geometry_conversions(torch.zeros(4, 3, 20, 24, dtype=torch.uint8), 1, (16, 16)) == {
        "images": 4, "resized 24x20->16x16": 4, "RGB->grey": 4}
    assert geometry_conversions(torch.zeros(2, 1, 16, 16, dtype=torch.uint8), 3, (16, 16)) == {
        "images": 2, "grey->RGB": 2}
    assert geometry_conversions(torch.zeros(2, 1, 16, 16, dtype=torch.uint8), 1, (16, 16)) == {"images": 0}


def test_api_scores_colour_images_like_their_grey_conversion(grey_detector):
    rgb = _colour(6, seed=3)
    grey = torch.stack([torch.from_numpy(np.array(
        Image.fromarray(im.permute(1, 2, 0).numpy(), mode="RGB").convert("L")))[None] for im in rgb])
    np.testing.assert_array_equal(grey_detector.anomaly_score(rgb), grey_detector.anomaly_score(grey))


def test_api_and_cli_agree_on_colour_files(grey_detector, tmp_path, capsys):
    rgb = _colour(4, seed=4)
    folder = tmp_path / "colour"
    folder.mkdir()
    for i, im in enumerate(rgb):
        Image.fromarray(im.permute(1, 2, 0).numpy(), mode="RGB").save(folder / f"c{i}.png")
    grey_detector.save(tmp_path / "m.ckpt")
    out = tmp_path / "s.json"
    assert main(["score", str(tmp_path / "m.ckpt"), str(folder), "--out", str(out)]) == 0
    assert "converted 4 images: 4 RGB->grey (detector input: 16x16 grey)" in capsys.readouterr().err
    cli = [r["score"] for r in json.loads(out.read_text())]
    np.testing.assert_allclose(cli, grey_detector.anomaly_score(rgb), rtol=1e-6, atol=1e-9)
