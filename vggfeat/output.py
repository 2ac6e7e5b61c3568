"""Output: the file an extraction writes as it goes, each descriptor on disk once.

The file (``OUTPUT.parts/rows.h5``; ``merged-of-N.h5`` as a run on several devices merges its
blocks) is made with its /features dataset allocated whole, a row for every image, and while the
run goes on nothing but rows of descriptors is written into it, each part's rows flushed to disk
before the part that records where they are (:func:`vggfeat.store.place_rows`). No metadata of the
file changes, so a killed run leaves a file that opens again with every recorded row in it; the
parts keep no copy of them. :meth:`OutputFile.complete` then writes the rest of the schema
(:mod:`vggfeat.store`), cuts /features to the rows written, and marks the file complete.

Completing the file does change its metadata: a kill at that moment may leave a file that HDF5
cannot open, but never its rows, which :func:`recover_rows` reads back from its bytes.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .discover import ImageSet
from .files import open_h5, refusal_reason, replace_durably, system_error
from .parts import Part
from .store import chunk_rows, failed_datasets, mark_complete, rows_datasets


@dataclass(frozen=True)
class RowsBlock:
    """Of consecutive rows of an output: their paths, labels, sizes and when their files were read
    after (/read_after); and the failures among their images (paths, errors, labels, read_after)."""
    paths: Sequence[str]
    labels: np.ndarray
    sizes: np.ndarray
    read_after: np.ndarray
    failed_paths: Sequence[str]
    failed_errors: Sequence[str]
    failed_labels: np.ndarray
    failed_read_after: np.ndarray


class OutputFile:
    """The output file of an extraction of ``images``, in its work folder until it is complete (see
    the module): :meth:`append` the rows of the images in order, or :meth:`taken` those a killed
    run appended, then :meth:`complete` it (:meth:`finish` from an extraction's parts).
    Its /features dataset takes the disk as rows are written, where the file system keeps sparse
    files. Rows go to the file as they are written (:func:`~vggfeat.files.open_h5`): a full disk
    fails the :meth:`append` that meets it, and nothing else."""

    def __init__(self, path: Path, images: ImageSet, dim: int, dtype: str) -> None:
        """Open the file at ``path`` that holds rows for ``images`` (a resumed run's), or make one."""
        self.images, self.path = images, path
        self.next = self.rows = 0  # the first image not yet in; rows written
        self._file = _rows_file(path, images, dim, dtype, "r+") or self._created(dim, dtype)
        self._features = self._file["features"]

    def chunks_of(self, first_row: int, rows: int) -> tuple[int, np.ndarray] | None:
        """(rows per HDF5 chunk, the byte offset in the file of each chunk that rows ``[first_row,
        first_row + rows)`` lie in), so that they can be read back without HDF5 should a kill as
        the run completed the file break its metadata (:func:`recover_rows`); None where HDF5
        cannot say."""
        per_chunk = self._features.chunks[0]
        chunks = range(first_row // per_chunk, (first_row + rows - 1) // per_chunk + 1) if rows else range(0)
        try:
            infos = [self._features.id.get_chunk_info_by_coord((k * per_chunk, 0)) for k in chunks]
        except (AttributeError, RuntimeError, ValueError):  # an HDF5 without the call
            return None
        if any(info.byte_offset is None for info in infos):  # not allocated: not a file this class made
            return None
        return per_chunk, np.array([info.byte_offset for info in infos], dtype=np.int64)

    def _created(self, dim: int, dtype: str) -> h5py.File:
        f = open_h5(self.path, "w")
        rows = len(self.images)
        # Every chunk allocated now (and no fill written: the file stays sparse), so that writing
        # rows changes nothing but rows; resizable, to be cut to the rows written.
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_chunk((chunk_rows(rows, dim, dtype), dim))
        plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        plist.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        space = h5py.h5s.create_simple((rows, dim), (h5py.h5s.UNLIMITED, dim))
        h5py.h5d.create(f.id, b"features", h5py.h5t.py_create(np.dtype(dtype)), space, dcpl=plist)
        f.attrs["images_sha256"] = self.images.digest()
        self._flush(f)
        return f

    def append(self, start: int, end: int, features: np.ndarray | Iterable[np.ndarray]) -> int:
        """Write the descriptors of images ``[start, end)``, which must come next (an array, or
        arrays of consecutive rows), to disk; returns the row of the first."""
        if start != self.next:
            raise RuntimeError(f"images from {start} appended, {self.next} expected")  # a bug, not a user error
        row = self.rows
        for block in [features] if isinstance(features, np.ndarray) else features:
            self._features[row : row + len(block)] = block
            row += len(block)
        self._flush(self._file)
        first, self.next, self.rows = self.rows, end, row
        return first

    def taken(self, start: int, end: int, first_row: int, rows: int, name: str) -> None:
        """Take in images ``[start, end)`` whose ``rows`` rows were written from ``first_row`` by an
        earlier :meth:`append` (a killed run's), as ``name`` records."""
        if (start, first_row) != (self.next, self.rows):  # a bug, not a user error
            raise RuntimeError(f"{name} has images from {start}, rows from {first_row}; {self.next}, {self.rows} expected")
        self.next, self.rows = end, self.rows + rows

    def extend(self, parts: Sequence[Part]) -> None:
        """Take in each of ``parts`` that comes next, in turn, until one is missing: the rows of a
        part written by :meth:`append` are in the file; a part that holds its descriptors (an
        earlier vggfeat's) has them written."""
        for part in sorted(parts, key=lambda part: part.start):
            if part.start == self.next:
                with open_h5(part.path) as f:
                    if "features" in f:
                        self.append(part.start, part.end, f["features"][:])
                    else:
                        self.taken(part.start, part.end, int(f.attrs["first_row"]), f["indices"].shape[0], part.path.name)

    def finish(self, parts: Sequence[Part], attrs: dict, read_after: float) -> tuple[int, int]:
        """:meth:`complete` with what ``parts`` (all of them) hold besides descriptors, every row's
        file read after the time ``read_after`` (NaN: not known)."""
        def blocks() -> Iterator[RowsBlock]:
            for part in sorted(parts, key=lambda part: part.start):
                with open_h5(part.path) as f:
                    indices, failed = f["indices"][:], f["failed_indices"][:]
                    yield RowsBlock([self.images.paths[i] for i in indices], self.images.labels[indices], f["sizes"][:],
                                    np.full(len(indices), read_after), [self.images.paths[i] for i in failed],
                                    list(f["failed_errors"].asstr()[:]), self.images.labels[failed],
                                    np.full(len(failed), read_after))
        return self.complete(blocks(), attrs)

    def complete(self, blocks: Iterable[RowsBlock], attrs: dict) -> tuple[int, int]:
        """Write the rows' paths, labels, sizes and read_after, and the failures, from ``blocks`` in
        row order, cut /features to the rows written, mark the file complete with ``attrs`` and
        close it; returns (rows, failed)."""
        if self.next != len(self.images):
            raise RuntimeError(f"the output holds images up to {self.next} of {len(self.images)}")  # a bug
        for name in set(self._file) - {"features"}:  # what a run killed as it completed the file wrote
            del self._file[name]
        self._file.attrs.clear()
        paths, labels, sizes, read_after = rows_datasets(self._file, self.rows, self.images.classes)
        failed_paths: list[str] = []
        failed_errors: list[str] = []
        failed_labels: list[np.ndarray] = []
        failed_read_after: list[np.ndarray] = []
        row = 0
        for block in blocks:
            written = slice(row, row + len(block.paths))
            paths[written], labels[written], sizes[written] = block.paths, block.labels, block.sizes
            read_after[written] = block.read_after
            failed_paths.extend(block.failed_paths)
            failed_errors.extend(block.failed_errors)
            failed_labels.append(block.failed_labels)
            failed_read_after.append(block.failed_read_after)
            row = written.stop
        if row != self.rows:
            raise RuntimeError(f"{row} rows described, {self.rows} written")  # a bug
        failed = failed_datasets(self._file, len(failed_paths))
        if failed_paths:
            failed[0][:], failed[1][:] = failed_paths, failed_errors
            failed[2][:], failed[3][:] = np.concatenate(failed_labels), np.concatenate(failed_read_after)
        # The last change to /features (of its dataspace and chunk index, which the rows depend
        # on), so that a kill before it leaves their file as the run left it.
        self._features.resize(self.rows, axis=0)
        mark_complete(self._file, attrs)
        self.close()
        return self.rows, len(failed_paths)

    def close(self) -> None:
        self._file.close()

    def abandon(self) -> None:
        """Close the file after a failure. Closing flushes what a failed write left in HDF5's caches:
        under a full disk that fails again, and the first error says why. The rows that parts
        record are on disk already."""
        with contextlib.suppress(Exception):
            self._file.close()

    @staticmethod
    def _flush(f: h5py.File) -> None:
        f.flush()  # HDF5's caches to the kernel, then the kernel's to the disk
        with open(f.filename, "rb") as file:
            os.fsync(file.fileno())


def readable_parts(parts: Sequence[Part]) -> list[Part]:
    """Those of ``parts`` that HDF5 reads; each other (damaged on the disk: a flipped bit, a bad
    sector) is removed with a warning, so that its images are described again, as those of a part
    removed by hand (:func:`usable_parts`). A part's file is written whole or not at all: a kill
    leaves no such part."""
    readable = []
    for part in parts:
        try:
            with open_h5(part.path) as f:  # each image of the part is described or failed, once
                held = np.concatenate([f["indices"][:], f["failed_indices"][:]])
                if not np.array_equal(np.sort(held), np.arange(part.start, part.end)):
                    raise ValueError(f"its {len(held)} images are not {part.start} to {part.end - 1}")
        except (OSError, RuntimeError, KeyError, ValueError) as error:
            if system_error(error) is not None:  # the system's refusal (permissions, I/O): not the part's
                raise
            warnings.warn(f"{part.path} is damaged ({refusal_reason(error)}); its images are described again")
            part.path.unlink()
        else:
            readable.append(part)
    return readable


def usable_parts(parts: Sequence[Part], rows_kept: bool) -> list[Part]:
    """Those of ``parts`` that an :class:`OutputFile` can take in: those that hold their
    descriptors (an earlier vggfeat's), and those whose rows are in the file (``rows_kept``: it
    is there) where they were written, after every image before them. The others are removed,
    so that their images are described again: the rows of a part after a missing one (removed by
    hand) would follow rows that may change."""
    kept, next_image, rows = [], 0, 0
    for part in sorted(parts, key=lambda part: part.start):
        with open_h5(part.path) as f:
            holds_features, first_row, images = "features" in f, f.attrs.get("first_row"), f["indices"].shape[0]
        in_order = part.start == next_image
        if holds_features or (rows_kept and in_order and first_row == rows):
            kept.append(part)
            if in_order:
                next_image, rows = part.end, rows + images
        else:
            part.path.unlink()
    return kept


def recover_rows(path: Path, records: Sequence[Path], images: ImageSet, dim: int, dtype: str) -> bool:
    """Make ``path`` a file of rows for ``images`` again from its bytes, where HDF5 cannot open it
    (broken by a kill as the run completed it), with the rows that ``records`` (parts, or blocks'
    files) place there (:func:`place_rows`); returns whether it did. Their rows were written, and
    flushed to disk, before they were; completing the file changes its metadata, never those rows."""
    placed = []
    for record in records:
        with open_h5(record) as f:
            if "first_row" in f.attrs:
                if "chunk_offsets" not in f:
                    return False  # rows whose place in the file is unknown
                placed.append((int(f.attrs["first_row"]), int(f.attrs["rows"]), int(f.attrs["chunk_rows"]), f["chunk_offsets"][:]))
    if not path.exists() or not placed:
        return False
    row_bytes = dim * np.dtype(dtype).itemsize
    recovered = path.with_name(path.name + ".tmp")  # removed with the work folder's other leftovers if killed
    output = OutputFile(recovered, images, dim, dtype)
    try:
        with open(path, "rb") as raw:
            for first_row, rows, per_chunk, offsets in placed:
                for start, end, position in _runs(first_row, rows, per_chunk, offsets, row_bytes):
                    raw.seek(position)
                    values = np.frombuffer(raw.read((end - start) * row_bytes), dtype=dtype)
                    if values.size != (end - start) * dim:
                        return False  # the file is shorter than its rows: not one to recover
                    output._features[start:end] = values.reshape(-1, dim)
        OutputFile._flush(output._file)
    finally:
        output.close()
    replace_durably(recovered, path)
    return True


def _runs(first_row: int, rows: int, per_chunk: int, offsets: np.ndarray, row_bytes: int) -> Iterator[tuple[int, int, int]]:
    """(first row, end row, byte position in the file) of each run of rows ``[first_row, first_row +
    rows)`` that lies in one chunk, the chunks of ``per_chunk`` rows being at ``offsets``."""
    for k, offset in enumerate(offsets, start=first_row // per_chunk):
        start, end = max(first_row, k * per_chunk), min(first_row + rows, (k + 1) * per_chunk)
        yield start, end, int(offset) + (start - k * per_chunk) * row_bytes


def holds_rows(path: Path, images: ImageSet, dim: int, dtype: str) -> bool:
    """Whether ``path`` is an :class:`OutputFile` of rows for ``images`` (that a killed run left)."""
    f = _rows_file(path, images, dim, dtype, "r")
    if f is not None:
        f.close()
    return f is not None


def _rows_file(path: Path, images: ImageSet, dim: int, dtype: str, mode: str) -> h5py.File | None:
    try:
        f = open_h5(path, mode)
    except OSError:  # none, or not a whole HDF5 file (killed as it was made)
        return None
    features = f.get("features")
    if (isinstance(features, h5py.Dataset) and features.shape == (len(images), dim) and features.dtype == dtype
            and f.attrs.get("images_sha256") == images.digest()):
        return f
    f.close()
    return None
