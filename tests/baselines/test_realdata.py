"""Real Fashion-MNIST: the raw-pixel baselines reproduce the numbers in benchmarks.md.

Class 0 normal: its 6,000 training images vs all 10,000 test images (kNN k=2: 91.7,
Isolation Forest 100 trees: 91.2, AUROC %). A few seconds.
"""

from __future__ import annotations

import pytest
from sklearn.metrics import roc_auc_score

from anomem.baselines import make_baseline


@pytest.mark.realdata
@pytest.mark.parametrize("name, expected", [("knn", 91.7), ("iforest", 91.2)])
def test_fashion_mnist_class0(name: str, expected: float, require_realdata) -> None:
    require_realdata("/usr/share/datasets/fashion-mnist", "Fashion-MNIST (Debian package)")
    from anomem.data.registry import load_dataset

    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    normals = train.images[train.targets == 0]
    assert normals.shape == (6000, 1, 28, 28)
    scores = make_baseline(name, random_state=0).fit(normals).anomaly_score(test.images)
    auroc = 100 * roc_auc_score((test.targets != 0).numpy(), scores)
    assert auroc == pytest.approx(expected, abs=0.15)
