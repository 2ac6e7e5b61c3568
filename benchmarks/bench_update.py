"""What ``extract --update`` (and ``--retry-failed``) costs besides describing images: finding which
images are new or gone, and writing the file anew, against copying the file, in one run.

    python benchmarks/bench_update.py --images 200000 [--dtype float16] [--gone 0.01] [--workdir DIR]

Writes a complete descriptor file of ``--images`` rows (random descriptors, 1 in 100 images failed,
made with a VGG16 of random weights as the extractor), then updates it for the same collection with
a share ``--gone`` of its images no longer found and none new, so that nothing is decoded; the
images are empty files, written before the run that "described" them began, so none has changed. Times:

  find:     OutputUpdate's construction: the file's paths matched against the image set's, and
            each held image's file looked at for its modification time (changed since it was read?).
  look:     that look alone (update.changed_files), against a plain loop of os.stat over the same
            files, in the same run (the files' metadata cached by then, for both).
  rewrite:  OutputUpdate.run: the rows kept written anew, a block at a time, flushed and renamed.
  copy:     the baseline, in the same run: the file copied and flushed, the least a rewrite costs.

Files go to --workdir (default: a temporary folder in the working directory), removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from vggfeat import Extractor
from vggfeat.discover import ImageSet
from vggfeat.job import config_json
from vggfeat.files import open_h5
from vggfeat.store import create_datasets, mark_complete
from vggfeat.update import OutputUpdate, _locate, changed_files

CLASSES = 10
BLOCK_ROWS = 8192


def collection(root: Path, count: int) -> ImageSet:
    """``count`` images in CLASSES folders, sorted by path as found."""
    per_class = -(-count // CLASSES)
    labels = np.arange(count) // per_class
    paths = tuple(f"class{label}/image_{i:08d}.jpg" for i, label in enumerate(labels))
    return ImageSet(root, paths, labels, tuple(f"class{k}" for k in range(CLASSES)))


def write_images(images: ImageSet) -> None:
    """Each of ``images`` as an empty file: what an update looks at."""
    for name in images.classes:
        (images.root / name).mkdir(parents=True)
    for path in images.files():
        path.touch()


def write_file(path: Path, images: ImageSet, extractor: Extractor, dtype: str) -> None:
    """A complete output file of ``images``, every hundredth failed, as the extractor would make it
    after the images were written."""
    failed = np.arange(len(images)) % 100 == 99
    rows = np.flatnonzero(~failed)
    generator = np.random.default_rng(0)
    began = time.time()
    with open_h5(path, "w") as out:
        features, paths, labels, sizes, read_after, failed_paths, failed_errors, _, failed_read_after = create_datasets(
            out, len(rows), int(failed.sum()), extractor.dim, dtype, images.classes)
        read_after[:], failed_read_after[:] = began, began
        for start in range(0, len(rows), BLOCK_ROWS):
            block = rows[start : start + BLOCK_ROWS]
            written = slice(start, start + len(block))
            features[written] = generator.standard_normal((len(block), extractor.dim), dtype=np.float32).astype(dtype)
            paths[written] = [images.paths[i] for i in block]
            labels[written] = images.labels[block]
            sizes[written] = np.full((len(block), 2), 375, dtype=np.int32)
        failed_paths[:] = [images.paths[i] for i in np.flatnonzero(failed)]
        failed_errors[:] = ["image file is truncated"] * int(failed.sum())
        mark_complete(out, {"config": config_json(extractor.config(), dtype),
                            "images_sha256": images.digest(), "images_found": len(images)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--gone", type=float, default=0.01, help="share of the images no longer found")
    parser.add_argument("--workdir", type=Path, default=Path.cwd())
    args = parser.parse_args()
    extractor = Extractor("vgg16", weights="random", device="cpu")
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench_update-") as folder:
        folder = Path(folder)
        images = collection(folder / "images", args.images)
        write_images(images)
        output = folder / "out.h5"
        write_file(output, images, extractor, args.dtype)
        size = output.stat().st_size

        began = time.perf_counter()
        with open(output, "rb") as source, open(folder / "copy.h5", "wb") as copy:
            shutil.copyfileobj(source, copy, 16 * 2**20)
            copy.flush()
            os.fsync(copy.fileno())
        copied = time.perf_counter() - began
        (folder / "copy.h5").unlink()

        kept = np.flatnonzero(np.random.default_rng(1).random(len(images)) >= args.gone)
        now = ImageSet(images.root, tuple(images.paths[i] for i in kept), images.labels[kept], images.classes)
        began = time.perf_counter()
        update = OutputUpdate(extractor, now, output, dtype=args.dtype)
        found = time.perf_counter() - began
        result = update.run()
        rewritten = result.seconds

        with h5py.File(output) as f:
            rows, read_after = _locate(now.paths, f["paths"])[0], f["read_after"][:]
        began = time.perf_counter()
        changed = changed_files(now, rows, read_after)
        looked = time.perf_counter() - began
        held = [now.file(i) for i in np.flatnonzero(rows >= 0)]
        began = time.perf_counter()
        for path in held:
            os.stat(path)
        stat_loop = time.perf_counter() - began

    print(f"{args.images:,} images ({size / 2**30:.2f} GiB, {extractor.dim}-d {args.dtype}), {result.dropped:,} gone, "
          f"{result.described} new; {result.rows:,} rows and {result.failed:,} failures kept")
    print(f"find (paths matched, files looked at): {found:7.2f} s  ({found / args.images * 1e6:.2f} us an image)")
    print(f"look ({len(held):,} files, {len(changed)} changed): {looked:7.2f} s  ({looked / len(held) * 1e6:.2f} us a file); "
          f"plain os.stat loop (baseline): {stat_loop:.2f} s ({stat_loop / len(held) * 1e6:.2f} us a file)")
    print(f"rewrite:               {rewritten:7.2f} s  ({size / 2**20 / rewritten:.0f} MiB/s of the old file)")
    print(f"copy (baseline):       {copied:7.2f} s  ({size / 2**20 / copied:.0f} MiB/s); rewrite / copy = {rewritten / copied:.2f}")


if __name__ == "__main__":
    main()
