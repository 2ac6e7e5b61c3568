"""Features: read descriptor files written by ``vggfeat extract``, for the classifier and retrieval stages.

:class:`FeatureFile` opens one file and refuses anything that is not a complete vggfeat file;
:func:`load_features` reads one or several files (fused row by row, matched by path) into a
:class:`Features` bundle. Descriptors are read in row chunks straight into the array the caller
keeps, so the file's float32/float16 data is never held twice in memory.

:func:`config_differences` says, in words, how two extraction configurations differ in the keys
that change what a descriptor means (:data:`MATCHING_KEYS`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .errors import VggfeatError

# Keys of the extraction config that must agree for two files' descriptors to be comparable: they
# change the numbers themselves. Not compared: precision (bf16/fp16 descriptors agree with fp32 to a
# cosine of ~0.99999, well inside what an SVM tolerates), dtype (float16 storage only rounds),
# weights name and seed (weights_sha256 identifies the parameters whatever their source),
# max_pixels/min_side (which images are refused, not what the others give) and the device.
MATCHING_KEYS = ("model", "weights_sha256", "layer", "pooling", "scales", "aggregate", "flip", "preprocessing", "dim",
                 "resize_side", "normalize", "gem_p", "center_crop")
# What files written before a key existed were made with.
_DEFAULTS = {"resize_side": "short", "normalize": "none", "center_crop": False}
_REQUIRED = ("features", "paths", "labels", "classes")
_READ_BYTES = 64 * 2**20  # per chunk read from the file


class FeatureFile:
    """One complete descriptor file, opened read-only; use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            hint = " (an extraction is still running or was interrupted)" if self.path.with_name(self.path.name + ".parts").is_dir() else ""
            raise VggfeatError(f"features file not found: {self.path}{hint}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError:
            raise VggfeatError(f"{self.path} is not an HDF5 file") from None
        try:
            missing = [name for name in _REQUIRED if name not in self._file]
            if missing or "config" not in self._file.attrs:
                raise VggfeatError(f"{self.path} is not a vggfeat features file (no {', '.join(missing) or 'config attribute'})")
            if not bool(self._file.attrs.get("complete", False)):
                raise VggfeatError(f"{self.path} is incomplete (complete=False): finish or redo the extraction first")
            self.features = self._file["features"]
            self.paths: list[str] = list(self._file["paths"].asstr()[:])
            self.labels: np.ndarray = self._file["labels"][:].astype(np.int64)
            self.classes: list[str] = list(self._file["classes"].asstr()[:])
            self.config: dict = json.loads(self._file.attrs["config"])
        except VggfeatError:
            self._file.close()
            raise
        except (KeyError, ValueError, TypeError) as error:
            self._file.close()
            raise VggfeatError(f"{self.path} is not a readable vggfeat features file ({error})") from None
        if self.features.ndim != 2 or self.features.shape[0] != len(self.paths) or len(self.labels) != len(self.paths):
            self._file.close()
            raise VggfeatError(f"{self.path} is damaged: /features, /paths and /labels disagree in length")

    @property
    def rows(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def read(self, rows: np.ndarray | None = None, out: np.ndarray | None = None, dtype=np.float64) -> np.ndarray:
        """Descriptors of ``rows`` (all by default, in the given order) into ``out`` or a new array."""
        rows = np.arange(self.rows) if rows is None else np.asarray(rows, dtype=np.int64)
        if out is None:
            out = np.empty((len(rows), self.dim), dtype=dtype)
        step = max(1, _READ_BYTES // (self.dim * self.features.dtype.itemsize))
        if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            for start in range(0, len(rows), step):  # consecutive rows: plain slices, no gathering
                out[start : start + step] = self.features[rows[0] + start : rows[0] + min(start + step, len(rows))]
            return out
        # HDF5 reads a sorted selection fastest: read in sorted order, place rows where asked.
        order = np.argsort(rows, kind="stable")
        for start in range(0, len(rows), step):
            where = order[start : start + step]
            wanted = rows[where]
            unique, inverse = np.unique(wanted, return_inverse=True)
            if unique[-1] - unique[0] + 1 == len(unique):  # a contiguous run: one slice
                block = self.features[unique[0] : unique[-1] + 1]
            else:
                block = self.features[unique]
            out[where] = block[inverse]
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Features:
    """Descriptors with their paths, labels and the extraction configuration of each source file."""

    X: np.ndarray  # [N, D] float64 (several files: their descriptors side by side)
    paths: list[str]
    labels: np.ndarray  # [N] index into classes, -1 where unlabelled
    classes: list[str]
    configs: list[dict] = field(default_factory=list)  # one per fused file, in order
    sources: list[str] = field(default_factory=list)

    @property
    def dims(self) -> list[int]:
        return [int(config.get("dim", -1)) for config in self.configs]


def load_features(
    files: str | os.PathLike | Sequence[str | os.PathLike],
    paths: Sequence[str] | None = None,
    dtype=np.float64,
    expected_configs: Sequence[dict] | None = None,
    expected_by: str = "the model",
) -> Features:
    """Read one file, or several fused by path (their descriptors concatenated per image).

    ``paths`` restricts (and orders) the rows; every one must be in every file. Fusing needs the
    files to hold the same images: the first file's rows set the order, and the others are matched
    to them by path, so files extracted from the same set in any order fuse correctly.
    ``expected_configs`` (one per file) are checked with :func:`check_configs` before any
    descriptor is read.
    """
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not files:
        raise VggfeatError("give at least one features file")
    opened = []
    try:
        for name in files:
            opened.append(FeatureFile(name))
        if expected_configs is not None:
            check_configs(expected_configs, [f.config for f in opened], expected_by)
        first = opened[0]
        wanted = list(first.paths) if paths is None else list(paths)
        rows_per_file = [_rows_of(f, wanted, None if f is first else first, whole=paths is None) for f in opened]
        X = np.empty((len(wanted), sum(f.dim for f in opened)), dtype=dtype)
        column = 0
        for f, rows in zip(opened, rows_per_file):
            f.read(rows, out=X[:, column : column + f.dim])
            column += f.dim
        first_rows = rows_per_file[0]
        return Features(
            X=X,
            paths=wanted,
            labels=first.labels[first_rows],
            classes=first.classes,
            configs=[f.config for f in opened],
            sources=[str(f.path) for f in opened],
        )
    finally:
        for f in opened:
            f.close()


def config_differences(expected: dict, actual: dict, keys: Sequence[str] = MATCHING_KEYS) -> list[str]:
    """``["layer: fc7 expected, fc6 found", ...]`` for each of ``keys`` whose values differ."""
    differences = []
    for key in keys:
        want, got = expected.get(key, _DEFAULTS.get(key)), actual.get(key, _DEFAULTS.get(key))
        if want != got:
            differences.append(f"{key}: {_show(want)} expected, {_show(got)} found")
    return differences


def check_configs(expected: Sequence[dict], actual: Sequence[dict], what: str = "the model") -> None:
    """Refuse features whose extraction differs from ``expected`` (one config per fused file)."""
    if len(expected) != len(actual):
        raise VggfeatError(f"{what} was trained on {len(expected)} fused features file(s), got {len(actual)}; "
                           "pass the same --features files in the same order")
    for index, (want, got) in enumerate(zip(expected, actual)):
        differences = config_differences(want, got)
        if differences:
            which = f" (features file {index + 1})" if len(expected) > 1 else ""
            raise VggfeatError(f"features extracted with a different configuration than {what}{which}: {'; '.join(differences)}")


def _rows_of(f: FeatureFile, wanted: list[str], reference: FeatureFile | None, whole: bool) -> np.ndarray:
    index = {path: row for row, path in enumerate(f.paths)}
    missing = [path for path in wanted if path not in index]
    if missing:
        if reference is not None:
            raise VggfeatError(f"cannot fuse {reference.path} and {f.path}: {len(missing)} path(s) are "
                               f"not in the second (e.g. {missing[0]})")
        raise VggfeatError(f"{len(missing)} path(s) are not in {f.path} (e.g. {missing[0]})")
    if whole and reference is not None and len(f.paths) != len(reference.paths):
        raise VggfeatError(f"cannot fuse {reference.path} ({len(reference.paths)} rows) and {f.path} ({len(f.paths)} rows): "
                           "they hold different images")
    return np.array([index[path] for path in wanted], dtype=np.int64)


def _show(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:39] + "…"
