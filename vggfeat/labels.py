"""Labels: the training or test targets of a features file, from its own /labels or from a CSV.

A labels CSV has lines ``path,label``; a path may appear on several lines (one per label, for
multi-label data such as VOC) or hold several labels separated by ``;``. A header line
``path,label`` is allowed, and comment lines (``#`` first; a path that begins with ``#`` is
quoted). Only the listed paths are used, and each must be in the features file, or among the
images it could not describe (left out, with a warning).
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import VggfeatError, not_a_file
from .regions import FRAGMENT, region_path, split_region
from .textfiles import as_utf8, read_text


@dataclass
class Targets:
    """Which rows of a features file to use, and their labels."""

    paths: list[str]  # rows to use, in this order
    y: np.ndarray  # [N] class names (single-label) or [N, K] bool indicators (multi-label)
    classes: list[str]
    # Multi-label only: [N, K] bool, the rows that class k's SVM and AP leave out (VOC's "difficult").
    ignore: np.ndarray | None = None

    def without(self, paths: Container[str]) -> Targets:
        """These targets but for the rows of ``paths`` (itself where none is one of them)."""
        kept = np.array([path not in paths for path in self.paths], dtype=bool)
        if kept.all():
            return self
        return Targets([path for path, keep in zip(self.paths, kept) if keep], self.y[kept], self.classes,
                       None if self.ignore is None else self.ignore[kept])


class LabelsCsv(dict):
    """{path: [labels]} of a labels CSV; ``commented``: the paths of its comment lines that read as
    ``path,label`` (a path that begins with '#', written unquoted, as csv.writer writes it);
    ``spaced``: {path: as written} of the paths written with spaces before them (those after left out)."""

    commented: set[str]
    spaced: dict[str, str]

    def named_as(self, held: Container[str]) -> LabelsCsv:
        """These labels with each path that ``held`` holds only as written, with the spaces before it
        (a file named ' a.jpg'; others lose the spaces of a hand-written ' a.jpg , cat'), named so."""
        renamed = {path: spaced for path, spaced in self.spaced.items() if path not in held and spaced in held}
        if not renamed:
            return self
        named = LabelsCsv((renamed.get(path, path), names) for path, names in self.items())  # (file order kept)
        named.commented, named.spaced = self.commented, {}
        return named


def read_labels_csv(path: str | os.PathLike) -> LabelsCsv:
    """{path: [labels]} in file order, each label once per path; paths and labels as a features
    file's /paths and /classes name them (bytes that are not UTF-8 written ``\\xNN``)."""
    path = Path(path)
    if not path.is_file():
        raise VggfeatError(not_a_file(path, "labels file"))
    labels = LabelsCsv()
    labels.commented, labels.spaced = set(), {}
    # A line that begins with '#' is a comment (kept as an empty line, so that lines keep their
    # numbers); a path that begins with one is quoted ("#1.jpg",cat), as a cell that csv unquotes.
    lines = io.StringIO(read_text(path, names_files=True), newline="")
    rows = csv.reader(_commented(line, labels.commented) for line in lines)
    for number, row in _csv_rows(rows, path):
        if not row or not "".join(row).strip():
            continue
        if not labels and [cell.strip().lower() for cell in row[:2]] == ["path", "label"]:
            continue  # the header, before any data line
        row = _region_joined(row)
        names = [name.strip() for cell in row[1:] for name in cell.split(";") if name.strip()]
        if not row[0].strip() or not names:  # (no label: "path,", "path,;")
            raise VggfeatError(f"{path}, line {number}: expected 'path,label', got {as_utf8(','.join(row))!r}")
        listed = as_utf8(row[0].strip())
        if row[0][:1].isspace():  # (its spaces after it are left out, as a file list leaves them)
            labels.spaced[listed] = as_utf8(row[0].rstrip())
        known = labels.setdefault(listed, [])
        for name in map(as_utf8, names):  # as a file list's labels and a folder's classes are written
            if name not in known:
                known.append(name)
    if not labels:
        raise VggfeatError(f"{path} holds no labels")
    return labels


def _commented(line: str, commented: set[str]) -> str:
    """``line``, or an empty line where it is a comment, adding to ``commented`` the path of one
    that reads as ``path,label``."""
    if not line.startswith("#"):
        return line
    cells = line.split(",")
    if len(cells) >= 2 and cells[0].strip() and cells[1].strip():
        commented.add(as_utf8(cells[0].strip()))
    return "\n"


