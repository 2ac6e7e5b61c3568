"""Work in progress: an extraction's parts, the lock on its work folder, and how far it got.

An extraction into ``OUTPUT`` keeps its work in ``OUTPUT.parts/`` (:func:`~vggfeat.store.work_folder`):
a manifest of the images, the rows written so far, and one part file per range of images finished.
A part is written under a temporary name, flushed to disk and renamed, so it exists whole or not at
all, whatever kills the run; a run that resumes keeps the parts and describes the images that no
part holds. A run on several devices keeps one such folder per block in ``OUTPUT.shards/``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import numpy as np

from .errors import VggfeatError
from .files import file_attributes, file_version, open_h5, remove_dead_writers_files, replace_durably
from .store import STRING, UPDATE_MODES, block_rows, place_rows, shards_folder, work_folder

R = TypeVar("R")


_PART_NAME = re.compile(r"^part-(\d{12})-(\d{12})\.h5$")


# A block's file in a shards folder (multidevice), or the folder of its parts; the file the blocks
# are merged into; their temporary files.
SHARD_FILE = re.compile(r"^(?:shard-(\d+)|merged)-of-(\d+)\.h5(\.parts|\.tmp)?$")


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
    there and, where known, the ``chunks`` they lie in (:func:`~vggfeat.store.place_rows`)."""
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
        remove_manifest_last(folder)
    finally:
        lock.close()


def remove_manifest_last(folder: Path) -> None:
    """Remove a work folder (or a shards folder, its blocks' work folders within), each folder's
    manifest after everything else but its lock: a folder that a kill left half removed is still
    recognised as a run's (resumed, or discarded), not refused by every run as not vggfeat's."""
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name == "manifest.json"):
        if entry.is_dir(follow_symlinks=False):
            remove_manifest_last(Path(entry.path))
        elif entry.name != "lock":
            os.unlink(entry.path)
    shutil.rmtree(folder)


def remove_leftovers_of(output: Path) -> None:
    """Once an extraction has written ``output`` (or found it written): remove what killed writers
    left beside it, which nothing else would: their hidden temporary files (as large as the file:
    :func:`~vggfeat.files.remove_dead_writers_files`) and the staging files of its updates that
    are of another file than it (``OUTPUT.new-images.h5``: of the file it replaced)."""
    remove_dead_writers_files(output)
    for _, suffix, _ in UPDATE_MODES.values():
        staging = output.with_name(output.name + suffix)
        if staging.is_file() and not work_folder(staging).exists() and not shards_folder(staging).exists():
            attrs = file_attributes(staging)
            # (one of this very file, an update killed before its rewrite, is kept for the update)
            if attrs.get("update_of") == output.name and attrs.get("update_of_file") != file_version(output):
                staging.unlink()


def tidy_emptied_shards(output: Path) -> None:
    """Remove ``OUTPUT.shards/`` where it holds no block (emptied by a kill as a run on several
    devices removed it, its output whole): every run refused the output for it. Refused while a
    run holds its lock (one on several devices that has just begun)."""
    if shards_folder(output).is_dir() and _entries(shards_folder(output)) <= {"lock"}:  # (another's files: left alone)
        discard_work(shards_folder(output), output)


def check_no_extraction_into(output: Path) -> None:
    """Refuse to write ``output`` otherwise (``stack``, ``merge``) while an extraction (or an
    update) into it is running or was interrupted: it replaces the file as it ends."""
    for folder, work in ((work_folder(output), not holds_no_work(work_folder(output))),
                         (shards_folder(output), interrupted_on_several(output))):
        if work:
            raise extraction_under_way(folder, output)
        if folder.is_dir():  # a lock alone: refused while a run holds it
            lock_folder(folder, output)[0].close()


