"""Find images: a folder tree or a list file becomes an :class:`ImageSet` in a fixed, sorted order.

A folder's first-level subfolders are its classes (the ImageFolder convention that Caltech-101/256
and most labelled collections follow); images directly in the root have label -1. A tar archive's
images are found as a folder's, ``shard.tar/a.jpg`` (:mod:`vggfeat.archives`), and take the
class of the folder the archive lies in, or their WebDataset sample's (its ``.cls`` file's text).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .archives import ARCHIVE_EXTENSION, file_exists, is_archive, members
from .errors import VggfeatError, not_a_file
from .regions import Regions, image_of, region_of, region_path, split_list_entry, split_region
from .textfiles import as_utf8, csv_cells, not_utf8, text_lines

# .heic/.heif need the pillow-heif plugin (decode.heif_plugin); without it each such image is
# recorded as failed, saying so, rather than left out unseen.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".avif", ".jp2", ".heic", ".heif")
NO_LABEL = -1
# Files of a list looked for before a run (check_listed_files): a round trip each on a network file system.
LISTED_FILES_LOOKED_FOR = 16
# Archives whose headers are read at once where reading the first one's took longer than this a
# member (10 us on a local disk, parsed in Python: there threads would only take turns at the GIL).
ARCHIVE_THREADS, REMOTE_MEMBER_SECONDS = 16, 100e-6
STDIN = Path("-")  # --file-list -: the list is read from standard input


class ImageFiles(Sequence[Path]):
    """The file of each of ``paths`` under ``root``, made when indexed: a list of a collection's
    Path objects would take about 330 MiB per million files; slices are views of the same kind."""

    def __init__(self, root: Path, paths: tuple[str, ...], file_names: Mapping[str, str]) -> None:
        self.root, self.paths, self.file_names = root, paths, file_names

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ImageFiles(self.root, self.paths[index], self.file_names)
        return self.root / file_name(self.paths[index], self.file_names)

    def regions(self) -> Regions:
        """The region of its image that each path names (None: the whole image; see :mod:`vggfeat.regions`)."""
        return Regions(self.paths)


@dataclass(frozen=True)
class ShardOf:
    """Which block of which collection an image set is (:meth:`ImageSet.shard`): what a shard's
    descriptor file records so that ``vggfeat merge`` can check that its shards are all of one."""

    index: int
    count: int
    collection_images: int
    collection_sha256: str


@dataclass(frozen=True)
class ImageSet:
    """Image files under ``root``, each once, with their labels, sorted by path.

    ``paths`` are relative to ``root`` with ``/`` separators (absolute for list entries outside
    ``root``); ``labels[i]`` indexes ``classes`` or is -1. Paths and classes are valid UTF-8, as
    HDF5 files, CSV files and terminals need: the bytes of a file name that are not (a name
    written in another encoding, such as Latin-1) appear as ``\\xNN``; ``file_names`` maps such
    a path to the name that opens the file. ``shard_of`` is set on a block of a collection;
    ``archive_classes`` where the archives directly in ``root`` gave classes (:func:`find_images`).
    """

    root: Path
    paths: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    file_names: Mapping[str, str] = field(default_factory=dict)
    shard_of: ShardOf | None = None
    archive_classes: bool = False

    def __post_init__(self) -> None:
        # A set built from a caller's own list: a path twice would be described twice into one
        # file, which 'vggfeat index' and an update (matching rows by path) then refuse. A walk
        # finds each file once, and a file list merges a line repeated (read_file_list).
        check_paths_given_once(self.paths, "positions")

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, index: int) -> Path:
        return self.files()[index]

    def files(self) -> ImageFiles:
        """The images' files, made one at a time as they are used (see :class:`ImageFiles`); a
        region's is its image's file."""
        return ImageFiles(self.root, self.paths, self.file_names)

    @functools.cached_property
    def has_regions(self) -> bool:
        """Whether some path names a region of an image (:mod:`vggfeat.regions`)."""
        return any(region_of(path) is not None for path in self.paths)

    def shard(self, index: int, count: int) -> ImageSet:
        """The ``index``-th (1-based) of ``count`` contiguous blocks of this set, as equal as can be.

        The blocks cover every image exactly once and keep the set's classes, so descriptor files of
        all shards merge into the file one run would write (``vggfeat merge``). A block holds only
        its own images and what it needs to know of the whole (:class:`ShardOf`): what a process
        that describes it is sent, whatever the collection's size. A block of a shard is a block of
        that shard: its :class:`ShardOf` names the shard as its collection (a machine's shard cut
        into blocks for its devices, which :class:`vggfeat.multidevice.MultiDeviceJob` merges back).
        """
        if not 1 <= index <= count:
            raise VggfeatError(f"shard {index}/{count}: shards are numbered 1 to {count}")
        start, end = len(self) * (index - 1) // count, len(self) * index // count
        paths = self.paths[start:end]
        file_names = {path: self.file_names[path] for path in paths if path in self.file_names} if self.file_names else {}
        return ImageSet(self.root, paths, self.labels[start:end], self.classes, file_names,
                        ShardOf(index, count, len(self), self.digest()), self.archive_classes)

    def digest(self) -> str:
        """SHA-256 of the ordered paths and labels: a resumed run must see the same set. Worked
        out once (a second or so per ten million images)."""
        if "_digest" not in self.__dict__:
            hasher = hashlib.sha256()
            for path, label in zip(self.paths, self.labels.tolist()):
                hasher.update(f"{path}\t{self.classes[label] if label >= 0 else ''}\n".encode())
            object.__setattr__(self, "_digest", hasher.hexdigest())  # frozen: the set does not change
        return self.__dict__["_digest"]


def file_name(path: str, file_names: Mapping[str, str]) -> str:
    """The name under the root of the file of ``path`` (of an :class:`ImageSet` with ``file_names``):
    for a region, its image's file."""
    return image_of(file_names.get(path, path))


