"""``index --update`` against building the index anew, after a collection grew (and lost and
changed a few images), through vggfeat's API, in one run.

A descriptors file of ``--rows`` synthetic descriptors (``bench_retrieval.synthetic``) is indexed;
it then grows by ``--grown`` rows (the new and the changed images described at a later time, as
``extract --update`` writes them), ``--gone`` rows removed and ``--changed`` described again. For
each kind, the seconds of :func:`vggfeat.indexupdate.update_index` and of
:func:`vggfeat.index.index_features` on the grown file (the baseline: what one did before), and
each index's recall@10 against the exact result for queries near database rows. Each is the
fastest of ``--repeat`` runs.

    python benchmarks/bench_index_update.py --rows 200000 --grown 2000 --kinds flat,ivfpq,hnsw
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from bench_retrieval import synthetic
from vggfeat.index import VectorIndex, exact_search, index_features
from vggfeat.indexupdate import update_index


def write_file(path: Path, X: np.ndarray, paths: list[str], read_after: np.ndarray) -> None:
    """A descriptors file as vggfeat writes one (rows in path order), enough for indexing."""
    string = h5py.string_dtype("utf-8")
    order = np.argsort(paths)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=X[order], chunks=(min(len(X), 1024), X.shape[1]))
        f.create_dataset("paths", data=[paths[i] for i in order], dtype=string)
        f["labels"] = np.full(len(X), -1, dtype=np.int32)
        f.create_dataset("classes", shape=(0,), dtype=string)
        f["read_after"] = read_after[order]
        for name in ("paths", "errors"):
            f.create_dataset(f"failed/{name}", shape=(0,), dtype=string)
        f.attrs.update({"config": json.dumps({"model": "vgg16", "dim": X.shape[1]}), "complete": True, "input_root": "/"})


def recall_at_10(index: VectorIndex, X: np.ndarray, paths: list[str], queries: np.ndarray) -> float:
    prepared = index.prepare(queries)
    _, exact = exact_search(index.prepare(X), prepared, 10)
    _, found = index.search(prepared, 10)
    position = {path: row for row, path in enumerate(paths)}
    found_rows = np.array([[position[index.paths[r]] if r >= 0 else -1 for r in row] for row in found])
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found_rows)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--grown", type=int, default=2000, help="new images")
    parser.add_argument("--gone", type=int, default=100, help="images removed")
    parser.add_argument("--changed", type=int, default=100, help="images described again")
    parser.add_argument("--kinds", default="flat,ivfpq,hnsw")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, the fastest reported")
    args = parser.parse_args()

    rows = args.rows + args.grown
    X = synthetic(rows, args.dim, clusters=1000)
    paths = [f"{i:08d}.jpg" for i in range(rows)]
    before = np.arange(args.rows)
    # Grown: the new rows; gone: the first of the old; changed: the next, with another descriptor.
    after = np.arange(args.gone, rows)
    changed = np.arange(args.gone, args.gone + args.changed)
    X_after = X.copy()
    X_after[changed] = synthetic(args.changed, args.dim, clusters=1000, seed=9)
    stamps = np.full(rows, 100.0)
    stamps_after = stamps.copy()
    stamps_after[changed] = stamps_after[args.rows :] = 200.0
    rng = np.random.default_rng(1)
    queries = X_after[rng.choice(after, 100, replace=False)] + 0.05 * rng.normal(size=(100, args.dim)).astype(np.float32)
    print(f"{args.rows:,} x {args.dim} rows indexed, then {args.grown:,} new, {args.gone:,} gone, {args.changed:,} "
          f"described again; {platform.processor() or platform.machine()}")
    print("| index | update after `--update` | rows added | built anew (baseline) | speed-up | recall@10 updated | anew |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        # One name in three folders: an index is updated only from a file of the name it was built from.
        db, grown_only, changed_too = (Path(folder) / name / "db.h5" for name in ("before", "grown", "after"))
        for path in (db, grown_only, changed_too):
            path.parent.mkdir()
        write_file(db, X[before], [paths[i] for i in before], stamps[before])
        for kind in args.kinds.split(","):
            for label, file_after, rows_after, X_rows in (
                ("grown only", grown_only, np.arange(rows), X),
                ("grown, gone, changed", changed_too, after, X_after),
            ):
                index_path = Path(folder) / f"{kind}.index"
                backend = "numpy" if kind == "flat" else "auto"
                if label == "grown only":
                    write_file(file_after, X, paths, np.where(np.arange(rows) >= args.rows, 200.0, 100.0))
                else:
                    write_file(file_after, X_after[after], [paths[i] for i in after], stamps_after[after])
                updated_s = anew_s = float("inf")  # the best of --repeat: a first run here paid for page faults
                for _ in range(args.repeat):
                    index_features(db, kind=kind, backend=backend).save(index_path)
                    added = []
                    began = time.perf_counter()
                    update_index(index_path, file_after, progress=added.append)
                    updated_s = min(updated_s, time.perf_counter() - began)
                    began = time.perf_counter()
                    anew = index_features(file_after, kind=kind, backend=backend)
                    anew.save(Path(folder) / "anew.index")
                    anew_s = min(anew_s, time.perf_counter() - began)
                updated = VectorIndex.load(index_path, backend=backend)
                subset = [paths[i] for i in rows_after]
                print(f"| {kind}, {label} | {updated_s:.2f} s | {sum(added):,} | {anew_s:.2f} s | {anew_s / updated_s:.1f}x | "
                      f"{recall_at_10(updated, X_rows[rows_after], subset, queries):.3f} | "
                      f"{recall_at_10(anew, X_rows[rows_after], subset, queries):.3f} |", flush=True)


if __name__ == "__main__":
    main()
