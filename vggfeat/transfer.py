"""The transfer protocol as functions over files: train an SVM on a features file, predict, evaluate.

These are what ``vggfeat train-svm``, ``predict`` and ``evaluate`` call; each takes one features
file or several to fuse (the paper's Net-D & Net-E: descriptors side by side, rows matched by path).
"""

from __future__ import annotations

import csv
import heapq
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InvalidInput, VggfeatError, check_sequence
from .features import (FeatureFile, Features, Files, file_list, fused_failures, fused_files, load_features, part_dims,
                       read_blocks)
from .labels import (
    Targets,
    align_ignored,
    align_to_classes,
    exclude_classes,
    read_labels_csv,
    targets_from_csv,
    targets_from_file,
    warn_left_out,
)
from .metrics import multilabel_metrics, single_label_metrics
from .host import available_memory
from .files import file_attributes, open_h5, written_atomically
from .rerun import MADE_FROM, written_recorded_file
from .scoresfile import ScoresWriter
from .store import SCORES_FORMAT, SVM_MODEL_FORMAT, check_written
from .svm import DEFAULT_C_GRID, LinearSVM, SavedModel, load_model, save_model, training_memory
from .voc import read_set, targets_of_set, train_difficult

SAMPLE_ROWS = 1024  # rows read to see how many of a file's values are zeros (liblinear keeps the others)
# Rows x dimensions x classes x fits from which --solver auto trains with lbfgs on the CPU: 4 to 8
# seconds of liblinear on this workplace's CPU (2-4e-8 s a unit: RESULTS.md), about as long as torch
# takes to import; lbfgs was 1.6 to 6 times as fast from there (20,000 rows of 2 or 10 classes,
# Caltech-101's size with C chosen by cross-validation).
LBFGS_WORK = 2 * 10**8


def targets_of(files: Files, labels_csv: str | os.PathLike | None = None, multilabel: bool = False,
               exclude: Sequence[str] = (), voc: tuple[str | os.PathLike, str] | None = None) -> Targets:
    """The rows of the first of ``files`` to use and their labels: those of a labels CSV, of a VOC
    devkit's image set (``voc``: (devkit folder, set name); multi-label, with the images difficult
    for each class as :attr:`Targets.ignore`, and no classes where its labels are withheld), or the
    files' own (:func:`_own_targets`). Images that it, or another of ``files`` (fused with it),
    could not describe are left out, with a warning."""
    if voc is None and labels_csv is None:
        return _own_targets(files, multilabel, exclude)
    with FeatureFile(file_list(files)[0]) as f:
        failed_reasons = f.failed().reasons_by_path()  # images listed but not described: left out, said
        if voc is not None:
            targets = targets_of_set(read_set(*voc, f.paths), f.paths, voc[1], failed_reasons)
        else:
            targets = targets_from_csv(read_labels_csv(labels_csv), f.paths, multilabel, source=str(labels_csv),
                                       failed=failed_reasons)
    if exclude:
        targets = exclude_classes(targets, exclude, multilabel)
    return described_by_all(targets, files)


def _own_targets(files: Files, multilabel: bool, exclude: Sequence[str]) -> Targets:
    """The rows of the first of ``files`` and the labels that the files give them: the first
    labelled file's, which the others must agree with (:attr:`~vggfeat.features.Fused.labelling`).
    Labelled images that the first, or another file, could not describe are left out, with a warning."""
    with fused_files(files, say_left_out=False) as fused:
        first = fused.opened[0]
        failed = first.failed()

        def labelled(paths: list[str]) -> list[str]:
            return [path for path, label in zip(paths, fused.labels_of(paths))
                    if label >= 0 and (multilabel or fused.classes[label] not in exclude)]

        warn_left_out(labelled(failed.paths), failed.reasons_by_path(), f"labelled in {first.path}")
        if fused.left_out:
            warn_left_out(labelled([path for path in first.paths if path in fused.left_out]), fused.left_out, f"of {first.path}")
        return targets_from_file(fused.paths, fused.labels, fused.classes, multilabel, exclude)


def described_by_all(targets: Targets, files: Files) -> Targets:
    """``targets`` of the first of ``files`` without the images that another (fused with it) could
    not describe, with a warning."""
    failures = fused_failures(files)
    warn_left_out([path for path in targets.paths if path in failures], failures, f"of {file_list(files)[0]}")
    return targets.without(failures)


