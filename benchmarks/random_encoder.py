"""Does stage 1 make the feature patches better or worse than no training at all? (validation)

A diagnostic for issue 26. For every row of ``local_evidence.py`` result files that kept
its fit's own validation normals (``--fit-validation``), this script rebuilds the row's
crops (the same calls, the same seeds), then builds the feature patch bank of the library
(:class:`anomem.stage2.patch_bank.PatchBank` on :func:`anomem.model.net.feature_descriptors`,
the same coreset size and top 1 %) on an encoder of **the same architecture and stem at its
seeded random initialisation** (batch-norm statistics and input standardisation taken from
the clean training crops), standardised on the fit's validation normals as the library does.
Nothing is fitted again: the trained encoder's numbers are the rows' own.

It reports, per category and family (``unseen``: the pseudo kind the fit never saw;
``structure``: shuffled blocks and zoomed discs), image AUROC of the random encoder's patches
beside the trained ones and the raw-pixel patches, and the even split in held-out units
(Decision 17) replayed from the rows' stored terms with the trained feature patches, with
the random ones in their place, and with both.

    OMP_NUM_THREADS=1 python benchmarks/random_encoder.py \\
        docs/results/local-evidence/fit-validation/recipe-fv40.json \\
        docs/results/local-evidence/fit-validation-more/recipe-fv40.json \\
        --out docs/results/local-evidence/random-encoder.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from anomem import AnoMem
from anomem.bench.photos import uint8_images
from anomem.factory import build_net
from anomem.metrics import image_auroc
from anomem.model.pseudo import make_pseudo_anomalies
from anomem.stage2.patch_bank import PatchBank

# isort: split
# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from local_evidence import held_out_units, structure_defects
from photo_validation import crops

SPLITS = {"trained (library)": ("global", "feature_patches", "pixel_patches"),
          "random in its place": ("global", "random", "pixel_patches"),
          "both": ("global", "feature_patches", "random", "pixel_patches"),
          "learned part (global, trained)": ("global", "feature_patches"),
          "global, random": ("global", "random")}


@torch.no_grad()
def random_encoder(row: dict, train: torch.Tensor):
    """The row's encoder architecture at its seeded initialisation, batch-norm statistics and
    input standardisation from the training crops ``train`` (N, C, H, W) uint8."""
    cfg = AnoMem(progress=False, **row["set"], **{f"pseudo__{k}": v for k, v in row["kinds"].items()})._resolve_config()
    torch.manual_seed(row["seed"])
    net = build_net(cfg, int(train.shape[1]), tuple(train.shape[-2:]))
    x = train.float() / 255
    net.pixel_mean.copy_(x.mean((0, 2, 3)))
    net.pixel_std.copy_(x.std((0, 2, 3)))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative mean over the passes below
    descriptors(net.train(), x)  # one pass in training mode: the batch-norm statistics
    return net.eval(), cfg


@torch.no_grad()
def descriptors(net, x: torch.Tensor) -> torch.Tensor:
    """Feature-patch descriptors of uint8 or float images under ``net`` (the library's
    encoder pass, :meth:`anomem.model.net.AnoMemNet.evidence`)."""
    to_float = lambda b: b.float() / 255 if b.dtype == torch.uint8 else b  # noqa: E731
    return torch.cat([net.evidence(to_float(b), local=True).local_features for b in x.split(40)])


def run(row: dict, n_train: int = 160, n_val: int = 80, fit_val: int = 40) -> dict:
    """The random encoder's feature-patch z-scores of the row's validation images and fit normals."""
    seed, kind = row["seed"], row["kind"]
    train, val, rng, held = crops(row["category"], kind, seed, row["size"], n_train, 3 * n_val, fit_val)
    made = make_pseudo_anomalies(val[n_val:2 * n_val], n_val, (), (kind,), 1.0, (0.1, 0.25),
                                 torch.Generator().manual_seed(seed))
    struct, _ = structure_defects(val[2 * n_val:], rng)
    net, cfg = random_encoder(row, train)
    bank = PatchBank(cfg.patches.feature_bank, cfg.patches.top_k)
    bank.fit(descriptors(net, train), descriptors(net, held), torch.Generator().manual_seed(seed))
    score = lambda x: bank(descriptors(net, x)).score.tolist()  # noqa: E731
    normal = score(uint8_images(val[:n_val]))
    return {"category": row["category"], "kind": kind, "seed": seed, "fit_normals": score(held),
            "unseen": normal + score(uint8_images(made.images)), "structure": normal + score(uint8_images(struct))}


def table(rows: list[dict], rand: dict) -> str:
    """Per fit, the random and trained patches' AUROC; then the means per category and family."""
    cols, fits = {}, []
    for r in rows:
        o = rand[r["category"], r["kind"], r["seed"]]
        held = {**r["scores"]["fit_normals"], "random": o["fit_normals"]}
        for fam in ("unseen", "structure"):
            t = {**r["scores"][fam], "random": o[fam]}
            y = np.asarray(t["label"])
            v = {"random patches": image_auroc(y, np.asarray(o[fam])), "trained patches": r[fam]["feature_patches"],
                 "pixel patches": r[fam]["pixel_patches"],
                 **{s: image_auroc(y, held_out_units(t, held, list(k)).sum(0)) for s, k in SPLITS.items()}}
            cols.setdefault(fam, []).append((r["category"], v))
            fits.append(f"{r['category']} {r['kind']} seed {r['seed']} {fam}: random patches "
                        f"{v['random patches']:.3f}, trained {v['trained patches']:.3f}")
    names = list(cols["unseen"][0][1])
    lines = [*fits, "","| category | family | fits | " + " | ".join(names) + " |", "|---" * (len(names) + 3) + "|"]
    for cat in [*sorted({c for c, _ in cols["unseen"]}), "all"]:
        for fam, vs in cols.items():
            sel = [v for c, v in vs if cat in ("all", c)]
            lines.append(f"| {cat} | {fam} | {len(sel)} | "
                         + " | ".join(f"{np.mean([v[n] for v in sel]):.3f}" for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", nargs="+", type=Path, help="local_evidence.py result files (rows with fit_normals)")
    ap.add_argument("--out", type=Path, required=True, help="the random encoder's scores, per row (resumable)")
    args = ap.parse_args()
    rows = [r for p in args.rows for r in json.loads(p.read_text()) if "fit_normals" in r.get("scores", {})]
    done = json.loads(args.out.read_text()) if args.out.exists() else []
    have = {(o["category"], o["kind"], o["seed"]) for o in done}
    for r in rows:
        if (r["category"], r["kind"], r["seed"]) not in have:
            done.append(run(r))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(done))
            print(r["category"], r["kind"], r["seed"], flush=True)
    print(table(rows, {(o["category"], o["kind"], o["seed"]): o for o in done}))


if __name__ == "__main__":
    main()
