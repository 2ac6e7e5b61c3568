"""Predictions: an image set classified into a CSV file, and top-1/top-5 error against a label list.

One row per image, in the image set's order: its path, the top-k classes (index, name, probability)
and, for a file that could not be used, the reason.

The posteriors are first described into ``OUTPUT.posteriors.h5`` beside the CSV, by the job that
``vggfeat extract`` runs (:class:`~vggfeat.job.ExtractionJob`, or on several devices
:class:`~vggfeat.multidevice.MultiDeviceJob`): a killed run resumes from its parts. The command
keeps only each image's top classes there (``Classifier(keep_top=...)``, about 110 bytes of disk
an image rather than 4 KB); a file of every posterior (``vggfeat classify`` into an .h5) gives the
same CSV. The CSV is then written from that file (:func:`write_predictions`) under a temporary
name, renamed once complete, and the posteriors file removed: a crash never leaves a half-written
CSV under the final name.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import itertools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

import h5py
import numpy as np

from .choices import ARCHITECTURES
from .classifier import Classifier, category_names
from .discover import ImageSet
from .errors import VggfeatError, not_a_file
from .fusion import FusedPosteriors
from .job import ExtractionJob, disk_per_row, holds_job
from .parts import output_locked
from .files import file_attributes
from .posteriorsfile import CLASSIFY_AGAIN, REMOVE_AND_RERUN, check_attributes, check_block
from .rerun import written_recorded_file
from .store import (already_exists, check_new_file, open_features_file, posteriors_file_of, refuse_descriptors,
                    shards_folder, work_folder)
from .textfiles import as_utf8, csv_cells, read_text, text_lines


@dataclass
class Evaluation:
    """Top-1 and top-5 error over the classified images that have a true label."""

    images: int = 0
    top1_wrong: int = 0
    top5_wrong: int = 0

    def add(self, top: np.ndarray, truth: int) -> None:
        """One image: its classes ranked, best first (5 or more), and its true class."""
        top5 = top[:5]
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

    def count_classified(self, top: np.ndarray, truth: int | None) -> None:
        """One image classified: its classes ranked, best first (5 or more), and its true class."""
        self.classified += 1
        if self.evaluation is None:
            return
        if truth is None:
            self.unlabelled += 1
        else:
            self.evaluation.add(top, truth)

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
        raise VggfeatError(not_a_file(path, "labels file"))
    labels: dict[str, int] = {}
    for number, line in enumerate(text_lines(read_text(path, names_files=True)), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, label = _name_and_label(line)
        try:
            index = int(label)
        except ValueError:
            index = -1
        if not name or index < 0 or (classes is not None and index >= classes):
            allowed = f"0..{classes - 1}" if classes is not None else "a class index >= 0"
            raise VggfeatError(f"{path}:{number}: expected 'filename label' with a label in {allowed}, got {as_utf8(line)!r}")
        if labels.get(name, index) != index:
            raise VggfeatError(f"{path}:{number}: {as_utf8(name)} is listed twice with different labels")
        labels[name] = index
    if not labels:
        raise VggfeatError(f"labels file is empty: {path}")
    return labels


# ImageNet's class folders are its WordNet ids (n01440764 ...): sorted, they are torchvision's class order.
IMAGENET_CLASSES = 1000


@functools.cache
def imagenet_wordnet_ids() -> list[str]:
    """ImageNet's 1000 WordNet ids (``n01440764``, ...) in torchvision's class order: sorted, as
    ILSVRC2012 numbers its classes and ImageFolder orders the validation set's folders."""
    return (resources.files(__package__) / "imagenet_wordnet_ids.txt").read_text(encoding="ascii").split()


def are_imagenet_folders(names: Sequence[str]) -> bool:
    """Whether class names are ImageNet WordNet ids: its validation set's folders, or some of them
    (a subset such as Imagenette's 10 classes)."""
    known = set(imagenet_wordnet_ids())
    return bool(names) and all(name in known for name in names)


