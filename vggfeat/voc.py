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

VOC2012's action task classifies persons: ``ImageSets/Action/<action>_<set>.txt`` gives each
person of a set, ``id object label``, its box being the object-th object of ``Annotations/<id>.xml``.
A features file whose rows are regions (:mod:`vggfeat.regions`) is matched to them by image id and
box (:func:`person_lists` writes the file list that describes them).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from xml.etree import ElementTree

import numpy as np

from .errors import VggfeatError, check_choice
from .labels import Targets, warn_left_out
from .regions import Region, image_of, region_of, region_path
from .files import write_text_file
from .textfiles import read_text

IMAGE_SETS = Path("ImageSets", "Main")
ACTION_SETS = Path("ImageSets", "Action")
# VOC2012's action "other" (a person doing none of the ten): a negative of every action, and, as
# in the devkit's evaluation, not an action scored.
NOT_SCORED = ("other",)
LABELS = {"1": 1, "-1": -1, "0": 0}  # as the class files write them
DIFFICULT = ("ignore", "negative", "positive")  # what a difficult image is in training (train_difficult)


@dataclass(frozen=True)
class VocSet:
    """One image set: its ids, the classes, and each id's label per class (1, -1 or 0, difficult);
    no classes for a set whose labels are withheld (VOC2012's test set). An action set's members are
    persons: an id (its image's) and object number each, with its box."""

    ids: list[str]
    classes: list[str]
    labels: np.ndarray  # [len(ids), len(classes)] int8
    objects: list[int] | None = None  # an action set's: each person's object number in its image's annotation
    regions: list[Region] | None = None  # an action set's: each person's box

    @property
    def keys(self) -> list[str]:
        """What names each member in a features file's rows (:func:`row_key`): an image's id, or a
        person's image id and box."""
        if self.regions is None:
            return self.ids
        return [region_path(image, region) for image, region in zip(self.ids, self.regions)]


def row_key(path: str) -> str:
    """What a features file's row ``path`` is to VOC: its image's id (the file name without its
    extension), followed by its region's fragment for a region."""
    image = image_of(path)
    return PurePosixPath(image).stem + path[len(image):]


def read_set(devkit: str | os.PathLike, name: str, paths: Sequence[str]) -> VocSet:
    """The set ``name`` that the rows ``paths`` are classified by: an action set (persons) where
    they are regions of images, else an image set of the classification task."""
    return read_action_set(devkit, name) if any(region_of(path) is not None for path in paths) else read_image_set(devkit, name)


def set_files(devkit: str | os.PathLike | None, name: str) -> list[Path]:
    """The files of ``devkit`` that its set ``name`` is read from (:func:`read_set`): the image
    set's list and class files, and the action set's files; none without a devkit. A command's
    output records them (:mod:`vggfeat.rerun`), to find the set changed since; the annotations
    that give persons' boxes are not among them."""
    if devkit is None:
        return []
    name = glob.escape(name)
    main, action = Path(devkit) / IMAGE_SETS, Path(devkit) / ACTION_SETS
    return sorted([*main.glob(f"{name}.txt"), *main.glob(f"*_{name}.txt"), *action.glob(f"*_{name}.txt")])


def _check_devkit(devkit: str | os.PathLike) -> None:
    if not Path(devkit).is_dir():
        raise VggfeatError(f"{devkit} is a file, where a VOC devkit folder was expected" if Path(devkit).exists()
                           else f"VOC devkit folder not found: {devkit}")


def read_image_set(devkit: str | os.PathLike, name: str) -> VocSet:
    """The image set ``name`` of the devkit folder ``devkit`` (VOCdevkit/VOC2007, say)."""
    folder = Path(devkit) / IMAGE_SETS
    _check_devkit(devkit)
    if not folder.is_dir():
        raise VggfeatError(f"{devkit} is not a VOC devkit folder: it has no {IMAGE_SETS} (give VOCdevkit/VOC2007, say)")
    listing = folder / f"{name}.txt"
    suffix = f"_{name}.txt"
    if not listing.is_file():
        sets = sorted(path.stem for path in folder.glob("*.txt") if "_" not in path.stem)
        raise VggfeatError(f"{folder} has no image set {name!r} ({listing.name}); its sets: {', '.join(sets) or 'none'}")
    classes = sorted(path.name[: -len(suffix)] for path in folder.glob(f"*{suffix}"))
    ids = [line.split()[0] for line in read_text(listing).splitlines() if line.strip()]
    row = {image: i for i, image in enumerate(ids)}
    labels = np.zeros((len(ids), len(classes)), dtype=np.int8)
    for k, name_k in enumerate(classes):
        path = folder / f"{name_k}{suffix}"
        lines = [(number, line.split()) for number, line in enumerate(read_text(path).splitlines(), 1)
                 if line.strip()]
        if lines and all(len(fields) == 1 for _, fields in lines):
            return VocSet(ids, [], np.zeros((len(ids), 0), dtype=np.int8))  # ids without labels: withheld
        labelled = set()
        for number, fields in lines:
            if len(fields) != 2 or fields[1] not in LABELS or fields[0] not in row or fields[0] in labelled:
                why = ("expected 'id label', label 1, -1 or 0" if len(fields) != 2 or fields[1] not in LABELS else
                       "an id not in the set" if fields[0] not in row else "an id labelled on an earlier line")
                raise VggfeatError(f"{path}, line {number}: {why}: {' '.join(fields)!r}")
            labels[row[fields[0]], k] = LABELS[fields[1]]
            labelled.add(fields[0])
        if len(lines) != len(ids):  # (0, unlabelled, would read as difficult)
            raise VggfeatError(f"{path} labels {len(lines)} images, its set {listing.name} lists {len(ids)}")
    # A set without class files, or whose class files list ids alone, is one whose labels are
    # withheld (VOC2012's test set): its ids only.
    return VocSet(ids, classes, labels)


