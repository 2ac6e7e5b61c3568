"""Search of a flat index and evaluation of an SVM: time and peak memory, against another checkout.

    python benchmarks/bench_search_memory.py --rows 200000 --dim 256 --baseline /tmp/oldtree

Writes a synthetic features file (vggfeat's schema; 100 classes, descriptors relu(0.3 m_y + N(0, 1)))
to a folder ROWSxDIM of --workdir, a flat index of it and a linear SVM trained on its first 2000
rows, then runs each step in a process of its own, so that the peak resident memory printed
(VmHWM) is that run's, with this checkout's vggfeat and with --baseline's (a checkout of an
earlier commit: `git worktree add /tmp/oldtree REV`), alternated --repeat times (the fastest
time, the largest peak):

  search, numpy: VectorIndex.load(index, backend="numpy") and the top 10 of 1000 queries.
  search, faiss: the same with backend="faiss" (a flat index searched by FAISS), if installed.
  evaluate:      transfer.evaluate(model, features): every row scored, then each class's APs.

The files are made once by this checkout's vggfeat; both checkouts read them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]

STEP = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
step, work = sys.argv[2], sys.argv[3]
began = time.perf_counter()
if step.startswith("search"):
    import h5py, numpy as np
    from vggfeat.index import VectorIndex
    index = VectorIndex.load(f"{work}/db.index", backend=step.split()[1])
    with h5py.File(f"{work}/db.h5") as f:
        queries = index.prepare(f["features"][:1000])
    scores, rows = index.search(queries, 10)
    result = rows[:, 0].tolist()
else:
    from vggfeat import transfer
    metrics, _ = transfer.evaluate(f"{work}/model.h5", f"{work}/db.h5")
    result = [metrics["map_area"], metrics["accuracy"]]
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report its parent's peak.
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": time.perf_counter() - began, "peak_mb": peak / 1024, "result": result}))
"""


def make_files(work: Path, rows: int, dim: int) -> None:
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE / "tests"))
    from svmhelpers import write_features
    from vggfeat import transfer
    from vggfeat.index import index_features

    rng = np.random.default_rng(0)
    means = rng.standard_normal((100, dim)).astype(np.float32)
    labels = rng.integers(0, 100, rows)
    X = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 65536):
        block = labels[start : start + 65536]
        X[start : start + len(block)] = np.maximum(0.3 * means[block] + rng.standard_normal((len(block), dim)), 0)
    paths = [f"shard-{i // 5000:06d}/class{label:03d}/{i:08d}.jpg" for i, label in enumerate(labels)]
    write_features(work / "db.h5", X, paths, labels, [f"class{k:03d}" for k in range(100)])
    write_features(work / "train.h5", X[:2000], paths[:2000], labels[:2000], [f"class{k:03d}" for k in range(100)])
    transfer.train_svm(work / "train.h5", work / "model.h5", C=1.0)
    index_features(work / "db.h5", backend="numpy").save(work / "db.index")


def run(root: Path, step: str, work: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", STEP, str(root), step, str(work)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{step} with {root} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--baseline", type=Path, required=True, help="root of another checkout of vggfeat")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    # The files of each --rows and --dim in a folder of their own: a --workdir is reused.
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="bench_search_memory-"))) / f"{args.rows}x{args.dim}"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "db.index").exists():
        make_files(work, args.rows, args.dim)
    steps = ["search numpy", "search faiss", "evaluate"] if importlib.util.find_spec("faiss") else ["search numpy", "evaluate"]
    print(f"{args.rows:,} rows of {args.dim}-d; {os.cpu_count()} cores\n")
    print("| step | checkout | time | peak memory | same result |")
    print("|---|---|---|---|---|")
    for step in steps:
        results = {"this": [], "baseline": []}
        for _ in range(args.repeat):
            results["baseline"].append(run(args.baseline, step, work))
            results["this"].append(run(HERE, step, work))
        same = results["this"][0]["result"] == results["baseline"][0]["result"]
        for name in ("baseline", "this"):
            runs = results[name]
            print(f"| {step} | {name} | {min(r['seconds'] for r in runs):.2f} s | {max(r['peak_mb'] for r in runs):,.0f} MB "
                  f"| {same} |")


if __name__ == "__main__":
    main()
