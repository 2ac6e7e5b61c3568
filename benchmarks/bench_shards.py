"""What starting a multi-device extraction costs before any image is read, at ten million images.

    python benchmarks/bench_shards.py --images 10000000 --devices 8

``extract --device cuda:0,...`` starts a process per device. Each is sent its images (pickled
through a pipe) and must check the collection's digest. Baseline in the same run: what was sent
before the seventeenth session, the whole image set to every process, each working out the
collection's digest again. Now: each process gets its block (``ImageSet.shard``), which carries
the collection's digest, worked out once. Measured here, in one process, on synthetic paths (no
files): bytes pickled per process, the seconds to pickle and unpickle them, the memory that the
unpickled set takes in the process (tracemalloc), and the digest's seconds.
"""

from __future__ import annotations

import argparse
import pickle
import time
import tracemalloc
from pathlib import Path

import numpy as np

from vggfeat.discover import ImageSet


def collection(images: int, classes: int) -> ImageSet:
    """ImageNet-like paths: ``class/n<number>_<number>.JPEG``."""
    labels = np.arange(images, dtype=np.int32) % classes
    paths = tuple(f"n{label:08d}/n{label:08d}_{i}.JPEG" for i, label in enumerate(labels.tolist()))
    order = sorted(range(images), key=paths.__getitem__)
    return ImageSet(Path("/data/images"), tuple(paths[i] for i in order), labels[order],
                    tuple(f"n{c:08d}" for c in range(classes)))


def sent(images: ImageSet) -> tuple[int, float, float, int]:
    """(bytes pickled, seconds to pickle them (the parent's, as it starts the process), seconds to
    unpickle them (the process's), bytes the unpickled set holds in memory)."""
    began = time.perf_counter()
    data = pickle.dumps(images)
    pickled = time.perf_counter()
    pickle.loads(data)
    unpickled = time.perf_counter()
    tracemalloc.start()  # again, traced: tracing slows allocation down
    received = pickle.loads(data)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del received
    return len(data), pickled - began, unpickled - pickled, held


def digest_seconds(images: ImageSet) -> float:
    fresh = ImageSet(images.root, images.paths, images.labels, images.classes)  # no digest worked out yet
    began = time.perf_counter()
    fresh.digest()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=8)
    args = parser.parse_args()
    whole = collection(args.images, args.classes)
    digest = digest_seconds(whole)
    before_bytes, before_pickling, before_unpickling, before_held = sent(whole)
    began = time.perf_counter()
    shards = [whole.shard(k, args.devices) for k in range(1, args.devices + 1)]
    sharding = time.perf_counter() - began  # the collection's digest, once, and the blocks
    now = [sent(shard) for shard in shards]
    now_bytes, now_pickling, now_unpickling, now_held = (max(values) for values in zip(*now))
    mib = 2**20
    print(f"{args.images:,} images, {args.classes} classes, {args.devices} devices; digest of the collection {digest:.2f} s")
    print(f"before: each process sent {before_bytes / mib:,.0f} MiB ({before_pickling:.2f} s to pickle in the parent, "
          f"{before_unpickling:.2f} s to unpickle), "
          f"holding {before_held / mib:,.0f} MiB, and working out the digest ({digest:.2f} s); "
          f"{args.devices * before_bytes / mib:,.0f} MiB through pipes in all")
    print(f"now:    each process sent {now_bytes / mib:,.0f} MiB at most ({now_pickling:.2f} s, {now_unpickling:.2f} s), "
          f"holding {now_held / mib:,.0f} MiB; "
          f"the blocks and the digest made once in {sharding:.2f} s; {sum(b for b, _, _, _ in now) / mib:,.0f} MiB in all")
    print(f"memory per process {before_held / now_held:.1f}x less, bytes sent {before_bytes / now_bytes:.1f}x less; "
          f"the parent pickles as it starts each process, one after another: {args.devices * before_pickling:.1f} s "
          f"for all before, {sum(p for _, p, _, _ in now):.1f} s now")


if __name__ == "__main__":
    main()
