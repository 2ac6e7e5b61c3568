"""PASCAL VOC's classification image sets, read from a devkit folder such as ``VOCdevkit/VOC2007``.

``ImageSets/Main/<set>.txt`` lists a set's image ids (``train``, ``val``, ``trainval``, ``test``);
``ImageSets/Main/<class>_<set>.txt`` gives each of them a label for the class: 1 (present), -1
(absent) or 0, "difficult": the class appears only in objects marked difficult. VOC's evaluation
(the devkit's VOCevalcls) leaves an image out of a class's average precision where it is difficult
for that class, and counts it for the other classes; vggfeat does the same, and also leaves it out
of that class's SVM training (:attr:`vggfeat.labels.Targets.ignore`).

Images are matched to a features file's rows by file name without extension (``000005`` is
``000005.jpg``, or ``JPEGImages/000005.jpg``), so the file may have been extracted from
``JPEGImages`` or from the devkit folder itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import VggfeatError, check_choice
from .labels import Targets, warn_left_out
from .regions import FRAGMENT
from .store import write_text_file

IMAGE_SETS = Path("ImageSets", "Main")
LABELS = {"1": 1, "-1": -1, "0": 0}  # as the class files write them
DIFFICULT = ("ignore", "negative", "positive")  # what a difficult image is in training (train_difficult)


@dataclass(frozen=True)
class VocSet:
    """One image set: its ids, the classes, and each id's label per class (1, -1 or 0, difficult);
    no classes for a set whose labels are withheld (VOC2012's test set)."""

    ids: list[str]
    classes: list[str]
    labels: np.ndarray  # [len(ids), len(classes)] int8


def read_image_set(devkit: str | os.PathLike, name: str) -> VocSet:
    """The image set ``name`` of the devkit folder ``devkit`` (VOCdevkit/VOC2007, say)."""
    folder = Path(devkit) / IMAGE_SETS
    if not folder.is_dir():
        raise VggfeatError(f"{devkit} is not a VOC devkit folder: it has no {IMAGE_SETS} (give VOCdevkit/VOC2007, say)")
    listing = folder / f"{name}.txt"
    suffix = f"_{name}.txt"
    if not listing.is_file():
        sets = sorted(path.stem for path in folder.glob("*.txt") if "_" not in path.stem)
        raise VggfeatError(f"{folder} has no image set {name!r} ({listing.name}); its sets: {', '.join(sets) or 'none'}")
    classes = sorted(path.name[: -len(suffix)] for path in folder.glob(f"*{suffix}"))
    ids = [line.split()[0] for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    row = {image: i for i, image in enumerate(ids)}
    labels = np.zeros((len(ids), len(classes)), dtype=np.int8)
    for k, name_k in enumerate(classes):
        path = folder / f"{name_k}{suffix}"
        lines = [(number, line.split()) for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if line.strip()]
        if lines and all(len(fields) == 1 for _, fields in lines):
            return VocSet(ids, [], np.zeros((len(ids), 0), dtype=np.int8))  # ids without labels: withheld
        for number, fields in lines:
            if len(fields) != 2 or fields[1] not in LABELS or fields[0] not in row:
                why = "an id not in the set" if len(fields) == 2 and fields[1] in LABELS else "expected 'id label', label 1, -1 or 0"
                raise VggfeatError(f"{path}, line {number}: {why}: {' '.join(fields)!r}")
            labels[row[fields[0]], k] = LABELS[fields[1]]
        if len(lines) != len(ids):
            raise VggfeatError(f"{path} labels {len(lines)} images, its set {listing.name} lists {len(ids)}")
    # A set without class files, or whose class files list ids alone, is one whose labels are
    # withheld (VOC2012's test set): its ids only.
    return VocSet(ids, classes, labels)


def targets_of_set(voc_set: VocSet, paths: Sequence[str], which: str, failed: Mapping[str, str] | None = None) -> Targets:
    """The set's images as rows of a features file whose paths are ``paths``: positives, and the
    difficult images to ignore per class. Images that the file could not describe (``failed``:
    path to reason) are left out, with a warning."""
    by_id: dict[str, str] = {}
    for path in paths:
        if FRAGMENT in path:  # a region (vggfeat.regions), not the image that VOC's set labels
            continue
        image = PurePosixPath(path).stem
        if image in by_id:
            raise VggfeatError(f"two rows of the {which} features file are image {image}: {by_id[image]} and {path}")
        by_id[image] = path
    failed_ids = {PurePosixPath(path).stem: path for path in failed or {} if FRAGMENT not in path}
    missing = [image for image in voc_set.ids if image not in by_id and image not in failed_ids]
    if missing:
        raise VggfeatError(f"{len(missing)} of the {len(voc_set.ids)} {which} images are not in the features file "
                           f"(e.g. {missing[0]}): extract JPEGImages whole, or name the file that holds them")
    warn_left_out([failed_ids[image] for image in voc_set.ids if image not in by_id], failed or {}, f"of the {which} set")
    kept = np.array([image in by_id for image in voc_set.ids], dtype=bool)
    return Targets([by_id[image] for image in voc_set.ids if image in by_id], voc_set.labels[kept] == 1,
                   list(voc_set.classes), ignore=voc_set.labels[kept] == 0)


def train_difficult(targets: Targets, difficult: str) -> Targets:
    """Training ``targets`` of an image set whose difficult images (``targets.ignore``) are, for
    their class: left out of its SVM (``"ignore"``, as VOC's evaluation leaves them out of its AP),
    negatives (``"negative"``, as the devkit's example classifier takes them: a label above 0 is
    positive) or positives (``"positive"``). The test set's are left out of the AP whatever this says."""
    check_choice("difficult", difficult, DIFFICULT)
    if difficult == "ignore" or targets.ignore is None:
        return targets
    positives = targets.y | targets.ignore if difficult == "positive" else targets.y
    return Targets(targets.paths, positives, targets.classes)


def result_files(folder: str | os.PathLike, image_set: str, classes: Sequence[str]) -> list[Path]:
    """The files of VOC's classification results for ``image_set``, one per class, in ``folder``:
    ``comp1_cls_<set>_<class>.txt``, as the evaluation server takes them (in results/VOC2012/Main/)."""
    return [Path(folder) / f"comp1_cls_{image_set}_{name}.txt" for name in classes]


def write_results(folder: str | os.PathLike, image_set: str, ids: Sequence[str], classes: Sequence[str],
                  scores: np.ndarray) -> list[Path]:
    """Write ``scores`` [len(ids), len(classes)] as VOC's result files (:func:`result_files`), a
    line ``<id> <score>`` per image, each file whole or not at all; returns them."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    files = result_files(folder, image_set, classes)
    for k, path in enumerate(files):
        write_text_file(path, "".join(f"{image} {score:.6f}\n" for image, score in zip(ids, scores[:, k])))
    return files
