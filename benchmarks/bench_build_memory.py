"""Whitening fit, index build and SVM scoring of a features file: time and peak memory, in blocks against the whole array.

    python benchmarks/bench_build_memory.py --rows 50000 --dim 4096

Writes a synthetic float32 features file with the vggfeat schema (as `vggfeat extract` writes it)
to --workdir, then runs each step twice, each run in a process of its own so that the peak
resident memory printed (VmHWM) is that run's:

  whiten, vggfeat: whitening.fit_whitening, which reads the file in blocks and adds each block's
                   float64 moments (host memory: a block and a D x D covariance).
  whiten, whole:   the fit as vggfeat made it before (and as one writes it from NumPy): the whole
                   file read as float32, converted to one float64 array, L2-normalised, centred (a
                   second N x D copy), then X^T X / N. Both end in the same eigendecomposition.
  flat/hnsw, vggfeat: index.index_features, which reads, L2-normalises and adds a block at a time.
  flat/hnsw, whole:   as vggfeat did before (and as one writes it from FAISS's docs): the whole file
                   read, L2-normalised into a second array, added to the FAISS index at once.
  predict, vggfeat: transfer.score (what predict and evaluate score with), which reads and scores
                   the descriptors a block at a time.
  predict, whole:   as vggfeat did before: load_features (every row into one float64 array), then
                   the model's decision_function. The model: a linear SVM of the file's 100 classes
                   trained on its first 1000 rows (all, if fewer), once for each --rows and --dim,
                   in --workdir.
  csv, vggfeat:    transfer.write_predictions, predict's CSV written as each block is scored.
  csv, whole:      as vggfeat wrote it before: transfer.predict (the scores of every row, scored in
                   blocks), then the CSV from them.
  scores, vggfeat: transfer.write_scores, predict's HDF5 output (scores.h5) written as each block
                   is scored.
  scores, whole:   the baseline for it is the CSV as vggfeat writes it (csv, vggfeat), run again;
                   the two files' scores are compared (the CSV's have 6 significant digits).

The two whitenings are compared by the Gram matrix of a sample of whitened rows (inner products do
not depend on the eigenvectors' signs): the largest absolute difference is printed.

Synthetic descriptors: x = relu(0.3 m_y + N(0, 1)) for 100 class means m_k ~ N(0, 1), about half
the entries zero, as after fc7's ReLU.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from bench_svm import make_file  # the same synthetic fc7-like descriptors, in the vggfeat schema


def fit_whole(features: Path, output: Path) -> None:
    """The whole-array fit, as vggfeat made it before the blocks."""
    from vggfeat.whitening import EIGENVALUE_FLOOR, PCAWhitening, l2_normalize

    with h5py.File(features, "r") as f:
        X = f["features"][:]
    X = l2_normalize(np.asarray(X, dtype=np.float64), np.float64)
    mean = X.mean(axis=0)
    centred = X - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(X))
    order = np.argsort(eigenvalues)[::-1][: min(X.shape[1], len(X) - 1)]
    eigenvalues = np.maximum(eigenvalues[order], EIGENVALUE_FLOOR * eigenvalues.max())
    whitening = PCAWhitening()
    whitening.mean_, whitening.eigenvalues_ = mean.astype(np.float32), eigenvalues.astype(np.float32)
    whitening.projection_ = (eigenvectors[:, order] / np.sqrt(eigenvalues)).T.astype(np.float32)
    whitening.config_, whitening.n_samples_ = {}, len(X)
    whitening.save(output)


def index_whole(features: Path, kind: str) -> None:
    """The index as vggfeat built it before the blocks."""
    import faiss

    from vggfeat.whitening import l2_normalize

    with h5py.File(features, "r") as f:
        X = f["features"][:]
    vectors = l2_normalize(X)
    index = faiss.IndexFlatIP(X.shape[1]) if kind == "flat" else faiss.IndexHNSWFlat(X.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)


def make_model(features: Path, model: Path) -> None:
    """A linear SVM for the file's descriptors (trained on its first 1000 rows, or all if fewer:
    scoring is measured)."""
    from vggfeat.features import FeatureFile
    from vggfeat.svm import LinearSVM, save_model

    with FeatureFile(features) as f:
        rows = min(1000, len(f.labels))
        svm = LinearSVM(C=1.0).fit(f.read(np.arange(rows)), f.labels[:rows])
        save_model(model, svm, [f.config])


def write_csv_whole(path: Path, scored) -> None:
    """predict's CSV as vggfeat wrote it before: from every row's scores, held at once."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "predicted", *(f"score:{c}" for c in scored.classes), "error"])
        for p, row in zip(scored.paths, scored.scores):
            writer.writerow([p, scored.classes[int(np.argmax(row))], *(f"{s:.6g}" for s in row), ""])


