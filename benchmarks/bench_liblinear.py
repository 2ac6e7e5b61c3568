"""liblinear's primal solver against its dual, and vggfeat's rule, for one squared-hinge SVM:
time, and how far above the optimum's objective each stops at the default tol.

    python benchmarks/bench_liblinear.py --shapes 5000x4096,10000x4096,20000x512 --C 1,100
    python benchmarks/bench_liblinear.py --kind overlap --shapes 4000x512 --C 1,100

The primal is scikit-learn's choice ("auto") where rows outnumber dimensions, and was vggfeat's
(the baseline); vggfeat now runs it, then the dual where the primal's gradient bounds its gap
above PRIMAL_GAP (LinearSVM._fit_all). The optimum is the lower of the two solvers' objectives
run to tol 1e-9 (not timed). --kind fc7: x = relu(s m_y + N(0, 1)), 10 classes (as in
bench_svm.py); overlap: Gaussian rows, 4 classes by argmax of a noisy linear map (a reviewer's
set, where the dual is slow). L2-normalised; the SVM is class 0 against the rest.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC

from vggfeat.primal import primal_objective
from vggfeat.svm import LinearSVM


def descriptors(kind: str, rows: int, dim: int, signal: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "overlap":
        X = rng.standard_normal((rows, dim))
        y = np.argmax(X @ rng.standard_normal((dim, 4)) + 2.0 * rng.standard_normal((rows, 4)), 1)
    else:
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="5000x4096,10000x4096,20000x512", help="ROWSxDIM,...")
    parser.add_argument("--C", default="1,100", help="values of C, comma-separated")
    parser.add_argument("--signal", type=float, default=0.3)
    parser.add_argument("--kind", choices=["fc7", "overlap"], default="fc7")
    args = parser.parse_args()
    print("| rows x dim | C | primal s | primal above optimum | dual s | dual above optimum | dual iterations "
          "| vggfeat s | vggfeat above optimum |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        rows, dim = (int(n) for n in shape.split("x"))
        X, positive = descriptors(args.kind, rows, dim, args.signal)
        for C in (float(c) for c in args.C.split(",")):
            optimum = min(objective(X, positive, C, fit(X, positive, C, dual, 1e-9, 20000)[0]) for dual in (False, True))
            primal, primal_s = fit(X, positive, C, dual=False, tol=1e-4, max_iter=2000)  # vggfeat's tol and max_iter
            dual, dual_s = fit(X, positive, C, dual=True, tol=1e-4, max_iter=2000)
            began = time.perf_counter()
            coef, intercept = LinearSVM(C=C, normalize=False)._fit_all(X, positive[:, None], C, None)
            ours_s = time.perf_counter() - began
            ours = float(primal_objective(X, positive[:, None], C, np.ones((len(X), 1)), coef, intercept)[0])
            print(f"| {rows:,} x {dim:,} | {C:g} | {primal_s:.2f} | {objective(X, positive, C, primal) / optimum - 1:.1e} "
                  f"| {dual_s:.2f} | {objective(X, positive, C, dual) / optimum - 1:.1e} | {int(dual.n_iter_)} "
                  f"| {ours_s:.2f} | {ours / optimum - 1:.1e} |", flush=True)


if __name__ == "__main__":
    main()
