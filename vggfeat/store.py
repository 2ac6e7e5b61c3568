"""Store: descriptors go to one HDF5 file with a fixed schema, recorded in crash-safe parts as they go.

The output file (read it with plain h5py)::

    /features        float32 or float16 [N, D], chunked by rows
    /paths           UTF-8 [N], relative to the input root, sorted
    /labels          int32 [N], index into /classes, -1 where the image has no class
    /classes         UTF-8 [C]
    /sizes           int32 [N, 2], decoded (height, width), EXIF orientation applied (the full size, drafted or not)
    /read_after      float64 [N], Unix time (s) that each row's file was read after: when the run that
                     described it began; NaN where not known (files written before it was added).
                     ``extract --update`` describes again the images whose file changed since.
    /failed/paths    UTF-8 [F], files that could not be used
    /failed/errors   UTF-8 [F], why
    /failed/labels   int32 [F], as /labels (files written before it was added lack it: read it
                     with :func:`failed_labels`)
    /failed/read_after  float64 [F], as /read_after
    attributes       format_version, versions, model, weights, weights_sha256, layer, pooling,
                     scales, aggregate, flip, preprocessing, precision, dtype, created, complete,
                     regions and region_images (rows that are regions, of how many images),
                     archive_classes (the archives in the images' folder were classes),
                     and "config": all of the extraction configuration as JSON; a shard
                     (``extract --shard``) adds shard_index, shard_count, collection_images
                     and collection_sha256; a merged file merged_from, merge_command and shards
                     (how each shard was made: its command, date, versions, device, retry); an
                     updated file (``extract --update``) updated, update_command and updated_with,
                     a retried one failures_retried, retry_command and failures_retried_with.

A part records the results of a contiguous range of images (which images were described, where
their rows are in the output being written, their sizes, the failures); it is written under a
temporary name, flushed to disk and renamed, so a part either exists whole or not at all, whatever
kills the run. The rows it records are on disk before it is (:class:`vggfeat.output.OutputFile`).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import secrets
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import h5py
import numpy as np

from .textfiles import as_utf8
from .errors import VggfeatError
from .regions import FRAGMENT, RegionCount, count_regions

FORMAT_VERSION = 1
# The "format" attribute of vggfeat's other files, by which 'vggfeat info' tells them apart.
INDEX_FORMAT = "vggfeat-index"
WHITENING_FORMAT = "vggfeat-whitening"
SVM_MODEL_FORMAT = "vggfeat-linear-svm"
SCORES_FORMAT = "vggfeat-scores"
# The kinds of vggfeat's files (:func:`kind_key`): each of the formats above, and the two that
# extraction writes, which have none.
DESCRIPTORS, POSTERIORS = "descriptors", "posteriors"
KINDS = {SVM_MODEL_FORMAT: "an SVM model (made by 'vggfeat train-svm')", INDEX_FORMAT: "an index (made by 'vggfeat index')",
         WHITENING_FORMAT: "a whitening (made by 'vggfeat whiten fit')",
         SCORES_FORMAT: "a scores file (made by 'vggfeat predict')",
         POSTERIORS: "a posteriors file (made by 'vggfeat classify')",
         DESCRIPTORS: "a descriptor file (made by 'vggfeat extract')"}
STRING = h5py.string_dtype("utf-8")  # of every text dataset
_PART_NAME = re.compile(r"^part-(\d{12})-(\d{12})\.h5$")
# A block's file in a shards folder (multidevice), or the folder of its parts; the file the blocks
# are merged into; their temporary files.
SHARD_FILE = re.compile(r"^(?:shard-(\d+)|merged)-of-(\d+)\.h5(\.parts|\.tmp)?$")
# The datasets of the schema above that every finished extraction holds; /failed/labels is not
# among them, as files written before it was added lack it.
SCHEMA_DATASETS = ("features", "paths", "labels", "classes", "sizes", "failed/paths", "failed/errors")
_CHUNK_BYTES = 2**20  # rows per HDF5 chunk: about 1 MiB, good for reading rows in order or in slices


@dataclass(frozen=True)
class Part:
    start: int
    end: int
    path: Path


def write_part(
    folder: Path,
    start: int,
    end: int,
    features: np.ndarray | None,
    indices: Sequence[int] | np.ndarray,
    sizes: Sequence[tuple[int, int]] | np.ndarray,
    failures: Sequence[tuple[int, str]],
    first_row: int | None = None,
    chunks: tuple[int, np.ndarray] | None = None,
) -> Part:
    """Atomically write the results of images ``[start, end)`` (global ``indices``): their
    ``features``, or, where those are in the output's rows already, the ``first_row`` of them
    there and, where known, the ``chunks`` they lie in (:func:`place_rows`)."""
    final = folder / f"part-{start:012d}-{end:012d}.h5"
    temporary = final.with_name(final.name + ".tmp")
    with open_h5(temporary, "w") as part:
        if features is None:
            place_rows(part, first_row, len(indices), chunks)
        else:
            part["features"] = features
        part["indices"] = np.asarray(indices, dtype=np.int64)
        part["sizes"] = np.asarray(sizes, dtype=np.int32).reshape(-1, 2)
        part["failed_indices"] = np.asarray([i for i, _ in failures], dtype=np.int64)
        part.create_dataset("failed_errors", data=[reason for _, reason in failures], dtype=STRING)
    replace_durably(temporary, final)
    return Part(start, end, final)


# What an update describes: the images the file does not hold, or those it lists as failed; the
# option that asks for it, where its work goes, and the attribute that dates it.
UPDATE_MODES = {
    "new": ("--update", ".new-images.h5", "updated"),
    "failed": ("--retry-failed", ".retried-images.h5", "failures_retried"),
}


def work_folder(output: Path) -> Path:
    """Where an extraction into ``output`` keeps its work (manifest and parts) until it is done."""
    return output.with_name(output.name + ".parts")


def shards_folder(output: Path) -> Path:
    """Where an extraction on several devices into ``output`` keeps its shards until they are merged."""
    return output.with_name(output.name + ".shards")


def posteriors_file_of(output: str | os.PathLike, model: str | None = None) -> Path:
    """Where the posteriors of a CSV ``output`` are kept until it is written: ``OUTPUT.posteriors.h5``
    (and, while they are described, its work folder ``OUTPUT.posteriors.h5.parts``); those of
    ``model``, one of several networks fused, in ``OUTPUT.<model>.posteriors.h5``."""
    output = Path(output)
    return output.with_name(f"{output.name}{'.' + model if model else ''}.posteriors.h5")


def interrupted_on_one(output: Path) -> bool:
    """Whether ``OUTPUT.parts/`` holds a run on one device (ExtractionJob) that was interrupted."""
    return (work_folder(output) / "manifest.json").is_file()


def interrupted_on_several(output: Path) -> bool:
    """Whether ``OUTPUT.shards/`` holds a run on several devices (MultiDeviceJob) that was interrupted."""
    try:
        return any(SHARD_FILE.match(entry) for entry in os.listdir(shards_folder(output)))
    except FileNotFoundError:
        return False


def shards_progress(output: Path) -> tuple[int, int, int] | None:
    """(blocks finished, blocks, images that their files and parts hold) of the run on several
    devices into ``output`` that is running or was interrupted; None where there is none."""
    try:
        names = [name for name in os.listdir(shards_folder(output)) if SHARD_FILE.match(name)]
    except FileNotFoundError:
        return None
    if not names:
        return None
    blocks = max(int(SHARD_FILE.match(name)[2]) for name in names)
    files = [shards_folder(output) / f"shard-{k}-of-{blocks}.h5" for k in range(1, blocks + 1)]
    held = [images_in_block(path) for path in files]
    return sum(1 for path, images in zip(files, held) if path.exists() and images), blocks, sum(held)


def images_in_block(path: Path) -> int:
    """Images that a block's file (finished) or its parts (interrupted) hold."""
    if path.exists():
        try:
            with open_h5(path) as f:
                return block_rows(f) + f["failed/paths"].shape[0] if f.attrs.get("complete") else 0
        except (OSError, KeyError):
            return 0
    progress = work_progress(path)
    return progress[0] if progress else 0


