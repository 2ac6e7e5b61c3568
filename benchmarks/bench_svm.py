"""SVM training time and peak memory on synthetic descriptors, vggfeat against a naive loop.

    python benchmarks/bench_svm.py --rows 100000 --dim 4096 --classes 100 --train-classes 4 --n-jobs 2
    python benchmarks/bench_svm.py --rows 100000 --dim 4096 --classes 100 --train-classes 4 --n-jobs 2 --mode vggfeat
    python benchmarks/bench_svm.py --rows 100000 --dim 4096 --classes 100 --train-classes 2 --mode naive
    python benchmarks/bench_svm.py --rows 20000 --dim 4096 --classes 10 --mode vggfeat --solver lbfgs --device cpu [--dtype float16]
    python benchmarks/bench_svm.py --rows 20000 --dim 4096 --classes 10 --mode vggfeat --solver lbfgs --cv [--cold]

Each mode runs in its own process: the peak resident memory printed is the process's (VmHWM; not
ru_maxrss, which Linux keeps across exec, so that a process started by a larger one reports its peak).
--mode both (the default) runs naive, then vggfeat, each in a process of its own on the same file,
and prints both results and their ratios.
The features file is written once to --workdir with the vggfeat schema (float32, as `vggfeat
extract` writes, or --dtype float16) and reused by later runs.

Synthetic descriptors: class means m_k ~ N(0, 1) per dimension, x = relu(s m_y + N(0, 1)) (s: --signal, 0.3), so
about half the entries are zero (as after fc7's ReLU) and classes overlap per dimension.

  vggfeat: features.load_features (chunked read straight into one float64 array), LinearSVM
           normalising it in place, classes trained by --n-jobs threads on that one array; with
           --solver lbfgs, every class at once by L-BFGS on --device (--train-classes ignored),
           on float32 (float16) descriptors as train-svm reads them for it; the objective of the SVMs is
           printed (liblinear's too: compare the two runs').
  naive:   what one writes from the h5py and scikit-learn docs: X = f["features"][:] (float32),
           sklearn.preprocessing.normalize(X), then LinearSVC(C).fit(X, y == k) per class, which
           converts X to float64 on every fit.

load_s is not like for like: naive reads 1 x float32, vggfeat fills a float64 array twice that size
(which naive makes on every fit instead). The first touch of that memory, not the HDF5 read, is most
of vggfeat's load_s on a VM whose free memory is handed back to the host (see RESULTS.md).

Both train with a fixed C (no cross-validation); with --cv, vggfeat's LinearSVM.fit chooses C
from the default grid by 3-fold cross-validation and trains with it (with --cold, lbfgs starts
every fit from zero rather than each C's fit of a fold where the last C's ended). Only --train-classes of the classes are trained
when a full run would take too long; every class is an independent binary problem on the same
rows, so the full time is extrapolated linearly (printed as such).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from cuda_check import require_cuda


def make_file(path: Path, rows: int, dim: int, classes: int, signal: float = 0.3, seed: int = 0,
              dtype: str = "float32") -> None:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim), dtype=np.float32)
    labels = np.arange(rows) % classes
    config = {"model": "synthetic", "weights_sha256": "0" * 64, "layer": "fc7", "pooling": "avg", "scales": [256],
              "aggregate": "mean", "flip": True, "preprocessing": {}, "dim": dim, "precision": "fp32"}
    temporary = path.with_name(path.name + ".tmp")
    with h5py.File(temporary, "w") as f:
        features = f.create_dataset("features", shape=(rows, dim), dtype=dtype, chunks=(max(1, min(rows, 2**18 // dim)), dim))
        for start in range(0, rows, 8192):
            y = labels[start : start + 8192]
            block = signal * means[y] + rng.standard_normal((len(y), dim), dtype=np.float32)
            features[start : start + len(y)] = np.maximum(block, 0)
        f.create_dataset("paths", data=[f"c{k:03d}/{i:07d}.jpg" for i, k in enumerate(labels)], dtype=h5py.string_dtype())
        f["labels"] = labels.astype(np.int32)
        f.create_dataset("classes", data=[f"c{k:03d}" for k in range(classes)], dtype=h5py.string_dtype())
        f.attrs["config"] = json.dumps(config)
        f.attrs["complete"] = True
    temporary.rename(path)


def peak_gib() -> float:
    """This process's peak resident memory (VmHWM where Linux gives it, else ru_maxrss)."""
    try:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def held_as(path: Path, solver: str) -> type:
    """The type that train-svm reads the descriptors of ``path`` as for ``solver``: liblinear's
    float64; for lbfgs float32, or float16 where the file holds float16."""
    with h5py.File(path, "r") as f:
        float16 = f["features"].dtype == np.float16
    return np.float64 if solver != "lbfgs" else np.float16 if float16 else np.float32


