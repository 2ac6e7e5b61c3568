"""Retry: describe again the images that a finished extraction recorded as failed, and rewrite its
file with those that now succeed (the storage was away for a while; files were repaired since).

The file is checked to be the one that the same options and the same image set make, the failed
images alone are described, and the new file (the old rows with the new ones in their place, and
the images that still fail with their new reasons) replaces the old one only once it is whole.
"""

from __future__ import annotations

import bisect
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from .discover import ImageSet
from .errors import VggfeatError
from .extractor import Extractor
from .job import config_changes
from .store import create_datasets, mark_complete, open_features_file, open_h5, work_folder, written_atomically

BLOCK_BYTES = 64 * 2**20  # of the old file's descriptors copied at a time


@dataclass(frozen=True)
class RetryResult:
    output: Path
    retried: int  # images described again
    recovered: int  # of those, the ones that are rows now
    rows: int
    failed: int
    seconds: float


@dataclass(frozen=True)
class _Row:
    path: str
    label: int
    features: np.ndarray
    size: tuple[int, int]


def check_rewritable(output: Path, extractor: Extractor, dtype: str, option: str = "--retry-failed") -> None:
    """Refuse, before the images are found, an ``output`` that ``option`` cannot rewrite: its
    extraction is not finished (its work folder is there), it is not a complete descriptor file,
    or it was made with other options than ``extractor``'s and ``dtype``."""
    work = work_folder(output)
    if work.exists():
        raise VggfeatError(f"{work} exists: an extraction into {output} is running or was interrupted; run it to its "
                           f"end (the same command without {option}) first")
    with open_features_file(output, "output") as f:
        changes = config_changes(json.loads(f.attrs["config"]), {**extractor.config(), "dtype": dtype})
    if changes:
        raise VggfeatError(f"{output} was made with other options ({'; '.join(changes)}); give {option} the "
                           "options that made it")


def retry_failed(
    extractor: Extractor,
    images: ImageSet,
    output: str | os.PathLike,
    *,
    dtype: str = "float32",
    shard: tuple[int, int] | None = None,
    provenance: dict | None = None,
    progress: Callable[[int], None] | None = None,
) -> RetryResult:
    """Describe again the images in ``output``'s ``/failed`` and rewrite ``output`` with them.

    ``extractor``, ``images``, ``dtype`` and ``shard`` must be those that made ``output``; ``progress(n)``
    after each chunk of images described. Memory holds the descriptors of the retried images.
    """
    began = time.perf_counter()
    output = Path(output)
    images = images.shard(*shard) if shard else images
    check_rewritable(output, extractor, dtype)
    with open_features_file(output, "output") as old:
        if old.attrs.get("images_sha256") != images.digest():
            raise VggfeatError(f"{output} describes another set of images ({int(old.attrs.get('images_found', -1)):,} "
                               f"then, {len(images):,} now, or other names or labels); retry with the images that made it")
        failed = [_index_of(images, path) for path in old["failed/paths"].asstr()[:]]
        if not failed:  # nothing to do: the file stays as it is
            return RetryResult(output, 0, 0, old["features"].shape[0], 0, time.perf_counter() - began)
        files = images.files()
        rows: list[_Row] = []
        still_failed: list[tuple[int, str]] = []
        for chunk in extractor.iter_chunks([files[i] for i in failed]):
            rows += [_Row(images.paths[failed[i]], int(images.labels[failed[i]]), features.astype(dtype), size)
                     for i, features, size in zip(chunk.indices, chunk.features, chunk.sizes)]
            still_failed += [(failed[i], reason) for i, reason in chunk.failures]
            if progress:
                progress(chunk.end - chunk.start)
        rows.sort(key=lambda row: row.path)  # the file's order (it is /failed's already)
        with written_atomically(output) as temporary, open_h5(temporary, "w") as out:
            _rewrite(old, out, rows, [(images.paths[i], reason) for i, reason in still_failed], dtype)
            attrs = {key: value for key, value in old.attrs.items() if key != "complete"}
            attrs.update(failures_retried=datetime.now(timezone.utc).isoformat(timespec="seconds"), **(provenance or {}))
            mark_complete(out, attrs)
        total = old["features"].shape[0] + len(rows)
    return RetryResult(output, len(failed), len(rows), total, len(still_failed), time.perf_counter() - began)


def _index_of(images: ImageSet, path: str) -> int:
    index = bisect.bisect_left(images.paths, path)  # the paths are sorted
    if index == len(images.paths) or images.paths[index] != path:
        raise VggfeatError(f"{path}, failed in the file, is not among the images")  # a damaged file
    return index


def _rewrite(old: h5py.File, out: h5py.File, rows: list[_Row], failures: list[tuple[str, str]], dtype: str) -> None:
    """The old file's rows, a block at a time, with ``rows`` inserted in path order; then ``failures``."""
    count, dim = old["features"].shape
    features, paths, labels, sizes, failed_paths, failed_errors = create_datasets(
        out, count + len(rows), len(failures), dim, dtype, list(old["classes"].asstr()[:]))
    written = taken = 0
    block_rows = max(1, BLOCK_BYTES // (dim * np.dtype(dtype).itemsize))
    for start in range(0, max(count, 1), block_rows):
        end = min(start + block_rows, count)
        block_paths = list(old["paths"].asstr()[start:end])
        # New rows up to this block's last path go in it; the last block takes all that are left.
        upto = taken
        while upto < len(rows) and (end == count or rows[upto].path < block_paths[-1]):
            upto += 1
        new = rows[taken:upto]
        at = [bisect.bisect_left(block_paths, row.path) for row in new]
        block = [
            np.insert(old["features"][start:end], at, np.array([row.features for row in new]).reshape(-1, dim), axis=0),
            np.insert(np.array(block_paths, dtype=object), at, [row.path for row in new]),
            np.insert(old["labels"][start:end], at, [row.label for row in new]),
            np.insert(old["sizes"][start:end], at, np.array([row.size for row in new]).reshape(-1, 2), axis=0),
        ]
        n = len(block[1])
        for target, values in zip((features, paths, labels, sizes), block):
            target[written : written + n] = values
        written, taken = written + n, upto
    failed_paths[:] = [path for path, _ in failures]
    failed_errors[:] = [reason for _, reason in failures]
