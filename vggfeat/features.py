"""Features: read descriptor files written by ``vggfeat extract``, for the classifier and retrieval stages.

:class:`FeatureFile` opens one file and refuses anything that is not a complete vggfeat file;
:func:`load_features` reads one or several files (fused row by row, matched by path) into a
:class:`Features` bundle. Descriptors are read in row chunks straight into the array the caller
keeps, so the file's float32/float16 data is never held twice in memory; or, with ``transform``
(an SVM's scores), a block of rows at a time, so that they are never held whole;
:func:`read_blocks` gives those blocks to a caller that writes each one's results.

:func:`config_differences` says, in words, how two extraction configurations differ in the keys
that change what a descriptor means (:data:`MATCHING_KEYS`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from .errors import VggfeatError, check_sequence
from .labels import warn_left_out
from .regions import image_of, region_of
from .files import read_damage, refusal_reason, system_error
from .store import failed_labels, open_features_file, read_after, work_folder

if TYPE_CHECKING:
    import h5py

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
Files = str | os.PathLike | Sequence[str | os.PathLike]  # one features file, or several to fuse
_READ_BYTES = 8 * 2**20  # per HDF5 read: a buffer that stays small (and cache-warm) whatever the file size
TRANSFORM_BYTES = 64 * 2**20  # read_blocks, load_features(transform=...): descriptors read at a time


class Failures(NamedTuple):
    """The images of a file that could not be described, in path order."""

    paths: list[str]
    reasons: list[str]
    labels: np.ndarray  # int64, an index into the file's classes; -1: none (or not recorded, in older files)

    def reasons_by_path(self) -> dict[str, str]:
        return dict(zip(self.paths, self.reasons))


class FeatureFile:
    """One complete descriptor file, opened read-only; use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        running = not self.path.exists() and work_folder(self.path).is_dir()  # (a folder such as "." has no work folder)
        hint = " (an extraction is still running or was interrupted)" if running else ""
        self._file = open_features_file(self.path, "features", hint, _REQUIRED)
        try:
            self.features = self._file["features"]
            self._paths = self._file["paths"]
            self.labels: np.ndarray = self._file["labels"][:].astype(np.int64)
            self.classes: list[str] = list(self._file["classes"].asstr()[:])
            if len(set(self.classes)) != len(self.classes):  # two labels of one name: a model would train them as one
                raise TypeError("a class is named twice in /classes")
            self.config: dict = json.loads(self._file.attrs["config"])
            self.root: str = str(self._file.attrs.get("input_root", ""))  # the folder paths are relative to
            self.random_weights = bool(self._file.attrs.get("random_weights", False))  # not ImageNet features
        except VggfeatError:
            self._file.close()
            raise
        except (KeyError, ValueError, TypeError, RuntimeError, OSError, AttributeError) as error:  # damaged structures
            self._file.close()
            if isinstance(error, OSError) and system_error(error) is not None:  # the system's refusal (an I/O error)
                raise
            raise VggfeatError(f"{self.path} is not a readable vggfeat features file ({refusal_reason(error)})") from None
        if len(self.labels) and (self.labels.min() < -1 or self.labels.max() >= len(self.classes)):
            self._file.close()
            raise VggfeatError(f"{self.path} is damaged: /labels holds indices outside /classes ({len(self.classes)} classes)")
        self._shape: tuple[int, int] = self.features.shape  # [rows, dim] (layout checked): for repr once closed

    def __repr__(self) -> str:  # (Python's default says nothing of the file; never every path: millions)
        stacked = [part.get("model") for part in self.config.get("stacked", [])]  # a 'vggfeat stack' file's networks
        model = self.config.get("model", stacked or None)
        closed = "" if self._file else ", closed=True"  # (an h5py File is false once closed: its datasets answer no more)
        return f"FeatureFile({str(self.path)!r}, rows={self._shape[0]:,}, dim={self._shape[1]}, model={model!r}{closed})"

    @functools.cached_property
    def paths(self) -> list[str]:
        """Each row's image path, read when first asked for: 10 million paths are about a GB and
        seconds, which the readers of failures or descriptors alone need not spend."""
        return self.paths_of(0, len(self._paths))

    def paths_of(self, start: int, stop: int) -> list[str]:
        """The paths of rows ``start`` to ``stop``, read from the file: a caller that goes through
        the rows a block at a time need not hold them all (:attr:`paths`)."""
        try:
            return list(self._paths.asstr()[start:stop])
        except UnicodeDecodeError as error:
            raise VggfeatError(f"{self.path} is not a readable vggfeat features file ({error})") from None

    @property
    def rows(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def part_dims(self) -> list[int]:
        """The dimensions of the networks' descriptors side by side in each row: those its
        configuration's stacked parts record ('vggfeat stack', 'extract --model vgg16,vgg19'; their
        sum checked on opening), or the whole row's."""
        parts = self.config.get("stacked")
        return [int(part["dim"]) for part in parts] if isinstance(parts, list) else [self.dim]

    def sizes(self) -> np.ndarray:
        """Each row's decoded (height, width), [rows, 2] int32; zeros where the file keeps none."""
        return self._file["sizes"][:] if "sizes" in self._file else np.zeros((self.rows, 2), dtype=np.int32)

    def read_after(self) -> np.ndarray:
        """Each row's /read_after (see :mod:`vggfeat.store`); NaN where the file keeps none."""
        return read_after(self._file)

    def failed(self) -> Failures:
        """The images that could not be described; read from the file on each call, as a few readers
        need them. None in a file without /failed (one written by other code than vggfeat's)."""
        if "failed" not in self._file:
            return Failures([], [], np.empty(0, dtype=np.int64))
        return Failures(list(self._file["failed/paths"].asstr()[:]), list(self._file["failed/errors"].asstr()[:]),
                        failed_labels(self._file))

    def read(self, rows: np.ndarray | None = None, out: np.ndarray | None = None, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
        """Descriptors of ``rows`` (indices, all by default, in the given order; or a boolean mask
        of every row, ``f.labels >= 0``) into ``out`` or a new array.

        HDF5 reads into one reused buffer of at most ``_READ_BYTES``, which is then converted into
        ``out`` (or straight into ``out`` when it is contiguous and has the file's dtype): h5py's
        ``dataset[a:b]`` would allocate a fresh array per slice, and ``out`` may be a column block of
        a fused matrix, which HDF5 cannot write into.
        """
        rows = np.arange(self.rows) if rows is None else np.asarray(rows)
        if rows.dtype == bool:  # a mask, as numpy indexes by one (as indices, its values were rows 0 and 1)
            if rows.shape != (self.rows,):
                raise VggfeatError(f"a mask of {rows.shape} for {self.path} ({self.rows} rows)")
            rows = np.flatnonzero(rows)
        if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):  # (float rows were truncated: 1.5 read row 1)
            raise VggfeatError(f"rows of {self.path}: a list of row indices or a boolean mask, got {rows.dtype} of "
                               f"shape {rows.shape}")
        rows = rows.astype(np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.rows):
            raise VggfeatError(f"row {rows.min() if rows.min() < 0 else rows.max()} is not in {self.path} ({self.rows} rows)")
        if out is None:
            out = np.empty((len(rows), self.dim), dtype=dtype)
        if len(rows) == 0:
            return out
        step = max(1, _READ_BYTES // (self.dim * self.features.dtype.itemsize))
        if _is_run(rows):
            self._read_run(int(rows[0]), out, step)
        else:
            self._read_gathered(rows, out, step)
        return out

    def _read_run(self, first: int, out: np.ndarray, step: int) -> None:
        """Rows ``first, first + 1, ...`` into ``out``: plain slices, the fastest HDF5 read."""
        direct = out.dtype == self.features.dtype and out.flags.c_contiguous
        buffer = None if direct else np.empty((min(step, len(out)), self.dim), dtype=self.features.dtype)
        for start in range(0, len(out), step):
            stop = min(start + step, len(out))
            source = np.s_[first + start : first + stop]
            if direct:
                self.features.read_direct(out, source, np.s_[start:stop])
            else:
                self.features.read_direct(buffer, source, np.s_[: stop - start])
                out[start:stop] = buffer[: stop - start]
            self._check_finite(out[start:stop], first + start)

    def _read_gathered(self, rows: np.ndarray, out: np.ndarray, step: int) -> None:
        """Any rows, repeats allowed, placed where asked.

        h5py's fancy indexing costs ~0.1 ms a row (40,000 scattered rows: 5 s), so rows are read
        as slices instead: spans of whole chunks (whole MiBs for an unchunked dataset), up to
        ``step`` rows each, that skip every chunk holding no wanted row.
        """
        unit = self.features.chunks[0] if self.features.chunks else max(1, 2**20 // (self.dim * self.features.dtype.itemsize))
        capacity = max(unit, step // unit * unit)
        buffer = np.empty((min(capacity, self.rows), self.dim), dtype=self.features.dtype)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        start = 0
        while start < len(ordered):
            first = ordered[start] // unit * unit
            stop = int(np.searchsorted(ordered, first + capacity, side="left"))
            units = ordered[start:stop] // unit
            gaps = np.flatnonzero(np.diff(units) > 1)  # a chunk with no wanted row: end the span before it
            if len(gaps):
                stop = start + int(gaps[0]) + 1
            end = min((ordered[stop - 1] // unit + 1) * unit, self.rows)
            self.features.read_direct(buffer, np.s_[first:end], np.s_[: end - first])
            self._check_finite(buffer[: end - first], first, wanted=ordered[start:stop] - first)
            out[order[start:stop]] = buffer[ordered[start:stop] - first]
            start = stop

    def _check_finite(self, block: np.ndarray, first: int, wanted: np.ndarray | None = None) -> None:
        """Refuse rows ``first, first + 1, ...`` of the file, read into ``block``, where one of them
        (among ``wanted``, of the block's rows) holds NaN or an infinity (:func:`damaged_row`)."""
        bad = not_finite_rows(block)
        if wanted is not None:
            bad = np.intersect1d(bad, wanted)
        if len(bad):
            row = first + int(bad[0])
            raise damaged_row(self.path, row, self.paths[row])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        damage = read_damage(error, self._file)
        self.close()
        if damage is not None:
            raise damage from error


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

    def __repr__(self) -> str:  # (the dataclass's would list every path: millions, in a notebook)
        return (f"Features(rows={len(self.paths):,}, dim={self.X.shape[1] if self.X.ndim == 2 else '?'}, "
                f"classes={len(self.classes)}, sources={self.sources})")


def not_finite_rows(block: np.ndarray) -> np.ndarray:
    """The rows of ``block`` [n, d] that hold NaN or an infinity."""
    if block.dtype == np.float16:  # numpy's isfinite is slow on float16: its exponent's bits, all set
        return np.flatnonzero(((block.view(np.uint16) & 0x7C00) == 0x7C00).any(axis=1))
    return np.flatnonzero(~np.isfinite(block).all(axis=1))


def damaged_row(path: str | os.PathLike, row: int, image: str) -> VggfeatError:
    """The refusal of a file whose descriptor of ``row`` (of ``image``) holds NaN or an infinity:
    extraction records such an image as failed rather than write it, so the file is damaged (or was
    written otherwise), and whatever is computed from it would be NaN or meaningless, silently."""
    return VggfeatError(f"{path} is damaged: the descriptor of row {row} ({image}) holds NaN or infinite values, which "
                        "extraction never writes (it records such an image as failed); describe the images again "
                        "(extract --overwrite)")


def finite_blocks(f: h5py.File, path: str | os.PathLike, step: int) -> Iterator[np.ndarray]:
    """The rows of the /features of ``f`` (the file at ``path``), ``step`` at a time (a whole-file
    check would hold them all), each block refused where one of its rows holds NaN or an infinity
    (:func:`damaged_row`, naming the row and its image)."""
    features = f["features"]
    for start in range(0, features.shape[0], step):
        block = features[start : start + step]
        bad = not_finite_rows(block)
        if len(bad):  # the path read only to name the image
            row = start + int(bad[0])
            raise damaged_row(path, row, f["paths"].asstr()[row])
        yield block


def load_features(
    files: Files,
    paths: Sequence[str] | None = None,
    dtype: npt.DTypeLike = np.float64,
    expected_configs: Sequence[dict] | None = None,
    expected_by: str = "the model",
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Features:
    """Read one file, or several fused by path (their descriptors concatenated per image).

    ``paths`` restricts (and orders) the rows; every one must be in every file. Fusing needs the
    files to hold the same images: the first file's rows set the order, and the others are matched
    to them by path, so files extracted from the same set in any order fuse correctly. Without
    ``paths``, an image that another file could not describe is left out, with a warning. Labels
    and classes are the first file's (:attr:`Fused.labelling` is the file that labels them all).
    ``expected_configs`` (one per file) are checked with :func:`check_configs` before any
    descriptor is read.

    With ``transform`` (a model's ``class_scores``, say), ``X`` is ``transform`` of the rows,
    read and transformed a block at a time (see :func:`read_blocks`): the descriptors are never
    held whole, whatever the file's size.
    """
    if paths is not None:
        check_sequence(paths, "the rows' paths")
    with _fused(files, paths, expected_configs, expected_by) as fused:
        if transform is None:
            X = _read_fused(fused.opened, fused.rows_per_file, np.empty((len(fused.paths), fused.width), dtype=dtype))
        else:  # into one array made for them all: a concatenation would hold every block's besides
            X, start = None, 0
            for _, block in fused.blocks(dtype):
                transformed = transform(block)
                if X is None:
                    X = np.empty((len(fused.paths), *transformed.shape[1:]), dtype=transformed.dtype)
                X[start : start + len(transformed)] = transformed
                start += len(transformed)
        first, first_rows = fused.opened[0], fused.rows_per_file[0]
        return Features(
            X=X,
            paths=fused.paths,
            labels=first.labels[first_rows],
            classes=first.classes,
            configs=[f.config for f in fused.opened],
            sources=[str(f.path) for f in fused.opened],
        )


def read_blocks(
    files: Files,
    dtype: npt.DTypeLike = np.float64,
    expected_configs: Sequence[dict] | None = None,
    expected_by: str = "the model",
) -> Iterator[tuple[list[str], np.ndarray]]:
    """(paths, descriptors) of the rows :func:`load_features` reads, a block of about
    TRANSFORM_BYTES of ``dtype`` at a time (one empty block where there is no row), so that a
    caller that writes what it makes of each block never holds the descriptors, nor its results,
    whole. The files are open until the blocks run out (or the iterator is closed)."""
    with _fused(files, None, expected_configs, expected_by) as fused:
        yield from fused.blocks(dtype)


@dataclass
class Fused:
    """Open files matched by path: the rows of each file that make each of ``paths``; ``left_out``:
    the images of the first that another could not describe, path to ``"failed in FILE: reason"``;
    ``whole_image``: for each file, whether it gives the first's regions their image's row (I+B)."""

    opened: list[FeatureFile]
    paths: list[str]
    rows_per_file: list[np.ndarray]
    left_out: dict[str, str] = field(default_factory=dict)
    whole_image: list[bool] = field(default_factory=list)

    @property
    def width(self) -> int:
        return sum(f.dim for f in self.opened)

    @functools.cached_property
    def labelling(self) -> int:
        """Which file gives the images their labels: the first that has classes (one described
        from a flat folder or a list has none and takes the others'). Refuses files whose labels
        of the same image differ (one made with --archive-classes and one without, say): one
        file's labels would silently stand for the other's."""
        return _labelling(self.opened, self.rows_per_file, self.whole_image, self.paths)

    @property
    def classes(self) -> list[str]:
        return self.opened[self.labelling].classes

    @property
    def labels(self) -> np.ndarray:
        """Each of ``paths``' label, an index into ``classes`` (-1: none)."""
        return self.opened[self.labelling].labels[self.rows_per_file[self.labelling]]

    def labels_of(self, paths: Sequence[str]) -> list[int]:
        """The label of each of ``paths`` (described or failed) in the labelling file; -1 where it has none."""
        f = self.opened[self.labelling]
        failed = f.failed()
        wanted = set(paths)
        found = {path: int(label) for path, label in zip(failed.paths, failed.labels) if path in wanted}
        if len(found) < len(wanted):  # (not for the first's failures labelled by the first: rows unread)
            found.update((path, int(label)) for path, label in zip(f.paths, f.labels) if path in wanted)
        return [found.get(path, -1) for path in paths]

    def blocks(self, dtype: npt.DTypeLike) -> Iterator[tuple[list[str], np.ndarray]]:
        step = max(1, TRANSFORM_BYTES // (np.dtype(dtype).itemsize * self.width))
        for start in range(0, max(1, len(self.paths)), step):  # once, for no row: a transform gives its shape
            rows = [each[start : start + step] for each in self.rows_per_file]
            block = _read_fused(self.opened, rows, np.empty((len(rows[0]), self.width), dtype=dtype))
            yield self.paths[start : start + step], block


@contextlib.contextmanager
def _fused(files: Files, paths: Sequence[str] | None, expected_configs: Sequence[dict] | None,
           expected_by: str, say_left_out: bool = True) -> Iterator[Fused]:
    """``files`` opened, checked against ``expected_configs`` and matched by path (see
    :func:`load_features`); ``say_left_out``: warn of the images that another file failed."""
    with contextlib.ExitStack() as stack:
        opened = [stack.enter_context(FeatureFile(name)) for name in file_list(files)]
        first = opened[0]
        # The paper's image-and-box descriptor (I+B): regions fused with a file of whole images
        # take their image's row from it. Known before the check: a model's networks are matched
        # part by part, and a part of whole images is another descriptor than one of regions.
        by_image = _by_image(opened)
        whole_image = [False, *by_image]
        if expected_configs is not None:
            check_configs(expected_configs, [f.config for f in opened], expected_by, whole_image,
                          holds_regions=lambda: _holds_regions(first))
        failures = {}
        if paths is None:  # the images that every file describes
            failures = _failures_of_others(opened, by_image)
            if say_left_out:
                warn_left_out([path for path in first.paths if path in failures], failures, f"of {first.path}")
            wanted = [path for path in first.paths if path not in failures]
        else:
            wanted = list(paths)
        rows_per_file = [_rows_of(f, wanted, None if f is first else first, whole=paths is None, by_image=whole)
                         for f, whole in zip(opened, whole_image)]
        yield Fused(opened, wanted, rows_per_file, failures, whole_image)


def _labelling(opened: Sequence[FeatureFile], rows_per_file: Sequence[np.ndarray], whole_image: Sequence[bool],
               paths: Sequence[str]) -> int:
    """:attr:`Fused.labelling`. A file of whole images fused with regions (``whole_image``)
    labels none: a region's label is its own."""
    labelled = [number for number, f in enumerate(opened) if f.classes and not whole_image[number]]
    if not labelled:
        return 0
    reference = opened[labelled[0]]
    expected = reference.labels[rows_per_file[labelled[0]]]
    index = {name: label for label, name in enumerate(reference.classes)}
    for number in labelled[1:]:
        f = opened[number]
        # f's labels as indices into the reference's classes (-2: a class it lacks; the last: none)
        as_reference = np.array([index.get(name, -2) for name in f.classes] + [-1], dtype=np.int64)
        differ = np.flatnonzero(as_reference[f.labels[rows_per_file[number]]] != expected)
        if len(differ):
            row = differ[0]
            raise VggfeatError(
                f"cannot fuse {reference.path} and {f.path}: they label {len(differ)} image(s) differently (e.g. "
                f"{paths[row]}: {_class_name(reference, expected[row])} in the first, "
                f"{_class_name(f, f.labels[rows_per_file[number][row]])} in the second); describe both with the same "
                "labelling (the same folder, --archive-classes given to both or neither)")
    return labelled[0]


@contextlib.contextmanager
def fused_files(files: Files, say_left_out: bool = True) -> Iterator[Fused]:
    """``files`` opened and matched by path as :func:`load_features` fuses them (the images that
    every file describes, in the first's order): read a block at a time with ``.blocks(dtype)``;
    ``say_left_out``: warn of the images that another file failed."""
    with _fused(files, None, None, "", say_left_out) as fused:
        yield fused


def _read_fused(opened: Sequence[FeatureFile], rows_per_file: Sequence[np.ndarray], out: np.ndarray) -> np.ndarray:
    """The ``rows_per_file`` of each of the ``opened`` files, side by side in ``out``."""
    column = 0
    for f, rows in zip(opened, rows_per_file):
        f.read(rows, out=out[:, column : column + f.dim])
        column += f.dim
    return out


def part_dims(files: Files) -> list[int]:
    """The dimensions of each network's part of the rows of ``files`` fused: each file's own parts
    (:attr:`FeatureFile.part_dims`), in order."""
    with contextlib.ExitStack() as stack:
        return [dim for name in file_list(files) for dim in stack.enter_context(FeatureFile(name)).part_dims]


def fused_failures(files: Files) -> dict[str, str]:
    """The images that a file after the first could not describe: path to ``"failed in FILE: reason"``. Fused
    with the first, such an image has no descriptor: it is left out."""
    with contextlib.ExitStack() as stack:
        opened = [stack.enter_context(FeatureFile(name)) for name in file_list(files)]
        return _failures_of_others(opened, _by_image(opened))


def _by_image(opened: Sequence[FeatureFile]) -> list[bool]:
    """For each file after the first, whether it gives the regions of the first their image's row:
    the first holds regions, it whole images (the paper's I+B)."""
    regions = len(opened) > 1 and _holds_regions(opened[0])
    return [regions and not _holds_regions(f) for f in opened[1:]]


def _failures_of_others(opened: Sequence[FeatureFile], by_image: list[bool]) -> dict[str, str]:
    """:func:`fused_failures` of the ``opened`` files (``by_image``: :func:`_by_image`'s): paths as
    the first names them (a region of the first whose image failed in a file of whole images, too)."""
    failures = _failures_of([f for f, whole in zip(opened[1:], by_image) if not whole])
    image_failures = _failures_of([f for f, whole in zip(opened[1:], by_image) if whole])
    if image_failures:
        for path in [*opened[0].paths, *opened[0].failed().paths]:
            if image_of(path) in image_failures:
                failures.setdefault(path, image_failures[image_of(path)])
    return failures


def _failures_of(others: Sequence[FeatureFile]) -> dict[str, str]:
    failures: dict[str, str] = {}
    for f in others:
        failed = f.failed()
        for path, reason in zip(failed.paths, failed.reasons):
            failures.setdefault(path, f"failed in {f.path}: {reason}")
    return failures


def file_list(files: Files) -> list[str | os.PathLike]:
    """One features file or several (to fuse) as a list; refuses an empty one, and a file given twice."""
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not files:
        raise VggfeatError("give at least one features file")
    seen: dict[tuple[int, int], int] = {}  # (device, inode): the first file's place in the list
    for number, name in enumerate(files):
        with contextlib.suppress(OSError):  # a file that is not there: its reader says so
            status = os.stat(name)
            key = status.st_dev, status.st_ino
            if key in seen:
                first = files[seen[key]]
                twice = f"{name} is given twice" if str(first) == str(name) else f"{first} and {name} are the same file"
                raise VggfeatError(f"{twice}: fused or stacked with itself, a file's descriptors would be repeated "
                                   "side by side")
            seen[key] = number
    return files


def with_defaults(config: dict) -> dict:
    """``config`` with the keys added since a file of an earlier version was written (which lacks
    them) at the value it was made with: ``center_crop`` false, ... (of stacked descriptors, in each part)."""
    if isinstance(config.get("stacked"), list):
        return {**config, "stacked": [with_defaults(part) if isinstance(part, dict) else part for part in config["stacked"]]}
    return {**_DEFAULTS, **config}


def config_differences(expected: dict, actual: dict, keys: Sequence[str] = MATCHING_KEYS) -> list[str]:
    """``["layer: fc7 expected, fc6 found", ...]`` for each of ``keys`` whose values differ; of
    stacked descriptors (:mod:`vggfeat.stack`), for each file's part, and where a part describes
    each region's whole image in one and not in the other (``whole_image``, I+B)."""
    if "stacked" in expected or "stacked" in actual:
        want, got = expected.get("stacked", [expected]), actual.get("stacked", [actual])
        if len(want) != len(got):
            return [f"stacked: the descriptors of {len(want)} file(s) side by side expected, of {len(got)} found"]
        want_whole, got_whole = part_flags([expected], [False]), part_flags([actual], [False])
        differences = []
        for number, (each, other) in enumerate(zip(want, got), 1):
            differences += [f"stacked file {number}, {difference}"
                            for difference in config_differences(each, other, keys)]
            if want_whole[number - 1] != got_whole[number - 1]:
                differences.append(f"stacked file {number}, {_whole_image_difference(want_whole[number - 1])}")
        return differences
    differences = []
    for key in keys:
        want, got = expected.get(key, _DEFAULTS.get(key)), actual.get(key, _DEFAULTS.get(key))
        if want != got:
            differences.append(f"{key}: {_show(want)} expected, {_show(got)} found")
    return differences


def check_configs(expected: Sequence[dict], actual: Sequence[dict], what: str = "the model",
                  whole_image: Sequence[bool] | None = None, holds_regions: Callable[[], bool] | None = None) -> None:
    """Refuse features whose extraction differs from ``expected`` (one config per fused file).

    Several networks' descriptors side by side are the same rows whether each network's come from
    a file of its own, fused (``--features d.h5 --features e.h5``), or all from one stacked file
    ('vggfeat stack', 'extract --model vgg16,vgg19'): features are taken where their networks'
    parts (:func:`network_parts`) match ``expected``'s part by part, in order, however they are
    grouped into files. Refused otherwise, naming the parts that differ (as the files were given),
    or their numbers where they differ.

    Grouped otherwise, each part must also describe what ``expected``'s did: each row, or each
    region's whole image (I+B), which a stacked file records (``"whole_image"``) and fused files
    give as they are read: ``whole_image``, for each of ``actual``'s files, whether it gives the
    first's regions their image's row (:attr:`Fused.whole_image`; None: none does). A model of
    fused files records not which of them did: features grouped otherwise are refused where
    ``holds_regions()`` (asked then alone: a scan of the first file's paths) says their rows are regions."""
    want, got = network_parts(expected), network_parts(actual)
    if len(want) != len(got):
        if len(want) == len(expected) and len(got) == len(actual):  # a file per network on both sides
            raise VggfeatError(f"{what} was trained on {len(expected)} fused features file(s), got {len(actual)}; pass "
                               "the same --features files in the same order")
        raise VggfeatError(f"{what} was trained on the descriptors of {len(want)} network(s) side by side "
                           f"({_models(want)}), got {len(got)} ({_models(got)}); pass the same networks in the same "
                           "order: a --features file each, or one file stacked from them")
    if [len(_stacked_parts(config)) for config in expected] == [len(_stacked_parts(config)) for config in actual]:
        # Laid out in files alike: each file's own differences.
        for index, (each, other) in enumerate(zip(expected, actual)):
            differences = config_differences(each, other)
            if differences:
                which = f" (features file {index + 1})" if len(expected) > 1 else ""
                raise VggfeatError(f"features extracted with a different configuration than {what}{which}: "
                                   f"{'; '.join(differences)}")
        return
    names = _part_names(actual)
    differences = [f"{name}, {difference}" for name, each, other in zip(names, want, got)
                   for difference in config_differences(each, other)]
    if not differences and len(expected) > 1:  # fused: which file gave the regions their images' rows is not recorded
        if holds_regions is not None and holds_regions():
            raise VggfeatError(f"{what} was trained on {len(expected)} fused features files, whose configurations do "
                               "not record which gave each region its whole image's descriptor (I+B), and these rows "
                               "are regions: pass the features files fused as it was trained (a --features file each)")
        return
    if not differences:  # one stacked file, whose first part describes its own rows
        want_whole = part_flags(expected, [False])
        got_whole = part_flags(actual, [False] * len(actual) if whole_image is None else whole_image)
        differences = [f"{name}, {_whole_image_difference(each)}"
                       for name, each, other in zip(names, want_whole, got_whole) if each != other]
    if differences:
        raise VggfeatError(f"features extracted with a different configuration than {what}: {'; '.join(differences)}")


def network_parts(configs: Sequence[dict]) -> list[dict]:
    """The configuration of each network's part of the rows of files of ``configs`` fused, in
    order: a stacked file's parts (:mod:`vggfeat.stack`) in its place, another file's own."""
    return [part for config in configs for part in _stacked_parts(config)]


def _stacked_parts(config: dict) -> list[dict]:
    parts = config.get("stacked")
    return parts if isinstance(parts, list) else [config]


def part_flags(configs: Sequence[dict], whole_image: Sequence[bool]) -> list[bool]:
    """For each of :func:`network_parts` of ``configs``, whether it describes each region's whole
    image (I+B): as a stacked file records it, or as its file gives them (``whole_image``, one a
    file); what :func:`vggfeat.stack.stacked_config` records."""
    return [whole or flag for config, whole in zip(configs, whole_image, strict=True)
            for flag in config.get("whole_image", [False] * len(_stacked_parts(config)))]


def _whole_image_difference(expected: bool) -> str:
    """A part that describes each region's whole image (I+B) where the other describes the row
    itself, or the reverse, as :func:`config_differences` says a key's values differ."""
    return f"whole_image: {_show(expected)} expected, {_show(not expected)} found"


def _part_names(configs: Sequence[dict]) -> list[str]:
    """How a refusal names each of :func:`network_parts` of ``configs``: by the features file
    given (``features file 2``), and of a stacked one, by the file it was stacked from
    (``stacked file 1``, as :func:`config_differences` names it)."""
    names = []
    for number, config in enumerate(configs, 1):
        file = f"features file {number}"
        if not isinstance(config.get("stacked"), list):
            names.append(file)
            continue
        within = f"{file}, " if len(configs) > 1 else ""
        names += [f"{within}stacked file {each}" for each in range(1, len(config["stacked"]) + 1)]
    return names


def _models(parts: Sequence[dict]) -> str:
    return ", ".join(str(part.get("model", "?")) for part in parts)


def _rows_of(f: FeatureFile, wanted: list[str], reference: FeatureFile | None, whole: bool, by_image: bool = False
             ) -> np.ndarray:
    """The row of ``f`` of each of ``wanted`` (``by_image``: of its image); ``whole``: ``f`` must
    hold the images of ``reference``, no more, no fewer."""
    if not by_image and len(wanted) == f.rows and wanted == f.paths:
        rows = np.arange(f.rows)  # every row in order (a file's own, all labelled): no index of a million paths
    else:
        index = {path: row for row, path in enumerate(f.paths)}
        if by_image:
            wanted = [image_of(path) for path in wanted]
        missing = [path for path in wanted if path not in index]
        if missing:
            if reference is not None:
                raise VggfeatError(f"cannot fuse {reference.path} and {f.path}: {len(missing)} path(s) are not in the "
                                   f"second (e.g. {missing[0]}){_retry_hint(f, missing) or _root_hint(reference, f)}")
            raise VggfeatError(f"{len(missing)} path(s) are not in {f.path} (e.g. {missing[0]})")
        rows = np.array([index[path] for path in wanted], dtype=np.int64)
    if whole and not by_image and reference is not None and _images(f) != _images(reference):
        raise VggfeatError(f"cannot fuse {reference.path} ({len(reference.paths)} rows) and {f.path} ({len(f.paths)} rows): "
                           "they hold different images")
    return rows


def _class_name(f: FeatureFile, label: int) -> str:
    return f"'{f.classes[label]}'" if label >= 0 else "unlabelled"


def _holds_regions(f: FeatureFile) -> bool:
    """Whether a row or a failure of ``f`` is a region of an image (:mod:`vggfeat.regions`)."""
    return any(region_of(path) is not None for path in [*f.paths, *f.failed().paths])


def _images(f: FeatureFile) -> set[str]:
    """Every image of a file: described (its rows) or not (its failures)."""
    return {*f.paths, *f.failed().paths}


def _retry_hint(f: FeatureFile, paths: list[str]) -> str:
    """Where ``paths``, images that ``f`` lacks, all failed in ``f`` (a file that could not be read
    as it was made, say): how to describe them, so that the files fuse."""
    reasons = f.failed().reasons_by_path()
    if not paths or any(path not in reasons for path in paths):
        return ""
    return (f"; they failed in {f.path} ({paths[0]}: {reasons[paths[0]]}): once they can be read, 'vggfeat extract "
            f"IMAGES {f.path} --retry-failed', with the options that made it, describes them")


def _root_hint(reference: FeatureFile, f: FeatureFile) -> str:
    """Where the two files' paths are relative to different folders: that, and how to make them fuse."""
    if not reference.root or not f.root or reference.root == f.root:
        return ""
    return (f"; their paths are relative to different folders ({reference.root} and {f.root}): describe both "
            "from the same one ('vggfeat extract --root' for a file list)")


def _is_run(rows: np.ndarray) -> bool:
    """Whether non-empty ``rows`` are consecutive and increasing (one slice of the file)."""
    return bool(rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1))


def _show(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:39] + "…"
