"""Update: a finished extraction's file rewritten with some images described (again), the rest
copied: those it does not hold yet, and those whose file changed since it was read (``--update``:
a collection grew, lost files, and some were edited or replaced), or those it lists as failed
(``--retry-failed``: the storage was away for a while, files were repaired since).

Describing a whole collection again would cost hours or days. The file is checked to be one that
the same options made. The images to describe go through an ordinary
:class:`~vggfeat.job.ExtractionJob` (on several devices, a :class:`~vggfeat.multidevice.MultiDeviceJob`)
into a staging file beside it (``OUTPUT.new-images.h5``, ``OUTPUT.retried-images.h5``), where a
killed update resumes. Then the file is written anew, a block of rows at a time: its rows and the
new ones in path order, without those of images no longer found, every label as the image set
gives it now. It replaces the old file only once it is whole.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from .archives import modified
from .classifier import Classifier
from .discover import ImageSet, file_name
from .errors import VggfeatError, check_choice
from .extractor import Extractor
from .features import finite_blocks
from .job import ExtractionJob, config_changes, disk_per_row, holds_job, made_from_folder
from .multidevice import MultiDeviceJob
from .files import file_attributes, file_version, open_h5, written_atomically
from .posteriorsfile import CLASSIFY_AGAIN, check_rows as check_posteriors
from .parts import (discard_work, extraction_under_way, holds_no_work, interrupted_on_one, interrupted_on_several,
                    lock_folder, lock_for_rewrite, tidy_emptied_shards, unlock_rewrite)
from .store import (UPDATE_MODES, create_datasets, mark_complete, open_features_file, read_after, rows_and_failures,
                    shards_folder, work_folder)

# What made the rows an update adds, recorded as "updated_with" (or "failures_retried_with").
MADE_WITH = ("vggfeat_version", "torch_version", "torchvision_version", "h5py_version", "device", "decoder_library")
BLOCK_BYTES = 64 * 2**20  # of descriptors written at a time
PATH_BLOCK = 2**16  # paths read from a file at a time
# Files looked at for their modification times per task, and tasks at once where a look takes
# longer than REMOTE_STAT_SECONDS (3.4 us a file on this repository's machine's disk, cached).
STAT_BLOCK, STAT_THREADS, REMOTE_STAT_SECONDS = 4096, 16, 50e-6


@dataclass(frozen=True)
class UpdateResult:
    output: Path
    rows: int
    failed: int
    described: int  # images the file did not hold (or had failed): described by this update or an interrupted one
    dropped: int  # images the file held (as rows or failures) that are no longer found
    computed: int  # images described by this run
    seconds: float
    changed: int = 0  # of ``described``, images the file held whose file changed since it was read


class OutputUpdate:
    """Rewrite ``output``, made by ``extractor`` with ``dtype``, with images of ``images`` described:
    ``describe="new"``, those it does not hold and those whose file changed since it was read,
    leaving out those no longer found (it then holds exactly ``images``); ``"failed"``, those it
    lists as failed (``images`` must be its image set).

    Construction reads which images to describe (:attr:`described`; of them, :attr:`changed`
    were held, as rows or failures, their file modified since: :func:`changed_files`) and which
    are gone (:attr:`dropped`), refusing a file that another command made (:attr:`moved_from`:
    the folder it records, where ``images`` are in another; the rewrite records theirs); :attr:`job` is the
    extraction of the images to describe (None where there are none, or where an interrupted
    update described them all already): on ``devices``, if two or more are given, a
    :class:`MultiDeviceJob`, which also goes on with an update interrupted on several devices, on
    any number of them; :meth:`run` describes them and rewrites ``output``.
    """

    def __init__(self, extractor: Extractor, images: ImageSet, output: str | os.PathLike, *, describe: str = "new",
                 dtype: str = "float32", part_images: int = 4096, provenance: dict | None = None,
                 devices: Sequence[str] = ()) -> None:
        self.output, self.images, self.provenance = Path(output), images, provenance or {}
        check_choice("describe", describe, tuple(UPDATE_MODES))
        check_rewritable(self.output, extractor, dtype, describe)
        # Held until run() has replaced the file: no other run writes it between the reading of its
        # rows and their copying.
        self._lock, self.unlocked_because = lock_for_rewrite(self.output, _run_to_its_end(describe))
        try:
            tidy_emptied_shards(self.output)
            _check_made_like(self.output, extractor, dtype, describe)  # again: it may have been replaced before the lock
            check_rows(self.output, extractor)
            self._choose(extractor, images, describe, dtype, part_images, devices)
        except BaseException:
            self.close()
            raise

    def _choose(self, extractor: Extractor, images: ImageSet, describe: str, dtype: str, part_images: int,
                devices: Sequence[str]) -> None:
        """Which images to describe, which are gone, and the job that describes them (see the class)."""
        option, suffix, self._dated = UPDATE_MODES[describe]
        with open_features_file(self.output, "output") as old:
            if describe == "new" and "shard_index" in old.attrs:
                raise VggfeatError(f"{self.output} is shard {old.attrs['shard_index']}/{old.attrs['shard_count']} of an "
                                   "extraction: update the file that 'vggfeat merge' makes of the shards")
            if old.attrs.get("archive_classes", False) and not images.archive_classes:
                raise VggfeatError(f"{self.output}'s classes are the archives in its folder of images (--archive-classes): "
                                   "give --archive-classes again, or its images would lose them")
            same_images = old.attrs.get("images_sha256") == images.digest()
            if describe == "failed" and not same_images:
                raise VggfeatError(f"{self.output} describes another set of images ({int(old.attrs.get('images_found', -1)):,} "
                                   f"then, {len(images):,} now, or other names or labels); retry with the images that made it")
            self._old_rows, gone_rows = _locate(images.paths, old["paths"])
            self._old_failed, gone_failed = _locate(images.paths, old["failed/paths"])
            held, gone = len(old["paths"]) + len(old["failed/paths"]), gone_rows + gone_failed
            # The folder the file records its images in, where it is another: the collection moved.
            self.moved_from = (str(old.attrs["input_root"]) if old.attrs.get("input_root")
                               and not made_from_folder(old.attrs, images.root) else None)
            if self.moved_from and 2 * gone >= held:
                # Another folder (a subfolder, a slip): its update would drop the file's rows. A
                # collection that moved holds its images under the same names: its update goes on.
                raise VggfeatError(f"{self.output} was made from the images in {old.attrs['input_root']}; "
                                   f"{os.path.abspath(images.root)} holds {held - gone:,} of its "
                                   f"{held:,} images, and --update would leave out the others: give the folder it was "
                                   "made from (or --overwrite to describe these images alone)")
            # Images held (as rows, or as failures) whose file changed since it was read: described again.
            changed_rows, changed_failures = ((changed_files(images, self._old_rows, read_after(old)),
                                               changed_files(images, self._old_failed, read_after(old, failed=True)))
                                              if describe == "new" else ([], []))
        self.changed = len(changed_rows) + len(changed_failures)
        if describe == "new":
            self._old_rows[changed_rows] = -1  # their new outcomes replace the old ones
            self._old_failed[changed_failures] = -1
            chosen = np.flatnonzero((self._old_rows < 0) & (self._old_failed < 0))
        else:
            chosen = np.flatnonzero(self._old_failed >= 0)
            self._old_failed[chosen] = -1  # their new outcome replaces the old one
        self.described, self.dropped = len(chosen), gone_rows + gone_failed
        # Nothing to describe, relabel, or record anew (a moved collection's folder, for search's montage).
        self.unchanged = same_images and not self.described and not (describe == "new" and self.moved_from)
        self.staging = self.output.with_name(self.output.name + suffix)
        self._output_file = file_version(self.output)
        self._row_bytes = disk_per_row(extractor.dim, dtype)
        self._chosen = ImageSet(images.root, tuple(images.paths[i] for i in chosen), images.labels[chosen],
                                images.classes, images.file_names)
        self.job: ExtractionJob | MultiDeviceJob | None = None
        if self.described and not self._staged(extractor, dtype):
            # overwrite: a staging file or work folder of an earlier, different update is this
            # update's own (checked in _staged), and is replaced; the same update's work is resumed.
            job = dict(overwrite=True, dtype=dtype, part_images=part_images,
                       provenance={**self.provenance, "update_of": self.output.name, "update_of_file": self._output_file})
            if len(devices) > 1 or interrupted_on_several(self.staging):
                if interrupted_on_one(self.staging):  # its parts cannot be cut into blocks: they would be lost
                    raise VggfeatError(f"this {option} was interrupted on one device: run it on one device "
                                       f"to finish it (its work is in {work_folder(self.staging)})")
                self.job = MultiDeviceJob(extractor, devices or [str(extractor.device)], self._chosen, self.staging, **job)
            else:
                self.job = ExtractionJob(extractor, self._chosen, self.staging, **job)

    def disk_needed(self) -> int:
        """Bytes of disk the update still needs at its peak, an upper bound: the rows of the images
        it describes (:attr:`job`), and the file written anew beside the old one, a row per image."""
        return (self.job.disk_needed() if self.job else 0) + len(self.images) * self._row_bytes

    def _staged(self, extractor: Extractor, dtype: str) -> bool:
        """Whether the staging file holds the chosen images already (an update killed after
        describing them, before or after its job removed its work folder); refuses a file there
        that no update of ``output`` wrote."""
        if not self.staging.exists() or shards_folder(self.staging).exists():
            return False  # where its job on several devices was killed before it removed its shards: it tidies up
        attrs = file_attributes(self.staging)
        # Of this very file: a staging file that an update killed after its rewrite left is of the
        # file it replaced, whose images it may have described as they were then.
        staged = (attrs.get("update_of") == self.output.name and attrs.get("update_of_file") == self._output_file
                  and holds_job(attrs, extractor.config(), dtype, self._chosen.digest()))
        if work_folder(self.staging).exists():  # its job was killed before it removed its work
            if staged:  # after renaming the file into place: done, but for the removal
                discard_work(work_folder(self.staging), self.staging)
            return staged  # where not, the job resumes or replaces its work
        if attrs.get("update_of") != self.output.name or not attrs.get("complete"):
            raise VggfeatError(f"{self.staging} exists and is not an update of {self.output}: move it away or remove it")
        return staged

    def run(self, progress: Callable[[int], None] | None = None) -> UpdateResult:
        """Describe the chosen images (``progress(n)`` after each chunk) and write ``output`` anew.

        Raises OSError, keeping the finished parts, as :meth:`ExtractionJob.run` does; the same
        update then resumes.
        """
        began = time.perf_counter()
        try:
            computed = self.job.run(progress).computed if self.job else 0
            if self.unchanged:
                rows, failed = rows_and_failures(self.output)
            else:
                rows, failed = self._rewrite()
            if self.staging.exists() and file_attributes(self.staging).get("update_of") == self.output.name:
                self.staging.unlink()  # a leftover of an update killed after its rename, too
        finally:
            self.close()
        return UpdateResult(self.output, rows, failed, self.described, self.dropped, computed, time.perf_counter() - began,
                            self.changed)

    def close(self) -> None:
        """Let another run write ``output``: what :meth:`run` does as it ends, and what an update
        made but not run must do (or let the garbage collector do)."""
        if self._lock is not None:
            unlock_rewrite(self._lock, self.output)
            self._lock = None

    def _rewrite(self) -> tuple[int, int]:
        images = self.images
        # Its rows are copied by the numbers read from the file when the update began: from
        # another file, they would be other images' (a run that took no lock replaced it).
        if file_version(self.output) != self._output_file:
            raise VggfeatError(f"{self.output} was replaced while this update ran: run it again")
        with (
            open_features_file(self.output, "output") as old,
            open_features_file(self.staging) if self.described else contextlib.nullcontext() as new,
            written_atomically(self.output) as temporary,
            open_h5(temporary, "w") as out,
        ):
            # Per file: where each image is among its rows, and among its failures (-1: not there).
            sources = [(old, self._old_rows, self._old_failed)]
            if new is not None:
                sources.append((new, _locate(images.paths, new["paths"])[0], _locate(images.paths, new["failed/paths"])[0]))
            rows = np.flatnonzero(np.logical_or.reduce([found >= 0 for _, found, _ in sources]))
            failures = sorted(failure for f, _, failed in sources for failure in _reasons(f, failed))
            dim, dtype = old["features"].shape[1], old["features"].dtype
            (features, paths, labels, sizes, read_after_rows, failed_paths, failed_errors, failed_labels,
             failed_read_after) = create_datasets(out, len(rows), len(failures), dim, dtype.name, images.classes)
            read_afters = [(read_after(f), found) for f, found, _ in sources]  # 8 bytes a row
            step = max(1, BLOCK_BYTES // (dim * dtype.itemsize))
            for start in range(0, len(rows), step):
                block = rows[start : start + step]
                written = slice(start, start + len(block))
                features[written] = _gather(block, [(f["features"], found) for f, found, _ in sources])
                sizes[written] = _gather(block, [(f["sizes"], found) for f, found, _ in sources])
                read_after_rows[written] = _gather(block, read_afters)
                paths[written] = [images.paths[i] for i in block]
                labels[written] = images.labels[block]
            failed_paths[:] = [images.paths[i] for i, _, _ in failures]
            failed_errors[:] = [reason for _, reason, _ in failures]
            failed_labels[:] = images.labels[[i for i, _, _ in failures]]
            failed_read_after[:] = [read for _, _, read in failures]
            attrs = {key: value for key, value in old.attrs.items() if key != "complete"}
            if images.archive_classes:
                attrs["archive_classes"] = True
            attrs.update(images_found=len(images), images_sha256=images.digest(), input_root=os.path.abspath(images.root),
                         **{self._dated: datetime.now(timezone.utc).isoformat(timespec="seconds")}, **self.provenance)
            if new is not None:  # the file's other attributes say how its first rows were made
                attrs[f"{self._dated}_with"] = json.dumps({key: str(new.attrs[key]) for key in MADE_WITH if key in new.attrs})
            mark_complete(out, attrs)
        return len(rows), len(failures)


def check_rewritable(output: Path, extractor: Extractor, dtype: str, describe: str) -> None:
    """Refuse, before the images are found, an ``output`` that an update (``describe``: see
    :class:`OutputUpdate`) cannot rewrite: its extraction is not finished (its work folder is
    there), it is not a complete descriptor file, it was made with other options than
    ``extractor``'s and ``dtype``, or a row of it holds what no extraction writes (:func:`check_rows`)."""
    work = work_folder(output)
    if not holds_no_work(work):
        raise extraction_under_way(work, output, _run_to_its_end(describe))
    if interrupted_on_several(output):
        raise extraction_under_way(shards_folder(output), output, _run_to_its_end(describe))
    if work.exists():  # another rewrite's lock, or one a killed rewrite left: refused now, before the images are found
        lock_folder(work, output)[0].close()
    _check_made_like(output, extractor, dtype, describe)
    check_rows(output, extractor)