def folder_labels(paths: Sequence[str], labels: Sequence[int], names: Sequence[str],
                  classes: int = IMAGENET_CLASSES) -> dict[str, int]:
    """The true class of each of ``paths`` by its class folder (or its label in a list), ``labels``
    indexing ``names`` (-1: none), where those are ImageNet WordNet ids (all 1000, as ImageFolder's
    layout of the validation set has them, or any of them): each id's class is its place among
    the 1000 (:func:`imagenet_wordnet_ids`). ``classes``: the network's, which must be ImageNet's."""
    if classes != IMAGENET_CLASSES:
        raise VggfeatError(f"--labels folders names ImageNet's classes, but the network has {classes}: pass a label list")
    index = {wordnet_id: number for number, wordnet_id in enumerate(imagenet_wordnet_ids())}
    others = [name for name in names if name not in index]
    if others or not names:
        found = f"{others[0]!r} is not one of ImageNet's {IMAGENET_CLASSES} classes" if others else "no class found"
        raise VggfeatError(f"--labels folders needs the images' classes (first-level folders, or a list's labels) to be "
                           f"ImageNet's WordNet ids (n01440764, ...), all {IMAGENET_CLASSES} or some of them: {found}. "
                           "Otherwise pass a label list")
    class_of = [index[name] for name in names]
    return {path: class_of[label] for path, label in zip(paths, labels) if label >= 0}


def match_labels(paths: Sequence[str], labels: dict[str, int], by_name: dict[str, str] | None = None) -> list[int | None]:
    """The true label of each path: by the path itself, else by its file name (a flat list of
    validation file names matched against images in subfolders); None where not listed. A file
    name that two images have (cat/0.jpg, dog/0.jpg) is refused: which one it labels is unknown.
    ``by_name``: the images matched by file name so far (name -> path), across calls."""
    by_name = {} if by_name is None else by_name
    truth = []
    for path in paths:
        name = PurePosixPath(path).name
        if path not in labels and name in labels and by_name.setdefault(name, path) != path:
            raise VggfeatError(f"the labels list names {name}, which more than one image is ({by_name[name]}, {path}): "
                               "list the images by their paths, as the descriptor file holds them")
        truth.append(labels.get(path, labels.get(name)))
    return truth


# Posteriors read, ranked and written at a time.
BLOCK_ROWS = 8192


def posteriors_files_of(output: str | os.PathLike, classifiers: Sequence[Classifier]) -> list[Path]:
    """The posteriors files of a CSV ``output`` of ``classifiers``, one each (see :func:`posteriors_file_of`)."""
    if len(classifiers) == 1:
        return [posteriors_file_of(output)]
    return [posteriors_file_of(output, classifier.network.arch) for classifier in classifiers]


def check_csv_output(output: Path, overwrite: bool, inputs: Sequence[str | os.PathLike | None] = ()) -> None:
    """:func:`~vggfeat.store.check_new_file` for a CSV ``output``, whose refusal of an existing CSV
    names the posteriors files and work folders that killed runs left beside it (a run killed as it
    removed them, after its CSV was in place, or one with --overwrite killed before): the user
    would not otherwise learn that they take disk, nor that --overwrite takes them up."""
    check_new_file(output, overwrite=True, inputs=inputs)  # all but the refusal of an existing output
    if output.exists() and not overwrite:
        left = [path for path in other_networks_work(output, [])
                if path.is_dir() or file_attributes(path).get("posteriors_of") == output.name]  # not a user's own file
        beside = (f" (a killed run left {', '.join(path.name for path in left)} beside it: --overwrite takes up what it "
                  f"described with the same options; or remove {'it' if len(left) == 1 else 'them'})") if left else ""
        raise VggfeatError(f"{already_exists(output)}{beside}")