def check_folder(root: str | Path) -> Path:
    """``root``, once it is known to be a folder (or a tar archive, a folder of its images):
    refused at once, before anything that takes longer."""
    root = Path(root)
    if not root.exists():
        raise VggfeatError(f"input folder not found: {root}")
    if not root.is_dir() and not (root.is_file() and is_archive(root.name)):
        raise VggfeatError(f"input is not a folder, nor a tar archive: {root} (use --file-list for a list of files)")
    return root


def check_file_list(list_file: str | Path) -> Path:
    """``list_file``, once it is known to be a file (or "-", standard input, once it is known not to
    be a terminal): refused at once, before anything that takes longer."""
    list_file = Path(list_file)
    if list_file == STDIN and sys.stdin.isatty():  # it would wait for lines typed in
        raise VggfeatError("--file-list - reads the list from standard input, here a terminal: pipe the list in "
                           "(find images -name '*.jpg' | vggfeat extract --file-list - out.h5)")
    if list_file != STDIN and not list_file.is_file():
        raise VggfeatError(not_a_file(list_file, "file list"))
    return list_file


def find_images(root: str | Path, progress: Callable[[int], object] | None = None, archive_classes: bool = False
                ) -> ImageSet:
    """Every image file under ``root``, recursively; extensions are matched case-insensitively.
    ``progress(n)`` is called with the number of images found in each folder (and archive), as it is walked.

    Tar archives (``.tar``) are looked into: each image in one is ``archive.tar/member``, labelled
    by the folder the archive lies in; ``root`` may be an archive, then the folder of its images
    (``member``, labelled by their first-level folder in it). Archives inside archives are looked
    into too (ImageNet's training set is an archive of an archive per class). With
    ``archive_classes``, the archives directly in ``root`` are classes too, named after their
    files (``n01440764.tar``: ``n01440764``), rather than files that have none. An image of a
    WebDataset shard whose sample has a class (``x.cls`` beside ``x.jpg``, holding ``281``) takes
    that class instead. Hidden files and folders (names
    starting with ``.``, such as macOS ``._`` resource forks) are skipped. Links to folders are
    followed, as torchvision's ImageFolder does (collections are often a folder of links to where
    the images lie), except a link back into a folder it is in. A folder that cannot be listed is
    an error, not a silent gap in the set.
    """
    root = check_folder(root)
    if root.is_file():  # an archive
        in_root, top_archives = _archive_images("", str(root), progress)
        found = list(in_root)
        sample_classes = {path: label for path, label in in_root.items() if label is not None}
    else:
        found, top_archives, sample_classes = _walk(root, progress)
    if not found:
        raise VggfeatError(
            f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case, in all subfolders)"
        )
    # A first-level folder is a class; an archive there is a file, whose images have none but
    # their samples' own (or with archive_classes, its name's).
    def folder_class(first: str) -> str | None:
        if first not in top_archives:
            return first
        return first[: -len(ARCHIVE_EXTENSION)] if archive_classes else None

    class_of = {path: sample_classes.get(path) or (folder_class(path.split("/", 1)[0]) if "/" in path else None)
                for path in found}
    return _labelled(root, class_of, archive_classes)


