"""Which distribution shifts move each class off its own distribution (label-free).

For every class of a dataset's training split, prints
:func:`anomem.model.pseudo.shift_separability` of each shift: the pixel-kNN AUROC of shifted
against unshifted normals (half of a 256-image sample is the bank). ~0.5 means the class
is invariant to the shift (a pseudo-anomaly made with it looks normal), ~1 a clear
outlier. ``pseudo.min_separability`` drops shifts below its value at fit time.

    python benchmarks/shift_separability.py --data fashion-mnist
"""

from __future__ import annotations

import argparse

import torch

from anomem.data.registry import load_dataset
from anomem.inputs import to_float
from anomem.model.pseudo import SHIFTS, shift_separability


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--max-per-class", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    ds = load_dataset(args.data, "train")
    print("| class | " + " | ".join(SHIFTS) + " |")
    print("|---" * (len(SHIFTS) + 1) + "|")
    for c in range(len(ds.class_names)):
        x = to_float(ds.images[ds.targets == c][: args.max_per_class])
        sep = shift_separability(x, SHIFTS, generator=torch.Generator().manual_seed(args.seed))
        print(f"| {c} | " + " | ".join(f"{sep[k]:.2f}" for k in SHIFTS) + " |")


if __name__ == "__main__":
    main()