def read_action_set(devkit: str | os.PathLike, name: str) -> VocSet:
    """The persons of the action set ``name`` of ``devkit`` (VOCdevkit/VOC2012): as each
    ``ImageSets/Action/<action>_<set>.txt`` lists them (``id object label``), with their boxes from
    ``Annotations/<id>.xml`` (the object-th object, 1-based) and their label per action, but for
    "other" (:data:`NOT_SCORED`); no actions where the labels are withheld (lines ``id object``)."""
    folder = Path(devkit) / ACTION_SETS
    _check_devkit(devkit)
    if not folder.is_dir():
        raise VggfeatError(f"{devkit} has no {ACTION_SETS}: regions (persons) are classified by the action sets of "
                           "VOC2012 (give VOCdevkit/VOC2012)")
    suffix = f"_{name}.txt"
    actions = sorted(path.name[: -len(suffix)] for path in folder.glob(f"*{suffix}"))
    if not actions:
        sets = sorted({path.stem.rsplit("_", 1)[1] for path in folder.glob("*_*.txt")})
        raise VggfeatError(f"{folder} has no action set {name!r} (no <action>{suffix}); its sets: {', '.join(sets) or 'none'}")
    persons, columns = None, {}
    for action in actions:
        path = folder / f"{action}{suffix}"
        lines = [(number, line.split()) for number, line in enumerate(read_text(path).splitlines(), 1)
                 if line.strip()]
        labelled = bool(lines) and len(lines[0][1]) == 3
        for number, fields in lines:
            if len(fields) != (3 if labelled else 2) or not fields[1].isdigit() or (labelled and fields[2] not in LABELS):
                raise VggfeatError(f"{path}, line {number}: expected 'id object label' (label 1, -1 or 0), or "
                                   f"'id object' throughout: {' '.join(fields)!r}")
        listed = [(fields[0], int(fields[1])) for _, fields in lines]
        if persons is None:
            persons = listed
        elif listed != persons:
            raise VggfeatError(f"{path} lists other persons than {actions[0]}{suffix}")
        if labelled and action not in NOT_SCORED:
            columns[action] = [LABELS[fields[2]] for _, fields in lines]
    regions = _person_boxes(Path(devkit), persons)
    classes = sorted(columns)
    labels = np.array([columns[action] for action in classes], dtype=np.int8).T.reshape(len(persons), len(classes))
    return VocSet([image for image, _ in persons], classes, labels, [number for _, number in persons], regions)


