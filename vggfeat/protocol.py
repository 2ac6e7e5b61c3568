"""The paper's evaluation protocols on descriptor files.

- **Caltech-101/256** (:func:`caltech`): from one file of a labelled folder, each split draws N
  random training images per class and up to M test images per class from the rest (seeded);
  the score is the mean class recall, reported as mean ± standard deviation over the splits.
- **VOC** (:func:`voc`): fixed train and test sets (two files, or one file and two path lists, or
  a VOC devkit's image sets), multi-label SVMs, mean average precision over the classes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import VggfeatError
from .features import FeatureFile, Files, file_list, load_features
from .labels import (
    Targets,
    align_ignored,
    align_to_classes,
    read_labels_csv,
    targets_from_csv,
    targets_from_file,
    warn_left_out,
)
from .metrics import accuracy, mean_class_recall, multilabel_metrics
from .svm import LinearSVM, holdout_sizes
from .transfer import described_by_all, targets_of, training_features
from .regions import region_of
from .voc import read_set, result_files, train_difficult, write_results

_PREDICT_ROWS = 8192  # test rows gathered from the descriptor matrix at a time


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row indices into the labelled rows
    test: np.ndarray


def caltech_splits(labels: np.ndarray, n_classes: int, train_per_class: int, test_per_class: int | None,
                   splits: int, seed: int, class_names: Sequence[str] | None = None) -> list[Split]:
    """``splits`` random (train, test) row sets: N train and up to M test images per class (M=None: all the rest)."""
    if train_per_class < 1 or (test_per_class is not None and test_per_class < 1) or splits < 1:
        raise VggfeatError("train and test images per class and the number of splits must be positive")
    names = class_names or [str(k) for k in range(n_classes)]
    members = [np.flatnonzero(labels == k) for k in range(n_classes)]
    for k, rows in enumerate(members):
        if len(rows) <= train_per_class:
            raise VggfeatError(f"class {names[k]!r} has {len(rows)} image(s): too few for {train_per_class} training "
                               "images and at least one test image; lower --train-per-class or --exclude-class it")
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(splits):
        train, test = [], []
        for rows in members:
            order = rng.permutation(rows)
            train.append(order[:train_per_class])
            test.append(order[train_per_class : None if test_per_class is None else train_per_class + test_per_class])
        result.append(Split(np.sort(np.concatenate(train)), np.sort(np.concatenate(test))))
    return result


def caltech(files: Files, train_per_class: int = 30, test_per_class: int | None = 50, splits: int = 3, seed: int = 0,
            exclude: Sequence[str] = (), progress: Callable[[int, int], None] | None = None, **svm_params) -> dict:
    """Run the Caltech protocol; ``svm_params`` go to :class:`LinearSVM` (C chosen by CV, or on a
    hold-out, on each split's train set); ``progress(fits done, fits in all)`` over every split's liblinear fits."""
    files = file_list(files)
    settings = LinearSVM(**svm_params)  # C, cv and holdout, or their defaults
    # Else each split's fit refuses it, of "class 0" or of its rows
    if settings.C is None and settings.holdout is None and train_per_class < settings.cv:
        raise VggfeatError(f"{train_per_class} training images per class are too few to choose C by {settings.cv}-fold "
                           "cross-validation (one per fold): fix --C (in place of --cv), lower --cv or raise --train-per-class")
    targets = targets_of(files, exclude=exclude)
    classes = targets.classes
    if settings.C is None and settings.holdout is not None:
        rows = train_per_class * len(classes)
        trained, held = holdout_sizes(rows, settings.holdout)
        if min(trained, held) < len(classes):  # (fewer a side than classes: scikit-learn's stratified split refuses them)
            raise VggfeatError(f"{train_per_class} training images per class are too few to choose C on a "
                               f"{100 * settings.holdout:g}% hold-out: of the {rows} of {len(classes)} classes it holds "
                               f"out {held} and trains on {trained}, where each side needs one of each class: fix --C (in "
                               "place of --holdout), change --holdout or raise --train-per-class")
    drawn = caltech_splits(align_to_classes(targets, classes, multilabel=False), len(classes), train_per_class,
                           test_per_class, splits, seed, classes)
    # The descriptors of the rows that the splits draw alone: 30 and 50 images a class, of a file
    # that may hold millions.
    used = np.unique(np.concatenate([rows for split in drawn for rows in (split.train, split.test)]))
    targets = Targets([targets.paths[i] for i in used], targets.y[used], classes)
    features, svm_params = training_features(files, targets, svm_params)
    y = align_to_classes(targets, classes, multilabel=False)
    table = []
    for number, split in enumerate(drawn, 1):
        train, test = np.searchsorted(used, split.train), np.searchsorted(used, split.test)
        # X[train] is a copy made for this fit alone: normalised in place. Each split makes
        # as many fits: the progress of all is that of this one, after those before it.
        of_split = None if progress is None else (
            lambda done, total, before=number - 1: progress(before * total + done, splits * total))
        svm = LinearSVM(**{**svm_params, "copy": False}).fit(features.X[train], y[train], progress=of_split)
        predicted = _predict_rows(svm, features.X, test)
        table.append({
            "split": number,
            "train": len(split.train),
            "test": len(split.test),
            "C": svm.C_,
            "mean_class_recall": mean_class_recall(y[test], predicted, len(classes)),
            "accuracy": accuracy(y[test], predicted),
        })
    recalls = np.array([row["mean_class_recall"] for row in table])
    return {
        "protocol": "caltech",
        "files": [str(f) for f in files],
        "classes": len(classes),
        "excluded_classes": list(exclude),
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "seed": seed,
        "mean_class_recall_mean": float(recalls.mean()),
        # Sample standard deviation over the splits (0 for a single split).
        "mean_class_recall_std": float(recalls.std(ddof=1)) if len(recalls) > 1 else 0.0,
        "splits": table,
    }


def voc(train_files: Files, test_files: Files, labels_csv: str | os.PathLike | None = None, train_paths: Sequence[str] | None = None,
        test_paths: Sequence[str] | None = None, *, devkit: str | os.PathLike | None = None, train_set: str = "trainval",
        test_set: str = "test", difficult: str = "ignore", results: str | os.PathLike | None = None, overwrite: bool = False,
        progress: Callable[[int, int], None] | None = None, **svm_params) -> dict:
    """Train multi-label SVMs on the train set, report per-class AP and mAP on the test set.

    Labels come from ``labels_csv`` (rows by path; the paths of each set taken from it) or from the
    files' own single labels. ``train_paths`` / ``test_paths`` select rows when both sets share a file.
    With ``devkit``, a VOC devkit folder (VOCdevkit/VOC2007), the sets are its image sets
    ``train_set`` and ``test_set`` with their labels, and an image "difficult" for a class is left
    out of that class's AP, as VOC's evaluation leaves it out (:mod:`vggfeat.voc`), and out of its
    SVM, or a negative or a positive there (``difficult``: :func:`vggfeat.voc.train_difficult`). With
    ``results`` too, a folder, the test set's scores are written there as VOC's result files for its
    evaluation server (:func:`vggfeat.voc.write_results`; existing ones only with ``overwrite``): the
    only outcome for a test set whose labels are withheld (VOC2012's), which gets no metrics. Files
    whose rows are regions (persons) are classified by the devkit's action sets (:func:`vggfeat.voc.read_set`).
    ``progress`` as :meth:`LinearSVM.fit` takes it.
    """
    if devkit is not None:
        if labels_csv is not None or train_paths is not None or test_paths is not None:
            raise VggfeatError("a VOC devkit gives the sets and their labels: no labels file or path lists with it")
        train = train_difficult(targets_of(train_files, voc=(devkit, train_set)), difficult)
        test = targets_of(test_files, voc=(devkit, test_set))
        if not train.classes:
            raise VggfeatError(f"the training set {train_set!r} of {devkit} has no labels (no <class>_{train_set}.txt)")
        if not test.classes and results is None:
            raise VggfeatError(f"the test set {test_set!r} of {devkit} has no labels (withheld, as VOC2012's): pass a "
                               "results folder (--results) to write its scores for VOC's evaluation server")
        persons = any(region_of(path) is not None for path in train.paths)  # regions: an action set's persons
        if results is not None:
            existing = [path.name for path in result_files(results, test_set, train.classes, persons) if path.exists()]
            if existing and not overwrite:
                raise VggfeatError(f"{results} already holds result files ({existing[0]}, ...); pass --overwrite to "
                                   "replace them, or name another folder")
    elif results is not None:
        raise VggfeatError("result files name VOC's image ids: they need a VOC devkit (--voc-devkit)")
    else:
        train = _voc_targets(train_files, labels_csv, train_paths, "training")
        test = _voc_targets(test_files, labels_csv, test_paths, "test")
    overlap = set(train.paths) & set(test.paths) if _same(train_files, test_files) else set()
    if overlap:
        raise VggfeatError(f"{len(overlap)} image(s) are in both the training and the test set (e.g. {min(overlap)})")
    train_features, svm_params = training_features(train_files, train, svm_params)
    svm = LinearSVM(**{**svm_params, "multilabel": True, "copy": False})
    svm.fit(train_features.X, train.y, classes=train.classes, ignore=train.ignore, progress=progress)
    configs = train_features.configs
    del train_features
    test_features = load_features(test_files, paths=test.paths, expected_configs=configs, expected_by="the training features")
    scores = svm.class_scores(test_features.X)
    outcome: dict = {}
    if results is not None:
        written = write_results(results, read_set(devkit, test_set, test.paths), test_set, test.paths, train.classes, scores)
        outcome["results"] = [str(path) for path in written]
    if test.classes:
        truth = align_to_classes(test, train.classes, multilabel=True)
        outcome.update(multilabel_metrics(truth, scores, train.classes, align_ignored(test, train.classes)))
    else:
        outcome["classes"] = list(train.classes)
    sets = ({"devkit": str(devkit), "train_set": train_set, "test_set": test_set, "difficult_in_training": difficult,
             "persons": persons} if devkit is not None else {})
    return {"protocol": "voc", **sets, "train_rows": len(train.paths), "test_rows": len(test.paths), "C": svm.C_, **outcome}


def _predict_rows(svm: LinearSVM, X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``svm.predict(X[rows])`` without copying ``X[rows]`` whole (the test rows can be GBs)."""
    return np.concatenate([svm.predict(X[rows[start : start + _PREDICT_ROWS]]) for start in range(0, len(rows), _PREDICT_ROWS)])


def _voc_targets(files: Files, labels_csv: str | os.PathLike | None, paths: Sequence[str] | None, which: str) -> Targets:
    """Multi-label targets of one set: the CSV's paths held by (or listed for) the set's file, or the file's own labels."""
    with FeatureFile(file_list(files)[0]) as first:
        held, labels, classes, failed = first.paths, first.labels, first.classes, first.failed()
    failed_reasons = failed.reasons_by_path()  # listed images not described: left out, said
    in_file = {*held, *failed_reasons}  # this set's images, failed ones too
    if paths is not None:  # a path listed with spaces before it names a file so named, or else the one without
        paths = [path.rstrip() if path.rstrip() in in_file else path.strip() for path in paths]
    if labels_csv is not None:
        labels_by_path = read_labels_csv(labels_csv).named_as(in_file)
        if paths is not None:
            unlabelled = [p for p in paths if p not in labels_by_path]
            if unlabelled:
                raise VggfeatError(f"{len(unlabelled)} {which} path(s) have no label in {labels_csv} (e.g. {unlabelled[0]})")
            labels_by_path = {p: labels_by_path[p] for p in paths}
        else:
            # The CSV labels both sets: this set's paths are its file's images.
            labels_by_path = {p: names for p, names in labels_by_path.items() if p in in_file}
            if not labels_by_path:
                raise VggfeatError(f"none of the paths of {labels_csv} are in the {which} features file")
        return described_by_all(targets_from_csv(labels_by_path, held, multilabel=True, source=str(labels_csv),
                                                 failed=failed_reasons), files)
    targets = targets_from_file(held, labels, classes, multilabel=True)
    if paths is not None:
        index = {p: i for i, p in enumerate(targets.paths)}
        missing = [p for p in paths if p not in index and p not in failed_reasons]
        if missing:
            raise VggfeatError(f"{len(missing)} {which} path(s) are not labelled rows of the features file (e.g. {missing[0]})")
        warn_left_out([p for p in paths if p not in index], failed_reasons, f"of the {which} list")
        paths = [p for p in paths if p in index]
        targets = Targets(paths, targets.y[[index[p] for p in paths]], targets.classes)
    return described_by_all(targets, files)


def _same(a: Files, b: Files) -> bool:
    """Whether two file arguments name the same files, in the same order."""
    return [os.path.abspath(f) for f in file_list(a)] == [os.path.abspath(f) for f in file_list(b)]