def child(step: str, mode: str, features: Path, model: Path, output: Path) -> None:
    from vggfeat import transfer
    from vggfeat.features import load_features
    from vggfeat.index import index_features
    from vggfeat.whitening import fit_whitening

    started = time.perf_counter()
    if step == "whiten":
        fit_whitening(features, output) if mode == "vggfeat" else fit_whole(features, output)
    elif step == "predict":
        if mode == "vggfeat":
            transfer.score(model, features)
        else:  # as vggfeat scored before: every descriptor read into one float64 array first
            transfer.load_model(model).svm.decision_function(load_features(features).X)
    elif step == "scores":
        if mode == "vggfeat":
            transfer.write_scores(output.with_name("scores.h5"), model, features)
        else:
            transfer.write_predictions(output.with_name("scores.csv"), model, features)
    elif step == "csv":
        if mode == "vggfeat":
            transfer.write_predictions(output.with_suffix(".csv"), model, features)
        else:
            write_csv_whole(output.with_suffix(".csv"), transfer.predict(model, features))
    elif mode == "vggfeat":
        index_features(features, kind=step, backend="faiss")
    else:
        index_whole(features, step)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss_mib": _peak_mib()}))


def _peak_mib() -> float:
    """This process's peak resident memory: VmHWM, where Linux gives it. Its ru_maxrss is kept across
    exec: a child started by a parent that made the file and model reports at least the parent's."""
    try:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scores_difference(workdir: Path) -> float:
    with open(workdir / "scores.csv", newline="") as f:
        rows = list(csv.reader(f))
    from_csv = np.array([[float(value) for value in row[2:-1]] for row in rows[1:]])
    with h5py.File(workdir / "scores.h5", "r") as f:
        from_hdf5 = f["scores"][:].astype(np.float64)
    return float((np.abs(from_csv - from_hdf5) / np.maximum(np.abs(from_hdf5), 1e-12)).max())


def gram_difference(features: Path, first: Path, second: Path, sample: int = 500) -> float:
    from vggfeat.whitening import PCAWhitening

    with h5py.File(features, "r") as f:
        X = f["features"][:sample]
    a, b = PCAWhitening.load(first).transform(X), PCAWhitening.load(second).transform(X)
    return float(np.abs(a @ a.T - b @ b.T).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vggfeat-bench-whitening"))
    parser.add_argument("--steps", default="whiten,flat,hnsw,predict,csv",
                        help="Of whiten, flat, hnsw (FAISS indexes), predict, csv, scores.")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    features = args.workdir / f"features-{args.rows}x{args.dim}.h5"
    model = args.workdir / f"model-{args.rows}x{args.dim}.h5"  # of those features: one for each size
    if args.child:
        step, mode = args.child
        child(step, mode, features, model, args.workdir / f"{mode}.h5")
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not features.exists():
        make_file(features, args.rows, args.dim, classes=100)
    print(f"{args.rows:,} x {args.dim} float32 descriptors ({features.stat().st_size / 2**20:,.0f} MiB on disk)")
    steps = args.steps.split(",")
    if {"predict", "csv", "scores"} & set(steps) and not model.exists():
        make_model(features, model)
    for step in steps:
        for mode in ("whole", "vggfeat"):
            run = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--dim", str(args.dim),
                                  "--workdir", str(args.workdir), "--child", step, mode], capture_output=True, text=True)
            if run.returncode:  # the child's output is captured for its result: show why it failed
                sys.exit(f"{step}, {mode} failed (exit code {run.returncode}):\n{run.stderr}")
            result = json.loads(run.stdout.splitlines()[-1])
            print(f"{step:>6}, {mode:>7}: {result['seconds']:7.1f} s, peak resident memory {result['peak_rss_mib']:,.0f} MiB")
    if "csv" in steps:
        same = (args.workdir / "whole.csv").read_bytes() == (args.workdir / "vggfeat.csv").read_bytes()
        print(f"the two CSVs are the same, byte for byte: {same}")
    if "scores" in steps:
        print(f"largest relative difference between the CSV's scores and the HDF5 file's: {scores_difference(args.workdir):.2e}")
    if "whiten" not in steps:
        return
    difference = gram_difference(features, args.workdir / "whole.h5", args.workdir / "vggfeat.h5")
    print(f"largest difference between the two whitenings' inner products of 500 rows: {difference:.2e}")


if __name__ == "__main__":
    main()