def _walk(root: Path, progress: Callable[[int], object] | None) -> tuple[list[str], set[str], dict[str, str]]:
    """The images under the folder ``root`` (see :func:`find_images`), the archives directly in
    it, and the classes of the images in archives whose samples give theirs."""
    found: list[str] = []
    archives: list[tuple[str, str]] = []
    top_archives: set[str] = set()
    unlisted: list[OSError] = []
    # Each folder still to walk: its real path, and the real folders it lies in (itself included),
    # to tell a loop of links.
    real_root = os.path.realpath(root)
    within = {str(root): (real_root, {real_root})}
    for folder, subfolders, filenames in os.walk(root, onerror=unlisted.append, followlinks=True):
        real_folder, chain = within.pop(folder)
        kept = []
        for name in subfolders:
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            real = os.path.realpath(path) if os.path.islink(path) else os.path.join(real_folder, name)
            if real not in chain:  # else a loop
                within[path] = real, chain | {real}
                kept.append(name)
        subfolders[:] = kept
        relative = Path(folder).relative_to(root)
        before = len(found)
        for name in filenames:
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append((relative / name).as_posix())
            elif is_archive(name):  # its images, as if the archive were a folder (but for their label)
                archives.append(((relative / name).as_posix(), os.path.join(folder, name)))
                if relative == Path("."):
                    top_archives.add(name)
        if progress is not None:
            progress(len(found) - before)
    if unlisted:
        names = "; ".join(f"{error.filename}: {error.strerror or error}" for error in unlisted[:3])
        more = f" (and {len(unlisted) - 3} more)" if len(unlisted) > 3 else ""
        raise VggfeatError(f"cannot list {len(unlisted)} folder(s) under {root}: {names}{more}; fix their "
                           "permissions, or name the images to describe with --file-list")
    in_archives, sample_classes = _images_in_archives(archives, progress)
    return found + in_archives, top_archives, sample_classes


def _images_in_archives(archives: list[tuple[str, str]], progress: Callable[[int], object] | None
                        ) -> tuple[list[str], dict[str, str]]:
    """The images in each of ``archives`` (its name under the root, its path), counted as each is
    read: its headers take a while; and the classes their samples give. Read ARCHIVE_THREADS at a
    time where the first one's took over REMOTE_MEMBER_SECONDS a member: a file server's round
    trips, which threads overlap."""
    def images_in(archive: tuple[str, str]) -> dict[str, str | None]:
        return _archive_images(*archive)[0]

    if not archives:
        return [], {}
    began = time.perf_counter()
    first = images_in(archives[0])
    remote = (time.perf_counter() - began) / max(1, len(first)) > REMOTE_MEMBER_SECONDS
    found: list[str] = []
    sample_classes: dict[str, str] = {}
    with ThreadPoolExecutor(ARCHIVE_THREADS) if remote else contextlib.nullcontext() as pool:
        rest = pool.map(images_in, archives[1:]) if remote else map(images_in, archives[1:])
        for images in itertools.chain([first], rest):
            found += images
            sample_classes.update((path, label) for path, label in images.items() if label is not None)
            if progress is not None:
                progress(len(images))
    return found, sample_classes


def _archive_images(name: str, path: str, progress: Callable[[int], object] | None = None
                    ) -> tuple[dict[str, str | None], set[str]]:
    """The images in the archive ``path`` (``name`` under the root; "" for the root), with their
    samples' classes, and those of the archives inside it, each counted by ``progress`` as read;
    and the names of the archives directly in it."""
    found: dict[str, str | None] = {}
    inside: set[str] = set()
    images = 0
    for member, label in members(path).items():
        shown = f"{name}/{member}" if name else member
        if _is_image(member):
            found[shown] = label
            images += 1
        elif is_archive(member) and not _is_hidden(member):
            found.update(_archive_images(shown, f"{path}/{member}", progress)[0])
            if "/" not in member:
                inside.add(member)
    if progress is not None:
        progress(images)
    return found, inside


def _is_image(member: str) -> bool:
    """Whether a member of an archive is an image that a walk finds: not hidden, nor in a hidden folder."""
    return member.lower().endswith(IMAGE_EXTENSIONS) and not _is_hidden(member)


