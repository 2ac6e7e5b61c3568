"""A scores file's Fletcher-32 checksums: writing and reading its scores with them against without.

    python benchmarks/bench_scores.py --rows 200000 --classes 1000 --rounds 3

``predict MODEL FEATURES scores.h5`` writes each chunk of /scores and /predicted with HDF5's
Fletcher-32 filter, which every reader checks. In one run, alternately with the filter and
without it (the baseline, ``scoresfile.FLETCHER32 = False``): (a) ``ScoresWriter`` appending blocks
of 8,192 random rows of scores (as ``predict`` does, paths included), to a temporary file; (b)
reading /scores back a block at a time, as a user's code would. Page cache warm (the file was
just written). Prints the best round of each, and the checksums' cost.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from vggfeat import scoresfile

BLOCK_ROWS = 8192


def write(path: Path, rows: int, classes: int, block: np.ndarray) -> float:
    started = time.perf_counter()
    with h5py.File(path, "w") as f:
        writer = scoresfile.ScoresWriter(f, [f"class{k}" for k in range(classes)], multilabel=False)
        for start in range(0, rows, BLOCK_ROWS):
            scores = block[: min(BLOCK_ROWS, rows - start)]
            writer.append([f"{start + i:09d}.jpg" for i in range(len(scores))], scores)
        writer.finish([], "model.h5", "", ["features.h5"])
    return time.perf_counter() - started


def read(path: Path) -> float:
    started = time.perf_counter()
    with h5py.File(path) as f:
        scores = f["scores"]
        for start in range(0, scores.shape[0], BLOCK_ROWS):
            scores[start : start + BLOCK_ROWS]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    block = np.random.default_rng(0).standard_normal((BLOCK_ROWS, args.classes), dtype=np.float32)
    best: dict[tuple[str, bool], float] = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scores.h5"
        for round_ in range(args.rounds):
            for checksums in ((True, False) if round_ % 2 == 0 else (False, True)):  # each first every other round
                scoresfile.FLETCHER32 = checksums
                for step, seconds in (("write", write(path, args.rows, args.classes, block)), ("read", read(path))):
                    best[step, checksums] = min(best.get((step, checksums), np.inf), seconds)
    gigabytes = args.rows * args.classes * 4 / 1e9
    print(f"{args.rows:,} rows x {args.classes:,} classes ({gigabytes:.2f} GB of scores); best of {args.rounds} rounds")
    print("| step | with Fletcher-32 | without | the checksums' cost |\n| --- | ---: | ---: | ---: |")
    for step in ("write", "read"):
        on, off = best[step, True], best[step, False]
        print(f"| {step} | {on:.2f} s | {off:.2f} s | {on - off:+.2f} s ({(on - off) / off:+.0%}; "
              f"{(on - off) / gigabytes:.2f} s a GB) |")


if __name__ == "__main__":
    main()