def other_networks_work(output: str | os.PathLike, files: Sequence[Path]) -> list[Path]:
    """What interrupted runs of the CSV ``output`` with other networks than those of ``files`` (its
    posteriors files now) left beside it: posteriors files and their work folders."""
    candidates = [posteriors_file_of(output), *(posteriors_file_of(output, model) for model in ARCHITECTURES)]
    return [path for file in candidates if file not in files
            for path in (file, work_folder(file), shards_folder(file)) if path.exists()]


def check_fused_classifiers(classifiers: Sequence[Classifier]) -> None:
    """Refuse networks that a CSV cannot fuse: none, one model twice, other classes, or a classifier
    that keeps each image's top classes only (fusing averages every posterior)."""
    if not classifiers:
        raise VggfeatError("no classifier given")
    models = [classifier.network.arch for classifier in classifiers]
    if len(set(models)) < len(models):
        raise VggfeatError(f"each network fuses once, got {', '.join(models)}")
    if len(classifiers) > 1:
        if len({classifier.classes for classifier in classifiers}) > 1:
            raise VggfeatError("networks of different classes do not fuse: "
                               + ", ".join(f"{c.network.arch} has {c.classes}" for c in classifiers))
        if any(classifier.keep_top is not None for classifier in classifiers):
            raise VggfeatError("fused networks keep every posterior: make them with keep_top=None")


def posteriors_ready(output: Path, classifier: Classifier, images: ImageSet, posteriors: Path | None = None) -> bool:
    """Whether the posteriors file of ``output`` (or ``posteriors``, one of several networks' files
    for it) is whole, made by ``classifier`` over ``images``: a run killed after describing the
    images, before its CSV was written, left it. A complete one made otherwise, by a run of this
    command with other options or images, is removed. Raises :class:`VggfeatError` for a file of
    that name that this command did not make."""
    posteriors = posteriors or posteriors_file_of(output)
    if not posteriors.is_file() or work_folder(posteriors).exists() or shards_folder(posteriors).exists():
        return False  # none, or the job's to resume
    attrs = file_attributes(posteriors)
    if attrs.get("posteriors_of") != output.name:
        raise VggfeatError(f"{posteriors} exists and was not made for {output}: move it away, or remove it")
    if holds_job(attrs, classifier.config(), "float32", images.digest()):
        return True
    posteriors.unlink()
    return False


@dataclass(frozen=True)
class NetworkRun:
    """One network's turn in describing the posteriors of a CSV's images (:func:`describe_posteriors`)."""

    classifier: Classifier
    posteriors: Path  # its posteriors file
    number: int  # 1, 2 ... of the networks fused
    described: bool  # its file is whole, left by an interrupted run: nothing to run
    disk_after: int  # bytes of disk that the networks after it still need


def describe_posteriors(classifiers: Sequence[Classifier], images: ImageSet, output: Path,
                        run: Callable[[NetworkRun], object]) -> list[Path]:
    """Each of ``classifiers``' posteriors of ``images`` into its file beside the CSV ``output``
    (:func:`posteriors_files_of`), one network after the other: ``run(network)`` runs the job that
    writes one (resuming an interrupted one), or, where ``network.described``, says so. Every
    network's file is checked before any runs, so that a file of that name that classify did not
    make is refused at once (:func:`posteriors_ready`). Returns the files."""
    files = posteriors_files_of(output, classifiers)
    ready = [posteriors_ready(output, each, images, posteriors) for each, posteriors in zip(classifiers, files)]
    for number, (each, posteriors, described) in enumerate(zip(classifiers, files, ready), 1):
        after = sum(len(images) * disk_per_row(other.dim, "float32")
                    for other, done in zip(classifiers[number:], ready[number:]) if not done)
        run(NetworkRun(each, posteriors, number, described, after))
    return files


