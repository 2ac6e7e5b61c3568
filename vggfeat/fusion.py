"""Fusion: the posteriors of several networks over the same images, averaged (the paper's ConvNet
fusion, Sec. 4.4).

Each network's file holds, in path order, the images it classified as rows and the others as
failures. Networks may disagree on which failed: a file that could not be read during one
network's run (a network file system's hiccup), an image too large for one network's GPU memory.
An image that any network failed is failed in the fusion, with that network's reason; every other
image's posteriors are averaged over all the networks. No file's paths are read whole: an image
with n images of the collection before it, and m of a file's failures, is row n - m of that file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import h5py
import numpy as np

from .errors import VggfeatError


class FusedPosteriors:
    """The posteriors of ``files[0]`` averaged with those of ``files[1:]`` (none: ``files[0]``'s own),
    read a block of ``files[0]``'s rows at a time; the files are checked to be of the same images."""

    def __init__(self, files: Sequence[h5py.File]) -> None:
        self.files = list(files)
        self._failed = [np.asarray(file["failed/paths"].asstr()[:], dtype=object) for file in self.files]
        first_reason: dict[str, tuple[str, str]] = {}  # path: (network, reason) of the first network that failed it
        networks_failed: Counter[str] = Counter()
        for file, failed in zip(self.files, self._failed):
            for path, reason in zip(failed, file["failed/errors"].asstr()[:]):
                networks_failed[path] += 1
                first_reason.setdefault(path, (str(file.attrs.get("model")), reason))
        self.failed_paths: list[str] = sorted(first_reason)
        # A failure of every network reads as one network's; one of some networks names the first.
        self.reasons: list[str] = [reason if networks_failed[path] == len(self.files) else f"{network}: {reason}"
                                   for path in self.failed_paths for network, reason in [first_reason[path]]]

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The paths of ``files[0]``'s rows ``start:stop`` that every network classified, and their
        posteriors averaged over the networks."""
        first = self.files[0]
        posteriors, paths = first["features"][start:stop], first["paths"].asstr()[start:stop]
        if len(self.files) == 1:
            return paths, posteriors
        # Images of the collection before each: the rows before it and the failures before it.
        before = start + np.arange(len(paths)) + np.searchsorted(self._failed[0], paths)
        rows, kept = [], np.ones(len(paths), dtype=bool)
        for failed in self._failed[1:]:
            failures_before = np.searchsorted(failed, paths)
            if len(failed):  # not a failure of this network
                kept &= failed[np.minimum(failures_before, len(failed) - 1)] != paths
            rows.append(before - failures_before)
        if not kept.all():
            paths, posteriors = paths[kept], posteriors[kept]
        for file, file_rows in zip(self.files[1:], rows):
            file_rows = file_rows[kept]
            if not len(file_rows):
                continue
            # Increasing rows: one read of their range, all of it where no image between failed.
            low, high = int(file_rows[0]), int(file_rows[-1]) + 1
            within = slice(None) if high - low == len(file_rows) else file_rows - low
            if not np.array_equal(file["paths"].asstr()[low:high][within], paths):
                raise VggfeatError(f"{file.filename} and {first.filename} hold other images from row {start:,} on: "
                                   "only files of the same images fuse")
            posteriors += file["features"][low:high][within]  # summed in the files' float32, network after network
        return paths, posteriors / len(self.files)