def discard_work(folder: Path, output: Path) -> None:
    """Remove an interrupted run's work folder (``--overwrite``); refused while a run holds its lock."""
    lock, _ = lock_folder(folder, output)
    try:
        shutil.rmtree(folder)
    finally:
        lock.close()


def lock_folder(folder: Path, output: Path) -> tuple[IO, str | None]:
    """(the open lock file of ``folder``, held while open; why it could not be locked, or None).
    A second run writing ``output`` meanwhile is refused; on a file system without locks (NFS
    without its lock daemon) the run goes on unlocked, and says why."""
    lock = open(folder / "lock", "w")
    try:
        _lock_exclusively(lock)
    except BlockingIOError:
        lock.close()
        raise VggfeatError(f"another vggfeat run is writing {output} (lock held on {folder}/lock)") from None
    except OSError as error:
        return lock, error.strerror or str(error)
    return lock, None


def _lock_exclusively(file: IO) -> None:
    """Lock ``file`` for this process, or raise BlockingIOError if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: a lock on the file's first byte instead (untested there)
        import msvcrt

        try:
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        except PermissionError:  # what a byte another process holds gives
            raise BlockingIOError from None
        return
    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)


def work_progress(output: Path) -> tuple[int, int] | None:
    """(images its finished parts hold, images in all) of the extraction into ``output`` that is
    running or was interrupted; None where there is none, or its manifest is not written yet."""
    work = work_folder(output)
    try:
        total = int(json.loads((work / "manifest.json").read_text())["images"]["count"])
        return images_held(list_parts(work)), total
    except (OSError, ValueError, KeyError, TypeError):
        return None


def images_held(parts: Sequence[Part]) -> int:
    """Images that ``parts`` hold, described or failed."""
    return sum(part.end - part.start for part in parts)


def list_parts(folder: Path) -> list[Part]:
    """The finished parts in ``folder``, by start."""
    parts = []
    for entry in folder.iterdir():
        match = _PART_NAME.match(entry.name)
        if match:
            parts.append(Part(int(match[1]), int(match[2]), entry))
    return sorted(parts, key=lambda part: part.start)


def rows_and_failures(path: Path) -> tuple[int, int]:
    """The rows and the failures of the complete descriptor file ``path``."""
    with open_features_file(path, "output") as f:
        return f["features"].shape[0], f["failed/paths"].shape[0]


def block_rows(f: h5py.File) -> int:
    """The rows of a descriptor file: of its /features, or those it placed in a merged file."""
    return int(f.attrs["rows"]) if "first_row" in f.attrs else f["features"].shape[0]


PLACED_ATTRS = ("first_row", "rows", "chunk_rows")  # the attributes place_rows records


def place_rows(f: h5py.File, first_row: int, rows: int, chunks: tuple[int, np.ndarray] | None) -> None:
    """Record in ``f`` (a part, or a block's file) that its ``rows`` rows are in an
    :class:`~vggfeat.output.OutputFile` from ``first_row``; and, where known, ``chunks``: (rows per
    HDF5 chunk, the byte offset in that file of each chunk they lie in, from the first)."""
    f.attrs.update(first_row=first_row, rows=rows)
    if chunks is not None:
        f.attrs["chunk_rows"] = chunks[0]
        f.create_dataset("chunk_offsets", data=np.asarray(chunks[1], dtype=np.int64))


def chunk_rows(rows: int, dim: int, dtype: str) -> int:
    """Rows of ``dim`` values of ``dtype`` per HDF5 chunk of a file of ``rows`` rows."""
    return max(1, min(max(rows, 1), _CHUNK_BYTES // (dim * np.dtype(dtype).itemsize)))


def rows_datasets(out: h5py.File, rows: int, classes: Sequence[str]) -> tuple[h5py.Dataset, ...]:
    """The schema's datasets of one value per row, and /classes, in ``out``: (paths, labels, sizes,
    read_after)."""
    out.create_dataset("classes", data=list(classes), dtype=STRING)
    return (
        out.create_dataset("paths", shape=(rows,), dtype=STRING, maxshape=(None,)),
        out.create_dataset("labels", shape=(rows,), dtype=np.int32, maxshape=(None,)),
        out.create_dataset("sizes", shape=(rows, 2), dtype=np.int32, maxshape=(None, 2)),
        out.create_dataset("read_after", shape=(rows,), dtype=np.float64, maxshape=(None,), fillvalue=np.nan),
    )


def read_after(f: h5py.File, start: int = 0, stop: int | None = None, failed: bool = False) -> np.ndarray:
    """/read_after of rows ``start:stop`` of ``f`` (``failed``: /failed/read_after of its failures):
    NaN (not known) for a file written before it was added."""
    name = "failed/read_after" if failed else "read_after"
    if name in f:
        return f[name][start:stop]
    return np.full(len(range(*slice(start, stop).indices(f["failed/paths" if failed else "paths"].shape[0]))), np.nan)


def create_datasets(out: h5py.File, rows: int, failed: int, dim: int, dtype: str, classes: Sequence[str]) -> tuple[h5py.Dataset, ...]:
    """The schema's datasets in ``out``, sized: (features, paths, labels, sizes, read_after, failed
    paths, failed errors, failed labels, failed read_after)."""
    # Resizable (maxshape), so that a file can be cut to fewer rows; that also lets a chunk be
    # larger than the data, which HDF5 otherwise refuses (rows == 0).
    features = out.create_dataset("features", shape=(rows, dim), dtype=dtype, chunks=(chunk_rows(rows, dim, dtype), dim),
                                  maxshape=(None, dim))
    return (
        features,
        *rows_datasets(out, rows, classes),
        *failed_datasets(out, failed),
    )


def failed_datasets(out: h5py.File, failed: int) -> tuple[h5py.Dataset, ...]:
    """/failed's datasets in ``out``, sized: (paths, errors, labels, read_after)."""
    return (
        out.create_dataset("failed/paths", shape=(failed,), dtype=STRING, maxshape=(None,)),
        out.create_dataset("failed/errors", shape=(failed,), dtype=STRING, maxshape=(None,)),
        out.create_dataset("failed/labels", shape=(failed,), dtype=np.int32, maxshape=(None,)),
        out.create_dataset("failed/read_after", shape=(failed,), dtype=np.float64, maxshape=(None,), fillvalue=np.nan),
    )