def lock_folder(folder: Path, output: Path) -> tuple[IO, str | None]:
    """(the open lock file of ``folder``, held while open; why it could not be locked, or None).
    A second run writing ``output`` meanwhile is refused; on a file system without locks (NFS
    without its lock daemon) the run goes on unlocked, and says why."""
    if folder.is_symlink():  # its files would be removed through the link, and the link left as a folder's name
        raise VggfeatError(f"{folder} is a link: vggfeat keeps a run's work for {output} in a folder of its own "
                           "there; remove the link")
    try:  # never through a link (it would truncate the file it names), nor truncated: what it holds is no matter
        lock = os.fdopen(os.open(folder / "lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644), "w")
    except FileNotFoundError:  # the folder removed by a run that finished since this one made or found it
        raise _finished_meanwhile(output) from None
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise VggfeatError(f"{folder}/lock is a link, where vggfeat locks a run on {output}: remove it") from None
    try:
        _lock_exclusively(lock)
    except BlockingIOError:
        lock.close()
        raise VggfeatError(f"another vggfeat run is writing {output} (lock held on {folder}/lock)") from None
    except OSError as error:
        return lock, error.strerror or str(error)
    try:  # a run that finished removes its folder, lock and all, before it lets go of the lock
        locked = os.path.samestat(os.fstat(lock.fileno()), os.stat(folder / "lock"))
    except FileNotFoundError:
        locked = False
    if not locked:  # what this run opened was that run's lock, gone with its folder
        lock.close()
        raise _finished_meanwhile(output)
    return lock, None


def lock_for_rewrite(output: Path, hint: str = "") -> tuple[IO, str | None]:
    """(the open lock of ``output``'s work folder, held while open; why it could not be locked, or
    None), for a rewrite of the finished ``output`` (an update): the lock that an extraction into it
    holds, taken before the rewrite reads the file and held until the file is replaced, so that no
    other run writes it meanwhile (two rewrites at once: the second's rows read by row numbers of
    a file the first replaced). The folder is made for the lock alone: one that holds an
    extraction's work (:func:`holds_no_work`), running or interrupted, is refused
    (:func:`extraction_under_way`, with ``hint``). :func:`unlock_rewrite` removes the folder."""
    folder = work_folder(output)
    if not holds_no_work(folder):
        raise extraction_under_way(folder, output, hint)
    folder.mkdir(exist_ok=True)
    lock, unlocked_because = lock_folder(folder, output)
    if not holds_no_work(folder):  # an extraction began between the look and the lock, where nothing locks
        lock.close()
        raise extraction_under_way(folder, output, hint)
    (folder / "manifest.json.tmp").unlink(missing_ok=True)  # a killed extraction's, never renamed, never used
    return lock, unlocked_because


@contextlib.contextmanager
def output_locked(output: Path) -> Iterator[str | None]:
    """``output``'s work folder locked while the block runs (made for the lock alone, and removed
    after: :func:`lock_for_rewrite`), so that no other vggfeat run writes ``output`` meanwhile;
    gives why it could not be locked, or None. For a command whose work goes through other files
    first (classify's posteriors, before its CSV)."""
    lock, unlocked_because = lock_for_rewrite(output)
    try:
        yield unlocked_because
    finally:
        unlock_rewrite(lock, output)


def written_unless_done(output: Path, already_done: Callable[[], R | None], write: Callable[[], R]) -> R:
    """What ``already_done()`` finds (the same command's output, there: nothing to lock, nor, on a
    read-only disk, a lock to make), or else ``write()``'s result, ``output`` locked from the check,
    made again, to the rename (:func:`output_locked`): another run into it meanwhile would replace
    it, or (an update) copy rows by the numbers of the file replaced. For ``merge`` and ``stack``."""
    if (done := already_done()) is not None:
        return done
    with output_locked(output):
        return already_done() or write()


def holds_no_work(folder: Path) -> bool:
    """Whether a work folder (or where it would be) holds no extraction's work: at most a run's
    lock (an update's, or an extraction's killed before it wrote its manifest) and that manifest's
    temporary file."""
    return _entries(folder) <= {"lock", "manifest.json.tmp"}


def extraction_under_way(folder: Path, output: Path, hint: str = "") -> VggfeatError:
    """The refusal to rewrite ``output`` while ``folder`` holds the work of an extraction into it."""
    return VggfeatError(f"{folder} exists: an extraction into {output} is running or was interrupted; run it to its "
                        f"end{hint} first")


def unlock_rewrite(lock: IO, output: Path) -> None:
    """Remove the work folder that :func:`lock_for_rewrite` made for ``lock``, then let go of it."""
    folder = work_folder(output)
    try:
        (folder / "lock").unlink()
        folder.rmdir()
    except OSError:  # Windows removes no open file; or no longer the lock alone, where nothing locks
        pass
    finally:
        lock.close()


def _finished_meanwhile(output: Path) -> VggfeatError:
    return VggfeatError(f"another vggfeat run finished writing {output} as this one began: run this command again")


def _entries(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


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
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
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
