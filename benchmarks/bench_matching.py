"""Matching paths: the ground truth's names in retrieval-eval, and a file's rows for training, against another checkout.

    python benchmarks/bench_matching.py --rows 1000000 --baseline /tmp/oldtree

Each step runs in a process of its own, with this checkout's vggfeat and with --baseline's (a
checkout of an earlier commit: `git worktree add /tmp/oldtree REV`), alternated --repeat times
(the fastest time is printed):

  name index:  retrieval's index of a database's paths by path and file name without extension,
               for a ground truth of 55 queries of 70 images each (Oxford/Paris-like).
  training rows: transfer.targets_of and training_features on a features file of --rows labelled
               rows of 16-d (every row labelled: the file's own rows in its own order).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]

STEP = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
step, rows, train = sys.argv[2], int(sys.argv[3]), sys.argv[4]
if step == "name index":
    from vggfeat import retrieval
    paths = [f"shard-{i // 5000:06d}/n{i % 1000:08d}/img_{i:08d}.jpg" for i in range(rows)]
    truth = [{"query": f"img_{q:08d}", "ok": [f"img_{q + k:08d}" for k in range(1, 50)],
              "junk": [f"img_{q + 100 + k:08d}" for k in range(20)]} for q in range(0, 55000, 1000)]
    began = time.perf_counter()
    if hasattr(retrieval, "_names_in"):
        retrieval._name_index(paths, retrieval._names_in(truth))
    else:  # before the index held only the ground truth's names
        retrieval._name_index(paths)
else:
    from vggfeat import transfer
    began = time.perf_counter()
    targets = transfer.targets_of([train], None, False)
    transfer.training_features([train], targets, {"C": 1.0})
print(json.dumps({"seconds": time.perf_counter() - began}))
"""


def make_file(path: Path, rows: int) -> None:
    sys.path.insert(0, str(HERE / "tests"))
    from svmhelpers import write_features

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 100, rows)
    write_features(path, rng.random((rows, 16), dtype=np.float32),
                   [f"s{i // 5000:06d}/c{label:03d}/{i:08d}.jpg" for i, label in enumerate(labels)], labels,
                   [f"c{k:03d}" for k in range(100)])


def run(root: Path, step: str, rows: int, train: Path) -> float:
    done = subprocess.run([sys.executable, "-c", STEP, str(root), step, str(rows), str(train)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{step} with {root} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--baseline", type=Path, required=True, help="root of another checkout of vggfeat")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_matching-"))
    work.mkdir(parents=True, exist_ok=True)
    train = work / f"train-{args.rows}.h5"  # a file for each --rows: a --workdir is reused
    if not train.exists():
        make_file(train, args.rows)
    print(f"{args.rows:,} paths\n")
    print("| step | baseline | this | ratio |")
    print("|---|---:|---:|---:|")
    for step in ("name index", "training rows"):
        times = {"baseline": [], "this": []}
        for _ in range(args.repeat):
            times["baseline"].append(run(args.baseline, step, args.rows, train))
            times["this"].append(run(HERE, step, args.rows, train))
        before, after = min(times["baseline"]), min(times["this"])
        print(f"| {step} | {before:.2f} s | {after:.2f} s | {before / after:.1f}x |")


if __name__ == "__main__":
    main()