def failed_labels(f: h5py.File) -> np.ndarray:
    """The labels of the images that ``f`` lists as failed (-1: none); -1 for each in a file written
    before /failed/labels was added."""
    if "failed/labels" in f:
        return f["failed/labels"][:].astype(np.int64)
    return np.full(f["failed/paths"].shape[0], -1, dtype=np.int64)


def mark_complete(out: h5py.File, attrs: dict) -> None:
    """Write the attributes, ``complete`` last: readers refuse a file without it. Text is written
    as valid UTF-8 (a folder or command line may name files in other bytes). How many rows are
    regions, of how many images, is counted here, once, for ``info`` (which would otherwise read
    every path: seconds for ten million rows)."""
    regions = count_regions_in(out["paths"])
    attrs = {**attrs, "regions": regions.regions, "region_images": regions.images}
    for key, value in attrs.items():
        out.attrs[key] = as_utf8(value) if isinstance(value, str) else value
    out.attrs["format_version"] = FORMAT_VERSION
    out.attrs["complete"] = True


def count_regions_in(paths: h5py.Dataset, step: int = 2**18) -> RegionCount:
    """How many of ``paths`` (a file's /paths) name regions, and of how many images, read a block
    at a time."""
    def blocks_with_regions() -> Iterator[str]:
        for start in range(0, paths.shape[0], step):
            block = paths[start : start + step].tolist()
            if FRAGMENT.encode() in b"\n".join(block):  # most files hold none: one pass in C says so
                yield from (path.decode("utf-8", "surrogateescape") for path in block)
    return count_regions(blocks_with_regions())


