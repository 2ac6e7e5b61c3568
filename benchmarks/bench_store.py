"""The writing of an extraction's output: disk taken, the writing thread's time per part, and the
time from the last described image to a complete output file.

    python benchmarks/bench_store.py --images 40000 --dim 4096 --part-images 4096 [--dtype float16]

Runs the three ways in one process, on the same parts (random descriptors, 1 in 100 images failed):

  copies: each part holds its descriptors, and its rows are also written into the output as it is
          committed (vggfeat before the twentieth session): two copies of every row on disk
          until the parts are removed.
  once:   each part's rows are written into the output, flushed, and the part records only where
          they are (vggfeat now): one copy.
  buffered: as once, the output opened with HDF5's sieve buffer and chunk cache, as vggfeat
          opened it before the twenty-eighth session (it now writes without them, so that a
          full disk fails the write that meets it: vggfeat.files.open_h5).

Each tail ends with the file completed, flushed to disk and renamed into place, as an
extraction's does. It prints the disk each way takes just before its tail (blocks in use, not
the files' apparent sizes), the writing thread's seconds per part (a GPU run keeps up as long as
that is under the time it takes to describe a part: 4,096 images at 5,000 images/s, 0.82 s) and
each tail. Files go to --workdir (default: a temporary folder in the working directory), which
the disk's speed matters for, and are removed afterwards.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

import vggfeat.output
from vggfeat.discover import ImageSet
from vggfeat.output import OutputFile
from vggfeat.files import open_h5, replace_durably
from vggfeat.parts import write_part


def collection(folder: Path, count: int) -> ImageSet:
    paths = tuple(f"class{i % 10}/image_{i:08d}.jpg" for i in range(count))
    return ImageSet(folder, paths, np.arange(count) % 10, tuple(f"class{k}" for k in range(10)))


def part_contents(start: int, end: int, block: np.ndarray) -> tuple:
    failed = [i for i in range(start, end) if i % 100 == 99]
    indices = [i for i in range(start, end) if i % 100 != 99]
    sizes = np.tile(np.array([[375, 500]], dtype=np.int32), (len(indices), 1))
    return block[: len(indices)], indices, sizes, [(i, "not an image: cannot identify image file") for i in failed]


def run(folder: Path, images: ImageSet, dim: int, dtype: str, part_images: int) -> dict[str, dict[str, float]]:
    block = np.random.default_rng(0).random((part_images, dim), dtype=np.float32).astype(dtype)
    ranges = [(start, min(start + part_images, len(images))) for start in range(0, len(images), part_images)]
    figures = {}
    for way in ("copies", "once", "buffered"):
        work = folder / way
        work.mkdir()
        # HDF5's buffers: h5py's defaults, which vggfeat.files.open_h5 turns off for the files it writes.
        vggfeat.output.open_h5 = open_h5 if way != "buffered" else lambda path, mode="r": h5py.File(path, mode, locking=False)
        output, parts, began = OutputFile(work / "rows.h5", images, dim, dtype), [], time.perf_counter()
        for start, end in ranges:
            features, indices, sizes, failures = part_contents(start, end, block)
            first_row = output.append(start, end, features)
            if way == "copies":
                parts.append(write_part(work, start, end, features, indices, sizes, failures))
            else:
                parts.append(write_part(work, start, end, None, indices, sizes, failures, first_row,
                                        output.chunks_of(first_row, len(indices))))
        per_part = (time.perf_counter() - began) / len(ranges)
        disk = sum(path.stat().st_blocks * 512 for path in work.iterdir())
        began = time.perf_counter()
        output.finish(parts, {"written": way}, read_after=math.nan)  # (when the files were read: not known here)
        replace_durably(output.path, work / "out.h5")
        figures[way] = {"disk": disk, "per part": per_part, "tail": time.perf_counter() - began,
                        "output": (work / "out.h5").stat().st_blocks * 512}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40_000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--part-images", type=int, default=4096)
    parser.add_argument("--workdir", type=Path, default=Path("."))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_store-", dir=args.workdir))
    try:
        figures = run(folder, collection(folder, args.images), args.dim, args.dtype, args.part_images)
    finally:
        shutil.rmtree(folder)
    print(f"{args.images:,} images, {args.dim}-d {args.dtype}, parts of {args.part_images:,}")
    for way, figure in figures.items():
        print(f"  {way:8}: disk before the tail {figure['disk'] / 2**20:,.1f} MiB ({figure['disk'] / figure['output']:.2f}x the output), "
              f"writing thread {figure['per part']:.3f} s per part, tail {figure['tail']:.3f} s")


if __name__ == "__main__":
    main()
