"""Reading descriptors back (FeatureFile.read, which train-svm, predict, index and retrieval-eval use):
with the check that every row read is finite against the same read without it, in one process.
With --index-rows, also a flat index's load with its check of unit vectors against without, an
IVF-PQ index's (FAISS's defaults for 512-d: 64-byte codes) with the checksum of its FAISS bytes
against without, and a whitening's (4096 -> 512) load with its checksum against without.

    python benchmarks/bench_read.py --rows 100000 --dim 4096 --dtype float32 --rounds 3 [--index-rows 1000000]

Writes a features file once to --workdir (extract's chunking: about 1 MiB of rows a chunk), then,
alternately, with and without the check (the check replaced by nothing): (a) every row into a
float32 array, as retrieval-eval and the index read; (b) a random half of the rows, in order, as
train-svm reads the rows its labels name (chunks with no wanted row skipped). Each into an array
made once and reused, so that the first touch of new memory (which on this workplace's VMs costs
as much as the read: RESULTS.md) is in neither. Page cache warm (the file was just written, or
read by the first round). Prints the best round of each, in MB/s of the file's bytes read, and
the check's cost.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import h5py
import numpy as np

from vggfeat import features as features_module, index as index_module
from vggfeat.features import FeatureFile
from vggfeat.index import VectorIndex, build_index
from vggfeat.store import STRING, chunk_rows
from vggfeat.whitening import PCAWhitening


def make_file(path: Path, rows: int, dim: int, dtype: str) -> None:
    rng = np.random.default_rng(0)
    step = 8192
    with h5py.File(path, "w") as f:
        features = f.create_dataset("features", (rows, dim), dtype=dtype, chunks=(chunk_rows(rows, dim, dtype), dim))
        for start in range(0, rows, step):
            block = rng.random((min(step, rows - start), dim), dtype=np.float32)
            features[start : start + len(block)] = np.maximum(block - 0.5, 0)  # half zeros, as after fc7's ReLU
        f.create_dataset("paths", data=[f"c/{i:08d}.jpg" for i in range(rows)], dtype=STRING)
        f["labels"] = np.zeros(rows, dtype=np.int32)
        f.create_dataset("classes", data=["c"], dtype=STRING)
        f["sizes"] = np.full((rows, 2), 375, dtype=np.int32)
        f.create_dataset("failed/paths", shape=(0,), dtype=STRING)
        f.create_dataset("failed/errors", shape=(0,), dtype=STRING)
        f.attrs.update(config='{"model": "vgg16", "layer": "fc7", "dim": %d}' % dim, complete=True, format_version=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--index-rows", type=int, default=0, help="also a flat index of this many 512-d vectors, and a whitening")
    parser.add_argument("--workdir", type=Path, default=Path("."),
                        help="where the files are written once and reused [default: the working directory, .]")
    args = parser.parse_args()
    path = args.workdir / f"bench-read-{args.rows}x{args.dim}-{args.dtype}.h5"
    if not path.exists():
        make_file(path, args.rows, args.dim, args.dtype)
    half = np.sort(np.random.default_rng(1).choice(args.rows, args.rows // 2, replace=False))
    checked = FeatureFile._check_finite
    best: dict[tuple[str, str], float] = {}
    with FeatureFile(path) as f:
        file_bytes = f.rows * f.dim * f.features.dtype.itemsize
        arrays = {"every row": np.empty((f.rows, f.dim), np.float32), "a random half": np.empty((len(half), f.dim), np.float32)}
        for _ in range(args.rounds):
            for check in ("with the check", "without"):
                features_module.FeatureFile._check_finite = checked if check == "with the check" else lambda *a, **k: None
                for read, rows in (("every row", None), ("a random half", half)):
                    started = time.perf_counter()
                    f.read(rows, out=arrays[read])
                    seconds = time.perf_counter() - started
                    best[read, check] = min(best.get((read, check), np.inf), seconds)
    features_module.FeatureFile._check_finite = checked
    print(f"{args.rows:,} rows x {args.dim} {args.dtype} ({file_bytes / 2**30:.2f} GiB); best of {args.rounds} rounds")
    print("| read | with the check | without | the check's cost |")
    print("| --- | ---: | ---: | ---: |")
    for read, share in (("every row", 1.0), ("a random half", 0.5)):
        on, off = best[read, "with the check"], best[read, "without"]
        print(f"| {read} | {share * file_bytes / on / 1e6:,.0f} MB/s | {share * file_bytes / off / 1e6:,.0f} MB/s | "
              f"{(on - off) / off:+.1%} |")
    if args.index_rows:
        loads(args.workdir, args.index_rows, args.rounds)


def loads(workdir: Path, rows: int, rounds: int) -> None:
    """A flat index's load, with and without its check of unit vectors; an IVF-PQ index's and a
    whitening's, with and without their checksum (the check replaced by nothing, the checksum's
    attribute removed)."""
    rng = np.random.default_rng(2)
    index_file, whitening_file = workdir / f"bench-read-index-{rows}x512.h5", workdir / "bench-read-whitening.h5"
    ivfpq_file = workdir / f"bench-read-ivfpq-{rows}x512.h5"
    if not index_file.exists() or not ivfpq_file.exists():
        X = np.maximum(rng.standard_normal((rows, 512), dtype=np.float32), 0)
        paths = [f"{i:08d}.jpg" for i in range(rows)]
        build_index(X, paths, {"dim": 512}, kind="flat", backend="numpy").save(index_file)
        build_index(X, paths, {"dim": 512}, kind="ivfpq").save(ivfpq_file)
    whitening = PCAWhitening(dim=512)
    whitening.mean_ = rng.standard_normal(4096).astype(np.float32)
    whitening.projection_ = rng.standard_normal((512, 4096)).astype(np.float32)
    whitening.eigenvalues_ = rng.random(512).astype(np.float32)
    whitening.n_samples_, whitening.config_ = 100_000, {}
    whitening.save(whitening_file)
    unchecked, ivfpq_unchecked = (path.with_name(path.stem + "-unchecked.h5") for path in (whitening_file, ivfpq_file))
    for path, copy, attribute in ((whitening_file, unchecked, "checksum"), (ivfpq_file, ivfpq_unchecked, "faiss_sha256")):
        copy.write_bytes(path.read_bytes())
        with h5py.File(copy, "r+") as f:
            del f.attrs[attribute]  # as written before it was added: read without it
    check = index_module._check_unit_rows
    checking: list[float] = []

    def timed_check(*args, **kwargs) -> None:  # the check's own time, apart from the load's
        started = time.perf_counter()
        check(*args, **kwargs)
        checking.append(time.perf_counter() - started)

    best: dict[str, float] = {}
    loads = [("index, checked", lambda: VectorIndex.load(index_file, backend="numpy")),
             ("index, unchecked", lambda: VectorIndex.load(index_file, backend="numpy")),
             ("ivfpq, checked", lambda: VectorIndex.load(ivfpq_file)),
             ("ivfpq, unchecked", lambda: VectorIndex.load(ivfpq_unchecked)),
             ("whitening, checked", lambda: PCAWhitening.load(whitening_file)),
             ("whitening, unchecked", lambda: PCAWhitening.load(unchecked))]
    for round_ in range(rounds):
        # Each pair in the other order every other round: a load's time depends on what the one
        # before it freed (this VM's first touch of memory), as much as on the check.
        for name, load in loads if round_ % 2 == 0 else [pair for k in range(0, len(loads), 2) for pair in (loads[k + 1], loads[k])]:
            index_module._check_unit_rows = timed_check if name != "index, unchecked" else lambda *a, **k: None
            started = time.perf_counter()
            load()
            best[name] = min(best.get(name, np.inf), time.perf_counter() - started)
    index_module._check_unit_rows = check
    print("| load | with the check | without | the difference |\n| --- | ---: | ---: | ---: |")
    for what, size in (("index", f"flat index, {rows:,} x 512"), ("ivfpq", f"IVF-PQ index, {rows:,} x 512"),
                       ("whitening", "whitening, 4096 -> 512")):
        on, off = best[f"{what}, checked"], best[f"{what}, unchecked"]
        print(f"| {size} | {on:.3f} s | {off:.3f} s | {on - off:+.3f} s ({(on - off) / off:+.0%}) |")
    print(f"the flat index's check alone: {min(checking):.3f} s (best of {len(checking)})")


if __name__ == "__main__":
    main()
