"""A resumable extraction of an image set into one HDF5 file.

Work goes to ``OUTPUT.parts/`` beside the output: a manifest of the configuration and image set,
the output being written (``rows.h5``, a :class:`~vggfeat.output.OutputFile`: each part's
descriptors go there, flushed to disk, and nowhere else), and parts, each committed atomically
after its rows, recording which images it holds and where their rows are. Killed at any moment,
the same command finds the parts and the rows, describes only the images that no part holds, and
completes the output, which is renamed into place when whole. The output's name is never written
until then, so an existing file is only ever replaced by a complete one, and only with
``overwrite``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import torch
import torchvision

from ._version import __version__
from .choices import DTYPES
from .decode import STORAGE_ERROR
from .discover import ImageFiles, ImageSet
from .errors import VggfeatError
from .regions import JPEG_DRAFT_REGIONS
from .chunks import BEYOND_FLOAT16, Chunk, keep_rows
from .extractor import Extractor
from .features import with_defaults
from .output import OutputFile, holds_rows, readable_parts, recover_rows, usable_parts
from .settings import decoder_library_of
from .stack import flat_config
from .files import as_system_errors, file_attributes, open_h5, replace_durably, write_json
from .parts import (discard_work, holds_no_work, images_held, interrupted_on_several, list_parts, lock_folder,
                    remove_leftovers_of, remove_manifest_last, tidy_emptied_shards, write_part)
from .store import (DESCRIPTORS, FORMAT_VERSION, POSTERIORS, already_exists, check_descriptor_output, check_replaceable,
                    existing_kind, rows_and_failures, shards_folder, work_folder)

# Bytes per row besides the descriptor, generously: path, label, size, part index.
_ROW_EXTRAS = 128
# Images in a row that the storage fails to give (each tried 3 times) before a run stops, rather
# than record every image as failed while a file system is away.
STORAGE_FAILURES_TO_STOP = 64


def check_output(output: Path, overwrite: bool, images_root: Path | None = None, makes: str = DESCRIPTORS) -> None:
    """Refuse at once, before the images are found and the network loads, an output that
    :class:`ExtractionJob` would refuse: a folder, in a folder that does not exist, or a file that
    exists (without ``overwrite``) and has no work or shards folder beside it, which may show that
    this very extraction wrote it (the job decides), unless it is a complete file made from
    ``images_root`` (the folder of the images, or of a list's paths): this extraction may have
    made it, to find done or to update (:func:`check_existing_output` tells once the network is
    built, the job once the images are found). ``makes``: DESCRIPTORS, or POSTERIORS (classify's)."""
    check_descriptor_output(output)
    check_replaceable(output, makes)
    if _lone_file(output, overwrite):
        attrs = file_attributes(output) if images_root is not None else {}
        if not (attrs.get("complete") and made_from_folder(attrs, images_root)):
            raise VggfeatError(already_exists(output, makes))


def check_existing_output(output: Path, overwrite: bool, config: dict, dtype: str) -> None:
    """Refuse, before the images are found, an output that exists with no work or shards folder
    beside it (without ``overwrite``), made with other options than ``config`` and ``dtype``."""
    if _lone_file(output, overwrite) and not made_with(file_attributes(output).get("config"), config_json(config, dtype)):
        raise existing_output(output, config, dtype)


def holds_extraction(output: Path, config: dict, dtype: str, images: ImageSet) -> bool:
    """Whether ``output`` is complete, with no run's work beside it, written as ``dtype`` by an
    extractor of ``config`` over ``images``, found in the same folder: the same extraction run
    again (a script run twice, a run killed once its output was whole) has nothing to do. As a
    resumed run trusts its parts, this trusts the file: images changed since are for ``--update``."""
    if not _lone_file(output, overwrite=False):
        return False
    attrs = file_attributes(output)
    return holds_job(attrs, config, dtype, images.digest()) and made_from_folder(attrs, images.root)


def existing_output(output: Path, config: dict, dtype: str, images: ImageSet | None = None) -> VggfeatError:
    """The refusal of an ``output`` that exists and does not hold this extraction, saying what
    differs: the options, or (``images`` given) the images of the same folder (added since, say),
    then pointing to ``--update`` (which takes a whole collection, not a shard)."""
    attrs, makes = file_attributes(output), POSTERIORS if "dense" in config else DESCRIPTORS  # a Classifier's: "dense"
    if not attrs.get("complete") or existing_kind(output, makes):  # or another kind of file: posteriors, an index, ...
        return VggfeatError(already_exists(output, makes))
    if not made_with(attrs.get("config"), config_json(config, dtype)):
        try:
            changes = config_changes(json.loads(attrs["config"]), {**config, "dtype": dtype})
        except (KeyError, TypeError, ValueError, AttributeError):  # not an extraction's file (or a damaged one)
            changes = []
        if changes:
            return VggfeatError(f"{output} already exists, made with other options ({'; '.join(changes)}); pass "
                                "--overwrite to replace it")
    elif images is not None and not images.shard_of and "images_found" in attrs and made_from_folder(attrs, images.root):
        return VggfeatError(f"{output} already exists, made with these options over other images of {images.root} "
                            f"({int(attrs['images_found']):,} then, {len(images):,} now): --update describes those added "
                            "or changed and leaves out those gone; --overwrite describes them all again")
    elif images is not None and images.shard_of and made_from_folder(attrs, images.root):
        return VggfeatError(f"{output} already exists, made with these options as a shard of other images of {images.root} "
                            "(the collection changed since it was cut into shards): describe every shard again with "
                            "--overwrite, or run 'vggfeat extract --update' on the file merged from them")
    return VggfeatError(already_exists(output, makes))


def made_from_folder(attrs: dict, root: str | os.PathLike) -> bool:
    """Do a file's ``attrs`` say it was made from images found in ``root`` (as the job records it;
    through a link to the same folder too)?"""
    return same_folder(attrs.get("input_root"), root)


def same_folder(recorded: str | None, root: str | os.PathLike) -> bool:
    """Whether the folder of images a file or work folder recorded (an absolute path) is ``root``,
    or a link to it (or ``root`` a link to it); False where none was recorded."""
    if not recorded:
        return False
    return recorded == os.path.abspath(root) or os.path.realpath(recorded) == os.path.realpath(root)


def _lone_file(output: Path, overwrite: bool) -> bool:
    """Does ``output`` exist, not to be overwritten, with no run's work or shards folder beside it?"""
    return output.exists() and not overwrite and not work_folder(output).exists() and not shards_folder(output).exists()


def check_job(extractor: Extractor, images: ImageSet, dtype: str) -> None:
    """Refuse, before any work, what no job (on one device or several) can do: an unknown
    ``dtype``, regions of images with ``jpeg_draft`` (refused by each device's process too late)."""
    if dtype not in DTYPES:
        raise VggfeatError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if extractor.jpeg_draft and images.has_regions:
        raise VggfeatError(JPEG_DRAFT_REGIONS)


@dataclass(frozen=True)
class JobResult:
    output: Path
    rows: int
    failed: int
    computed: int  # images processed by this run (the rest came from an interrupted one)
    seconds: float
    already_done: bool = False  # the output held this very extraction before the run: nothing was done


# The work folders whose lock a job of this process holds, made and not yet run (or closed).
_NOT_RUN: set[Path] = set()


class ExtractionJob:
    """Extract ``images`` with ``extractor`` into ``output``, resuming an interrupted run.

    Construction checks everything that can be checked before work starts (existing output,
    a different interrupted run, another run writing the same output) and raises
    :class:`VggfeatError`; :meth:`run` then does the work, or nothing where the output already
    holds this very extraction (``already_done``: :func:`holds_extraction`). Where ``images`` is
    a block of a collection (``collection.shard(k, n)``), the file records which one, and
    :func:`vggfeat.merge.merge_shards` joins the files of the n blocks.
    """

    def __init__(
        self,
        extractor: Extractor,
        images: ImageSet,
        output: str | Path,
        *,
        overwrite: bool = False,
        dtype: str = "float32",
        part_images: int = 4096,
        part_seconds: float = 60.0,
        provenance: dict | None = None,
    ) -> None:
        check_job(extractor, images, dtype)
        if isinstance(part_images, bool) or not isinstance(part_images, int) or part_images < 1:
            raise VggfeatError(f"part_images must be at least 1, got {part_images!r}")
        self.images, self.extractor, self.dtype = images, extractor, dtype
        self.output = Path(output)
        self.work = work_folder(self.output)
        self.part_images, self.part_seconds = part_images, part_seconds
        self.provenance = provenance or {}
        check_descriptor_output(self.output)
        self.manifest = {
            "format_version": FORMAT_VERSION,
            "config": extractor.config(),
            "dtype": dtype,
            "images": {"count": len(self.images), "sha256": self.images.digest(),
                       **({"archive_classes": True} if images.archive_classes else {})},
            # The same names in another folder are other images (manifests before it: not recorded).
            "root": os.path.abspath(images.root),
            # Before any image is read: a resumed run keeps its first start (_adopt_or_clear), so
            # that every row's file is known to have been read after it (the output's /read_after).
            "started": time.time(),
        }
        if images.shard_of:
            self.manifest["shard"] = [images.shard_of.index, images.shard_of.count]
        tidy_emptied_shards(self.output)
        self.already_done = not overwrite and holds_extraction(self.output, self.manifest["config"], dtype, images)
        if self.already_done:  # no work folder to lock, nothing to resume
            self.unlocked_because, self.parts, self.done = None, [], self.total
            return
        # A run killed after renaming its output into place, before removing its work folder, is
        # finished: the same command then just tidies up.
        self._finished = self.output.exists() and not overwrite and self._finished_but_left_its_work()
        if self.output.exists() and not overwrite and not self._finished:
            raise existing_output(self.output, self.manifest["config"], dtype, images)
        if interrupted_on_several(self.output):  # one run here would describe its images again beside it
            if not overwrite:
                raise VggfeatError(f"{shards_folder(self.output)} holds a run on several devices, running or interrupted: "
                                   "resume it on any number of devices (--device, MultiDeviceJob), or pass --overwrite to "
                                   "discard it")
            discard_work(shards_folder(self.output), self.output)  # refused while it runs
        # Why no lock keeps a second run from writing the same output at once, if none can.
        self.unlocked_because: str | None = None
        self._lock = self._open_work_folder(overwrite)
        self.rows_file = self.work / "rows.h5"
        self.parts = list_parts(self.work)
        if self.parts and not self._finished:
            self.parts = readable_parts(self.parts)
            # Rows lost with their file (removed by hand), or written after a part removed by hand,
            # are described again; those of a file that a kill broke as the run completed it are
            # read back from its bytes.
            kept = (holds_rows(self.rows_file, images, extractor.dim, dtype)
                    or recover_rows(self.rows_file, [part.path for part in self.parts], images, extractor.dim, dtype))
            self.parts = usable_parts(self.parts, kept)
        self.done = self.total if self._finished else images_held(self.parts)

    def close(self) -> None:
        """Let go of the output's lock without running (:meth:`run` lets go of it as it ends): a
        job made and not run, in a notebook say, kept a new job on its output refused as long as it
        lived. Also as a context manager, and as it is collected."""
        lock = getattr(self, "_lock", None)  # (none where the output was already done, or __init__ failed)
        if lock is not None and not lock.closed:
            lock.close()
            _NOT_RUN.discard(self.work.resolve())

    def __enter__(self) -> ExtractionJob:
        return self

    def __exit__(self, *raised: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    @property
    def total(self) -> int:
        return len(self.images)

    def disk_needed(self) -> int:
        """Bytes of disk the run still needs: the rows of the images no part holds (each
        descriptor is on disk once). An upper bound: a failed image takes no row."""
        return (self.total - self.done) * disk_per_row(self.extractor.dim, self.dtype)

    def run(self, progress: Callable[[int], None] | None = None) -> JobResult:
        """Describe the images no part holds yet, completing the output; ``progress(n)`` after each chunk.

        Raises OSError, keeping the finished parts, when the disk fills or when the images' storage
        fails STORAGE_FAILURES_TO_STOP of them in a row: the same job then resumes.
        """
        if self.already_done:
            return JobResult(self.output, *rows_and_failures(self.output), 0, 0.0, already_done=True)
        began = time.perf_counter()
        try:
            with as_system_errors(self.rows_file):  # HDF5's "file write failed" under a full disk may be a RuntimeError
                rows, failed = rows_and_failures(self.output) if self._finished else self._write_output(progress)
            self._remove_work()
            remove_leftovers_of(self.output)
        finally:  # also when the run fails, so that a new job in this process can resume it
            self.close()
        return JobResult(self.output, rows, failed, self.total - self.done, time.perf_counter() - began)

    def _write_output(self, progress: Callable[[int], None] | None) -> tuple[int, int]:
        self._interrupted = list(self.parts)
        self._output = OutputFile(self.rows_file, self.images, self.extractor.dim, self.dtype)
        try:
            files = self.images.files()
            for start, end in self._gaps():
                self._fill(start, files[start:end], progress)
            self._output.extend(self._interrupted)  # those after the last gap
            # refuses an output missing any image
            rows, failed = self._output.finish(self.parts, self._attrs(), self.manifest.get("started", math.nan))
        except BaseException:
            self._output.abandon()
            raise
        replace_durably(self._output.path, self.output)
        return rows, failed

    def _fill(self, offset: int, files: ImageFiles, progress: Callable[[int], None] | None) -> None:
        pending: list[Chunk] = []
        start, since = offset, time.monotonic()
        # Parts smaller than the extractor's default chunk need chunks of that size, or a part would
        # hold a whole chunk (16 images or more) whatever part_images says.
        chunk_images = min(self.part_images, max(16, 2 * self.extractor.batch_size))
        # Parts are written by a thread of their own, one at a time, while the network goes on: a
        # write (0.05-0.2 s with its fsync) would otherwise stall a fast GPU once per part.
        with ThreadPoolExecutor(1, thread_name_prefix="vggfeat-write") as writer:
            writing: Future | None = None

            def commit(chunks: list[Chunk]) -> None:
                nonlocal writing, start, since
                if chunks:
                    end = offset + chunks[-1].end
                    if writing is not None:
                        writing.result()  # the previous part is on disk (or its error raised here)
                    writing = writer.submit(self._commit, start, end, chunks, offset)
                    start, since = end, time.monotonic()

            unread = 0  # images in a row, up to the last one, that the storage failed to give
            regions = files.regions() if self.images.has_regions else None  # (not with --jpeg-draft: see __init__)
            for chunk in self.extractor.iter_chunks(files, chunk_images=chunk_images, regions=regions):
                pending.append(chunk)
                if progress:
                    progress(chunk.end - chunk.start)
                unread = unread_in_a_row(chunk, unread)
                # Chunks whose every image the storage failed to give wait for the next: if the
                # storage has gone away, the run stops before they are recorded as failed.
                ready = pending[: len(pending) - _unread_chunks(pending)]
                if unread >= STORAGE_FAILURES_TO_STOP:
                    commit(ready)
                    if writing is not None:
                        writing.result()
                    raise storage_gone(unread, chunk)
                end = offset + chunk.end
                if end == offset + len(files):
                    ready = pending
                elif end - start < self.part_images and time.monotonic() - since < self.part_seconds:
                    continue
                commit(ready)
                pending = pending[len(ready):]
            if writing is not None:
                writing.result()

    def _commit(self, start: int, end: int, chunks: list, offset: int) -> None:
        if self.dtype == "float16":  # a value float16 cannot hold would be stored as inf
            for chunk in chunks:
                keep_rows(chunk, np.abs(chunk.features).max(axis=1, initial=0) <= np.finfo(np.float16).max, BEYOND_FLOAT16)
        # Stored as the output will be: float16 parts take half the disk of float32 ones.
        features = np.concatenate([chunk.features for chunk in chunks]).astype(self.dtype, copy=False)
        indices = np.array([offset + i for chunk in chunks for i in chunk.indices], dtype=np.int64)
        sizes = np.array([size for chunk in chunks for size in chunk.sizes], dtype=np.int32).reshape(-1, 2)
        failures = [(offset + i, reason) for chunk in chunks for i, reason in chunk.failures]
        self._output.extend(self._interrupted)  # an interrupted run's parts before this one
        # The rows on disk first: a part records rows that are there.
        first_row = self._output.append(start, end, features)
        self.parts.append(write_part(self.work, start, end, None, indices, sizes, failures, first_row,
                                     self._output.chunks_of(first_row, len(indices))))

    def _gaps(self) -> list[tuple[int, int]]:
        gaps, position = [], 0
        for part in sorted(self.parts, key=lambda p: p.start):
            if part.start < position or part.end > self.total:
                raise VggfeatError(f"{self.work} holds overlapping parts ({part.path.name}); remove the folder to start over")
            if part.start > position:
                gaps.append((position, part.start))
            position = part.end
        if position < self.total:
            gaps.append((position, self.total))
        return gaps

    def _finished_but_left_its_work(self) -> bool:
        """Is the output complete, made by this very job, with its work folder still there: whole,
        or emptied but for its lock (a kill as :meth:`_remove_work` removed it, its manifest gone)?"""
        manifest_file = self.work / "manifest.json"
        try:
            with open_h5(self.output) as f:
                attrs = dict(f.attrs)
            if not manifest_file.exists() and self.work.is_dir() and holds_no_work(self.work):
                # (or a lock an update left, killed: the file must then be this very job's too)
                return (holds_job(attrs, self.manifest["config"], self.dtype, self.manifest["images"]["sha256"])
                        and made_from_folder(attrs, self.images.root))
            manifest = json.loads(manifest_file.read_text())
        except (OSError, ValueError, RecursionError):
            return False
        made_here = holds_job(attrs, self.manifest["config"], self.dtype, self.manifest["images"]["sha256"])
        return made_here and not _differences(manifest, self.manifest)

    def _remove_work(self) -> None:
        remove_manifest_last(self.work)  # a folder half removed by a kill is still recognised as ours

    def _open_work_folder(self, overwrite: bool):
        manifest_file = self.work / "manifest.json"
        # Only ever write into a folder that is ours: a manifest, or only the lock (and the
        # manifest's temporary file) of a run killed before it wrote one.
        if not manifest_file.is_file() and not holds_no_work(self.work):
            raise VggfeatError(f"{self.work} exists but is not a vggfeat work folder; move it away or remove it")
        if manifest_file.is_file() and not _is_manifest(manifest_file):  # (--overwrite would clear the folder)
            raise VggfeatError(f"{self.work} exists but is not a vggfeat work folder (its manifest.json is not "
                               "vggfeat's); move it away or remove it")
        self.work.mkdir(exist_ok=True)
        try:
            lock, self.unlocked_because = lock_folder(self.work, self.output)
        except VggfeatError as refusal:
            if self.work.resolve() in _NOT_RUN:  # (a notebook's cell run again: `job = ExtractionJob(...)`)
                raise VggfeatError(f"{refusal}: a job of this process on it, made and not run, holds it; run that job, "
                                   "or close() it first") from None
            raise
        _NOT_RUN.add(self.work.resolve())
        try:
            self._adopt_or_clear(manifest_file, overwrite)
        except BaseException:
            lock.close()
            _NOT_RUN.discard(self.work.resolve())
            raise
        return lock

    def _adopt_or_clear(self, manifest_file: Path, overwrite: bool) -> None:
        """Keep an interrupted run of the same job; discard a different one only with ``overwrite``."""
        if manifest_file.is_file():
            try:
                previous = json.loads(manifest_file.read_text())
            except (OSError, ValueError, RecursionError):
                raise VggfeatError(f"{manifest_file} is unreadable; remove {self.work} to start over") from None
            differences = _differences(previous, self.manifest)
            if differences and not overwrite:
                # The same options over images that changed since: "the same options" would send the
                # user round (and --update is refused while the run is unfinished).
                remedy = ("it resumes over the images it began with only: restore them, or pass --overwrite to describe "
                          "these from the start (its finished parts are lost)" if all(
                              difference.startswith("image set:") for difference in differences) else
                          "rerun with the same options to resume it, or pass --overwrite to discard it")
                raise VggfeatError(f"{self.work} holds an interrupted run with a different configuration "
                                   f"({'; '.join(differences)}); {remedy}")
            if differences:  # the manifest last, as in _remove_work: a folder a kill cut short is still ours
                for entry in self.work.iterdir():
                    if entry.name not in ("lock", "manifest.json"):
                        entry.unlink()
                manifest_file.unlink()
            else:  # NaN where the run began before vggfeat recorded when
                self.manifest["started"] = previous.get("started", math.nan)
        for stale in self.work.glob("*.tmp"):  # left by a killed writer; never renamed, so never used
            stale.unlink()
        if not manifest_file.exists():
            write_json(manifest_file, self.manifest)

    def _attrs(self) -> dict:
        config = self.manifest["config"]
        flat = flat_config(config)
        attrs = {
            "vggfeat_version": __version__,
            "torch_version": str(torch.__version__),
            "torchvision_version": torchvision.__version__,
            "h5py_version": h5py.__version__,
            **{key: value for key, value in flat.items() if key != "preprocessing"},
            "random_weights": self.extractor.random_weights,
            "preprocessing": json.dumps(flat["preprocessing"], sort_keys=True),
            "dtype": self.dtype,
            "input_root": os.path.abspath(self.images.root),  # found again from another folder
            "images_found": self.total,
            "images_sha256": self.manifest["images"]["sha256"],
            "device": str(self.extractor.device),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": config_json(config, self.dtype),
            **self.provenance,
        }
        if self.extractor.decoder != "pil":
            attrs["decoder_library"] = decoder_library_of(self.extractor.decoder)
        if self.images.archive_classes:  # which an update must find its images with (update.OutputUpdate)
            attrs["archive_classes"] = True
        if self.images.shard_of:  # for the merge
            shard = self.images.shard_of
            attrs.update(shard_index=shard.index, shard_count=shard.count, collection_images=shard.collection_images,
                         collection_sha256=shard.collection_sha256)
        return attrs


def disk_per_row(dim: int, dtype: str) -> int:
    """Bytes of disk that a row of ``dim`` values of ``dtype`` takes, in a part or an output."""
    return dim * np.dtype(dtype).itemsize + _ROW_EXTRAS


def config_json(config: dict, dtype: str) -> str:
    """The ``config`` attribute of a file that an extractor of ``config`` writes as ``dtype``: compared as text."""
    return json.dumps({**config, "dtype": dtype}, sort_keys=True)


def made_with(recorded: object, config: str) -> bool:
    """Whether a file's ``config`` attribute ``recorded`` is ``config`` (:func:`config_json`'s):
    the same text, or of a file that an earlier version wrote, without the keys added since (which
    it was made with at their defaults: :func:`~vggfeat.features.with_defaults`)."""
    if recorded == config:
        return True
    try:
        before = json.loads(recorded)
    except (TypeError, ValueError, RecursionError):
        return False
    return isinstance(before, dict) and with_defaults(before) == with_defaults(json.loads(config))


def holds_job(attrs: dict, config: dict, dtype: str, images_sha256: str) -> bool:
    """Whether a file's ``attrs`` say it is complete, written as ``dtype`` by an extractor of
    ``config`` over the images whose digest is ``images_sha256``."""
    return (bool(attrs.get("complete")) and made_with(attrs.get("config"), config_json(config, dtype))
            and attrs.get("images_sha256") == images_sha256)


def unread_in_a_row(chunk: Chunk, run: int) -> int:
    """``run`` images in a row that the storage failed to give, before ``chunk``: how many after it."""
    reasons = dict(chunk.failures)
    for index in range(chunk.start, chunk.end):
        run = run + 1 if reasons.get(index, "").startswith(STORAGE_ERROR) else 0
    return run


def storage_gone(unread: int, chunk: Chunk) -> OSError:
    """The error that stops a run after ``unread`` images in a row, up to ``chunk``'s last, that the storage failed to give."""
    return OSError(errno.EIO, f"the last {unread} images in a row could not be read ({chunk.failures[-1][1]}): "
                              "their storage seems to be unavailable")


def _unread_chunks(chunks: list[Chunk]) -> int:
    """How many of the last ``chunks`` have only images that the storage failed to give."""
    count = 0
    for chunk in reversed(chunks):
        if chunk.indices or not all(reason.startswith(STORAGE_ERROR) for _, reason in chunk.failures):
            break
        count += 1
    return count


def _is_manifest(path: Path) -> bool:
    """Whether ``path`` is a manifest of vggfeat's, as far as it reads (one it cannot read is
    refused as it is resumed, saying so), not another program's manifest.json."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return True
    return (isinstance(manifest, dict) and "format_version" in manifest and isinstance(manifest.get("config"), dict)
            and isinstance(manifest.get("images"), dict))


def _differences(previous: dict, current: dict) -> list[str]:
    found = []
    if previous.get("format_version") != current["format_version"]:
        found.append(f"work folder format {previous.get('format_version')} vs {current['format_version']}")
    found += config_changes(previous.get("config", {}), current["config"])
    if previous.get("dtype") != current["dtype"]:
        found.append(f"dtype: {previous.get('dtype')} then, {current['dtype']} now")
    if previous.get("shard") != current.get("shard"):
        found.append(f"shard: {_shard(previous)} then, {_shard(current)} now")
    if "root" in previous and not same_folder(previous["root"], current["root"]):
        found.append(f"image folder: {previous['root']} then, {current['root']} now")
    then, now = previous.get("images", {}), current["images"]
    given_then, given_now = (("given" if images.get("archive_classes") else "not given") for images in (then, now))
    if given_then != given_now:  # every label differs: say why
        found.append(f"--archive-classes: {given_then} then, {given_now} now")
    elif then != now:
        found.append(f"image set: {then.get('count')} files then, {now['count']} now (or other names or labels)")
    return found


# The option that sets a configuration key, where its name does not say it.
_OPTION_OF_KEY = {"keep_top": "--topk, 5 at least"}


def config_changes(before: dict, now: dict) -> list[str]:
    """``["layer: fc7 then, fc6 now", ...]`` for each key of two extraction configurations that
    differs (of several networks side by side, ``"model: vgg16,vgg19 then, vgg16 now"``)."""
    before, now = flat_config(with_defaults(before)), flat_config(with_defaults(now))
    return [f"{_with_option(key)}: {_show(before.get(key))} then, {_show(now.get(key))} now"
            for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]


def _with_option(key: str) -> str:
    return f"{key} ({_OPTION_OF_KEY[key]})" if key in _OPTION_OF_KEY else key


def _shard(manifest: dict) -> str:
    return "{}/{}".format(*manifest["shard"]) if manifest.get("shard") else "none"


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:23] + "…"
