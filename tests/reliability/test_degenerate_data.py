"""Issue 19, rules 2, 4 and 8: degenerate training data, images labelled both ways,
evaluation on training images, and small data that cannot give a threshold.

Degenerate data are refused with a clear error, or give a model that saves, loads and
scores finitely (``save()`` checks the state with the loader's own checks, so it never
writes a file ``load()`` refuses). An image is never both a training normal and an
anomaly. ``evaluate`` uses the split a run recorded and never scores training images.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from cli_checks import one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from anomem import AnoMem
from anomem.cli import main
from anomem.data.image_io import conversions, probe_image, read_image
from anomem.errors import DataError
from anomem.inputs import as_images, image_digests
from anomem.thresholds import ThresholdWarning

from synthetic import stripes

FAST = dict(progress=False, epochs=1, train__batch_size=16, heads__steps=5, scorer__prototype_cache=0)


def _degenerate(kind: str, n: int, value: int, seed: int) -> torch.Tensor:
    """(n, 1, 16, 16) uint8 training normals of one degenerate kind."""
    g = torch.Generator().manual_seed(seed)
    if kind == "constant":
        return torch.full((n, 1, 16, 16), value, dtype=torch.uint8)
    if kind == "copies":
        return stripes(1, False, seed=seed).expand(n, 1, 16, 16).clone()
    if kind == "one pixel differs":
        x = torch.full((n, 1, 16, 16), value, dtype=torch.uint8)
        x[0, 0, 0, 0] = 255 - value
        return x
    if kind == "flat levels":  # each image constant, levels differ
        return torch.randint(0, 256, (n, 1, 1, 1), generator=g, dtype=torch.uint8).expand(n, 1, 16, 16).clone()
    if kind == "two images":
        pair = stripes(2, False, seed=seed)
        return pair[torch.arange(n) % 2]
    return (torch.rand(n, 1, 16, 16, generator=g) < 0.5).to(torch.uint8) * 255  # binary noise


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["constant", "copies", "one pixel differs", "flat levels", "two images", "binary"]),
       n=st.integers(2, 30), value=st.sampled_from([0, 1, 128, 254, 255]), seed=st.integers(0, 3))
def test_degenerate_normals_are_refused_or_give_a_model_that_loads(tmp_path, kind, n, value, seed):
    x = _degenerate(kind, n, value, seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            det = AnoMem("tiny", **FAST).fit(x)
    except DataError as e:
        assert "\n" not in str(e)
        if kind in ("constant", "copies"):
            assert "all the same image" in str(e)
        return
    assert kind not in ("constant", "copies"), "identical normals must be refused"
    path = tmp_path / f"{kind}-{n}-{value}-{seed}.ckpt"
    det.save(path)
    loaded = AnoMem.load(path)
    scores = loaded.anomaly_score(x[:4])
    assert np.isfinite(scores).all() and np.array_equal(scores, det.anomaly_score(x[:4]))


def test_all_black_training_folder_is_refused_by_train(tmp_path, png_writer, tiny_train, capsys):
    for value in (0, 255):
        root = tmp_path / f"v{value}"
        png_writer(root / "train" / "normal", torch.full((30, 1, 16, 16), value, dtype=torch.uint8), "n")
        run = tmp_path / f"run{value}"
        assert main(["train", "--data", str(root), "--out", str(run), *tiny_train]) == 2
        one_line_error(capsys, "all the same image")
        assert not run.exists()  # refused before the run directory is made


def test_save_never_writes_a_file_that_load_refuses(tmp_path):
    det = AnoMem("tiny", **FAST).fit(stripes(12, False, seed=0))
    with torch.no_grad():
        next(iter(det.model_.net.parameters())).fill_(1e16)  # what degenerate data did to the memories
    with pytest.raises(DataError, match="would not load.*above 1e"):
        det.save(tmp_path / "m.ckpt")
    assert not (tmp_path / "m.ckpt").exists() and list(tmp_path.iterdir()) == []


def test_training_normals_given_again_as_anomalies_are_refused(trained_run, folder_dataset, tmp_path, capsys):
    x = stripes(20, False, seed=0)
    for anomalies, y in [(x[:5], None), (x[3:4], None), (None, torch.tensor([1] * 20 + [0]))]:
        xx = x if y is None else torch.cat([x, x[:1]])  # the first image labelled normal and anomaly
        with pytest.raises(DataError, match="an image cannot be both normal and anomalous"):
            AnoMem("tiny", **FAST).fit(xx, anomalies=anomalies, y=y)
    model = tmp_path / "M.ckpt"
    shutil.copy(trained_run / "model.ckpt", model)
    before = model.read_bytes()
    train_normal = folder_dataset / "train" / "normal"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(sorted(train_normal.glob("*.png"))[4], mixed / "sneaky.png")
    shutil.copy(sorted((folder_dataset / "test" / "anomaly").glob("*.png"))[0], mixed / "real.png")
    labelled = tmp_path / "labelled"
    shutil.copytree(train_normal, labelled / "anomaly")
    shutil.copytree(folder_dataset / "test" / "normal", labelled / "normal")
    for cmd in (["refit", str(model), "--anomalies", str(train_normal)], ["refit", str(model), "--anomalies", str(mixed)],
                ["threshold", str(model), "--labelled", str(labelled)]):
        assert main(cmd) == 2, cmd
        one_line_error(capsys, "trained on as normal")
        assert model.read_bytes() == before
    det = AnoMem.load(model)
    with pytest.raises(DataError, match="trained on as normal"):
        det.refit_scorer(as_images(np.stack([np.asarray(Image.open(p)) for p in sorted(train_normal.glob("*.png"))[:3]])))
    assert main(["refit", str(model), "--anomalies", str(folder_dataset / "test" / "anomaly"), "--out",
                 str(tmp_path / "r.ckpt")]) == 0  # real anomalies still refit
    assert AnoMem.load(tmp_path / "r.ckpt").training_digests_["anomaly"].numel() == 6


@pytest.mark.parametrize("n", [2, 3])
def test_few_normals_say_there_is_no_threshold(n):
    with pytest.warns(ThresholdWarning, match=f"no threshold was set: {n} normal images are too few"):
        det = AnoMem("tiny", **FAST).fit(stripes(n, False, seed=1))
    assert det.threshold_ is None


def test_two_normals_in_a_flat_folder_say_there_is_no_threshold(tmp_path, png_writer, tiny_train, capsys):
    root = tmp_path / "flat"
    png_writer(root, stripes(3, False, seed=0), "n")
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--normal-dir", ".", "--normal-split-ratio", "0.34",
                 "--out", str(run), *tiny_train]) == 0
    assert "no threshold was set: 2 normal images" in capsys.readouterr().err  # said once, at the end
    assert main(["score", str(run), str(root)]) == 0
    assert "has no threshold" in capsys.readouterr().err


# -- rule 4: evaluation never tests on training images ---------------------------------------
@pytest.fixture(scope="module")
def flat_run(tmp_path_factory):
    from conftest import TINY_TRAIN, write_pngs

    root = tmp_path_factory.mktemp("flat") / "data"
    write_pngs(root / "good", stripes(30, False, seed=0), "n")
    write_pngs(root / "bad", stripes(6, True, seed=3), "a")
    run = root.parent / "run"
    layout = ["--normal-dir", "good", "--abnormal-dir", "bad"]
    assert main(["train", "--data", str(root), *layout, "--epochs", "1", "--out", str(run), *TINY_TRAIN]) == 0
    return root, run, layout


@pytest.mark.parametrize("flags,needle", [
    (["--normal-split-ratio", "0.6"], "--normal-split-ratio 0.6 differs from the split"),
    (["--normal-split-ratio", "0"], "differs from the split"),
    (["--normal-test-dir", "bad2"], "--normal-test-dir 'bad2' differs"),
])
def test_evaluate_refuses_another_split_of_the_training_folder(flat_run, tmp_path, capsys, flags, needle):
    root, run, layout = flat_run
    assert main(["evaluate", str(run), "--data", str(root), *layout, *flags, "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "r").exists()


def test_evaluate_uses_the_recorded_split_and_leaves_out_training_images(flat_run, tmp_path, capsys):
    root, run, layout = flat_run
    meta = AnoMem.load(run).meta_["split"]
    assert meta["normal_split_ratio"] == 0.2 and meta["normal_dir"] == "good"
    assert main(["evaluate", str(run), "--data", str(root), "--out", str(tmp_path / "r1")]) == 0  # flags from the run
    assert "left out" not in capsys.readouterr().err
    same = json.loads((tmp_path / "r1" / "metrics.json").read_text())["metrics"]
    assert main(["evaluate", str(run / "model.ckpt"), "--data", str(root), *layout, "--out", str(tmp_path / "r2")]) == 0
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["metrics"] == same
    copy = tmp_path / "copy"  # the same images elsewhere, split another way: training normals left out
    shutil.copytree(root, copy)
    assert main(["evaluate", str(run), "--data", str(copy), *layout, "--normal-split-ratio", "0.6",
                 "--out", str(tmp_path / "r3")]) == 0
    err = capsys.readouterr().err
    assert "left out 12 of 24 test images: the model was trained on them" in err
    assert json.loads((tmp_path / "r3" / "metrics.json").read_text())["metrics"]["n_normal"] == 6
    leak = tmp_path / "leak"  # only training images, some called anomalies: nothing left to test
    (leak / "good").mkdir(parents=True)
    (leak / "bad").mkdir()
    known = AnoMem.load(run).training_digests_["normal"]
    training = [p for p in sorted((copy / "good").glob("*.png"))
                if bool(torch.isin(image_digests(torch.from_numpy(np.asarray(Image.open(p)))[None, None]), known))]
    for i, p in enumerate(training[:8]):
        shutil.copy(p, leak / ("good" if i < 6 else "bad") / p.name)
    assert main(["evaluate", str(run), "--data", str(leak), *layout, "--normal-split-ratio", "0.5",
                 "--out", str(tmp_path / "r4")]) == 2
    one_line_error(capsys, "every test image")


# -- rule 2: wide integer images mean what they hold ---------------------------------------------
WIDE = [(bits, top, fmt, order) for bits in (16, 32) for top in (255, 65535, 2**32 - 1) for fmt in ("tif", "png")
        for order in "<>" if not (bits == 16 and top > 65535 or fmt == "png" and bits == 32)]  # 14 that files can hold


@settings(max_examples=len(WIDE), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(WIDE))
def test_wide_integer_images_mean_what_they_hold(tmp_path, case):
    bits, top, fmt, order = case
    ramp = np.arange(256, dtype=np.uint64).reshape(16, 16)
    stored = np.round(ramp * (top / 255)).astype(np.uint64) if top > 255 else ramp
    arr = stored.astype(f"{order}u{bits // 8}")
    # arrays: 16-bit by their range; 32-bit at the smallest depth that holds them
    expect = ramp if bits == 32 or top == 65535 else np.round(ramp / 257).astype(np.uint64)
    assert as_images(arr[None, None]).flatten().tolist() == expect.flatten().tolist()
    path = tmp_path / f"r{bits}-{top}.{fmt}"
    Image.fromarray(stored.astype(np.uint16 if bits == 16 else np.uint32)).save(path)
    assert read_image(path, channels=1).flatten().tolist() == expect.flatten().tolist()
    assert conversions(probe_image(path), (16, 16), 1) == [f"{bits}-bit->8-bit"]


def test_evaluate_refuses_another_normal_class_of_the_training_dataset(tmp_path, tiny_train, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--normal-class", "0", "--epochs", "1", "--out", str(run), *tiny_train]) == 0
    capsys.readouterr()
    for cls in ("3", "9"):
        assert main(["evaluate", str(run), "--data", "digits", "--normal-class", cls, "--out", str(tmp_path / "r")]) == 2
        one_line_error(capsys, "differs from the normal class")
    assert main(["evaluate", str(run), "--data", "digits", "--normal-class", "0", "--max-images", "40",
                 "--out", str(tmp_path / "r")]) == 0


def test_images_learned_as_anomalies_are_refused_as_normals(trained_run, folder_dataset, tmp_path):
    from anomem.data.folder import load_images

    det = AnoMem.load(trained_run)
    bad = stripes(4, True, seed=11)
    det.refit_scorer(bad)
    trained_normal = load_images([folder_dataset / "train" / "normal"], image_size=(16, 16), channels=1).images[:1]
    for call in (lambda: det.refit_scorer(stripes(2, True, seed=12), normals=bad[:2]),
                 lambda: det.calibrate_threshold(bad[1:3]),
                 lambda: det.calibrate_threshold(stripes(6, False, seed=13), trained_normal)):
        with pytest.raises(DataError, match="an image cannot be both normal and anomalous"):
            call()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ThresholdWarning)
        det.calibrate_threshold(stripes(6, False, seed=13), stripes(3, True, seed=14))  # new images: fine
    trained_normals = load_images([folder_dataset / "train" / "normal"], image_size=(16, 16), channels=1).images
    with pytest.warns(ThresholdWarning, match="32 of the 32 given normals are images this detector was trained on"):
        det.calibrate_threshold(trained_normals, fpr=0.1)  # allowed, but biased: said