def classify_images(
    classifier: Classifier | Sequence[Classifier],
    images: ImageSet,
    output: str | os.PathLike,
    topk: int = 5,
    labels: dict[str, int] | None = None,
    overwrite: bool = False,
    progress: Callable[[int], object] | None = None,
    part_images: int = 4096,
) -> ClassificationResult:
    """Classify ``images`` and write ``output`` (CSV); with ``labels``, also count top-1/top-5 errors.

    A ``classifier`` made with ``keep_top=keep_top_for(topk)`` keeps only what the CSV needs while
    the images are described (about 110 bytes of disk an image, against 4 KB for every
    posterior); one that keeps fewer classes than ``topk``, or than 5 with ``labels``, is refused.
    Several classifiers (``[Classifier("vgg16"), Classifier("vgg19")]``, each with every posterior)
    are fused: their posteriors are averaged, the paper's ConvNet fusion (Sec. 4.4), one network's
    images described after the other's (``progress`` counts each network's).
    A killed call resumes where it stopped when called again with the same arguments (its work is
    kept beside ``output``, see :func:`posteriors_file_of`; ``part_images``: images per part).
    Raises OSError, writing no ``output`` but keeping that work, when the images' storage fails
    :data:`~vggfeat.job.STORAGE_FAILURES_TO_STOP` of them in a row: a file system gone away,
    rather than a file of images all failed.
    """
    output = Path(output)
    classifiers = [classifier] if isinstance(classifier, Classifier) else list(classifier)
    check_csv_output(output, overwrite)
    check_fused_classifiers(classifiers)
    for each in classifiers:
        check_prediction_options(each, topk, labels)
    started = time.monotonic()

    def run(network: NetworkRun) -> None:
        if not network.described:
            ExtractionJob(network.classifier, images, network.posteriors, overwrite=overwrite, part_images=part_images,
                          provenance={"posteriors_of": output.name}).run(progress)

    with output_locked(output):  # as the command holds it: no other run writes the CSV, nor takes its posteriors
        files = describe_posteriors(classifiers, images, output, run)
        result = write_predictions(output, classifiers[0].categories(), topk, labels, overwrite, posteriors=files[0],
                                   fuse=files[1:], remove=True)
    result.seconds = time.monotonic() - started
    return result


def _name_and_label(line: str) -> tuple[str, str]:
    """(file name as /paths names it, label) of a labels list's line. The label is the last field:
    after the last run of whitespace where that is a number (a name may hold commas), else after
    the last comma (a name may hold spaces); a line that begins with a quote is CSV, as csv.writer
    writes a name with a comma ("a,b.jpg",5)."""
    cells = csv_cells(line) if line.startswith('"') else None
    if cells is not None and len(cells) == 2:
        return as_utf8(cells[0]), cells[1].strip()
    spaced = line.rsplit(None, 1)
    if len(spaced) == 2 and spaced[1].isdigit() and not spaced[0].endswith(","):
        return as_utf8(spaced[0].strip()), spaced[1]
    fields = line.rsplit(",", 1)
    return (as_utf8(fields[0].strip()), fields[1].strip()) if len(fields) == 2 else ("", "")


def check_prediction_options(classifier: Classifier, topk: int | None, labels: dict[str, int] | None) -> None:
    """Refuse a ``topk`` (None: none asked) or ``labels`` that do not fit ``classifier``'s classes,
    or the classes it keeps of each image (``keep_top``)."""
    if topk is not None and not 1 <= topk <= classifier.classes:
        raise VggfeatError(f"--topk must be between 1 and {classifier.classes}, got {topk}")
    if labels and max(labels.values()) >= classifier.classes:
        raise VggfeatError(f"label {max(labels.values())} in the labels file, but the network has {classifier.classes} classes")
    kept, needed = classifier.keep_top, classes_needed(topk or 1, labels is not None, classifier.classes)
    if kept is not None and kept < needed:
        raise VggfeatError(f"the classifier keeps the top {kept} classes of each image; {needed} are needed "
                           f"(--topk{' and the top-5 error' if labels is not None else ''}): make it with keep_top={needed}")


