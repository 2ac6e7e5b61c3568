"""Predictions: an image set classified into a CSV file, and top-1/top-5 error against a label list.

One row per image, in the image set's order: its path, the top-k classes (index, name, probability)
and, for a file that could not be used, the reason. The file is written under a temporary name and
renamed once complete, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .classifier import Classifier
from .discover import ImageSet
from .errors import VggfeatError
from .job import STORAGE_FAILURES_TO_STOP, storage_gone, unread_in_a_row
from .store import check_new_file, written_atomically


@dataclass
class Evaluation:
    """Top-1 and top-5 error over the classified images that have a true label."""

    images: int = 0
    top1_wrong: int = 0
    top5_wrong: int = 0

    def add(self, probabilities: np.ndarray, truth: int) -> None:
        top5 = _top(probabilities, 5)
        self.images += 1
        self.top1_wrong += int(top5[0] != truth)
        self.top5_wrong += int(truth not in top5)

    @property
    def top1_error(self) -> float:
        return self.top1_wrong / self.images if self.images else float("nan")

    @property
    def top5_error(self) -> float:
        return self.top5_wrong / self.images if self.images else float("nan")


@dataclass
class ClassificationResult:
    output: Path
    classified: int = 0
    failed: int = 0
    seconds: float = 0.0
    evaluation: Evaluation | None = None
    labelled_failed: int = 0  # images with a true label that could not be classified: not in the error
    unlabelled: int = 0  # classified images the label list does not name: not in the error
    first_failures: list[tuple[str, str]] = field(default_factory=list)

    def count_classified(self, probabilities: np.ndarray, truth: int | None) -> None:
        self.classified += 1
        if self.evaluation is None:
            return
        if truth is None:
            self.unlabelled += 1
        else:
            self.evaluation.add(probabilities, truth)

    def count_failed(self, path: str, reason: str, labelled: bool) -> None:
        self.failed += 1
        self.labelled_failed += int(labelled)
        if len(self.first_failures) < 5:
            self.first_failures.append((path, reason))


def read_labels(path: str | os.PathLike, classes: int | None = None) -> dict[str, int]:
    """An ImageNet-style validation list: ``filename label`` or ``filename,label`` per line.

    Labels are class indices 0 .. classes-1 in torchvision's order (the order of the sorted WordNet
    ids, as in the common ILSVRC2012 ``val.txt``); ``classes`` None checks only that they are >= 0
    (:func:`classify_images` checks them against the network). Blank lines and ``#`` comments are
    skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise VggfeatError(f"labels file not found: {path}")
    labels: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # The label is the last field: after the last comma, else after the last run of whitespace
        # (file names may hold spaces).
        fields = line.rsplit(",", 1) if "," in line else line.rsplit(None, 1)
        name, label = (fields[0].strip(), fields[1].strip()) if len(fields) == 2 else ("", "")
        try:
            index = int(label)
        except ValueError:
            index = -1
        if not name or index < 0 or (classes is not None and index >= classes):
            allowed = f"0..{classes - 1}" if classes is not None else "a class index >= 0"
            raise VggfeatError(f"{path}:{number}: expected 'filename label' with a label in {allowed}, got {line!r}")
        if labels.get(name, index) != index:
            raise VggfeatError(f"{path}:{number}: {name} is listed twice with different labels")
        labels[name] = index
    if not labels:
        raise VggfeatError(f"labels file is empty: {path}")
    return labels


def match_labels(paths: Sequence[str], labels: dict[str, int]) -> list[int | None]:
    """The true label of each path: by the path itself, else by its file name (a flat list of
    validation file names matched against images in subfolders); None where not listed."""
    return [labels.get(path, labels.get(PurePosixPath(path).name)) for path in paths]


def classify_images(
    classifier: Classifier,
    images: ImageSet,
    output: str | os.PathLike,
    topk: int = 5,
    labels: dict[str, int] | None = None,
    overwrite: bool = False,
    progress: Callable[[int], object] | None = None,
) -> ClassificationResult:
    """Classify ``images`` and write ``output`` (CSV); with ``labels``, also count top-1/top-5 errors.

    Raises OSError, writing no ``output``, when the images' storage fails STORAGE_FAILURES_TO_STOP
    of them in a row: a file system gone away, rather than a file of images all failed.
    """
    output = Path(output)
    check_new_file(output, overwrite)
    if not 1 <= topk <= classifier.dim:
        raise VggfeatError(f"--topk must be between 1 and {classifier.dim}, got {topk}")
    if labels and max(labels.values()) >= classifier.dim:
        raise VggfeatError(f"label {max(labels.values())} in the labels file, but the network has {classifier.dim} classes")
    names = classifier.categories()
    truth = match_labels(images.paths, labels) if labels is not None else None
    result = ClassificationResult(output, evaluation=Evaluation() if labels is not None else None)
    started = time.monotonic()
    with written_atomically(output) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(_header(topk, labelled=truth is not None))
        unread = 0  # images in a row, up to the last one, that the storage failed to give
        for chunk in classifier.iter_chunks(images.files()):
            unread = unread_in_a_row(chunk, unread)
            if unread >= STORAGE_FAILURES_TO_STOP:
                raise storage_gone(unread, chunk)
            probabilities = dict(zip(chunk.indices, chunk.features))
            reasons = dict(chunk.failures)
            for i in range(chunk.start, chunk.end):
                label = truth[i] if truth is not None else None
                row = [images.paths[i]]
                if truth is not None:
                    row += ["", ""] if label is None else [label, names[label]]
                if i in probabilities:
                    row += [*_top_cells(probabilities[i], topk, names), ""]
                    result.count_classified(probabilities[i], label)
                else:
                    row += [""] * 3 * topk + [reasons[i]]
                    result.count_failed(images.paths[i], reasons[i], labelled=label is not None)
                writer.writerow(row)
            if progress is not None:
                progress(chunk.end - chunk.start)
    result.seconds = time.monotonic() - started
    return result


def _header(topk: int, labelled: bool) -> list[str]:
    header = ["path", *(["true_class", "true_label"] if labelled else [])]
    for rank in range(1, topk + 1):
        header += [f"class_{rank}", f"label_{rank}", f"probability_{rank}"]
    return [*header, "error"]


def _top_cells(probabilities: np.ndarray, topk: int, names: Sequence[str]) -> list:
    """(index, name, probability) of the ``topk`` most probable classes, flattened, best first."""
    cells: list = []
    for index in _top(probabilities, topk):
        cells += [int(index), names[index], f"{probabilities[index]:.6f}"]
    return cells


def _top(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest probabilities, largest first (ties: lower index first)."""
    return np.argsort(-probabilities, kind="stable")[:k]