def check_rows(output: Path, extractor: Extractor) -> None:
    """Refuse ``output``, made by ``extractor``, where a row holds what no extraction writes (an
    edit's, a bad disk's): a rewrite copies its rows into the file written anew, which every reader
    would then refuse, after the images were described. Descriptors: NaN or an infinity
    (:func:`~vggfeat.features.damaged_row`); a classifier's posteriors: values outside 0..1 too, or
    classes it has not (:func:`vggfeat.posteriorsfile.check_rows`). Read a block at a time."""
    # By the file's version: check_rewritable runs before the images are found, and again as the
    # update is made (OutputUpdate), and a file of tens of GB, found whole, is not read twice.
    _check_rows(output, file_version(output), extractor.classes if isinstance(extractor, Classifier) else None)


@functools.lru_cache(maxsize=8)  # (a refusal, raised, is not kept)
def _check_rows(output: Path, version: str, classes: int | None) -> None:
    """:func:`check_rows` of ``output`` as ``version`` (:func:`file_version`) is; ``classes``: the
    classifier's, of a posteriors file (None: a descriptor file)."""
    if classes is not None:
        check_posteriors(output, classes, CLASSIFY_AGAIN)
        return
    with open_features_file(output, "output") as f:
        features = f["features"]
        for _ in finite_blocks(f, output, max(1, BLOCK_BYTES // (features.shape[1] * features.dtype.itemsize))):
            pass  # each block checked as read


def _check_made_like(output: Path, extractor: Extractor, dtype: str, describe: str) -> None:
    """Refuse an ``output`` that is not a complete descriptor file made with ``extractor``'s options and ``dtype``."""
    option = UPDATE_MODES[describe][0]
    with open_features_file(output, "output", hint=f" (the same command without {option} makes it)") as f:
        if "stacked_from" in f.attrs:  # no one extraction makes its rows
            raise VggfeatError(f"{output} is stacked from {', '.join(json.loads(f.attrs['stacked_from']))} ('vggfeat "
                               f"stack'): run {option} on each of those, then stack them again")
        changes = config_changes(json.loads(f.attrs["config"]), {**extractor.config(), "dtype": dtype})
    if changes:
        raise VggfeatError(f"{output} was made with other options ({'; '.join(changes)}); give {option} the "
                           "options that made it")


def _run_to_its_end(describe: str) -> str:
    return f" (the same command without {UPDATE_MODES[describe][0]})"


def changed_files(images: ImageSet, rows: np.ndarray, read_after: np.ndarray) -> np.ndarray:
    """The indices of ``images`` that a file holds (``rows``: the row, or failure, of each; -1:
    none) whose file was modified at or after the row's ``read_after``: since it was read, as far
    as its modification time tells. None where that time is not known (NaN), nor where the file
    cannot be looked at now: its row is kept, as it would be without this look.

    A change is missed where the file keeps an older time (``cp -p``, ``rsync -t`` from a source
    older than the run), or where a file server's clock lags this machine's by more than the time
    from the run's start to the change (NTP keeps that under a second).
    """
    held = np.flatnonzero(rows >= 0)
    since = read_after[rows[held]]
    held, since = held[~np.isnan(since)], since[~np.isnan(since)]
    root = os.fspath(images.root)
    # Names as strings: a Path made per file would cost twice the look itself.
    names = [os.path.join(root, file_name(images.paths[i], images.file_names)) for i in held]
    blocks = [names[start : start + STAT_BLOCK] for start in range(0, len(names), STAT_BLOCK)] or [[]]
    began = time.perf_counter()
    times = [_modified(blocks[0])]
    if (time.perf_counter() - began) / max(1, len(blocks[0])) > REMOTE_STAT_SECONDS:
        # Round trips to a file server, which threads overlap. On a local disk threads would only
        # take turns at the GIL: a look per file 3x as long with 4 threads on 2 cores, 5x with 16.
        with ThreadPoolExecutor(STAT_THREADS) as pool:
            times += pool.map(_modified, blocks[1:])
    else:
        times += map(_modified, blocks[1:])
    return held[np.concatenate(times) >= since]


def _modified(files: list[str]) -> np.ndarray:
    """The modification time of each of ``files``; -inf for a file that cannot be looked at."""
    times = np.full(len(files), -np.inf)
    archives: dict[str, float] = {}  # a member's time is its archive's: looked at once
    for k, name in enumerate(files):
        with contextlib.suppress(OSError):
            times[k] = modified(name, archives)
    return times


def _locate(paths: Sequence[str], dataset: h5py.Dataset) -> tuple[np.ndarray, int]:
    """For each of the sorted ``paths``, the row of ``dataset`` (sorted paths) that names it, or -1;
    and how many of the dataset's rows name none of them. Read a block at a time."""
    where = np.full(len(paths), -1, dtype=np.int64)
    missing = 0
    for start in range(0, dataset.shape[0], PATH_BLOCK):
        for row, path in enumerate(dataset.asstr()[start : start + PATH_BLOCK], start):
            i = bisect.bisect_left(paths, path)
            if i < len(paths) and paths[i] == path:
                where[i] = row
            else:
                missing += 1
    return where, missing


def _reasons(f: h5py.File, failed_rows: np.ndarray) -> list[tuple[int, str, float]]:
    """(image, reason, read_after) of the images that ``f`` lists as failed, at ``failed_rows`` (-1: not there)."""
    images = np.flatnonzero(failed_rows >= 0)
    errors, read = f["failed/errors"].asstr()[:], read_after(f, failed=True)
    return [(int(i), errors[failed_rows[i]], float(read[failed_rows[i]])) for i in images]


def _gather(block: np.ndarray, sources: list[tuple[h5py.Dataset, np.ndarray]]) -> np.ndarray:
    """The values of ``block``'s images, each from the source whose rows (-1: not there) hold it."""
    parts, order = [], []
    for dataset, rows in sources:
        mine = rows[block] >= 0
        if mine.any():
            parts.append(_take(dataset, rows[block][mine]))
            order.append(np.flatnonzero(mine))
    values = np.concatenate(parts)
    return values[np.argsort(np.concatenate(order), kind="stable")]


def _take(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``dataset[rows]`` for increasing rows: one slice read where they lie close together (rows of
    images no longer found, between them, are read and left), else HDF5's selection of each."""
    low, high = int(rows[0]), int(rows[-1]) + 1
    if high - low <= 2 * len(rows):
        return dataset[low:high][rows - low]
    return dataset[rows]

