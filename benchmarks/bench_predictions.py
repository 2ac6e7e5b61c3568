"""Writing classify's CSV from its posteriors file: rows/s, and the ranking of classes against a sort.

    python benchmarks/bench_predictions.py --images 100000

Since the twenty-first session ``classify IMAGES OUT.csv`` describes the posteriors into
``OUT.csv.posteriors.h5`` first (a killed run resumes), then writes the CSV from that file after
the last image, while the GPU has nothing left to do: this part of the run must be short. Makes a
file of ``--images`` random posteriors over 1,000 classes (a failure every 1,000 images), then, in
one run:
  (a) ranking alone, a block of 8,192 rows at a time: the top 5 of each row by a stable sort of
      each row (the way the CSV was written before, image by image), by one stable sort of the
      block, and by ``predictions.top_classes`` (a partition, then a sort of the 5);
  (b) ``predictions.write_predictions``: the whole CSV, with and without a label list, from a file
      of every posterior (the baseline; the twenty-first session's) and from one of each image's
      top 5 classes (``Classifier(keep_top=5)``, what the command keeps since the twenty-second),
      with the bytes a row that each file takes;
  (c) the CSV of two networks' files fused (``fuse=``, as ``classify --model vgg16,vgg19`` writes
      it): of the same failures, and of failures that the networks disagree on (half of the
      second's are rows of the first), which the fusion reads without the files' paths whole.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from vggfeat.predictions import BLOCK_ROWS, posteriors_file_of, top_classes, write_predictions
from vggfeat.store import STRING


def make_posteriors(output: Path, images: int, classes: int = 1000, keep_top: int | None = None,
                    target: Path | None = None, failed_too: int | None = None, seed: int = 0) -> None:
    """A complete posteriors file for the CSV ``output`` (at ``target``, by default its own), as
    classify leaves it, of random rows: every posterior, or with ``keep_top`` each image's top
    classes (as ``Classifier`` keeps them). A failure every 1,000 images; with ``failed_too``,
    every 2,000th from that one is also a failure, not a row (another network's failures)."""
    rng = np.random.default_rng(seed)
    dim = classes if keep_top is None else 2 * keep_top
    rows = [f"val/{i:09d}.JPEG" for i in range(images) if failed_too is None or i % 2000 != failed_too]
    images = len(rows)
    failed = sorted([f"val/{i:09d}x.JPEG" for i in range(0, images, 1000)]
                    + [f"val/{i:09d}.JPEG" for i in range(failed_too or 0, images, 2000) if failed_too is not None])
    with h5py.File(target or posteriors_file_of(output), "w") as f:
        chunk_rows = min(max(256, 2**20 // (4 * dim)), max(1, images))  # no more rows a chunk than the file has
        features = f.create_dataset("features", (images, dim), dtype="float32", chunks=(chunk_rows, dim))
        for start in range(0, images, BLOCK_ROWS):
            block = rng.random((min(BLOCK_ROWS, images - start), classes), dtype=np.float32) ** 8
            block /= block.sum(axis=1, keepdims=True)
            if keep_top is not None:
                top = np.argsort(-block, axis=1, kind="stable")[:, :keep_top]
                block = np.concatenate([np.take_along_axis(block, top, axis=1), top.astype(np.float32)], axis=1)
            features[start : start + len(block)] = block
        f.create_dataset("paths", data=rows, dtype=STRING)
        f.create_dataset("labels", data=np.full(images, -1, dtype=np.int32))
        f.create_dataset("classes", data=[], dtype=STRING)
        f.create_dataset("sizes", data=np.zeros((images, 2), dtype=np.int32))
        f.create_dataset("failed/paths", data=failed, dtype=STRING)
        f.create_dataset("failed/errors", data=["truncated"] * len(failed), dtype=STRING)
        f.attrs.update(config="{}", complete=True, posteriors_of=output.name, dense=True, model=f"net{seed}")
        if keep_top is not None:
            f.attrs["keep_top"] = keep_top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    args = parser.parse_args()
    names = [f"class {i}" for i in range(1000)]
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "predictions.csv"
        make_posteriors(output, args.images)
        with h5py.File(posteriors_file_of(output), "r") as f:
            block = f["features"][:BLOCK_ROWS]
        ways = {
            "stable sort of each row (before)": lambda: np.stack([np.argsort(-row, kind="stable")[:5] for row in block]),
            "one stable sort of the block": lambda: np.argsort(-block, axis=1, kind="stable")[:, :5],
            "top_classes (partition, then the 5)": lambda: top_classes(block, 5),
        }
        expected = ways["stable sort of each row (before)"]()
        print(f"(a) the top 5 of {len(block):,} rows of 1,000 classes")
        for name, rank in ways.items():
            began = time.perf_counter()
            top = rank()
            seconds = time.perf_counter() - began
            same = "same classes" if np.array_equal(top, expected) else "DIFFERENT classes"
            print(f"    {name:<40} {len(block) / seconds:10,.0f} rows/s; {same}")
        labels = {f"val/{i:09d}.JPEG": i % 1000 for i in range(0, args.images, 2)}
        failures = len(range(0, args.images, 1000))  # one every 1,000 images from the first, as make_posteriors makes them
        print(f"(b) the CSV of {args.images:,} images (and {failures} failures)")
        csvs = []
        for keep_top, kind in ((None, "every posterior"), (5, "the top 5 classes")):
            for labelled in (None, labels):
                make_posteriors(output, args.images, keep_top=keep_top)  # write_predictions removes it
                kept = posteriors_file_of(output).stat().st_size
                began = time.perf_counter()
                result = write_predictions(output, names, 5, labelled, overwrite=True)
                seconds = time.perf_counter() - began
                csvs.append(output.read_bytes())
                print(f"    from {kind} ({kept / args.images:,.0f} bytes an image), {'with' if labelled else 'without'} a "
                      f"label list: {args.images / seconds:10,.0f} rows/s, {output.stat().st_size / args.images:.0f} bytes "
                      f"a CSV row ({result.classified:,} classified)")
        print(f"    the same CSVs from either file: {csvs[:2] == csvs[2:]}")
        print("(c) the CSV of two networks' files fused, without a label list")
        first, second = Path(folder) / "first.h5", Path(folder) / "second.h5"
        make_posteriors(output, args.images, target=first)
        for failed_too, kind in ((None, "the same failures"), (1000, "failures the networks disagree on")):
            make_posteriors(output, args.images, target=second, failed_too=failed_too, seed=1)
            began = time.perf_counter()
            result = write_predictions(output, names, 5, overwrite=True, posteriors=first, fuse=[second])
            seconds = time.perf_counter() - began
            print(f"    {kind}: {args.images / seconds:10,.0f} rows/s ({result.classified:,} classified, "
                  f"{result.failed:,} failed)")


if __name__ == "__main__":
    main()