def classes_needed(topk: int, labelled: bool, classes: int) -> int:
    """How many of each image's classes, best first, a CSV of its ``topk`` needs: 5 or more where
    top-5 errors against a label list are counted (``labelled``), of the network's ``classes``."""
    return max(topk, min(5, classes) if labelled else 1)


def keep_top_for(topk: int) -> int:
    """The classes a CSV's posteriors keep of each image: its ``topk``, and the top 5 that the
    errors against a label list need (so that a rerun with --labels resumes from them)."""
    return max(topk, 5)


def write_predictions(output: str | os.PathLike, names: Sequence[str], topk: int = 5,
                      labels: dict[str, int] | None = None, overwrite: bool = False,
                      progress: Callable[[int], object] | None = None,
                      posteriors: str | os.PathLike | None = None,
                      fuse: Sequence[str | os.PathLike] = (), remove: bool = False,
                      record: Callable[[Path, ClassificationResult], object] | None = None) -> ClassificationResult:
    """``output`` (CSV) from its posteriors file (:func:`posteriors_file_of`), which is then
    removed, or from ``posteriors`` (an .h5 that ``vggfeat classify`` wrote, kept unless
    ``remove``): the ``topk`` classes of each image by ``names``, its reason if it failed, and
    with ``labels`` its true class, top-1/top-5 errors counted; ``progress(n)`` after each block
    of classified images (about 50,000 rows/s on a slow CPU core). ``fuse``: files of every
    posterior of other networks over the same images, averaged with them (the paper's ConvNet
    fusion, Sec. 4.4), removed with ``posteriors`` where ``remove``. ``record(csv, result)``: given
    the CSV written whole and what it holds, records how it was made (:func:`vggfeat.rerun.record_in_file`)
    before it is renamed into place."""
    output = Path(output)
    source = Path(posteriors) if posteriors is not None else posteriors_file_of(output)
    check_new_file(output, overwrite)
    result = ClassificationResult(output, evaluation=Evaluation() if labels is not None else None)
    # This CSV's own files are made again by its command; a user's, by classify into an .h5.
    again = REMOVE_AND_RERUN if posteriors is None or remove else CLASSIFY_AGAIN
    with contextlib.ExitStack() as files:
        f = files.enter_context(open_features_file(source, "posteriors"))
        _check_posteriors(f, source, topk, labels, len(names), again)
        fused = [files.enter_context(open_features_file(Path(path), "posteriors")) for path in fuse]
        for other, path in zip(fused, fuse):
            _check_fused(f, source, other, path, again)
        recorded = None if record is None else lambda temporary: record(temporary, result)
        temporary = files.enter_context(written_recorded_file(output, recorded))
        writer = csv.writer(files.enter_context(open(temporary, "w", newline="", encoding="utf-8")))
        writer.writerow(_header(topk, labelled=labels is not None))
        writer.writerows(_rows_in_order(f, result, labels, names, topk, progress, fused, again=again))
    if posteriors is None or remove:  # this CSV's own, kept only until it is written
        for path in (source, *fuse):
            Path(path).unlink()
    return result


def rows_classified(output: str | os.PathLike) -> tuple[int, int]:
    """The images of a CSV that :func:`write_predictions` wrote: classified, and failed (its rows
    with an error)."""
    classified = failed = 0
    with open(output, newline="", encoding="utf-8") as file:
        for row in itertools.islice(csv.reader(file), 1, None):  # after the header
            if row and row[-1]:
                failed += 1
            else:
                classified += 1
    return classified, failed


def evaluate_file(posteriors: str | os.PathLike, labels: dict[str, int], names: Sequence[str]) -> ClassificationResult:
    """Top-1 and top-5 error of a posteriors file's images (an .h5 that ``vggfeat classify``
    wrote) against ``labels``, a block of rows at a time."""
    result = ClassificationResult(Path(posteriors), evaluation=Evaluation())
    with open_features_file(Path(posteriors), "posteriors") as f:
        _check_posteriors(f, posteriors, 0, labels, len(names), CLASSIFY_AGAIN)
        for _ in _rows_in_order(f, result, labels, names, 0, again=CLASSIFY_AGAIN):
            pass
    return result