def run_cross_validated(path: Path, n_jobs: int, solver: str, device: str, cold: bool) -> dict:
    from vggfeat.features import load_features
    from vggfeat.svm import LinearSVM

    began = time.perf_counter()
    features = load_features(path, dtype=held_as(path, solver))
    loaded = time.perf_counter()
    svm = LinearSVM(n_jobs=n_jobs, solver=solver, device=device, copy=False)
    if cold:
        fit_all = svm._fit_all
        svm._fit_all = lambda *args, start=None, **options: fit_all(*args, **options)
    svm.fit(features.X, features.labels)
    trained = time.perf_counter()
    return {"load_s": loaded - began, "train_s": trained - loaded, "solver": solver, "cold": cold, "C": svm.C_,
            "cv_scores": svm.cv_scores_, "peak_rss_training_gib": peak_gib()}


def run_vggfeat(path: Path, train_classes: int, n_jobs: int, C: float, solver: str, device: str) -> dict:
    from vggfeat.features import load_features
    from vggfeat.svm import LinearSVM, _objective_and_gap

    dtype = held_as(path, solver)
    began = time.perf_counter()
    features = load_features(path, dtype=dtype)
    loaded = time.perf_counter()
    svm = LinearSVM(C=C, n_jobs=n_jobs, solver=solver, device=device, copy=False)
    svm._check_params()
    X = svm._prepare(features.X, copy=False, dtype=dtype)  # in place: the array load_features made for us
    targets = (features.labels[:, None] == np.arange(len(features.classes))[None, :])[:, :train_classes]
    prepared = time.perf_counter()
    coef, intercept = svm._fit_all(X, targets, C, None)  # the fits LinearSVM.fit runs
    trained = time.perf_counter()
    peak = peak_gib()  # before the objective's float64 temporaries
    if solver == "lbfgs":
        from vggfeat.primal import primal_objective  # imports torch, as lbfgs has already

        objective = float(primal_objective(X, targets, C, np.ones(targets.shape), coef, intercept).sum())
    else:  # the same objective, by vggfeat.svm's check of liblinear's fits: no torch in liblinear's peak memory
        objective = sum(_objective_and_gap(X, np.where(targets[:, k], 1.0, -1.0), None, C, coef[k], float(intercept[k]))[0]
                        for k in range(targets.shape[1]))
    return {"load_s": loaded - began, "prepare_s": prepared - loaded, "train_s": trained - prepared,
            "solver": solver, "objective_sum": objective, "peak_rss_training_gib": peak}


def run_naive(path: Path, train_classes: int, C: float) -> dict:
    from sklearn.preprocessing import normalize
    from sklearn.svm import LinearSVC

    began = time.perf_counter()
    with h5py.File(path, "r") as f:
        X = f["features"][:]
        y = f["labels"][:]
    loaded = time.perf_counter()
    X = normalize(X)
    prepared = time.perf_counter()
    for k in range(train_classes):
        LinearSVC(C=C).fit(X, y == k)
    trained = time.perf_counter()
    return {"load_s": loaded - began, "prepare_s": prepared - loaded, "train_s": trained - prepared}


