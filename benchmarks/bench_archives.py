"""Images read from tar archives in place against the same images as loose files, in one run:
finding them (a walk of the folder; of the archives' headers, one archive after the other and 16
at a time, read by vggfeat's reader of plain headers against tarfile, the baseline) and reading
them alone (decoding, no network), in threads and in processes; and the same archives inside one
archive, as ImageNet's training set comes.

    python benchmarks/bench_archives.py --count 4096 --per-archive 1024 --workers 2

Makes ``--count`` photo-like 500x375 / 375x500 JPEGs in a folder and the same in archives of
``--per-archive`` each, then times, fastest of ``--repeat``: ``find_images`` on each folder, and
reading every image with each way of decoding. With the page cache warm, as in a second pass
over a collection: what archives cost on top of the files' own reading, not the disk's seeks.
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench_extract import jpeg_kilobytes, make_jpegs
from bench_reader import read_all
from vggfeat.archives import _plain_table, _tarfile_table
from vggfeat.decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
import vggfeat.discover
from vggfeat.discover import find_images
from vggfeat.reading import ImageReader


def fastest(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - began)
    return best


def pack(files: list[Path], folder: Path, per_archive: int) -> None:
    """``files`` into archives of ``per_archive`` each, in ``folder``."""
    folder.mkdir()
    for number, start in enumerate(range(0, len(files), per_archive)):
        with tarfile.open(folder / f"shard-{number:06d}.tar", "w") as tar:
            for file in files[start : start + per_archive]:
                tar.add(file, arcname=file.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=4096)
    parser.add_argument("--per-archive", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--decoder", default="torchvision")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        loose = Path(work) / "loose"
        loose.mkdir()
        files = make_jpegs(loose, args.count)
        pack(files, Path(work) / "packed", args.per_archive)
        with tarfile.open(Path(work) / "nested.tar", "w") as tar:  # the archives in an archive
            for archive in sorted((Path(work) / "packed").iterdir()):
                tar.add(archive, arcname=archive.name)
        print(f"{args.count} photo-like JPEGs ({jpeg_kilobytes(files):.0f} KB on average); archives of {args.per_archive}; "
              f"{args.workers} workers, decoder {args.decoder}; fastest of {args.repeat}")
        print("| step | loose files | in archives | archives' time / files' | in an archive of them | its time / files' |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: |")
        kinds = ("loose", "packed", "nested.tar")
        found = {name: find_images(Path(work) / name).files() for name in kinds}
        assert len(found["loose"]) == len(found["packed"]) == len(found["nested.tar"]) == args.count
        times = [fastest(lambda name=name: find_images(Path(work) / name), args.repeat) for name in kinds]
        print(f"| finding the images | {times[0]:.3f} s | {times[1]:.3f} s | {times[1] / times[0]:.2f} | "
              f"{times[2]:.3f} s | {times[2] / times[0]:.2f} |")
        # What reading archives' headers in threads (for a file server) would cost on this disk.
        remote, vggfeat.discover.REMOTE_MEMBER_SECONDS = vggfeat.discover.REMOTE_MEMBER_SECONDS, -1.0
        threaded = fastest(lambda: find_images(Path(work) / "packed"), args.repeat)
        vggfeat.discover.REMOTE_MEMBER_SECONDS = remote
        print(f"| finding, {vggfeat.discover.ARCHIVE_THREADS} archives at a time (threads, as for a file server) | | "
              f"{threaded:.3f} s | {threaded / times[0]:.2f} | | |")
        archives = [str(path) for path in sorted((Path(work) / "packed").iterdir())]
        for name, read in (("tarfile", _tarfile_table), ("vggfeat's plain headers", _plain_table)):
            seconds = fastest(lambda read=read: [read(archive) for archive in archives], args.repeat)
            print(f"| the archives' tables, by {name} | | {seconds / args.count * 1e6:.1f} us a member | | | |")
        for processes in (False, True):
            reader = ImageReader(torch.device("cpu"), args.decoder, args.workers, DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE,
                                 processes=processes)
            # Warm-up: the decoders' first use. Not the processes' start: each read starts its own, so
            # each time below includes it (about 0.15-0.3 s here), which weighs most at a small --count.
            read_all(reader, found["loose"][:64], 64)
            rates = [args.count / fastest(lambda name=name: read_all(reader, found[name], 256), args.repeat)
                     for name in kinds]
            print(f"| reading, {args.workers} decoding {'processes' if processes else 'threads'} | {rates[0]:,.0f} images/s | "
                  f"{rates[1]:,.0f} images/s | {rates[0] / rates[1]:.2f} | {rates[2]:,.0f} images/s | {rates[0] / rates[2]:.2f} |")


if __name__ == "__main__":
    main()