def _rows_in_order(f: h5py.File, result: ClassificationResult, labels: dict[str, int] | None,
                   names: Sequence[str], topk: int, progress: Callable[[int], object] | None = None,
                   fused: Sequence[h5py.File] = (), *, again: str) -> Iterator[list]:
    """The CSV rows of a posteriors file's images, classified and failed, in path order (that of
    the image set), counted into ``result``; their posteriors averaged with those of ``fused``,
    where an image that any of them failed is failed (:mod:`vggfeat.fusion`). A block holding a
    value no classifier writes is refused (:func:`_check_block`), ``again`` saying what to do."""
    posteriors = FusedPosteriors([f, *fused])
    failed_paths, reasons = posteriors.failed_paths, posteriors.reasons
    failed = 0  # failures written
    ranked = classes_needed(topk, labels is not None, len(names))
    by_name: dict[str, str] = {}  # images labelled by their file name (match_labels)

    def failures_before(path: str | None) -> Iterator[list]:
        nonlocal failed
        while failed < len(failed_paths) and (path is None or failed_paths[failed] < path):
            path_failed, reason = failed_paths[failed], reasons[failed]
            label = None if labels is None else match_labels([path_failed], labels, by_name)[0]
            result.count_failed(path_failed, reason, labelled=label is not None)
            yield [path_failed, *_truth_cells(label, labels, names), *[""] * 3 * topk, reason]
            failed += 1

    kept = f.attrs.get("keep_top")  # a file of each image's top classes, not of every posterior
    rows = f["features"].shape[0]
    for start in range(0, rows, BLOCK_ROWS):
        paths, block = posteriors.rows(start, min(start + BLOCK_ROWS, rows))
        check_block(block, kept, len(names), paths, [f, *fused], start, again)
        truth = match_labels(paths, labels, by_name) if labels is not None else [None] * len(paths)
        if kept is None:
            top = top_classes(block, ranked)
            probabilities = np.take_along_axis(block, top, axis=1)
        else:
            top, probabilities = block[:, kept:].astype(np.int64), block[:, :kept]
        for path, label, image_top, image_probabilities in zip(paths, truth, top, probabilities):
            yield from failures_before(path)
            result.count_classified(image_top, label)
            cells = [cell for index, probability in zip(image_top[:topk], image_probabilities)
                     for cell in (int(index), names[index], f"{probability:.6f}")]
            yield [path, *_truth_cells(label, labels, names), *cells, ""]
        if progress is not None:
            progress(min(BLOCK_ROWS, rows - start))
    yield from failures_before(None)


def _check_posteriors(f: h5py.File, path: str | os.PathLike, topk: int, labels: dict[str, int] | None, classes: int,
                      again: str = CLASSIFY_AGAIN) -> None:
    """Refuse a file that is not classify's posteriors of ``classes`` classes, and one of each
    image's top classes that keeps fewer than ``topk``, or than the 5 that the errors against
    ``labels`` need; one whose attributes classify could not have written (:func:`_check_attributes`)."""
    refuse_descriptors(f.attrs, path)
    check_attributes(f, path, again)
    if topk > classes:
        raise VggfeatError(f"--topk must be between 1 and {classes}, got {topk}")
    kept, needed = f.attrs.get("keep_top"), classes_needed(topk, labels is not None, classes)
    if kept is None and f["features"].shape[1] != classes:
        raise VggfeatError(f"{path} holds the posteriors of {f['features'].shape[1]} classes, not of {classes}")
    if kept is not None and kept < needed:
        raise VggfeatError(f"{path} keeps the top {kept} classes of each image; {needed} are needed")