def compare_modes(cross_validated: bool) -> None:
    """Run this script's naive mode, then its vggfeat mode, with the arguments given, each in a
    process of its own (each one's peak memory its own), and print both and their ratios."""
    if cross_validated:
        sys.exit("error: --cv is vggfeat's alone (the naive loop has no C to choose): pass --mode vggfeat")
    results = {}
    for mode in ("naive", "vggfeat"):
        output = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode], check=True,
                                stdout=subprocess.PIPE, text=True).stdout
        print(output, end="", flush=True)
        results[mode] = json.loads(output.splitlines()[-1])
    naive, ours = results["naive"], results["vggfeat"]
    extrapolated = " (extrapolated from the classes trained)" if naive["extrapolated"] or ours["extrapolated"] else ""
    print(f"all {ours['classes']} classes: naive {naive['all_classes_s']:.1f} s, vggfeat {ours['all_classes_s']:.1f} s, "
          f"{naive['all_classes_s'] / ours['all_classes_s']:.2f}x{extrapolated}; peak memory: naive "
          f"{naive['peak_rss_gib']:.2f} GiB, vggfeat {ours['peak_rss_gib']:.2f} GiB, "
          f"{ours['peak_rss_gib'] / naive['peak_rss_gib']:.2f}x naive's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--train-classes", type=int, help="classes actually trained [default: all]")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--mode", choices=["both", "vggfeat", "naive"], default="both",
                        help="both: naive then vggfeat, each in a process of its own, and their ratios")
    parser.add_argument("--solver", choices=["liblinear", "lbfgs"], default="liblinear", help="vggfeat's solver")
    parser.add_argument("--device", default="auto", help="where --solver lbfgs runs")
    parser.add_argument("--cv", action="store_true", help="vggfeat: choose C by cross-validation (all classes)")
    parser.add_argument("--cold", action="store_true", help="with --cv and lbfgs: every fit from zero")
    parser.add_argument("--signal", type=float, default=0.3,
                        help="scale of the class means against the noise: lower, classes harder to tell apart")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                        help="of the file's descriptors (extract --dtype): lbfgs holds float16 ones as float16")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vggfeat-bench-svm"))
    args = parser.parse_args()
    require_cuda("bench_svm", args.device)
    args.workdir.mkdir(parents=True, exist_ok=True)
    signal = "" if args.signal == 0.3 else f"-signal{args.signal:g}"
    stored = "" if args.dtype == "float32" else f"-{args.dtype}"
    path = args.workdir / f"synthetic-{args.rows}x{args.dim}x{args.classes}{signal}{stored}.h5"
    if not path.exists():
        t = time.perf_counter()
        make_file(path, args.rows, args.dim, args.classes, args.signal, dtype=args.dtype)
        print(f"wrote {path} in {time.perf_counter() - t:.1f} s", flush=True)
    if args.mode == "both":
        compare_modes(args.cv)
        return
    trained = min(args.train_classes or args.classes, args.classes) if args.solver == "liblinear" else args.classes
    import sklearn.svm  # noqa: F401  (both modes import it; vggfeat's lbfgs solver also imports torch, liblinear not)
    if args.mode == "vggfeat":
        import vggfeat.svm  # noqa: F401
    imported_rss = peak_gib()
    if args.mode == "vggfeat" and args.cv:
        print(json.dumps({**run_cross_validated(path, args.n_jobs, args.solver, args.device, args.cold),
                          "rows": args.rows, "dim": args.dim, "classes": args.classes}))
        return
    if args.mode == "vggfeat":
        result = run_vggfeat(path, trained, args.n_jobs, args.C, args.solver, args.device)
    else:
        result = run_naive(path, trained, args.C)
    per_class = result["train_s"] / trained
    result.update(
        mode=args.mode, rows=args.rows, dim=args.dim, classes=args.classes, trained_classes=trained,
        n_jobs=args.n_jobs if args.mode == "vggfeat" else 1, C=args.C,
        train_s_per_class=per_class,
        all_classes_s=(result["train_s"] if trained == args.classes else per_class * args.classes),
        extrapolated=trained < args.classes,
        rss_after_imports_gib=imported_rss,
        peak_rss_gib=peak_gib(),
        matrix_float64_gib=args.rows * args.dim * 8 / 2**30,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    from vggfeat.errors import VggfeatError

    try:
        main()
    except VggfeatError as error:
        sys.exit(f"error: {error}")