def person_lists(devkit: str | os.PathLike, sets: Sequence[str], folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """The persons of the action ``sets`` of ``devkit`` as a file list's lines, each its image's
    file (``JPEGImages/<id>.jpg``, relative to ``folder``, where the list goes) with its box
    (:mod:`vggfeat.regions`), and the lines of their images whole: what ``vggfeat extract
    --file-list`` describes for the action task, the box alone or with its image (I+B)."""
    persons, images = set(), set()
    for name in sets:
        action_set = read_action_set(devkit, name)
        for image, region in zip(action_set.ids, action_set.regions):
            file = Path(os.path.relpath(Path(devkit) / "JPEGImages" / f"{image}.jpg", folder)).as_posix()
            persons.add(region_path(file, region))
            images.add(file)
    return sorted(persons), sorted(images)


def _person_boxes(devkit: Path, persons: list[tuple[str, int]]) -> list[Region]:
    """Each person's box, from its image's annotation: VOC's 1-based, inclusive corners as a region."""
    objects: dict[str, list] = {}
    boxes = []
    for image, number in persons:
        if image not in objects:
            path = devkit / "Annotations" / f"{image}.xml"
            try:
                objects[image] = ElementTree.parse(path).getroot().findall("object")
            except (OSError, ElementTree.ParseError) as error:
                raise VggfeatError(f"cannot read the annotation of {image}: {error}") from None
        if not 1 <= number <= len(objects[image]):
            raise VggfeatError(f"{image}: no object {number} in its annotation ({len(objects[image])} objects)")
        box = objects[image][number - 1].find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (round(float(box.find(corner).text)) for corner in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise VggfeatError(f"{image}: object {number} of its annotation has no box (bndbox xmin ymin xmax ymax)") from None
        left, top = max(0, xmin - 1), max(0, ymin - 1)
        if xmax <= left or ymax <= top:
            raise VggfeatError(f"{image}: object {number} of its annotation has an empty box")
        boxes.append(Region(left, top, xmax - left, ymax - top))
    return boxes


def targets_of_set(voc_set: VocSet, paths: Sequence[str], which: str, failed: Mapping[str, str] | None = None) -> Targets:
    """The set's members (images, or an action set's persons) as rows of a features file whose
    paths are ``paths``, matched by :func:`row_key`: positives, and the difficult ones to ignore per
    class. Members that the file could not describe (``failed``: path to reason) are left out,
    with a warning."""
    persons = voc_set.regions is not None  # else a region is not the image that the set labels
    by_key: dict[str, str] = {}
    for path in paths:
        if (region_of(path) is not None) == persons:
            key = row_key(path)
            if key in by_key:
                raise VggfeatError(f"two rows of the {which} features file are {key}: {by_key[key]} and {path}")
            by_key[key] = path
    failed_keys = {row_key(path): path for path in failed or {} if (region_of(path) is not None) == persons}
    keys = voc_set.keys
    missing = [key for key in keys if key not in by_key and key not in failed_keys]
    if missing:
        hint = ("describe their regions (the file list of 'vggfeat protocol voc-persons')" if persons
                else "extract JPEGImages whole, or name the file that holds them")
        raise VggfeatError(f"{len(missing)} of the {len(keys)} {which} {'persons' if persons else 'images'} are not in "
                           f"the features file (e.g. {missing[0]}): {hint}")
    warn_left_out([failed_keys[key] for key in keys if key not in by_key], failed or {}, f"of the {which} set")
    kept = np.array([key in by_key for key in keys], dtype=bool)
    return Targets([by_key[key] for key in keys if key in by_key], voc_set.labels[kept] == 1,
                   list(voc_set.classes), ignore=voc_set.labels[kept] == 0)


def train_difficult(targets: Targets, difficult: str) -> Targets:
    """Training ``targets`` of an image set whose difficult images (``targets.ignore``) are, for
    their class: left out of its SVM (``"ignore"``, as VOC's evaluation leaves them out of its AP),
    negatives (``"negative"``) or positives (``"positive"``), vggfeat's own choices (the devkit's
    example classifier leaves them out, as ``"ignore"`` does: neither above nor below 0). The test set's are left out of the AP whatever this says."""
    check_choice("difficult", difficult, DIFFICULT)
    if difficult == "ignore" or targets.ignore is None:
        return targets
    positives = targets.y | targets.ignore if difficult == "positive" else targets.y
    return Targets(targets.paths, positives, targets.classes)


def result_files(folder: str | os.PathLike, image_set: str, classes: Sequence[str], persons: bool = False) -> list[Path]:
    """The files of VOC's results for ``image_set``, one per class, in ``folder``, as its evaluation
    server takes them: ``comp2_cls_<set>_<class>.txt`` (in results/VOC2012/Main/), or for an action
    set's ``persons``, ``comp10_action_<set>_<action>.txt`` (in results/VOC2012/Action/). Competitions
    2 and 10 are those trained on data beyond VOC's own: the network learnt from ImageNet."""
    task = "comp10_action" if persons else "comp2_cls"
    return [Path(folder) / f"{task}_{image_set}_{name}.txt" for name in classes]


def write_results(folder: str | os.PathLike, voc_set: VocSet, image_set: str, paths: Sequence[str], classes: Sequence[str],
                  scores: np.ndarray) -> list[Path]:
    """Write ``scores`` [len(paths), len(classes)] of the rows ``paths`` as VOC's result files
    (:func:`result_files`), a line per member of ``voc_set`` that a row scores, ``<id> <score>``
    (a person's: ``<id> <object> <score>``), each file whole or not at all; returns them."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    row = {row_key(path): k for k, path in enumerate(paths)}
    members = [(number, row[key]) for number, key in enumerate(voc_set.keys) if key in row]
    names = ([f"{voc_set.ids[number]} {voc_set.objects[number]}" for number, _ in members] if voc_set.objects is not None
             else [voc_set.ids[number] for number, _ in members])
    rows = [k for _, k in members]
    files = result_files(folder, image_set, classes, persons=voc_set.objects is not None)
    for k, path in enumerate(files):
        write_text_file(path, "".join(f"{name} {score:.6f}\n" for name, score in zip(names, scores[rows, k])))
    return files