# Names of the formats that a user may mean instead of HDF5: an HDF5 output named so is a slip (an
# HDF5 file called out.csv, or model.pkl), refused before the work.
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
OTHER_FORMATS = (".csv", ".tsv", ".txt", ".json", ".npy", ".npz", ".parquet", ".pkl", ".pt", ".pth", ".jpg", ".jpeg", ".png")


def check_output_path(path: Path, kind: str = "an .h5 file") -> None:
    """Refuse an output path that names a folder, or whose folder does not exist."""
    if path.is_dir():
        raise VggfeatError(f"output {path} is a folder; name {kind}")
    if not path.parent.is_dir():
        raise VggfeatError(f"folder of the output does not exist: {path.parent}")


def check_descriptor_output(path: Path) -> None:
    """:func:`check_output_path` for a descriptor file (HDF5), refusing too a name of another format."""
    check_output_path(path)
    _check_hdf5_name(path, "descriptor files", " ('vggfeat export' then writes NumPy or Parquet files)")


def _check_hdf5_name(path: Path, what: str, hint: str = "") -> None:
    if path.suffix.lower() in OTHER_FORMATS:
        raise VggfeatError(f"output {path} names a {path.suffix} file, but {what} are HDF5: name it "
                           f"{path.with_suffix('.h5').name}{hint}")


