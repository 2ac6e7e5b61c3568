"""liblinear's primal solver against its dual for one squared-hinge SVM: time, and how far above
the optimum's objective each stops at the default tol, on synthetic descriptors.

    python benchmarks/bench_liblinear.py --shapes 5000x4096,10000x4096,20000x512 --C 1,100

The primal is scikit-learn's choice ("auto") where rows outnumber dimensions, and vggfeat's. The
optimum is the lower of the two solvers' objectives run to tol 1e-9 (not timed). Descriptors as in bench_svm.py:
x = relu(s m_y + N(0, 1)), 10 classes, L2-normalised; the SVM is class 0 against the rest.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from vggfeat.primal import primal_objective


def descriptors(rows: int, dim: int, signal: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, rows)
    X = np.maximum(signal * rng.standard_normal((10, dim))[y] + rng.standard_normal((rows, dim)), 0)
    return X / np.linalg.norm(X, axis=1, keepdims=True), y == 0


def objective(X: np.ndarray, positive: np.ndarray, C: float, svm: LinearSVC) -> float:
    return float(primal_objective(X, positive[:, None], C, np.ones((len(X), 1)), svm.coef_, svm.intercept_)[0])


def fit(X: np.ndarray, positive: np.ndarray, C: float, dual: bool, tol: float, max_iter: int) -> tuple[LinearSVC, float]:
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm = LinearSVC(C=C, dual=dual, tol=tol, max_iter=max_iter, random_state=0).fit(X, np.where(positive, 1, -1))
    return svm, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="5000x4096,10000x4096,20000x512", help="ROWSxDIM,...")
    parser.add_argument("--C", default="1,100", help="values of C, comma-separated")
    parser.add_argument("--signal", type=float, default=0.3)
    args = parser.parse_args()
    print("| rows x dim | C | primal s | primal above optimum | dual s | dual above optimum | dual iterations |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        rows, dim = (int(n) for n in shape.split("x"))
        X, positive = descriptors(rows, dim, args.signal)
        for C in (float(c) for c in args.C.split(",")):
            optimum = min(objective(X, positive, C, fit(X, positive, C, dual, 1e-9, 20000)[0]) for dual in (False, True))
            primal, primal_s = fit(X, positive, C, dual=False, tol=1e-4, max_iter=2000)  # vggfeat's tol and max_iter
            dual, dual_s = fit(X, positive, C, dual=True, tol=1e-4, max_iter=2000)
            print(f"| {rows:,} x {dim:,} | {C:g} | {primal_s:.2f} | {objective(X, positive, C, primal) / optimum - 1:.1e} "
                  f"| {dual_s:.2f} | {objective(X, positive, C, dual) / optimum - 1:.1e} | {int(dual.n_iter_)} |", flush=True)


if __name__ == "__main__":
    main()
