"""Does the trained encoder's patch descriptor see more than a random encoder's, on a validation split?

A diagnostic for issue 26 ("the learned part does not yet pay on photographs"). For each
category and pseudo-defect kind K of ``photo_validation.KINDS`` (K and its near copies left
out of the fit, as in ``local_evidence.py``), AnoMem is fitted with ``--set`` options on the
top rows of the photograph; then the *same* patch-kNN pipeline is run on the descriptors of

* ``trained``: the fitted encoder;
* ``random``: an encoder of the same architecture at its random initialisation (seeded),
  with the fitted encoder's input standardisation;
* ``pixels``: raw-pixel patches (:func:`anomem.stage2.patch_bank.pixel_descriptors`),

each read in several descriptor variants (:func:`variants`): ``taps``, the library's
feature-patch descriptor (layer1 + layer2, 3x3 means, :func:`anomem.model.net.feature_descriptors`);
``taps+l3`` (layer3's 3x3 mean added); ``std3`` / ``std5`` (the 3x3 or 5x5 local standard
deviations of layer1 and layer2 added to their means: texture statistics); ``l2l3``.
A bank of at most 30,000 training descriptors (random rows, standardised per channel by
the training descriptors) gives every validation position its nearest distance; the
image score is read from that map by several aggregations (``top1``: the mean of the top
1 % positions, the library's; ``poolKmax``: the maximum of the K x K mean-pooled map, a
matched filter for extended subtle defects). Families: the unseen kind K (``unseen``) and
the structure alterations of ``local_evidence.structure_defects`` read apart (``shuffle``,
``zoom``). Reported: image AUROC per family and aggregation, pixel AUROC (normal images'
pixels included) per family for ``top1``'s map.

    OMP_NUM_THREADS=2 python benchmarks/patch_descriptors.py --set pseudo__local=0.5 \\
        --set loss__local_weight=1 --set train__min_steps=300 --set train__batch_size=64 \\
        --nets /tmp/nets --out docs/results/local-evidence/descriptors.json

``--nets`` keeps each fitted encoder (a rerun reads them instead of fitting again).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from anomem import AnoMem
from anomem.bench.photos import uint8_images
from anomem.factory import build_net
from anomem.metrics import image_auroc
from anomem.model.net import feature_descriptors
from anomem.model.pseudo import make_pseudo_anomalies
from anomem.stage2.patch_bank import pixel_descriptors

# isort: split
# sibling modules in benchmarks/ (a script's own directory is first on sys.path)
from local_evidence import kinds_for, structure_defects
from photo_validation import crops, parser

BANK_ROWS = 30_000
AGGREGATIONS = {"top1": 0, "pool3max": 3, "pool5max": 5, "pool7max": 7}
FAMILIES = ("unseen", "shuffle", "zoom")


def _mean_std(f: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    mean = F.avg_pool2d(f, k, 1, k // 2, count_include_pad=False)
    var = F.avg_pool2d(f * f, k, 1, k // 2, count_include_pad=False) - mean * mean
    return mean, var.clamp_min(0).sqrt()


def variants(stages: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Descriptor variants (B, D, h, w) on layer2's grid, from one pass's stage maps."""
    grid = stages["layer2"].shape[-2:]
    to_grid = lambda f: f if f.shape[-2:] == grid else F.interpolate(  # noqa: E731
        f, size=grid, mode="bilinear", align_corners=False)
    taps = feature_descriptors(stages)
    m3 = to_grid(_mean_std(stages["layer3"], 3)[0])
    out = {"taps": taps, "taps+l3": torch.cat([taps, m3], 1),
           "l2l3": torch.cat([_mean_std(stages["layer2"], 3)[0], m3], 1)}
    for k in (3, 5):
        (m1, s1), (m2, s2) = _mean_std(stages["layer1"], k), _mean_std(stages["layer2"], k)
        out[f"std{k}"] = torch.cat([to_grid(m1), m2, to_grid(s1), s2], 1)
    return out


@torch.no_grad()
def encoder_sets(net, x: torch.Tensor, batch: int = 32) -> dict[str, torch.Tensor]:
    """Every variant's descriptors of float images ``x`` in [0, 1] under ``net``'s encoder."""
    parts: dict[str, list] = {}
    for i in range(0, len(x), batch):
        xb = (x[i:i + batch] - net.pixel_mean[:, None, None]) / net.pixel_std[:, None, None]
        for name, d in variants(net.backbone.stage_maps(xb)).items():
            parts.setdefault(name, []).append(d)
    return {k: torch.cat(v) for k, v in parts.items()}