def check_new_file(path: Path, overwrite: bool, hdf5: str | None = None,
                   inputs: Sequence[str | os.PathLike | None] = ()) -> None:
    """Refuse, before any work, an output file that names a folder, whose folder does not exist, or
    that exists, unless ``overwrite``: no command replaces a file unasked; nor, ever, one of the
    command's ``inputs`` (a slip of the keyboard: ``predict model.h5 test.h5 test.h5``). ``hdf5``:
    what the file is ("SVM models"), an HDF5 file, which a name of another format must not pass for.
    The refusal says what an existing file is where it is a vggfeat file: the commands that check
    their outputs here write none (CSVs, JSON); those that write one refuse it with
    :func:`already_exists`, naming the kind they make."""
    check_output_path(path, "a file")
    if hdf5:
        _check_hdf5_name(path, hdf5)
    if path.exists() and any(given is not None and os.path.exists(given) and os.path.samefile(path, given)
                             for given in inputs):
        raise VggfeatError(f"{path} is an input of this command too: name another output (--overwrite replaces "
                           "outputs, never inputs)")
    if path.exists() and not overwrite:
        raise VggfeatError(already_exists(path))


def already_exists(path: Path, makes: str | None = None) -> str:
    """The refusal of an existing output ``path``, saying what it is where it is a vggfeat file of
    another kind than the command ``makes``: a slip (``train-svm d.h5 e.h5``, meaning to fuse
    them) that --overwrite would turn into hours of work lost."""
    return f"{path} already exists{existing_kind(path, makes)}; pass --overwrite to replace it"


def existing_kind(path: Path, makes: str | None = None) -> str:
    """:func:`kind_of` the file ``path`` where it is of another kind than ``makes``; "" otherwise,
    or where it cannot be read."""
    try:
        with open_h5(path) as f:
            kind = kind_key(f)
    except (OSError, RuntimeError, TypeError, ValueError, KeyError):
        return ""
    return f": it is {KINDS[kind]}" if kind is not None and kind != makes else ""


def kind_key(group: h5py.Group) -> str | None:
    """Which of :data:`KINDS` ``group`` (an open file) is; None for a file that is none of vggfeat's."""
    kind = plain_value(group.attrs.get("format"))
    if isinstance(kind, str) and kind in KINDS:
        return kind
    if "features" in group and "config" in group.attrs:
        return POSTERIORS if "dense" in group.attrs else DESCRIPTORS
    return None