def training_targets(files: Files, labels_csv: str | os.PathLike | None = None, multilabel: bool = False,
                     exclude: Sequence[str] = (), voc: tuple[str | os.PathLike, str] | None = None,
                     difficult: str = "ignore") -> Targets:
    """Which rows train, and on what: a labels CSV, a VOC devkit's image set (its difficult
    images as :func:`~vggfeat.voc.train_difficult` takes them), or the first features file's own
    labels."""
    check_sequence(exclude, "class names")
    first = file_list(files)[0]
    targets = train_difficult(_labelled(targets_of(files, labels_csv, multilabel, exclude, voc), voc), difficult)
    if labels_csv is None and voc is None and not multilabel:
        present = set(targets.y)
        empty = [name for name in targets.classes if name not in present]
        if empty:
            raise VggfeatError(f"class {empty[0]!r} has no image in {first}"
                               f"{f' ({len(empty)} such classes)' if len(empty) > 1 else ''}; leave it out with --exclude-class")
    return targets


def train_svm(files: Files, model_path: str | os.PathLike | None = None, *, labels_csv: str | os.PathLike | None = None,
              exclude: Sequence[str] = (), voc: tuple[str | os.PathLike, str] | None = None, difficult: str = "ignore",
              progress: Callable[[int, int], None] | None = None, provenance: dict | None = None, **svm_params) -> SavedModel:
    """Fit :class:`LinearSVM` (``svm_params``: C, C_grid, cv, holdout, loss, class_weight, normalize,
    part_dims, multilabel, n_jobs, ...) on ``files`` and write it to ``model_path`` if given, with the
    attributes ``provenance`` besides (the command, say); ``progress`` as :meth:`LinearSVM.fit` takes it. With ``voc`` ((devkit folder, image set)), the labels are the
    set's, multi-label, and an image difficult for a class is left out of that class's SVM, or
    is a negative or a positive there (``difficult``: :func:`~vggfeat.voc.train_difficult`)."""
    files = file_list(files)
    if model_path is not None:  # before the work: never over one of its inputs, nor another kind of file
        check_written(model_path, SVM_MODEL_FORMAT, [*files, labels_csv, *(voc or ())[:1]])
    if voc is not None:
        svm_params = {**svm_params, "multilabel": True}
    multilabel = bool(svm_params.get("multilabel", False))
    targets = training_targets(files, labels_csv, multilabel, exclude, voc, difficult)
    features, svm_params = training_features(files, targets, svm_params)
    svm = LinearSVM(**{**svm_params, "copy": False})  # X was read for this fit alone: normalise it in place
    svm.fit(features.X, targets.y, classes=targets.classes if multilabel else None, ignore=targets.ignore,
            progress=progress)
    svm.copy = True  # as the caller's own fits (a clone of it, say) expect: their arrays left as they are
    labels = (f"VOC devkit {voc[0]}, set {voc[1]}, difficult images: {difficult}" if voc is not None
              else str(labels_csv) if labels_csv else "stored")
    training = {
        "files": [str(f) for f in files],
        "rows": len(targets.paths),
        "labels": labels,
        "excluded_classes": list(exclude),
        "examples_per_class": dict(zip(map(str, svm.classes_), map(int, _positives(targets, svm)))),
    }
    saved = SavedModel(svm, features.configs, training)
    if model_path is not None:
        save_model(model_path, svm, features.configs, training, provenance)
    return saved


def training_features(files: Files, targets: Targets, svm_params: dict) -> tuple[Features, dict]:
    """The descriptors of ``targets``' rows as the solver of ``svm_params`` (:class:`LinearSVM`'s
    keywords) trains on them: float64 for liblinear, float32 for lbfgs (half the memory; its GPU
    computes in float32 anyway), float16 where every file holds float16 (a quarter; each block of
    rows computed in float32); and ``svm_params`` with ``solver="auto"`` resolved
    (:func:`solver_in_memory`), which also warns where they would not fit in memory, and
    ``normalize="parts"``'s ``part_dims``, where not given, the files' (:func:`with_part_dims`)."""
    svm_params = with_part_dims(files, svm_params)
    width = None if not targets.paths else _width_of(files)  # each file's first rows, read once
    svm_params = _solver_for(width, len(targets.paths), len(targets.classes), svm_params)
    dtype = np.float64
    if svm_params["solver"] == "lbfgs":
        dtype = np.float16 if width is not None and width[2] == 2 else np.float32
    return load_features(files, paths=targets.paths, dtype=dtype), svm_params