def _is_hidden(member: str) -> bool:
    return any(part.startswith(".") for part in member.split("/"))


def read_file_list(list_file: str | Path, root: str | Path | None = None) -> ImageSet:
    """Images named in a text file, one per line: ``path`` or ``path,label``; a path may name a
    region of its image, ``path#xywh=X,Y,W,H`` (:mod:`vggfeat.regions`).

    ``list_file`` "-" is standard input (``find images -name '*.jpg' | vggfeat extract --file-list -
    out.h5``). Relative paths are taken from ``root`` (default: the list file's folder; the working
    folder for standard input). Blank lines and lines starting with ``#`` are skipped (list a file
    named ``#1.jpg`` as ``./#1.jpg``), and a first line ``path,label`` (a CSV's header). A line that
    ends with an image extension is a path, commas and quotes and all (a file name may hold them);
    any other that begins with a quote is read as CSV (``"a, b.jpg",cat``); any other is split at
    its last comma. Spaces around a path are left out, unless the file is named with those it
    begins with (' a.jpg'). Rows are sorted by path, as for a folder. Nothing is read from the disk
    but the list (and a look for each line that begins with a space): a list of ten million files
    on a network file system would otherwise cost ten million round trips before any work.
    """
    list_file = check_file_list(list_file)
    root = Path(root) if root is not None else list_folder(list_file)
    inside = root.absolute().as_posix().rstrip("/") + "/"  # absolute paths under root are kept relative to it
    class_of: dict[str, str | None] = {}
    # Bytes that are not UTF-8 are kept (as os.walk keeps them): they may be a file's name.
    listed = sys.stdin.buffer.read() if list_file == STDIN else list_file.read_bytes()
    lines = text_lines(listed.decode("utf-8-sig", errors="surrogateescape"))
    for number, written in enumerate(lines, start=1):
        line = written.strip()
        if not line or line.startswith("#"):
            continue
        if "\0" in line:  # h5py cannot store it, nor can a file system name a file with it
            raise VggfeatError(f"{list_name(list_file)}:{number}: a NUL byte, which no path holds: a list names one "
                               "file a line (find -print, not -print0)")
        # A line that ends with an image extension is a path as it is, quotes too ('"a".jpg').
        quoted = line.startswith('"') and not line.lower().endswith(IMAGE_EXTENSIONS)
        if not class_of and _is_header(line):
            continue  # a CSV's header (a list written by csv.writer, or saved from a spreadsheet)
        path, label = _quoted_entry(line, list_file, number) if quoted else _split_entry(line)
        try:
            path, region = split_region(path)
        except ValueError as error:
            raise VggfeatError(f"{list_name(list_file)}:{number}: {error}") from None
        leading = written[: len(written) - len(written.lstrip())]
        if leading and not quoted and file_exists(root / (leading + path)):
            path = leading + path  # a file named so (' a.jpg'), as a folder's walk names it
        path = Path(path).as_posix()
        if path.startswith(inside):
            path = path[len(inside) :]
        if region is not None:  # written one way ("pixel:" left out), so that it is one path however listed
            path = region_path(path, region)
        if path in class_of and class_of[path] != label:
            raise VggfeatError(f"{list_name(list_file)}:{number}: {as_utf8(path)} is listed twice with different labels")
        class_of[path] = label
    if not class_of:
        raise VggfeatError(f"file list is empty: {list_name(list_file)}")
    return _labelled(root, class_of)


def list_name(list_file: str | Path) -> str:
    """``list_file`` as messages name it: its path, or "standard input" for "-"."""
    return "standard input" if Path(list_file) == STDIN else str(list_file)


def list_folder(list_file: str | Path) -> Path:
    """The folder that the relative paths of ``list_file`` are taken from by default: its own, or
    the working folder for standard input ("-")."""
    return Path(".") if Path(list_file) == STDIN else Path(list_file).parent