def _csv_rows(rows: Iterator[list[str]], path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line, row) of a CSV reader; its refusal (a field over its size limit: a quote opened and
    never closed takes the rest of the file in) named with the file and the line where it began."""
    number = 1
    try:
        for row in rows:
            yield number, row
            number = rows.line_num + 1
    except csv.Error as error:
        raise VggfeatError(f"{path}, line {number}: {error} (a quote not closed?)") from None


def _region_joined(row: list[str]) -> list[str]:
    """``row`` with a region's path written unquoted (``a.jpg#xywh=X,Y,W,H``, its box's commas
    splitting it into cells) one cell again, as the file list and the features file write it."""
    if FRAGMENT not in row[0] or len(row) < 4:
        return row
    try:
        path, region = split_region(",".join(row[:4]).strip())
    except ValueError:
        return row  # quoted, or not a region: as it is
    return [region_path(path, region), *row[4:]]


def targets_from_csv(labels: dict[str, list[str]], available: Sequence[str], multilabel: bool, source: str = "the labels file",
                     failed: Mapping[str, str] | None = None) -> Targets:
    """Targets for the paths in ``labels``; refuses paths that are not in ``available``, but for
    those that the file could not describe (``failed``: path to reason), which are left out with a
    warning."""
    known, failed = set(available), failed or {}
    if isinstance(labels, LabelsCsv):
        labels = labels.named_as(known | failed.keys())
    unlabelled = sorted(p for p in getattr(labels, "commented", ()) if p in known and p not in labels)
    if unlabelled:
        warnings.warn(f"{len(unlabelled):,} line(s) of {source} that begin with '#' name an image of the features file "
                      f"(e.g. {unlabelled[0]}), and were taken as comments: quote such a path (\"{unlabelled[0]}\",label) "
                      "to label its image", RuntimeWarning, stacklevel=2)
    missing = [p for p in labels if p not in known and p not in failed]
    if missing:
        raise VggfeatError(f"{len(missing)} path(s) of {source} are not in the features file (e.g. {missing[0]})")
    warn_left_out([p for p in labels if p not in known], failed, f"of {source}")
    paths = [p for p in labels if p in known]
    if multilabel:
        classes = sorted({name for names in labels.values() for name in names})
        column = {name: k for k, name in enumerate(classes)}
        y = np.zeros((len(paths), len(classes)), dtype=bool)
        for row, p in enumerate(paths):
            y[row, [column[name] for name in labels[p]]] = True
        return Targets(paths, y, classes)
    several = [p for p in paths if len(labels[p]) > 1]
    if several:
        raise VggfeatError(f"{several[0]} has labels {', '.join(labels[several[0]])} in {source}; "
                           "one label per path, or pass --multilabel")
    y = np.array([labels[p][0] for p in paths], dtype=object)
    return Targets(paths, y, sorted(set(y)))


def warn_left_out(left_out: Sequence[str], failed: Mapping[str, str], source: str) -> None:
    """That the images ``left_out`` (``of source``, say) are, as they have no descriptor (``failed``: path to why)."""
    if left_out:
        warnings.warn(f"{len(left_out):,} image(s) {source} are left out, having no descriptor "
                      f"(e.g. {left_out[0]}: {failed[left_out[0]]})", RuntimeWarning, stacklevel=3)


def targets_from_file(paths: Sequence[str], labels: np.ndarray, classes: Sequence[str], multilabel: bool,
                      exclude: Sequence[str] = ()) -> Targets:
    """Targets from a features file's own /labels: its labelled rows, minus ``exclude`` classes
    (their rows; multi-label, their columns: their rows are every class's negatives, as
    :func:`exclude_classes` and evaluation take them)."""
    _check_excluded(exclude, classes, "the file's")
    excluded = [] if multilabel else [k for k, name in enumerate(classes) if name in exclude]
    rows = np.flatnonzero((labels >= 0) & ~np.isin(labels, excluded))
    if not len(rows):
        raise VggfeatError("no labelled rows in the features file: extract a labelled folder, or give --labels")
    names = np.array(classes, dtype=object)[labels[rows]]
    kept_classes = [c for c in classes if c not in exclude]
    if multilabel:
        y = names[:, None] == np.array(kept_classes, dtype=object)[None, :]
        return Targets([paths[i] for i in rows], y, kept_classes)
    return Targets([paths[i] for i in rows], names, kept_classes)


def exclude_classes(targets: Targets, exclude: Sequence[str], multilabel: bool) -> Targets:
    """``targets`` without the ``exclude`` classes: their rows (single-label) or columns (multi-label)."""
    _check_excluded(exclude, targets.classes, "the labels'")
    keep = [k for k, c in enumerate(targets.classes) if c not in exclude]
    kept_classes = [targets.classes[k] for k in keep]
    if multilabel:
        ignore = None if targets.ignore is None else targets.ignore[:, keep]
        return Targets(targets.paths, targets.y[:, keep], kept_classes, ignore)
    rows = [i for i, name in enumerate(targets.y) if name not in exclude]
    return Targets([targets.paths[i] for i in rows], targets.y[rows], kept_classes)


def align_to_classes(targets: Targets, classes: list[str], multilabel: bool) -> np.ndarray:
    """Targets in a model's class order: [N] class indices, or [N, len(classes)] indicators.

    Refuses a class of ``targets`` that is not in ``classes`` (the model could not score it).
    """
    unknown = [c for c in targets.classes if c not in classes]
    if unknown:
        raise VggfeatError(f"test class {unknown[0]!r} is not one of the model's {len(classes)} classes"
                           f"{f' ({len(unknown)} unknown classes)' if len(unknown) > 1 else ''}")
    column = {name: k for k, name in enumerate(classes)}
    if multilabel:
        aligned = np.zeros((len(targets.paths), len(classes)), dtype=bool)
        aligned[:, [column[name] for name in targets.classes]] = targets.y
        return aligned
    return np.array([column[name] for name in targets.y], dtype=np.int64)


def align_ignored(targets: Targets, classes: list[str]) -> np.ndarray | None:
    """Multi-label ``targets``' rows to ignore per class in a model's class order, as
    :func:`align_to_classes` orders their truth; None where none are."""
    if targets.ignore is None:
        return None
    return align_to_classes(Targets(targets.paths, targets.ignore, targets.classes), classes, multilabel=True)


def _check_excluded(exclude: Sequence[str], classes: Sequence[str], whose: str) -> None:
    unknown = [name for name in exclude if name not in classes]
    if unknown:
        shown = ", ".join(classes[:10]) + (" …" if len(classes) > 10 else "")
        raise VggfeatError(f"cannot exclude unknown class {unknown[0]!r}; {whose} classes are {shown}")