def with_part_dims(files: Files, svm_params: dict) -> dict:
    """``svm_params`` (:class:`LinearSVM`'s keywords) with ``normalize="parts"`` given the parts of
    ``files`` where it has no ``part_dims``: each network's descriptor, of each file fused or of a
    stacked file's (:func:`~vggfeat.features.part_dims`); refused for one network's descriptors,
    and where ``part_dims`` are given and are not those (before the training that
    :func:`~vggfeat.svm.save_model` would then refuse to write)."""
    if svm_params.get("normalize") != "parts":
        return svm_params
    dims, given = part_dims(files), svm_params.get("part_dims")
    if given is not None:
        given = np.asarray(given).tolist() if isinstance(given, (list, tuple, np.ndarray)) else given
        whole_numbers = isinstance(given, list) and all(type(dim) is int for dim in given)  # (else LinearSVM's refusal)
        if whole_numbers and given != dims:
            raise InvalidInput(f"part_dims {given} are not the dimensions of the networks' descriptors of "
                               f"{', '.join(map(str, file_list(files)))} ({dims}, in order): leave part_dims out, and "
                               "the files give them")
        return svm_params
    if len(dims) < 2:
        raise VggfeatError(f"--normalize-parts (normalize='parts') L2-normalises each network's part of descriptors side "
                           f"by side, and {file_list(files)[0]} holds one network's ({dims[0]}-d): fuse files (--features "
                           "d.h5 --features e.h5), or train on a 'vggfeat stack' file; or normalise the row whole "
                           "(without --normalize-parts)")
    return {**svm_params, "part_dims": dims}


def solver_in_memory(files: Files, rows: int, classes: int, svm_params: dict) -> dict:
    """``svm_params`` with ``solver="auto"`` resolved, before the descriptors are read (the squared
    hinge loss only: the hinge is liblinear's alone):
    - lbfgs where a GPU is asked for (``device``);
    - lbfgs where liblinear's peak (:func:`~vggfeat.svm.training_memory`) is more than the memory
      this process has and lbfgs's is less (it holds the descriptors as float32 and copies
      nothing), said in a warning;
    - lbfgs on the CPU where the training is large enough (:data:`LBFGS_WORK`) that importing torch
      (seconds) is small against it, and it holds no more memory than liblinear would: the same
      SVMs, 1.6 to 6 times as fast (RESULTS.md, bench_svm.py). Not on a GPU unasked: not yet measured;
    - else liblinear.
    Then warns where training on ``rows`` of ``files`` (``classes`` of them) with that solver needs
    more memory than there is: killed by the system after hours of fits, a run says nothing. The
    share of zeros is that of each file's first rows."""
    return _solver_for(None if rows == 0 else _width_of(files), rows, classes, svm_params)