def kind_of(group: h5py.Group) -> str:
    """``": it is ..."``, what vggfeat file ``group`` (an open file) is, for the error of a command
    given the wrong one (arguments swapped, say); "" for a file that is none of vggfeat's."""
    kind = kind_key(group)
    return f": it is {KINDS[kind]}" if kind is not None else ""


def open_features_file(path: Path, what: str = "features", hint: str = "",
                       required: Sequence[str] = SCHEMA_DATASETS) -> h5py.File:
    """``path`` opened read-only, once it is known to be a complete vggfeat descriptor file holding
    the ``required`` datasets; otherwise a one-line error (see :func:`open_hdf5`)."""
    f = open_hdf5(path, what, hint)
    try:
        missing = [name for name in required if name not in f]
        has_config = "config" in f.attrs
        if has_config:  # which every reader takes as JSON
            json.loads(f.attrs["config"])
    except (OSError, RuntimeError, ValueError, TypeError) as error:  # HDF5's own structures damaged (a bad disk, a flipped bit), or its JSON
        f.close()
        if isinstance(error, OSError) and system_error(error) is not None:  # the system's refusal (an I/O error): as it is
            raise
        raise VggfeatError(f"{path} is a damaged HDF5 file ({refusal_reason(error)})") from None
    if missing or not has_config:
        problem = "is not a vggfeat features file" + (kind_of(f) or f" (no {', '.join(missing) or 'config attribute'})")
    elif not f.attrs.get("complete", False):
        problem = ("is incomplete (complete=False): finish its extraction (the same command resumes it) first"
                   if work_folder(path).is_dir() else  # vggfeat renames its files into place once they are whole
                   "is incomplete (complete=False) and no run is under way into it: written so by other code than "
                   "vggfeat's, or damaged; extract it again (--overwrite)")
    else:
        return f
    f.close()
    raise VggfeatError(f"{path} {problem}")


def open_h5(path: str | os.PathLike, mode: str = "r") -> h5py.File:
    """``h5py.File(path, mode)``, also on file systems without locks (NFS without its lock daemon,
    some Lustre and GPFS mounts), where HDF5's own lock fails every open ("unable to lock file").

    vggfeat writes only new files under temporary names, and a run's own files in its work folder,
    which its lock keeps (:func:`lock_folder`): no other process opens them, and they take no
    HDF5 lock. A file that is read takes HDF5's shared lock where the file system has locks.

    A file opened to write ("w" or "r+") has neither sieve buffer nor chunk cache: each write of a
    dataset goes to the file at once, and one that fails (a full disk) raises there, leaving no data
    unwritten in HDF5's buffers. HDF5 cannot close a file whose buffers it could not flush, and
    crashes the process as it exits (h5py issue 914). vggfeat writes rows in blocks, which the
    buffers would not speed up (``benchmarks/bench_store.py``).
    """
    if mode in ("w", "r+"):
        if _held_open(path):  # HDF5 would share that file's state, which may be that of a failed write
            raise VggfeatError(f"{path} is open in this process already: close it first. HDF5 cannot close a file it "
                               "failed to write (a full disk, say): a run stopped so resumes in a new process")
        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)  # h5py.File's default
        fapl.set_file_locking(False, True)
        fapl.set_sieve_buf_size(0)
        cache = list(fapl.get_cache())
        fapl.set_cache(*cache[:2], 0, cache[3])  # no bytes of chunk cache
        name = os.fsencode(path)
        if mode == "w":
            fid = h5py.h5f.create(name, h5py.h5f.ACC_TRUNC, fapl=fapl)
        else:
            fid = h5py.h5f.open(name, h5py.h5f.ACC_RDWR, fapl=fapl)
        return h5py.File(fid, locking=False)
    if mode != "r":
        raise ValueError(f"mode {mode!r}: vggfeat opens files with 'r', 'r+' or 'w'")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        if "unable to lock file" not in str(error):
            raise
    return h5py.File(path, "r", locking=False)