def _check_fused(f: h5py.File, path: str | os.PathLike, other: h5py.File, other_path: str | os.PathLike,
                 again: str = CLASSIFY_AGAIN) -> None:
    """Refuse to fuse with the posteriors file ``path`` one that is not of every posterior of as
    many classes over the same images (each a row or a failure: networks may disagree on which failed),
    or that is ``path`` itself (given twice, by mistake: the average of a file and itself is it)."""
    if os.path.realpath(path) == os.path.realpath(other_path):
        raise VggfeatError(f"--fuse {other_path} is the posteriors file itself: fuse the file of another network")
    refuse_descriptors(other.attrs, other_path)
    check_attributes(other, other_path, again)
    for file, name in ((f, path), (other, other_path)):
        if "keep_top" in file.attrs:
            raise VggfeatError(f"{name} keeps each image's top classes only; fusing averages every posterior")
    (images, classes), (other_images, other_classes) = (
        (file["features"].shape[0] + file["failed/paths"].shape[0], file["features"].shape[1]) for file in (f, other))
    if (other_images, other_classes) != (images, classes):
        raise VggfeatError(f"{other_path} holds the posteriors of {other_images:,} images over {other_classes} classes, "
                           f"{path} of {images:,} over {classes}: only files of the same images fuse")
    if other.attrs.get("images_sha256") != f.attrs.get("images_sha256"):
        raise VggfeatError(f"{other_path} and {path} were made of other images: only files of the same images fuse")


def posteriors_categories(posteriors: str | os.PathLike) -> list[str]:
    """The class names of a file of every posterior that ``vggfeat classify`` wrote into an .h5;
    a CSV run's own file of top classes is refused (its command writes its CSV)."""
    with open_features_file(Path(posteriors), "posteriors") as f:
        refuse_descriptors(f.attrs, posteriors)
        check_attributes(f, posteriors, CLASSIFY_AGAIN)  # a dim of 1e9: as many names
        attrs, classes = dict(f.attrs), f["features"].shape[1]  # the dim checked, or none recorded
    if "keep_top" in attrs:
        raise VggfeatError(f"{posteriors} holds the top classes that a 'vggfeat classify' run keeps until it writes its "
                           "CSV: run that command again to write it")
    return category_names(str(attrs.get("model", "")), classes)


def _truth_cells(label: int | None, labels: dict[str, int] | None, names: Sequence[str]) -> list:
    if labels is None:
        return []
    return ["", ""] if label is None else [label, names[label]]


def top_classes(probabilities: np.ndarray, k: int) -> np.ndarray:
    """[n, k]: indices of each row's ``k`` largest probabilities, largest first, ties to the lower
    index (as a stable sort of each row). A partition finds them; only rows with a tie at the k-th
    place are sorted whole."""
    n, classes = probabilities.shape
    k = min(k, classes)
    if n == 0 or k == classes:
        return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    kth = -np.partition(-probabilities, k - 1, axis=1)[:, k - 1 : k]
    candidates = probabilities >= kth
    exact = candidates.sum(axis=1) == k  # no tie at the k-th place: the candidates are the top k
    top = np.empty((n, k), dtype=np.int64)
    # Candidates in index order, then by probability (stable: ties stay in index order).
    indices = np.nonzero(candidates[exact])[1].reshape(-1, k)
    values = np.take_along_axis(probabilities[exact], indices, axis=1)
    top[exact] = np.take_along_axis(indices, np.argsort(-values, axis=1, kind="stable"), axis=1)
    top[~exact] = np.argsort(-probabilities[~exact], axis=1, kind="stable")[:, :k]
    return top


def _header(topk: int, labelled: bool) -> list[str]:
    header = ["path", *(["true_class", "true_label"] if labelled else [])]
    for rank in range(1, topk + 1):
        header += [f"class_{rank}", f"label_{rank}", f"probability_{rank}"]
    return [*header, "error"]