def _solver_for(width: tuple[int, float, int] | None, rows: int, classes: int, svm_params: dict) -> dict:
    """:func:`solver_in_memory` for descriptors of ``width`` (:func:`_width_of`; None: unknown)."""
    solver, device = svm_params.get("solver", "liblinear"), svm_params.get("device", "auto")
    squared_hinge = svm_params.get("loss", "squared_hinge") == "squared_hinge"
    if solver == "auto" and device not in ("auto", "cpu"):
        solver = "lbfgs"
    if width is None:
        return {**svm_params, "solver": "liblinear" if solver == "auto" else solver}
    available, n_jobs = available_memory(), svm_params.get("n_jobs", 1)

    def peak(solver: str, device: str = device) -> int:
        on_gpu = False
        if solver == "lbfgs":
            from .settings import resolve_device  # torch, which the solver imports anyway

            on_gpu = resolve_device(device).type == "cuda"
        return training_memory(rows, width[0], n_jobs, width[1], solver, classes, on_gpu, width[2])

    if solver == "auto":
        solver = "liblinear"
        folds = svm_params.get("cv", 3) if svm_params.get("holdout") is None else 1
        fits = 1 if svm_params.get("C") is not None else 1 + len(svm_params.get("C_grid", DEFAULT_C_GRID)) * folds
        if squared_hinge and available is not None and peak("liblinear") > available:
            if peak("lbfgs") < peak("liblinear"):
                solver = "lbfgs"
                warnings.warn(f"liblinear would need about {_gib(peak('liblinear'))} of memory for {rows:,} rows of "
                              f"{width[0]:,}-d and {_gib(available)} is available: training with --solver lbfgs (the "
                              f"same SVMs, about {_gib(peak('lbfgs'))})", RuntimeWarning, stacklevel=3)
        elif squared_hinge and rows * width[0] * classes * fits >= LBFGS_WORK and peak("lbfgs", "cpu") <= peak("liblinear"):
            solver, device = "lbfgs", "cpu"
            svm_params = {**svm_params, "device": device}
    if available is not None and peak(solver) > available:
        fewer = "fewer classes at once (n_jobs, --n-jobs) or " if n_jobs > 1 and solver == "liblinear" else ""
        held = (f"liblinear's copy of them for each of {n_jobs} class{'es' if n_jobs > 1 else ''} trained at once"
                if solver == "liblinear" else f"the solver's values of each row and class ({classes})")
        warnings.warn(f"training on {rows:,} rows of {width[0]:,}-d needs about {_gib(peak(solver))} of memory (the "
                      f"descriptors as float{width[2] * 8 if solver == 'lbfgs' else 64}, and {held}), and {_gib(available)} is "
                      f"available: the system may stop it before it ends. Train {fewer}on fewer rows",
                      RuntimeWarning, stacklevel=3)
    return {**svm_params, "solver": solver}


def _width_of(files: Files) -> tuple[int, float, int] | None:
    """(the descriptors' dimension, the share of their values that are not zero, the bytes of each
    as lbfgs holds them: 2 where every file's are float16, else 4) of ``files`` fused, from each
    one's first rows; None where a file cannot be read (load_features says why)."""
    dim, nonzero, float16 = 0, 0.0, True
    for name in file_list(files):
        try:
            with open_h5(name) as f:
                sample = f["features"][:SAMPLE_ROWS]
        except (OSError, KeyError):
            return None
        dim += sample.shape[1]
        nonzero += np.count_nonzero(sample) / max(1, sample.shape[0])
        float16 &= sample.dtype == np.float16
    return dim, nonzero / max(1, dim), 2 if float16 else 4


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"


@dataclass
class Scored:
    """A model's scores on a features file, with the test targets when known."""

    paths: list[str]
    scores: np.ndarray  # [N, K]
    classes: list[str]
    multilabel: bool
    targets: np.ndarray | None = None  # [N] class index (single-label) or [N, K] bool
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): images of the files without a descriptor
    ignore: np.ndarray | None = None  # [N, K] bool (multi-label): rows left out of class k's AP (VOC's difficult)

    def __repr__(self) -> str:  # (the dataclass's would list every path and score)
        return (f"Scored(rows={len(self.paths):,}, classes={len(self.classes)}, multilabel={self.multilabel}, "
                f"failed={len(self.failed):,})")


def score(model: str | os.PathLike | SavedModel, files: Files, paths: Sequence[str] | None = None) -> Scored:
    """Scores of every row of ``files`` (or ``paths``), after checking they were extracted as the
    model's were; the descriptors are read and scored a block at a time, so that memory grows with
    the scores (classes a row), not with the descriptors."""
    saved = model if isinstance(model, SavedModel) else load_model(model)
    scores = load_features(files, paths=paths, expected_configs=saved.extraction_configs,
                           transform=saved.svm.class_scores)
    return Scored(scores.paths, scores.X, [str(c) for c in saved.svm.classes_], saved.svm.multilabel)


def failures_of(files: Files) -> list[tuple[str, str]]:
    """(path, reason) of the images that ``files`` could not describe, in path order: the first
    file's, then those that another failed (``"failed in FILE: reason"``)."""
    with FeatureFile(file_list(files)[0]) as f:
        reasons = f.failed().reasons_by_path()
    for path, reason in fused_failures(files).items():
        reasons.setdefault(path, reason)
    return sorted(reasons.items())


