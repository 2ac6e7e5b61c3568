"""Finding the images before any work: a folder tree, and a list file, in one run.

    python benchmarks/bench_discover.py --classes 300 --per-class 1000

Makes ``--classes`` folders of ``--per-class`` empty ``.jpg`` files (discovery reads names only)
and a list file naming them all as ``path,label``, then times :func:`find_images` on the folder
and :func:`read_file_list` on the list, best of ``--passes``. Baseline in the same run: the list
read as vggfeat read it before the seventh session, with a look at each file (a stat per line, to
tell a comma in a file name from a label's) and path arithmetic by pathlib; on a network file
system each look is a round trip. Seconds for ten million files are extrapolated linearly.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vggfeat.discover import ImageSet, _labelled, find_images, read_file_list


def make_tree(root: Path, classes: int, per_class: int) -> Path:
    lines = []
    for c in range(classes):
        folder = root / "images" / f"class{c:04d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            (folder / f"img{i:07d}.jpg").touch()
            lines.append(f"class{c:04d}/img{i:07d}.jpg,class{c:04d}")
    listing = root / "images" / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def previous_reading(listing: Path) -> ImageSet:
    """The baseline: the list as the previous read_file_list read it (then labelled the same way)."""
    root, class_of = listing.parent, {}
    for line in listing.read_text().splitlines():
        line = line.strip()
        label = None
        if "," in line and not (root / line).exists():  # the look at each file
            line, label = line.rsplit(",", 1)
        path = Path(line)
        class_of[(path.relative_to(root.absolute()) if path.is_absolute() else path).as_posix()] = label
    return _labelled(root, class_of)


def best_seconds(run: Callable[[], object], passes: int) -> float:
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=300)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    files = args.classes * args.per_class
    with tempfile.TemporaryDirectory() as folder:
        listing = make_tree(Path(folder), args.classes, args.per_class)
        results = {
            "find_images (folder tree)": best_seconds(lambda: find_images(listing.parent), args.passes),
            "read_file_list (list file)": best_seconds(lambda: read_file_list(listing), args.passes),
            "baseline: the previous list reading": best_seconds(lambda: previous_reading(listing), args.passes),
        }
    print(f"{files:,} files in {args.classes} folders, best of {args.passes} passes (file system cache warm)")
    for name, seconds in results.items():
        print(f"  {name:38s} {seconds:7.2f} s   {seconds / files * 1e6:6.2f} us a file   "
              f"~{seconds / files * 1e7:5.0f} s for 10 million")


if __name__ == "__main__":
    main()