def _held_open(path: str | os.PathLike) -> bool:
    """Whether this process holds the HDF5 file ``path`` open."""
    if not os.path.exists(path):
        return False
    held = (h5py.h5f.get_name(file) for file in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE))
    return any(os.path.exists(name) and os.path.samefile(name, path) for name in held)


# How HDF5 names the system call that failed under its error (h5py raises it as a RuntimeError or
# an OSError without errno): "... filename = 'x.h5', ..., errno = 28, error message = 'No space ...'",
# or without the file's name.
_FAILED_CALL = re.compile(r"filename = '(?P<file>[^']*)'.*?errno = (?P<errno>\d+),", re.DOTALL)
_FAILED_CALL_UNNAMED = re.compile(r"errno = (?P<errno>\d+),")


def system_error(error: Exception, file: str | os.PathLike | None = None) -> OSError | None:
    """The system's refusal behind ``error`` (a full disk, an I/O error) as an OSError that says
    it in one line, ``[Errno 28] No space left on device: 'x.h5'`` (``file``, where HDF5 does not
    name it); None where ``error`` is no such refusal (a bug, say)."""
    failed = _FAILED_CALL.search(str(error)) or _FAILED_CALL_UNNAMED.search(str(error))
    if isinstance(error, (OSError, RuntimeError)) and failed is not None and failed["errno"] != "0":
        number = int(failed["errno"])
        named = failed.groupdict().get("file") or (None if file is None else str(file))
        return OSError(number, os.strerror(number), named)
    return error if isinstance(error, OSError) and error.errno is not None else None


@contextlib.contextmanager
def as_system_errors(file: str | os.PathLike | None = None) -> Iterator[None]:
    """Raise the system's refusal behind an HDF5 error (:func:`system_error`) as that OSError."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        refusal = system_error(error, file)
        if refusal is None or refusal is error:
            raise
        raise refusal from error


def open_hdf5_files() -> set[int]:
    """The identifiers of the HDF5 files that this process holds open."""
    return {file.id for file in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)}


def exit_if_hdf5_files_open(but: set[int], code: int) -> None:
    """As a process ends on a system's refusal (a full disk): where it holds an HDF5 file open, ``but``
    those (:func:`open_hdf5_files`), end it at once, with exit code ``code`` and without the exit's
    clean-up. Such a file is one that HDF5 failed to close, having failed to write it; HDF5 crashes
    the process as it exits, or as the file is touched again (h5py issue 914). Whatever a run
    finished is on disk already."""
    if any(file.id not in but for file in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def file_attributes(path: Path) -> dict:
    """The attributes of the HDF5 file ``path``; {} if it cannot be read as one (damaged too: h5py
    raises TypeError for an attribute whose type is damaged, "Unknown string encoding")."""
    try:
        with open_h5(path) as f:
            return dict(f.attrs)
    except (OSError, RuntimeError, TypeError, ValueError):
        return {}


def open_hdf5(path: Path, what: str, hint: str = "") -> h5py.File:
    """``path`` opened read-only, or a one-line error: ``{what} file not found`` (plus ``hint``) or
    not an HDF5 file."""
    if not path.is_file():
        raise VggfeatError(f"{what} file not found: {path}{hint}")
    try:
        return open_h5(path)
    except OSError as error:
        if error.errno is not None:  # the system's refusal (permissions, I/O), not the file's content
            raise
        with open(path, "rb") as file:
            damaged = file.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE  # HDF5's start, HDF5 cannot read the rest
        raise VggfeatError(f"{path} is a damaged HDF5 file (cut short, or still being written or copied?)" if damaged
                           else f"{path} is not an HDF5 file") from None


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first bytes of an HDF5 file (without a user block)


@contextlib.contextmanager
def reading_hdf5(path: Path, what: str, remedy: str = "") -> Iterator[h5py.File]:
    """:func:`open_hdf5`'s file for the block, closed after it. Within it, what HDF5, JSON or a part
    gone refuse (KeyError, ValueError, TypeError, RuntimeError, an OSError that is not the system's:
    a flipped bit, a bad copy) ends in one line naming the file, "is a damaged {what} file
    (...){remedy}", not in a traceback."""
    with open_hdf5(path, what) as f:
        try:
            yield f
        except (KeyError, ValueError, TypeError, RuntimeError, OSError) as error:
            if isinstance(error, OSError) and system_error(error) is not None:  # the system's refusal: an I/O error
                raise
            raise VggfeatError(f"{path} is a damaged {what} file ({refusal_reason(error)}){remedy}") from None