def predict(model: str | os.PathLike | SavedModel, files: Files) -> Scored:
    """The scores of every row of ``files``, and the images that they could not describe
    (``failed``); :func:`write_predictions` writes them as a CSV without holding them."""
    scored = score(model, files)
    scored.failed = failures_of(files)
    return scored


@dataclass
class WrittenPredictions:
    """What :func:`write_predictions` wrote: a row per descriptor (``rows``), one per image without one."""

    path: Path
    rows: int
    classes: list[str]
    failed: int


def write_predictions(path: str | os.PathLike, model: str | os.PathLike | SavedModel, files: Files,
                      progress: Callable[[int], object] | None = None,
                      record: Callable[[Path], object] | None = None) -> WrittenPredictions:
    """CSV: ``path, predicted, score:<class>..., error`` for every row of ``files``, scored and
    written a block of rows at a time (10 million rows of 1,000 classes are 80 GB of scores); several
    predicted labels (multi-label) joined by ``;``; the images without a descriptor in their place by
    path, empty but for the reason, as ``vggfeat classify`` writes them. ``progress(rows)`` after
    each block, and each failure's row: in all, the first file's rows and failures. ``record``:
    what records how the CSV was made (:func:`vggfeat.rerun.recorder`), before it is renamed into place."""
    check_written(path, None, _inputs(model, files))
    saved = model if isinstance(model, SavedModel) else load_model(model)
    classes, multilabel = [str(c) for c in saved.svm.classes_], saved.svm.multilabel
    failed = failures_of(files)
    class_names = np.asarray(classes)  # a multi-label row's positive classes by mask
    # A scored row in one formatting, the text csv.writer would write (its 'excel' dialect): 1.8x as
    # many rows a second as csv.writer given each score as a field.
    scored_line = "%s,%s," + ",".join(["%.6g"] * len(classes)) + ",\r\n"
    written = 0

    def scored_rows() -> Iterator[tuple[str, str, np.ndarray]]:
        nonlocal written
        for paths, X in read_blocks(files, expected_configs=saved.extraction_configs):
            scores = saved.svm.class_scores(X)
            if multilabel:
                predicted = [";".join(class_names[positive]) for positive in scores > 0]
            else:
                predicted = [classes[k] for k in scores.argmax(axis=1)]
            yield from zip(paths, predicted, scores)
            written += len(paths)
            if progress is not None:
                progress(len(paths))

    with written_recorded_file(path, record) as temporary, open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "predicted", *(f"score:{c}" for c in classes), "error"])
        failures = ((p, None, reason) for p, reason in failed)
        # Both in path order; a failure has no prediction, only its reason.
        for p, predicted, scores_or_reason in heapq.merge(scored_rows(), failures, key=lambda image: image[0]):
            if predicted is None:
                writer.writerow([p, "", *[""] * len(classes), scores_or_reason])
                if progress is not None:
                    progress(1)
            else:
                f.write(scored_line % (_csv_field(p), _csv_field(predicted), *scores_or_reason))
    return WrittenPredictions(Path(path), written, classes, len(failed))


def write_scores(path: str | os.PathLike, model: str | os.PathLike | SavedModel, files: Files,
                 progress: Callable[[int], object] | None = None, provenance: dict | None = None) -> WrittenPredictions:
    """The scores file ``path`` (HDF5, :mod:`vggfeat.scoresfile`): ``model``'s scores of every row
    of ``files``, scored and written a block of rows at a time, whole or not at all; what a CSV of
    millions of rows would be too slow to write and to read back. ``progress`` as for
    :func:`write_predictions`; ``provenance``: attributes to record besides (the command, say)."""
    check_written(path, SCORES_FORMAT, _inputs(model, files))
    saved = model if isinstance(model, SavedModel) else load_model(model)
    classes = [str(c) for c in saved.svm.classes_]
    failed = failures_of(files)
    with written_atomically(path) as temporary, open_h5(temporary, "w") as f:
        writer = ScoresWriter(f, classes, saved.svm.multilabel)
        for paths, X in read_blocks(files, expected_configs=saved.extraction_configs):
            writer.append(paths, saved.svm.class_scores(X))
            if progress is not None:
                progress(len(paths))
        writer.finish(failed, saved.source, saved.checksum, [os.fspath(name) for name in file_list(files)], provenance)
    if progress is not None and failed:
        progress(len(failed))
    return WrittenPredictions(Path(path), writer.rows, classes, len(failed))


