"""A new user's whole journey on a Fashion-MNIST folder, through the `anomem` command.

It writes an image folder as a user would have one (PNG files in the default layout),
then runs what such a user runs, each step as a subprocess of the real command line,
and measures what each step gives:

1. ``anomem train`` on ``train/normal`` (one class of the training split);
2. ``anomem score`` on unseen test images with ``--maps``: the stored threshold's
   achieved FPR on the test normals and recall on the test anomalies;
3. ``anomem evaluate``: the HTML report (AUROC, AP, each anomaly type, curves, confusion matrix);
4. ``anomem threshold --fpr 0.05``, scored again: achieved FPR and recall;
5. ``anomem refit`` with a few labelled anomalies (other classes, training split): the
   refit time, AUROC, FPR and recall after it;
6. ``anomem export --format onnx``, run with onnxruntime from its metadata alone: the
   largest difference to ``anomem score``;
7. the Python API on the same checkpoint: ``decision_function`` / ``predict`` /
   ``predict_proba`` against the CLI's score file.

Test images are never used to set anything. Run (about 12 minutes on 2 CPU cores, 10 of
them training)::

    .venv/bin/python benchmarks/journey.py --normal-class 0 --out results/journey

It prints a Markdown table and writes ``journey.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomem import AnoMem, __version__
from anomem.data.registry import load_dataset


def write_pngs(folder: Path, images: torch.Tensor, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im[0].numpy(), mode="L").save(folder / f"{prefix}{i:05d}.png")


def make_folder(root: Path, normal_class: int, train_size: int, per_class: int, labelled: int, seed: int,
                data_root: str | None = None) -> dict:
    """root/data in the default layout, and root/labelled: a few anomalies for refit."""
    train, test = (load_dataset("fashion-mnist", split, root=data_root) for split in ("train", "test"))
    g = torch.Generator().manual_seed(seed)
    normals = train.images[train.targets == normal_class]
    normals = normals[torch.randperm(normals.shape[0], generator=g)[:train_size]]
    write_pngs(root / "data/train/normal", normals, "n")
    write_pngs(root / "data/test/normal", test.images[test.targets == normal_class], "t")
    others = [c for c in range(len(test.class_names)) if c != normal_class]
    for c in others:
        imgs = test.images[test.targets == c]
        name = test.class_names[c].replace("/", "-").replace(" ", "_").lower()
        write_pngs(root / "data/test/anomaly" / name, imgs[torch.randperm(imgs.shape[0], generator=g)[:per_class]], "a")
    pool = torch.nonzero(train.targets != normal_class).flatten()
    pick = pool[torch.randperm(pool.numel(), generator=g)[:labelled]]
    write_pngs(root / "labelled", train.images[pick], "l")
    return {"normal_class": train.class_names[normal_class], "train_normals": int(normals.shape[0]),
            "test_normals": int((test.targets == normal_class).sum()), "test_anomalies": per_class * len(others),
            "labelled_anomalies": labelled}


def anomem(*args: str) -> tuple[float, str]:
    """Run ``anomem ARGS``; (seconds, stdout + stderr). Fails loudly on a non-zero exit."""
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "anomem", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"anomem {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return time.time() - t0, done.stdout + done.stderr


def told(output: str) -> str:
    """What a command said, without its warnings (they are in the threshold's description)."""
    return " / ".join(ln.strip() for ln in output.splitlines() if ln.strip() and not ln.startswith("anomem: warning"))


def read_scores(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def operating_point(rows: list[dict]) -> dict:
    """AUROC, and the achieved FPR / recall of the stored threshold, from a score file of data/test."""
    truth = np.array(["/anomaly/" in r["path"].replace("\\", "/") for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    flagged = np.array([r["is_anomaly"] == "1" for r in rows])
    return {"auroc": float(roc_auc_score(truth, scores)), "fpr": float(flagged[~truth].mean()),
            "recall": float(flagged[truth].mean()), "threshold": float(rows[0]["threshold"]),
            "n_normal": int((~truth).sum()), "n_anomaly": int(truth.sum())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--normal-class", type=int, default=0)
    ap.add_argument("--train-size", type=int, default=6000, help="training normals (all of a class: 6000)")
    ap.add_argument("--per-class", type=int, default=100, help="test anomalies per other class")
    ap.add_argument("--labelled", type=int, default=20, help="labelled anomalies given to refit")
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/journey")
    ap.add_argument("--data-root", default=None, help="where Fashion-MNIST's IDX files are (default: the usual places)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: give a new --out")
    data, test = out / "data", out / "data" / "test"
    facts = make_folder(out, args.normal_class, args.train_size, args.per_class, args.labelled, args.seed, args.data_root)
    steps: dict[str, dict] = {}

    train_args = ["train", "--data", str(data), "--preset", args.preset, "--seed", str(args.seed),
                  "--out", str(out / "run"), "--no-progress"]
    if args.epochs is not None:
        train_args += ["--epochs", str(args.epochs)]
    secs, _ = anomem(*train_args)
    model = out / "run" / "model.ckpt"
    steps["train"] = {"seconds": secs, "threshold": AnoMem.load(model).threshold_.describe()}

    secs, _ = anomem("score", str(model), str(test), "--maps", str(out / "maps"), "--out", str(out / "scores.csv"))
    steps["score"] = {"seconds": secs, **operating_point(read_scores(out / "scores.csv")),
                      "maps": len(list((out / "maps").glob("*.png")))}

    secs, _ = anomem("evaluate", str(model), "--data", str(data), "--out", str(out / "report"))
    metrics = json.loads((out / "report" / "metrics.json").read_text())["metrics"]
    steps["evaluate"] = {"seconds": secs, "image_auroc": metrics.get("image_auroc"),
                         "average_precision": metrics.get("average_precision"), "per_type": metrics.get("per_type", [])}

    secs, said = anomem("threshold", str(model), "--fpr", "0.05", "--out", str(out / "model-5pc.ckpt"))
    anomem("score", str(out / "model-5pc.ckpt"), str(test), "--out", str(out / "scores-5pc.csv"))
    steps["threshold 5%"] = {"seconds": secs, "said": told(said),
                             **operating_point(read_scores(out / "scores-5pc.csv"))}

    secs, said = anomem("refit", str(model), "--anomalies", str(out / "labelled"), "--out", str(out / "model-ss.ckpt"))
    anomem("score", str(out / "model-ss.ckpt"), str(test), "--out", str(out / "scores-ss.csv"))
    steps["refit"] = {"seconds": secs, "said": told(said),
                      **operating_point(read_scores(out / "scores-ss.csv"))}

    import onnxruntime as ort

    from anomem.io.export import read_metadata

    secs, _ = anomem("export", str(model), "--format", "onnx", "--out", str(out / "model.onnx"))
    meta = read_metadata(out / "model.onnx")
    rows = read_scores(out / "scores.csv")
    pixels = np.stack([np.asarray(Image.open(r["path"]), dtype=np.float32)[None] for r in rows])
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_scores = np.concatenate([session.run(None, {meta["input_name"]: pixels[i:i + 256] / 255.0})[0]
                                  for i in range(0, len(pixels), 256)])
    cli_scores = np.array([float(r["score"]) for r in rows])
    flagged = np.array([r["is_anomaly"] == "1" for r in rows])
    steps["export onnx"] = {"seconds": secs, "max_abs_diff": float(np.abs(onnx_scores - cli_scores).max()),
                            "same_decisions": bool(np.array_equal(onnx_scores > float(meta["threshold"]), flagged))}

    det = AnoMem.load(model)
    x = torch.from_numpy(pixels.astype(np.uint8))
    api = det.decision_function(x)
    steps["python api"] = {"max_abs_diff": float(np.abs(api - cli_scores).max()),
                           "same_decisions": bool(np.array_equal(det.predict(x).astype(bool), flagged)),
                           "proba_rows_sum_to_1": bool(np.allclose(det.predict_proba(x).sum(1), 1))}

    result = {"version": __version__, "seed": args.seed, "preset": args.preset, "epochs": args.epochs,
              "data": facts, "steps": steps}
    (out / "journey.json").write_text(json.dumps(result, indent=2))
    print(f"Fashion-MNIST folder, normal class {facts['normal_class']}: {facts['train_normals']} training "
          f"normals; test {facts['test_normals']} normals + {facts['test_anomalies']} anomalies; seed {args.seed}\n")
    print("| step | seconds | test AUROC | achieved FPR | recall | notes |\n|---|---|---|---|---|---|")
    for name, s in steps.items():
        auroc = s.get("auroc", s.get("image_auroc"))
        cells = [name, f"{s['seconds']:.1f}" if "seconds" in s else "",
                 "" if auroc is None else f"{auroc:.4f}",
                 f"{s['fpr']:.3f} ({round(s['fpr'] * s['n_normal'])}/{s['n_normal']})" if "fpr" in s else "",
                 f"{s['recall']:.3f} ({round(s['recall'] * s['n_anomaly'])}/{s['n_anomaly']})" if "recall" in s else "",
                 "; ".join(f"{k}={v}" for k, v in s.items()
                           if k in ("threshold", "said", "maps", "max_abs_diff", "same_decisions", "proba_rows_sum_to_1"))]
        print("| " + " | ".join(cells) + " |")
    print("\n| anomaly type | images | AUROC against the normals | recall at the stored threshold |\n|---|---|---|---|")
    for r in steps["evaluate"]["per_type"]:
        print(f"| {r['type']} | {r['n']} | {r['image_auroc']:.4f} | {r.get('recall', float('nan')):.2f} |")
    return result


if __name__ == "__main__":
    main()