def check_listed_files(images: ImageSet, list_file: str | Path, looked_for: int = LISTED_FILES_LOOKED_FOR) -> None:
    """Refuse a list none of whose files is there, by ``looked_for`` of them spread over it.

    A list of paths relative to another folder than its root (the list's folder unless given), or
    of a storage that is not mounted, would otherwise have every image recorded as failed, hours
    later for millions of files; a list of which some files are missing is described as usual,
    each missing file recorded as failed.
    """
    count = len(images.paths)
    sampled = range(count) if count <= looked_for else sorted({k * (count - 1) // (looked_for - 1) for k in range(looked_for)})
    if any(file_exists(images.file(k)) for k in sampled):
        return
    example = as_utf8(os.path.abspath(images.file(sampled[0])))
    which = f"each of its {count:,}" if len(sampled) == count else f"{len(sampled)} of its {count:,}, spread over it"
    relative = any(not os.path.isabs(images.paths[k]) for k in sampled)
    default = "the working folder" if Path(list_file) == STDIN else "the list's folder"
    whose = "--root" if Path(images.root) != list_folder(list_file) else f"{default}; --root names another"
    where = (f"its relative paths are taken from {os.path.abspath(images.root)} ({whose}): is that the folder they "
             "are relative to, and is its storage mounted?" if relative else "is their storage mounted?")
    raise VggfeatError(f"none of the files of {list_name(list_file)} is there (looked for {which}, e.g. {example}); {where}")


def _is_header(line: str) -> bool:
    """Whether ``line`` is ``path,label`` (or ``path``), quoted or not: a CSV's header."""
    return [cell.strip().lower() for cell in csv_cells(line) or []] in (["path"], ["path", "label"])


def _quoted_entry(line: str, list_file: str | Path, number: int) -> tuple[str, str | None]:
    """``"path",label`` or ``"path","label"``: a line as csv.writer writes a path that holds a comma
    or a quote, unquoted as csv reads it."""
    cells = csv_cells(line)
    if cells is None or len(cells) not in (1, 2) or not cells[0]:
        raise VggfeatError(f"{list_name(list_file)}:{number}: expected '\"path\"' or '\"path\",label', got "
                           f"{as_utf8(line)!r}")
    return cells[0], (cells[1].strip() or None) if len(cells) == 2 else None


def _split_entry(line: str) -> tuple[str, str | None]:
    region = split_list_entry(line)
    if region is not None:
        return region
    if "," not in line or line.lower().endswith(IMAGE_EXTENSIONS):
        return line, None
    path, label = line.rsplit(",", 1)
    return path.strip(), label.strip() or None


def _labelled(root: Path, class_of: dict[str, str | None], archive_classes: bool = False) -> ImageSet:
    """The set of ``class_of``'s files (named as the file system names them) and their classes."""
    file_names = {}
    for path, name in [(p, n) for p, n in class_of.items() if not_utf8(p) or (n is not None and not_utf8(n))]:
        shown = as_utf8(path)
        if shown != path:
            if shown in class_of:
                raise VggfeatError(f"two files are named {shown}: one in other bytes than UTF-8, one with that "
                                   "text; rename one")
            file_names[shown] = path
            del class_of[path]
        class_of[shown] = None if name is None else as_utf8(name)
    classes = sorted({name for name in class_of.values() if name is not None})
    index = {name: i for i, name in enumerate(classes)}
    paths = sorted(class_of)
    labels = np.array([index.get(class_of[path], NO_LABEL) for path in paths], dtype=np.int32)
    return ImageSet(root=root, paths=tuple(paths), labels=labels, classes=tuple(classes), file_names=file_names,
                    archive_classes=archive_classes)


def repeated_path(paths: Sequence[str]) -> tuple[int, int] | None:
    """The first row of ``paths`` whose path an earlier row holds, as (earlier row, row); None
    where each is there once. Compared by their hashes first: a set of 10 million paths took 5 s
    and 380 MB, their hashes sorted 1 s and 160 MB."""
    hashes = np.fromiter(map(hash, paths), dtype=np.int64, count=len(paths))
    ordered = np.sort(hashes)
    shared = ordered[1:][ordered[1:] == ordered[:-1]]
    first_row: dict[str, int] = {}
    for row in np.flatnonzero(np.isin(hashes, shared)).tolist():  # (rows of one hash: the same path, or a collision)
        earlier = first_row.setdefault(paths[row], row)
        if earlier != row:
            return earlier, row
    return None


def check_paths_given_once(paths: Sequence[str], counted: str) -> None:
    """Refuse ``paths`` that a caller gave (an :class:`ImageSet`'s, an index's rows) where one is
    there twice, naming the first such path and its two places, ``counted`` ("rows")."""
    repeated = repeated_path(paths)
    if repeated is not None:
        earlier, later = repeated
        raise VggfeatError(f"each path must be given once (a region of an image is a path of its own, "
                           f"image.jpg#xywh=X,Y,W,H), got {as_utf8(str(paths[later]))} twice ({counted} {earlier} "
                           f"and {later})")
