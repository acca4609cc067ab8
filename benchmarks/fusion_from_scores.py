r"""Test AUROC of fixed fusions of score components, from ``coarse_variants.py --save-scores`` files.

The files hold per-image component scores of validation and test. Each component is standardised on the
validation split's normal images, as the model does; nothing is chosen here, every listed fusion is printed.

    python benchmarks/fusion_from_scores.py benchmarks/results/coarse_2026-11-30/coarse_knn/elpv-mono/*.npz \
        --fusion distance=1,nearest=1 nearest=1 nearest=1,coarse=0.5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score


def fused_auroc(scores: np.lib.npyio.NpzFile, weights: dict[str, float]) -> tuple[float, float]:
    """Validation and test AUROC of ``Σ w_c · z_c`` (z: standardised on validation normals)."""
    names = [str(n) for n in scores["names"]]
    missing = sorted(set(weights) - set(names))
    if missing:
        msg = f"components {missing} are not in this file (it has {names})."
        raise ValueError(msg)
    w = np.array([weights.get(n, 0.0) for n in names])
    normal = scores["val"][scores["val_y"] == 0]
    mean, std = normal.mean(0), normal.std(0, ddof=1)
    val, test = (scores["val"] - mean) / std @ w, (scores["test"] - mean) / std @ w
    return float(roc_auc_score(scores["val_y"], val)), float(roc_auc_score(scores["test_y"], test))


def main() -> None:
    """Print one line per file and fusion."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", type=Path, nargs="+", help="scores_*.npz of coarse_variants.py --save-scores")
    parser.add_argument("--fusion", nargs="+", required=True, help="name=weight[,name=weight...]")
    args = parser.parse_args()
    fusions = [{k: float(v) for k, v in (part.split("=") for part in f.split(","))} for f in args.fusion]
    for path in args.files:
        scores = np.load(path)
        for weights in fusions:
            val, test = fused_auroc(scores, weights)
            name = ",".join(f"{k}={v:g}" for k, v in weights.items())
            print(f"{path.name:40s} {name:44s} val {val:.4f} test {test:.4f}")


if __name__ == "__main__":
    main()