def _inputs(model: str | os.PathLike | SavedModel, files: Files) -> list[str | os.PathLike]:
    """The files a writer of ``model``'s scores of ``files`` reads, which it must not write over."""
    return [*([] if isinstance(model, SavedModel) else [model]), *file_list(files)]


def _csv_field(text: str) -> str:
    """``text`` as csv.writer writes a field (QUOTE_MINIMAL): quoted, its quotes doubled, where it
    holds a comma, a quote or a line break (a file or class name may)."""
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def evaluate(model: str | os.PathLike | SavedModel, files: Files, labels_csv: str | os.PathLike | None = None,
             voc: tuple[str | os.PathLike, str] | None = None) -> tuple[dict, Scored]:
    """Metrics of the model on the labelled rows of ``files`` (or on the rows of ``labels_csv``, or
    of a VOC devkit's image set ``voc``: (devkit folder, set name), whose difficult images are left
    out of their class's AP)."""
    saved = model if isinstance(model, SavedModel) else load_model(model)
    files = file_list(files)
    multilabel, classes = saved.svm.multilabel, [str(c) for c in saved.svm.classes_]
    if voc is not None and not multilabel:
        raise VggfeatError("a VOC devkit's labels are multi-label: evaluate a model trained on them (train-svm --voc-devkit)")
    targets = _without_excluded(_labelled(targets_of(files, labels_csv, multilabel, voc=voc), voc), saved, multilabel)
    if labels_csv is None and voc is None and _trained_on(saved, files):
        warnings.warn(f"{files[0]} is what the model was trained on, by its own labels: these are scores of its training "
                      "rows, not of a test set", RuntimeWarning, stacklevel=2)
    truth = align_to_classes(targets, classes, multilabel)
    scored = score(saved, files, paths=targets.paths)
    scored.targets = truth
    if multilabel:
        scored.ignore = align_ignored(targets, classes)
        return multilabel_metrics(truth, scored.scores, classes, scored.ignore), scored
    return single_label_metrics(truth, scored.scores, classes), scored


def _trained_on(saved: SavedModel, files: list) -> bool:
    """Whether the model was trained on ``files``' own labels (all its rows), the first of them
    being the first it was trained on (by the real paths its file records; else as they were named)."""
    if saved.training.get("labels") != "stored" or not saved.training.get("files"):
        return False
    try:
        inputs = json.loads(file_attributes(saved.source)[MADE_FROM])["inputs"] if saved.source else []
    except (KeyError, TypeError, ValueError):  # a model written by the Python API records none
        inputs = []
    first = inputs[0][0] if inputs and isinstance(inputs[0], list) else os.path.realpath(saved.training["files"][0])
    return os.path.realpath(files[0]) == first


def _labelled(targets: Targets, voc: tuple[str | os.PathLike, str] | None) -> Targets:
    """``targets``, refused where they come from a VOC image set whose labels are withheld."""
    if voc is not None and not targets.classes:
        raise VggfeatError(f"the image set {voc[1]!r} of {voc[0]} has no labels (withheld, as VOC2012's test set)")
    return targets


def _without_excluded(targets: Targets, saved: SavedModel, multilabel: bool) -> Targets:
    """``targets`` without the classes that the model's training left out (train-svm
    --exclude-class, as Caltech-101's BACKGROUND_Google), with a warning: the model cannot score them."""
    excluded = [name for name in saved.training.get("excluded_classes", []) if name in targets.classes]
    if not excluded:
        return targets
    kept = exclude_classes(targets, excluded, multilabel)
    left_out = len(targets.paths) - len(kept.paths)
    rows = f"{left_out:,} test row{'s' if left_out != 1 else ''} of " if not multilabel else ""
    warnings.warn(f"{rows}{', '.join(map(repr, excluded))} left out: the model was trained without "
                  f"{'them' if len(excluded) > 1 else 'it'} (--exclude-class)", RuntimeWarning, stacklevel=3)
    return kept


def _positives(targets: Targets, svm: LinearSVM) -> np.ndarray:
    """Training examples of each of the model's classes."""
    if svm.multilabel:
        return targets.y.sum(axis=0)
    return np.array([(targets.y == c).sum() for c in svm.classes_])