def nearest_map(bank: torch.Tensor, q: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(B, h, w) distance of each position of ``q`` (B, D, h, w) to its nearest bank row."""
    b, d, h, w = q.shape
    rows = q.permute(0, 2, 3, 1).reshape(-1, d)
    return torch.cat([torch.cdist(rows[i:i + chunk], bank).min(1).values
                      for i in range(0, len(rows), chunk)]).view(b, h, w)


def aggregate(maps: torch.Tensor, k: int) -> torch.Tensor:
    if k == 0:
        flat = maps.flatten(1)
        return flat.topk(max(1, round(0.01 * flat.shape[1])), 1).values.mean(1)
    return F.avg_pool2d(maps[:, None], k, 1, k // 2, count_include_pad=False).flatten(1).max(1).values


def evaluate(train: torch.Tensor, sets: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
             generator: torch.Generator) -> dict[str, float]:
    """Patch kNN of one descriptor variant: image AUROC per family and aggregation, pixel AUROC."""
    d = train.shape[1]
    rows = train.permute(0, 2, 3, 1).reshape(-1, d)
    mu, sd = rows.mean(0), rows.std(0) + 1e-6
    rows = (rows - mu) / sd
    if len(rows) > BANK_ROWS:
        rows = rows[torch.randperm(len(rows), generator=generator)[:BANK_ROWS]]
    scaled = lambda v: (v - mu[:, None, None]) / sd[:, None, None]  # noqa: E731
    normal = nearest_map(rows, scaled(sets["normal"]))
    out = {}
    for fam in FAMILIES:
        maps = torch.cat([normal, nearest_map(rows, scaled(sets[fam]))])
        y = np.r_[np.zeros(len(normal)), np.ones(len(maps) - len(normal))]
        for name, k in AGGREGATIONS.items():
            out[f"{fam}/{name}"] = image_auroc(y, aggregate(maps, k).numpy())
        size = masks[fam].shape[-2:]
        up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        truth = torch.cat([torch.zeros(len(normal), *size, dtype=torch.bool), masks[fam][:, 0]])
        out[f"{fam}/pixel"] = image_auroc(truth.flatten().numpy(), up.flatten().numpy())
    return out


def run(category: str, kind: str, seed: int, size: int, n_train: int, n_val: int, extra: dict,
        nets: Path | None) -> dict:
    train, val, rng = crops(category, kind, seed, size, n_train, 3 * n_val)
    made = make_pseudo_anomalies(val[n_val:2 * n_val], n_val, (), (kind,), 1.0, (0.1, 0.25),
                                 torch.Generator().manual_seed(seed))
    struct, smask = structure_defects(val[2 * n_val:], rng)
    as_float = lambda t: uint8_images(t).float() / 255  # noqa: E731
    images = {"normal": as_float(val[:n_val]), "unseen": as_float(made.images),
              "shuffle": as_float(struct[0::2]), "zoom": as_float(struct[1::2])}
    masks = {"unseen": made.masks, "shuffle": smask[0::2], "zoom": smask[1::2]}
    cfg = dict(progress=False, train__seed=seed, **kinds_for(kind, [], []), **extra)
    path = None if nets is None else nets / f"{category}-{kind}-{seed}.pt"
    if path is not None and path.exists():
        net = torch.load(path, weights_only=False)
    else:
        net = AnoMem(**cfg).fit(train).net_.cpu().eval()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(net, path)
    torch.manual_seed(seed)
    random_net = build_net(AnoMem(**cfg)._resolve_config(), train.shape[1], tuple(train.shape[-2:])).eval()  # the fit's stem
    random_net.pixel_mean.copy_(net.pixel_mean)
    random_net.pixel_std.copy_(net.pixel_std)
    generator = torch.Generator().manual_seed(seed)
    row = {"category": category, "kind": kind, "seed": seed, "set": extra}
    x_train = train.float() / 255
    for name, encoder in (("trained", net), ("random", random_net)):
        bank = encoder_sets(encoder, x_train)
        sets = {k: encoder_sets(encoder, v) for k, v in images.items()}
        for variant in bank:
            row[f"{name}:{variant}"] = evaluate(bank[variant], {k: s[variant] for k, s in sets.items()},
                                                masks, generator)
    pixels = lambda x: torch.cat([pixel_descriptors(x[i:i + 64]) for i in range(0, len(x), 64)])  # noqa: E731
    row["pixels"] = evaluate(pixels(x_train), {k: pixels(v) for k, v in images.items()}, masks, generator)
    return row


def summary(rows: list[dict]) -> str:
    """Markdown: mean over cells of every (encoder:variant, family/aggregation)."""
    keys = [k for k in rows[0] if ":" in k or k == "pixels"]
    cols = list(rows[0][keys[0]])
    lines = [f"cells: {len(rows)}", "| descriptor | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{np.mean([r[k][c] for r in rows]):.3f}" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__.splitlines()[0], "pseudo__local=0.5")
    ap.add_argument("--out", type=Path, required=True, help="JSON rows, rewritten after each cell (resumable)")
    ap.add_argument("--nets", type=Path, help="a folder keeping each fitted network (read back on a rerun)")
    args = ap.parse_args()
    extra = {k: yaml.safe_load(v) for k, v in (kw.split("=", 1) for kw in args.set)}
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["category"], r["kind"], r["seed"]) for r in rows}
    for seed in args.seeds:
        for category in args.categories:
            for kind in args.kinds:
                if (category, kind, seed) in done:
                    continue
                rows.append(run(category, kind, seed, args.size, args.train, args.validation, extra, args.nets))
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(rows, indent=1))
                print(category, kind, seed, flush=True)
    print(summary(rows))


if __name__ == "__main__":
    main()