def read_damage(error: BaseException | None, f: h5py.File) -> VggfeatError | None:
    """Where ``error`` is HDF5's failure to read an object of the open file ``f`` (a flipped bit, a
    bad copy: :func:`failed_read`), the one-line error that names the file and the object; else
    None. Said while ``f`` is open: HDF5's own words name neither."""
    unread = failed_read(error, f)
    if unread is None:
        return None
    return VggfeatError(f"{f.filename} is damaged: HDF5 cannot read its {unread} ({refusal_reason(error)}); a bad copy or "
                        "disk?")


def failed_read(error: BaseException | None, f: h5py.File) -> str | None:
    """The name of the object of the open file ``f`` (a dataset read, or one opened by name) that
    ``error`` is HDF5's failure to read (not the system's refusal, :func:`system_error`); else None."""
    if not isinstance(error, (OSError, RuntimeError, KeyError)) or system_error(error) is not None:
        return None
    name, frame = None, error.__traceback__
    while frame is not None:  # to the innermost object that was reading
        local = frame.tb_frame.f_locals
        owner, opened = local.get("self"), local.get("name")
        with contextlib.suppress(Exception):  # one HDF5 cannot name: no name to give
            if isinstance(owner, h5py.Dataset) and owner.file == f:
                name = owner.name
            elif isinstance(owner, h5py.Group) and isinstance(opened, str) and owner.file == f:
                name = posixpath.join(owner.name, opened)
        frame = frame.tb_next
    return name


def refusal_reason(error: Exception) -> str:
    """``error``'s message on one line, at most 300 characters (a KeyError's not quoted)."""
    reason = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    return " ".join(reason.split())[:300]


def write_json(path: Path, data: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
    replace_durably(temporary, path)


@contextlib.contextmanager
def written_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """A new temporary file beside ``path`` for the block to write; renamed over ``path`` only when
    the block completes. ``path`` then holds the old file or the whole new one, never a part, and
    the temporary name is one no other file had."""
    path = Path(path)
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:  # created here, so no one else's; with the umask's permissions, as the final file gets
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield temporary
        replace_durably(temporary, path)
    except (OSError, RuntimeError) as error:
        refusal = system_error(error)
        if refusal is None or refusal.filename not in (None, str(temporary)):
            raise
        raise OSError(refusal.errno, refusal.strerror, str(path)) from error  # the file as the user named it
    finally:
        temporary.unlink(missing_ok=True)


def write_text_file(path: str | os.PathLike, text: str) -> None:
    """``text`` into ``path`` as UTF-8, whole or not at all (see :func:`written_atomically`)."""
    with written_atomically(path) as temporary:
        temporary.write_text(text, encoding="utf-8", newline="")  # as given: a CSV's \r\n stays one


def replace_durably(source: Path, destination: Path) -> None:
    """Rename ``source`` over ``destination`` after its bytes are on disk, then record the rename."""
    with open(source, "rb") as f:
        os.fsync(f.fileno())
    os.replace(source, destination)
    directory = os.open(destination.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def plain_value(value: object) -> object:
    """An HDF5 attribute's value as JSON holds it: str, a list, or a Python number."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
