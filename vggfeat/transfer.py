"""The transfer protocol as functions over files: train an SVM on a features file, predict, evaluate.

These are what ``vggfeat train-svm``, ``predict`` and ``evaluate`` call; each takes one features
file or several to fuse (the paper's Net-D & Net-E: descriptors side by side, rows matched by path).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import VggfeatError
from .features import FeatureFile, Features, load_features
from .labels import Targets, read_labels_csv, targets_from_csv, targets_from_file
from .metrics import multilabel_metrics, single_label_metrics
from .svm import LinearSVM, SavedModel, load_model, save_model

Files = str | os.PathLike | Sequence[str | os.PathLike]


def training_targets(files: Files, labels_csv: str | os.PathLike | None = None, multilabel: bool = False,
                     exclude: Sequence[str] = ()) -> Targets:
    """Which rows train, and on what: a labels CSV, or the first features file's own labels."""
    first = _as_list(files)[0]
    with FeatureFile(first) as f:
        paths, labels, classes = f.paths, f.labels, f.classes
    if labels_csv is not None:
        targets = targets_from_csv(read_labels_csv(labels_csv), paths, multilabel, source=str(labels_csv))
        if exclude:
            targets = _drop_classes(targets, exclude, multilabel)
        return targets
    targets = targets_from_file(paths, labels, classes, multilabel, exclude)
    if not multilabel:
        present = set(targets.y)
        empty = [name for name in targets.classes if name not in present]
        if empty:
            raise VggfeatError(f"class {empty[0]!r} has no image in {first}"
                               f"{f' ({len(empty)} such classes)' if len(empty) > 1 else ''}; leave it out with --exclude-class")
    return targets


def train_svm(files: Files, model_path: str | os.PathLike | None = None, *, labels_csv: str | os.PathLike | None = None,
              exclude: Sequence[str] = (), **svm_params) -> SavedModel:
    """Fit :class:`LinearSVM` (``svm_params``: C, C_grid, cv, loss, class_weight, normalize,
    multilabel, n_jobs, ...) on ``files`` and write it to ``model_path`` if given."""
    files = _as_list(files)
    multilabel = bool(svm_params.get("multilabel", False))
    targets = training_targets(files, labels_csv, multilabel, exclude)
    features = load_features(files, paths=targets.paths)
    svm = LinearSVM(**svm_params, copy=False)  # X was read for this fit alone: normalise it in place
    svm.fit(features.X, targets.y, classes=targets.classes if multilabel else None)
    training = {
        "files": [str(f) for f in files],
        "rows": len(targets.paths),
        "labels": str(labels_csv) if labels_csv else "stored",
        "excluded_classes": list(exclude),
        "examples_per_class": dict(zip(map(str, svm.classes_), map(int, _positives(targets, svm)))),
    }
    saved = SavedModel(svm, features.configs, training)
    if model_path is not None:
        save_model(model_path, svm, features.configs, training)
    return saved


@dataclass
class Scored:
    """A model's scores on a features file, with the test targets when known."""

    paths: list[str]
    scores: np.ndarray  # [N, K]
    classes: list[str]
    multilabel: bool
    targets: np.ndarray | None = None  # [N] class index (single-label) or [N, K] bool


def score(model: str | os.PathLike | SavedModel, files: Files, paths: Sequence[str] | None = None) -> Scored:
    """Scores of every row of ``files`` (or ``paths``), after checking they were extracted as the model's were."""
    saved = model if isinstance(model, SavedModel) else load_model(model)
    features = load_features(_as_list(files), paths=paths, expected_configs=saved.extraction_configs)
    return _scored(saved, features)


def predict(model: str | os.PathLike | SavedModel, files: Files, output_csv: str | os.PathLike | None = None) -> Scored:
    """Score ``files``; with ``output_csv``, write ``path, predicted, score:<class>...`` per row."""
    scored = score(model, files)
    if output_csv is not None:
        write_predictions(output_csv, scored)
    return scored


def evaluate(model: str | os.PathLike | SavedModel, files: Files, labels_csv: str | os.PathLike | None = None) -> tuple[dict, Scored]:
    """Metrics of the model on the labelled rows of ``files`` (or on the rows of ``labels_csv``)."""
    saved = model if isinstance(model, SavedModel) else load_model(model)
    files = _as_list(files)
    multilabel, classes = saved.svm.multilabel, [str(c) for c in saved.svm.classes_]
    with FeatureFile(files[0]) as f:
        if labels_csv is not None:
            targets = targets_from_csv(read_labels_csv(labels_csv), f.paths, multilabel, source=str(labels_csv))
        else:
            targets = targets_from_file(f.paths, f.labels, f.classes, multilabel)
    truth = _align(targets, classes, multilabel)
    scored = score(saved, files, paths=targets.paths)
    scored.targets = truth
    if multilabel:
        return multilabel_metrics(truth, scored.scores, classes), scored
    return single_label_metrics(truth, scored.scores, classes), scored


def write_predictions(path: str | os.PathLike, scored: Scored) -> None:
    with open(Path(path), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "predicted", *(f"score:{c}" for c in scored.classes)])
        for p, row in zip(scored.paths, scored.scores):
            if scored.multilabel:
                predicted = ";".join(c for c, s in zip(scored.classes, row) if s > 0)
            else:
                predicted = scored.classes[int(np.argmax(row))]
            writer.writerow([p, predicted, *(f"{s:.6g}" for s in row)])


def _scored(saved: SavedModel, features: Features) -> Scored:
    return Scored(features.paths, saved.svm.decision_function(features.X), [str(c) for c in saved.svm.classes_],
                  saved.svm.multilabel)


def _align(targets: Targets, classes: list[str], multilabel: bool) -> np.ndarray:
    """Test targets in the model's class order; refuse test classes the model does not know."""
    unknown = [c for c in targets.classes if c not in classes]
    if unknown:
        raise VggfeatError(f"test class {unknown[0]!r} is not one of the model's {len(classes)} classes"
                           f"{f' ({len(unknown)} unknown classes)' if len(unknown) > 1 else ''}")
    if multilabel:
        truth = np.zeros((len(targets.paths), len(classes)), dtype=bool)
        for k, name in enumerate(targets.classes):
            truth[:, classes.index(name)] = targets.y[:, k]
        return truth
    index = {name: k for k, name in enumerate(classes)}
    return np.array([index[name] for name in targets.y], dtype=np.int64)


def _drop_classes(targets: Targets, exclude: Sequence[str], multilabel: bool) -> Targets:
    unknown = [c for c in exclude if c not in targets.classes]
    if unknown:
        raise VggfeatError(f"cannot exclude unknown class {unknown[0]!r}")
    keep = [k for k, c in enumerate(targets.classes) if c not in exclude]
    if multilabel:
        return Targets(targets.paths, targets.y[:, keep], [targets.classes[k] for k in keep])
    rows = [i for i, name in enumerate(targets.y) if name not in exclude]
    return Targets([targets.paths[i] for i in rows], targets.y[rows], [targets.classes[k] for k in keep])


def _positives(targets: Targets, svm: LinearSVM) -> np.ndarray:
    if svm.multilabel:
        return targets.y.sum(axis=0)
    return np.array([(targets.y == c).sum() for c in svm.classes_])


def _as_list(files: Files) -> list:
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not files:
        raise VggfeatError("give at least one features file")
    return files
