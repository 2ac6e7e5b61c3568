"""The end of an extraction: the time from its last described image to a complete output file.

    python benchmarks/bench_store.py --images 40000 --dim 4096 --part-images 4096 [--dtype float16]

Runs both ways in one process, on the same parts (random descriptors, 1 in 100 images failed):

  assembled: the output written from all the parts after the last one (vggfeat before the tenth
             session): the whole copy comes after the last image.
  streamed:  each part appended to the output as it is committed, on the writing thread, as an
             extraction now does: only cutting the datasets, closing the file and flushing what
             the kernel has not yet written of it are left after the last image.

Both tails end with the file flushed to disk and renamed into place, as an extraction's does.

It prints each way's tail, and the writing thread's seconds per part both ways (part alone, part +
append): a GPU run keeps up as long as that is under the time it takes to describe a part (4,096
images at 5,000 images/s: 0.82 s). Files go to --workdir (default: a temporary folder beside this
script's working directory), which the disk's speed matters for, and are removed afterwards.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from vggfeat.discover import ImageSet
from vggfeat.store import OutputFile, list_parts, replace_durably, write_part


def collection(folder: Path, count: int) -> ImageSet:
    paths = tuple(f"class{i % 10}/image_{i:08d}.jpg" for i in range(count))
    return ImageSet(folder, paths, np.arange(count) % 10, tuple(f"class{k}" for k in range(10)))


def part_contents(start: int, end: int, block: np.ndarray) -> tuple:
    failed = [i for i in range(start, end) if i % 100 == 99]
    indices = [i for i in range(start, end) if i % 100 != 99]
    sizes = np.tile(np.array([[375, 500]], dtype=np.int32), (len(indices), 1))
    return block[: len(indices)], indices, sizes, [(i, "not an image: cannot identify image file") for i in failed]


def run(folder: Path, images: ImageSet, dim: int, dtype: str, part_images: int) -> dict[str, float]:
    block = np.random.default_rng(0).random((part_images, dim), dtype=np.float32).astype(dtype)
    ranges = [(start, min(start + part_images, len(images))) for start in range(0, len(images), part_images)]
    assembled, streamed = folder / "assembled", folder / "streamed"
    assembled.mkdir(), streamed.mkdir()
    seconds = {"part": 0.0, "part + append": 0.0}

    for start, end in ranges:
        began = time.perf_counter()
        write_part(assembled, start, end, *part_contents(start, end, block))
        seconds["part"] += time.perf_counter() - began
    began = time.perf_counter()
    output = OutputFile(assembled / "output.h5.tmp", images, dim, dtype)
    output.extend(list_parts(assembled))
    output.finish({"complete_by": "assembly"})
    replace_durably(output.path, assembled / "out.h5")
    seconds["assembled tail"] = time.perf_counter() - began

    output = OutputFile(streamed / "output.h5.tmp", images, dim, dtype)
    for start, end in ranges:
        began = time.perf_counter()
        contents = part_contents(start, end, block)
        write_part(streamed, start, end, *contents)
        output.append(start, end, *contents)
        seconds["part + append"] += time.perf_counter() - began
    began = time.perf_counter()
    output.finish({"complete_by": "streaming"})
    replace_durably(output.path, streamed / "out.h5")
    seconds["streamed tail"] = time.perf_counter() - began
    seconds["part"] /= len(ranges)
    seconds["part + append"] /= len(ranges)
    return seconds


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
        seconds = run(folder, collection(folder, args.images), args.dim, args.dtype, args.part_images)
    finally:
        shutil.rmtree(folder)
    print(f"{args.images:,} images, {args.dim}-d {args.dtype}, parts of {args.part_images:,}")
    print(f"  after the last image: assembled {seconds['assembled tail']:.3f} s, "
          f"streamed {seconds['streamed tail']:.3f} s ({seconds['assembled tail'] / seconds['streamed tail']:.0f}x less)")
    print(f"  writing thread per part: part {seconds['part']:.3f} s, part + append {seconds['part + append']:.3f} s")


if __name__ == "__main__":
    main()
