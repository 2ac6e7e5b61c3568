"""The paper's classifier: one-vs-rest linear SVMs on L2-normalised descriptors.

:class:`LinearSVM` is a scikit-learn estimator (``fit`` / ``decision_function`` / ``predict``)
training one binary :class:`sklearn.svm.LinearSVC` (liblinear) per class, or per label for
multi-label data, or (``solver="lbfgs"``) the same SVMs of every class at once by L-BFGS on the
CPU or a GPU (:mod:`vggfeat.primal`). C is chosen by k-fold cross-validation over a grid, or on one
hold-out (the paper's Caltech protocol), unless given.

Memory: liblinear needs float64 rows and builds its own copy of the data for every fit. So the
descriptors are made float64, C-contiguous and normalised once (in place with ``copy=False``),
and every per-class and per-fold fit reads that one array: cross-validation folds are expressed as
zero sample weights rather than copies of the rows, and at most ``n_jobs`` liblinear copies exist
at a time (liblinear releases the GIL, so threads train classes in parallel).

:func:`save_model` / :func:`load_model` store a model as plain HDF5 arrays and attributes (never a
pickle) with a SHA-256 over the content, so an edited or damaged file is refused (:mod:`vggfeat.modelfile`).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import sklearn
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold, ShuffleSplit, StratifiedKFold, StratifiedShuffleSplit
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted

from ._version import __version__
from .choices import DEFAULT_C_GRID, LOSSES, SOLVERS
from .errors import InvalidInput, VggfeatError, dense_array
from .features import network_parts
from .metrics import ap_area, mean_class_recall, one_hot
from .modelfile import jsonable, read_model_file, write_model_file
from .store import SVM_MODEL_FORMAT, check_written

_SCORE_ROWS = 8192  # rows normalised and scored at a time in class_scores
# How far above the optimum's objective liblinear's primal may have stopped, by its gradient's bound
# (relative; it overstated the gap 2-200x where measured), before the dual is tried (RESULTS.md).
PRIMAL_GAP = 1e-3
# Values of a row and a class that the lbfgs solver computes at a time (vggfeat.primal), a block of
# rows' of every class: a few arrays of 4 MiB in float32 on the CPU, not of [N, K] (ImageNet's 1.28
# million rows of 1,000 classes: 5 GiB an array); 64 MiB on a GPU, whose every operation on a block
# is a kernel launched.
LBFGS_BLOCK_VALUES = 2**20
LBFGS_GPU_BLOCK_VALUES = 2**24
_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")  # the devices that LinearSVM's device takes, as written


def training_memory(rows: int, dim: int, n_jobs: int = 1, nonzero_fraction: float = 1.0, solver: str = "liblinear",
                    classes: int = 2, on_gpu: bool = False, itemsize: int = 4) -> int:
    """Bytes that training on ``rows`` descriptors of ``dim`` holds at its peak: the descriptors as
    float64, once, and the copy that liblinear makes of them for each fit under way (``n_jobs``), a
    16-byte node per non-zero value and two more per row. Against the peaks measured (RESULTS.md,
    bench_svm.py, 100,000 x 4,096, half zeros): 6.1 GiB with one job (6.9 measured), 9.2 with two
    (10.0), the rest the process's own (torch and the other imports). L-BFGS takes the descriptors
    as float32, or float16 (``itemsize`` 2: train-svm reads a float16 file so), and copies nothing
    here; it holds a byte per row and class (the targets, and the rows ignored), its [classes,
    dim + 1] arrays (20 pairs of L-BFGS's history and a few more) and a block of rows' values of
    each class at a time (:data:`LBFGS_BLOCK_VALUES`; 96 bytes each as measured, the leftovers of
    malloc's heap between blocks included, 20 without them), those two in the GPU's memory where it
    runs there (``on_gpu``)."""
    if solver == "lbfgs":
        on_host = rows * dim * itemsize + rows * classes * 2
        solving = 48 * classes * (dim + 1) * 4 + 24 * min(rows * classes, LBFGS_BLOCK_VALUES) * 4
        return on_host + (0 if on_gpu else solving)
    liblinear_copy = rows * (round(dim * nonzero_fraction) + 2) * 16
    return rows * dim * 8 + n_jobs * liblinear_copy


class LinearSVM(ClassifierMixin, BaseEstimator):
    """One-vs-rest linear SVMs on (by default) L2-normalised descriptors.

    Args:
        C: the SVM's C; ``None`` chooses it from ``C_grid`` by ``cv``-fold cross-validation on the
            training set, or on one hold-out (``holdout``), scored by the mean class recall for
            single-label data, the mean area-AP for multi-label (``cv_scores_``: C to its score).
        C_grid: candidate values of C (the smallest of equally good values wins).
        cv: number of cross-validation folds; unused where ``holdout`` is set (or C given).
        holdout: a fraction in (0, 1): choose C on one split of the training set instead, this
            share of it held out (the paper's Caltech protocol held out 20% once), stratified by
            class for single-label data (StratifiedShuffleSplit; a class it leaves wholly on one
            side, a small one, has a row moved across: a row of each class on each side), drawn at
            random for multi-label (ShuffleSplit; likewise a label it leaves wholly on one side has a
            positive moved across where the labels allow it), seeded by ``random_state``.
            ``cv_scores_`` are then the hold-out's.
        loss: ``squared_hinge`` (LinearSVC's default, L2-SVM) or ``hinge``.
        class_weight: ``None`` or ``"balanced"`` (per binary problem: positives and negatives weigh
            as much in total; useful when a class has few images among many).
        normalize: L2-normalise each descriptor first, as the paper does (``True``); ``False``
            leaves it as it is; ``"parts"`` L2-normalises each part of the row that ``part_dims``
            gives (each network's descriptor of descriptors stacked side by side), a row of P
            parts then having the norm sqrt(P).
        part_dims: with ``normalize="parts"``, the dimensions of the parts in order (summing to
            the descriptors' dimension), e.g. ``[4096, 4096]`` for Net-D & Net-E stacked;
            :func:`vggfeat.transfer.train_svm` takes them from its files where not given.
        multilabel: ``y`` is an indicator matrix [N, K]; each label is an independent binary SVM.
        n_jobs: classes trained at once (threads); each holds one liblinear copy of the data.
        max_iter, tol: the solver's stopping rule. Fits that reach ``max_iter`` before ``tol`` are
            counted in ``n_unconverged_`` (of ``n_fits_``), and ``fit`` warns once about them
            (ConvergenceWarning), rather than liblinear once per fit.
        random_state: seed of the CV folds (or the hold-out) and of liblinear's dual coordinate order.
        solver: ``liblinear`` (a class at a time, each on its own copy of the data) or ``lbfgs``
            (every class at once on the data as it is, by torch on ``device``: the same SVMs,
            within the solvers' tolerance; squared hinge only; :mod:`vggfeat.primal`).
        device: where ``lbfgs`` runs: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        copy: ``False`` lets ``fit`` normalise a float64 C-contiguous ``X`` in place.
    """

    def __init__(self, C: float | None = None, *, C_grid: Sequence[float] = DEFAULT_C_GRID, cv: int = 3,
                 holdout: float | None = None, loss: str = "squared_hinge", class_weight: str | None = None,
                 normalize: bool | str = True, part_dims: Sequence[int] | None = None, multilabel: bool = False,
                 n_jobs: int = 1, max_iter: int = 2000, tol: float = 1e-4, random_state: int = 0,
                 solver: str = "liblinear", device: str = "auto", copy: bool = True) -> None:
        self.C, self.C_grid, self.cv, self.holdout, self.loss, self.class_weight = C, C_grid, cv, holdout, loss, class_weight
        self.normalize, self.part_dims, self.multilabel, self.n_jobs = normalize, part_dims, multilabel, n_jobs
        self.max_iter, self.tol, self.random_state, self.copy = max_iter, tol, random_state, copy
        self.solver, self.device = solver, device

    def fit(self, X: np.ndarray, y: np.ndarray, classes: list[str] | None = None, ignore: np.ndarray | None = None,
            progress: Callable[[int, int], None] | None = None) -> LinearSVM:
        """Train on descriptors ``X`` [N, D] and labels ``y`` [N] (or indicators [N, K] if multilabel).

        ``classes`` names the columns of a multi-label ``y`` (default 0..K-1). ``ignore`` [N, K]
        bool (multi-label only) leaves row i out of class k's SVM, and out of its score in the
        cross-validation, where ``ignore[i, k]``: VOC's "difficult" images (weighed 0, so X is not
        copied; nor does ``class_weight="balanced"`` count them).
        ``progress(fits done, fits in all)`` is called as each class's fit ends (one per class,
        and per C and fold in the cross-validation; with ``lbfgs``, every class's at once):
        minutes each on large sets.
        """
        self._check_params()
        # lbfgs takes float32 or float16 as given (a half or a quarter of the memory), liblinear float64 alone
        held = getattr(X, "dtype", None) if self.solver == "lbfgs" else None
        X = self._prepare(X, copy=self.copy, dtype=held if held in (np.float32, np.float16) else np.float64)
        targets, fitted_classes = self._targets(y, len(X), classes)  # [N, K] bool
        ignore = self._ignored(ignore, targets.shape)
        per_class = 1 + (0 if self.C is not None else len(self.C_grid) * self._fold_count())
        fits = _Fits(targets.shape[1] * per_class, progress)  # (C, converged) of every class's fit
        with warnings.catch_warnings():  # liblinear's, once per fit: summed up below instead
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self.C is None:
                cv_scores = self._cross_validate(X, targets, fits, ignore)
                best = max(cv_scores.values())
                C = min(c for c, score in cv_scores.items() if score >= best - 1e-12)
            else:
                cv_scores, C = {}, float(self.C)
            coef, intercept = self._fit_all(X, targets, C, None, fits, ignore)
        # Set once all is done: a fit refused or interrupted leaves the SVMs fitted before whole.
        self.classes_, self.n_features_in_, self.cv_scores_, self.C_ = fitted_classes, X.shape[1], cv_scores, C
        self.coef_, self.intercept_ = coef, intercept
        self.n_fits_ = len(fits.done)
        self.n_unconverged_ = sum(not converged for _, converged in fits.done)
        if self.n_unconverged_:
            values = ", ".join(f"{c:g}" for c in sorted({c for c, converged in fits.done if not converged}))
            warnings.warn(ConvergenceWarning(
                f"{self.solver} reached max_iter={self.max_iter} before converging in {self.n_unconverged_} of "
                f"{self.n_fits_} fits (C = {values}); those SVMs may be slightly off: raise max_iter (--max-iter), or use a smaller C"),
                stacklevel=2)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """As scikit-learn's classifiers give it: of two classes (single-label), one score per row
        [N], positive for ``classes_[1]`` (the difference of the two SVMs' scores, whose sign is
        :meth:`predict`'s choice); otherwise :meth:`class_scores`, [N, K]."""
        scores = self.class_scores(X)
        if len(self.classes_) == 2 and not self.multilabel:
            return scores[:, 1] - scores[:, 0]
        return scores

    def class_scores(self, X: np.ndarray) -> np.ndarray:
        """SVM scores [N, K], one column per class (two classes too); computed in row chunks, X is
        never copied whole."""
        check_is_fitted(self, "coef_")
        X = dense_array(X)
        if X.ndim != 2:
            raise InvalidInput(f"descriptors must be a [rows, dimensions] array, got shape {X.shape}")
        if X.shape[1] != self.n_features_in_:
            raise InvalidInput(f"descriptors have {X.shape[1]} dimensions, the model expects {self.n_features_in_}")
        scores = np.empty((len(X), len(self.classes_)), dtype=np.float64)
        for start in range(0, len(X), _SCORE_ROWS):
            block = self._prepare(X[start : start + _SCORE_ROWS], copy=True)
            scores[start : start + len(block)] = block @ self.coef_.T + self.intercept_
        return scores

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class of each row (single-label), or an indicator matrix of positive scores (multi-label)."""
        scores = self.class_scores(X)
        if self.multilabel:
            return scores > 0
        return self.classes_[np.argmax(scores, axis=1)]

    # ------------------------------------------------------------------ training

    def _fit_all(self, X: np.ndarray, targets: np.ndarray, C: float, weights: np.ndarray | None,
                 fits: _Fits | None = None, ignore: np.ndarray | None = None,
                 start: tuple[np.ndarray, np.ndarray] | None = None):
        """(coef [K, D], intercept [K]) of one binary SVM per column of ``targets``, without the
        rows that ``ignore`` marks for it; each fit's (C, converged) is added to ``fits``.
        ``start``: where lbfgs starts from (a nearby problem's solution); liblinear starts afresh."""
        if self.solver == "lbfgs":
            return self._fit_lbfgs(X, targets, C, weights, fits, ignore, start)

        def fit_one(k: int) -> tuple[np.ndarray, float]:
            weighed = weights
            if ignore is not None and ignore[:, k].any():  # a row weighing 0 adds nothing to the SVM's loss
                weighed = np.where(ignore[:, k], 0.0, 1.0 if weights is None else weights)
            # A class whose rows that weigh are all of one side (a fold holds out all its
            # positives, or all its negatives): liblinear drops the rows that weigh nothing, and
            # so the other class, saying so on standard error ("class label 1 specified in weight
            # is not found"). The squared hinge's SVM is the primal solver's, which takes the
            # problem as it is (the same objective).
            weighs = np.ones(len(X), dtype=bool) if weighed is None else np.asarray(weighed) > 0
            balanced = self.class_weight == "balanced"
            if self.loss == "squared_hinge" and (targets[weighs, k].all() or not targets[weighs, k].any()):
                return self._fit_one_sided(X, targets[:, k : k + 1], C, weighed, fits)
            # The hinge's: liblinear trains the rows it is given as its positive class, so where
            # they are all negatives its SVM is that of the problem with every sign turned (the
            # same problem: w and b negated). Balanced, the one side weighs half, as its rule
            # gives, where sklearn's would divide by zero.
            one_sided = not (targets[:, k] & weighs).any()
            signs = np.where(targets[:, k], 1, -1)

            def liblinear(dual: bool | str) -> LinearSVC:
                svm = LinearSVC(C=C / 2 if one_sided and balanced else C, loss=self.loss, dual=dual,
                                class_weight=None if one_sided else self.class_weight, max_iter=self.max_iter,
                                tol=self.tol, random_state=self.random_state)
                return svm.fit(X, signs, sample_weight=weighed)

            svm = liblinear("auto" if self.loss == "squared_hinge" else True)
            if self.loss == "squared_hinge" and len(X) >= X.shape[1]:  # "auto": the primal
                # The primal, scikit-learn's choice: its stopping rule is loose at large C (2-12%
                # above the optimum at C = 100 on fc7-like rows), where the dual ends close to it
                # quickly; elsewhere (classes that overlap) the dual is slow and the primal exact.
                # The dual is run only where the primal's own gradient says it may be far.
                rows_weigh = _liblinear_row_weights(signs, weighed, balanced)
                objective, gap = _objective_and_gap(X, signs, rows_weigh, C, svm.coef_[0], float(svm.intercept_[0]))
                if gap > PRIMAL_GAP * objective:
                    dual = liblinear(True)
                    if _objective_and_gap(X, signs, rows_weigh, C, dual.coef_[0], float(dual.intercept_[0]))[0] < objective:
                        svm = dual
            if fits is not None:
                fits.add(C, svm.n_iter_ < self.max_iter)  # liblinear's own test of convergence
            sign = -1 if one_sided else 1
            return sign * svm.coef_[0], sign * float(svm.intercept_[0])

        with ThreadPoolExecutor(self.n_jobs, thread_name_prefix="vggfeat-svm") as pool:
            fitted = list(pool.map(fit_one, range(targets.shape[1])))
        return np.stack([w for w, _ in fitted]), np.array([b for _, b in fitted])

    def _fit_one_sided(self, X: np.ndarray, target: np.ndarray, C: float, weights: np.ndarray | None,
                       fits: _Fits | None) -> tuple[np.ndarray, float]:
        """(coef [D], intercept) of the squared-hinge SVM of ``target`` [N, 1], whose rows that
        weigh are all of one side, by the primal solver on the CPU."""
        from .primal import fit_primal  # torch: only for such a class

        coef, intercept, converged = fit_primal(X, target, C, weights, None, self.class_weight == "balanced",
                                                max_iter=self.max_iter, tol=self.tol, device=_torch_device("cpu"))
        if fits is not None:
            fits.add(C, converged)
        return coef[0], float(intercept[0])

    def _fit_lbfgs(self, X: np.ndarray, targets: np.ndarray, C: float, weights: np.ndarray | None,
                   fits: _Fits | None, ignore: np.ndarray | None, start: tuple[np.ndarray, np.ndarray] | None):
        from .primal import fit_primal

        coef, intercept, converged = fit_primal(X, targets, C, weights, ignore, self.class_weight == "balanced",
                                                max_iter=self.max_iter, tol=self.tol, device=_torch_device(self.device),
                                                start=start)
        if fits is not None:
            for _ in range(targets.shape[1]):  # every class's fit, ended together
                fits.add(C, converged)
        return coef, intercept

    def _fold_count(self) -> int:
        return self.cv if self.holdout is None else 1

    def _folds(self, X: np.ndarray, targets: np.ndarray,
               ignore: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(rows trained on, rows held out) of each split that C is scored on: the ``cv`` folds,
        or the one hold-out (``ignore``: a multi-label fit's, whose positives it marks count on
        neither side)."""
        labels = None if self.multilabel else targets.argmax(1)
        if self.holdout is None:
            kind = KFold if self.multilabel else StratifiedKFold
            return list(kind(self.cv, shuffle=True, random_state=self.random_state).split(X, labels))
        trained, held = holdout_sizes(len(X), self.holdout)
        least = 1 if self.multilabel else targets.shape[1]  # scikit-learn's stratified split refuses fewer a side
        if min(trained, held) < least:
            each = "" if self.multilabel else f", one of each of the {least} classes"
            raise InvalidInput(f"holdout={self.holdout:g} of {len(X)} training rows holds out {held} and trains on "
                               f"{trained}; choosing C on it needs at least {least} in each{each}: change holdout "
                               "(--holdout), fix C (--C) or add images")
        kind = ShuffleSplit if self.multilabel else StratifiedShuffleSplit
        (train, held_out), = kind(n_splits=1, test_size=self.holdout, random_state=self.random_state).split(X, labels)
        if self.multilabel:
            return [_a_positive_of_each_label_a_side(train, held_out, targets if ignore is None else targets & ~ignore)]
        return [_a_row_of_each_class_a_side(train, held_out, labels, targets.shape[1])]

    def _cross_validate(self, X: np.ndarray, targets: np.ndarray, fits: _Fits,
                        ignore: np.ndarray | None = None) -> dict[float, float]:
        """Each C's mean score over the folds (or the one hold-out): C to its score."""
        folds = self._folds(X, targets, ignore)
        scores = {}
        solutions: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # each fold's at the last C: lbfgs starts there
        for C in sorted(float(c) for c in self.C_grid):
            fold_scores = []
            for fold, (train, held_out) in enumerate(folds):
                weights = np.zeros(len(X))
                weights[train] = 1.0  # held-out rows weigh nothing: the same array serves every fold
                start = solutions.get(fold)
                coef, intercept = solutions[fold] = self._fit_all(X, targets, C, weights, fits, ignore, start=start)
                fold_scores.append(self._score(X, held_out, coef, intercept, targets[held_out],
                                               None if ignore is None else ignore[held_out]))
            scores[C] = float(np.mean(fold_scores))
        return scores

    def _score(self, X: np.ndarray, rows: np.ndarray, coef: np.ndarray, intercept: np.ndarray, targets: np.ndarray,
               ignore: np.ndarray | None = None) -> float:
        """The cross-validation's score of the SVMs (coef, intercept) on ``rows`` of ``X``, whose
        ``targets`` are given: the mean AP over classes (multi-label), or the mean class recall."""
        if not self.multilabel:  # each row's best class, a block at a time: no [rows, K] scores held
            predicted = np.concatenate([_scores_of_rows(X, rows[start : start + _SCORE_ROWS], coef, intercept).argmax(1)
                                        for start in range(0, len(rows), _SCORE_ROWS)])
            return mean_class_recall(targets.argmax(1), predicted, targets.shape[1])
        scores = _scores_of_rows(X, rows, coef, intercept)
        kept = np.ones(targets.shape, dtype=bool) if ignore is None else ~ignore
        aps = [ap_area(scores[kept[:, k], k], targets[kept[:, k], k]) for k in range(targets.shape[1])
               if targets[kept[:, k], k].any()]
        return float(np.mean(aps)) if aps else 0.0

    # ------------------------------------------------------------------ checks

    def _check_params(self) -> None:
        if self.C is not None and not _is_positive_number(self.C):
            raise InvalidInput(f"C must be a positive number, got {self.C!r}")
        if self.C is None:
            grid = self.C_grid
            if not isinstance(grid, (list, tuple, np.ndarray)):  # an iterator would be used up by this look
                raise InvalidInput(f"C_grid must be a list or tuple of positive numbers, got {type(grid).__name__}")
            if not len(grid) or not all(_is_positive_number(c) for c in grid):
                raise InvalidInput(f"the C grid must hold positive numbers, got {list(grid)}")
            if self.holdout is None and not _is_integer_at_least(self.cv, 2):
                raise InvalidInput(f"cv must be an integer >= 2, got {self.cv!r}")
            if self.holdout is not None and not (_is_positive_number(self.holdout) and self.holdout < 1):
                raise InvalidInput(f"holdout must be None or a fraction between 0 and 1 (0.2: 20% held out), got {self.holdout!r}")
        self._check_normalize()
        if self.loss not in LOSSES:
            raise InvalidInput(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.solver not in SOLVERS:
            raise InvalidInput(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}")
        if self.solver == "lbfgs" and self.loss != "squared_hinge":
            raise InvalidInput("the lbfgs solver trains the squared hinge loss (L2-SVM); the hinge loss, not "
                               "differentiable, is liblinear's: use solver='liblinear' (--solver liblinear)")
        self._check_device()
        if self.class_weight not in (None, "balanced"):
            raise InvalidInput(f"class_weight must be None or 'balanced', got {self.class_weight!r}")
        if not _is_integer_at_least(self.n_jobs, 1):
            raise InvalidInput(f"n_jobs must be a positive integer, got {self.n_jobs!r}")
        if not _is_integer_at_least(self.max_iter, 1):
            raise InvalidInput(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not _is_positive_number(self.tol):
            raise InvalidInput(f"tol must be a positive number, got {self.tol!r}")

    def _check_normalize(self) -> None:
        parts = isinstance(self.normalize, str) and self.normalize == "parts"
        if not (parts or isinstance(self.normalize, (bool, np.bool_))):
            raise InvalidInput(f"normalize must be True, False or 'parts', got {self.normalize!r}")
        if not parts:
            if self.part_dims is not None:  # else the row would be normalised whole, silently
                raise InvalidInput("part_dims go with normalize='parts' (each part L2-normalised); the row is normalised "
                                   f"{'whole' if self.normalize else 'not at all'} with normalize={self.normalize!r}")
            return
        dims = self.part_dims
        if dims is None:
            raise InvalidInput("normalize='parts' needs part_dims: the dimensions of each part of the row, in order "
                               "(e.g. [4096, 4096] for two networks' descriptors side by side)")
        if (not isinstance(dims, (list, tuple, np.ndarray)) or not len(dims)
                or not all(_is_integer_at_least(d, 1) for d in dims)):
            raise InvalidInput(f"part_dims must be a list of positive integers, got {dims!r}")

    def _check_device(self) -> None:
        """Refuse a device that is no device, whatever the solver (liblinear ignored it: a typo went
        unnoticed), and, as ``train-svm`` does, a GPU for liblinear, which runs on the CPU alone. lbfgs's
        device is resolved here, before the descriptors are copied, rather than at its first fit."""
        name = str(self.device)  # (a torch.device too, as resolve_device takes it)
        if self.solver == "lbfgs":
            try:
                _torch_device(name)
            except VggfeatError as error:  # (settings' own error: an InvalidInput, as the other parameters')
                raise InvalidInput(str(error)) from None
            return
        # liblinear: no torch to import to check the name (seconds), so the names the docstring gives
        if not _DEVICE_NAME.fullmatch(name):
            raise InvalidInput(f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N")
        if name not in ("auto", "cpu"):
            raise InvalidInput(f"device={self.device!r} is where solver='lbfgs' runs; liblinear runs on the CPU: leave "
                               "device at 'auto' or 'cpu', or use solver='lbfgs'")

    def _prepare(self, X: np.ndarray, copy: bool, dtype: type = np.float64) -> np.ndarray:
        X = dense_array(X)
        if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
            raise InvalidInput(f"descriptors must be a non-empty [rows, dimensions] array, got shape {X.shape}")
        parts = self._parts(X.shape[1])  # before X is copied
        # asarray copies only where X is not of dtype, C-order, already (NumPy 1's copy=False, 2's copy=None).
        out = np.array(X, dtype=dtype, order="C") if copy else np.ascontiguousarray(X, dtype=dtype)
        # Row blocks: a whole-matrix norm or isfinite would allocate temporaries as large as X.
        for start in range(0, len(out), _SCORE_ROWS):
            block = out[start : start + _SCORE_ROWS]
            if not np.isfinite(block).all():
                raise InvalidInput("descriptors contain NaN or infinite values")
            for part in parts:  # the sums of squares in float32 at least: float16's overflow at 65,504
                values = block[:, part]
                norms = np.sqrt(np.einsum("ij,ij->i", values, values, dtype=np.promote_types(block.dtype, np.float32)))
                np.divide(values, norms[:, None], out=values, where=norms[:, None] > 0)  # an all-zero part stays zero
        return out

    def _parts(self, dim: int) -> list[slice]:
        """The columns normalised together: the row, each part of it, or none."""
        if isinstance(self.normalize, str) and self.normalize == "parts":
            ends = np.cumsum([int(d) for d in self.part_dims]).tolist()
            if ends[-1] != dim:
                raise InvalidInput(f"part_dims {[int(d) for d in self.part_dims]} sum to {ends[-1]}, the descriptors have "
                                   f"{dim} dimensions")
            return [slice(start, end) for start, end in zip([0, *ends[:-1]], ends)]
        return [slice(0, dim)] if self.normalize else []

    def _ignored(self, ignore, shape: tuple[int, int]) -> np.ndarray | None:
        """``ignore`` checked: None, or [N, K] bool for a multi-label fit."""
        if ignore is None:
            return None
        if not self.multilabel:
            raise InvalidInput("rows to ignore per class go with multi-label targets (multilabel=True)")
        ignore = np.asarray(ignore, dtype=bool)
        if ignore.shape != shape:
            raise InvalidInput(f"ignore must be [rows, classes] = {list(shape)}, got {list(ignore.shape)}")
        return ignore

    def _targets(self, y, rows: int, classes: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
        """[N, K] bool targets of ``y``, and the K classes they are of."""
        y = np.asarray(y)  # first: np.ndim of an array-like that has only __array__ (a pandas-like column) raised TypeError
        if y.ndim == 0:
            raise InvalidInput(f"expected a label per row, got {y.item()!r}")
        if len(y) != rows:
            raise InvalidInput(f"{rows} descriptors but {len(y)} labels")
        if self.multilabel:
            if y.ndim != 2:
                raise InvalidInput("multi-label targets must be an indicator matrix [rows, classes]")
            if y.dtype != bool and not np.isin(y, (0, 1)).all():  # VOC's -1 (negative) would be taken as positive
                raise InvalidInput(f"multi-label targets must be 0 or 1 (or bool), got {np.unique(y)[:5].tolist()}; "
                                   "VOC's -1 (negative) is 0; its 0 (difficult) is left out by ignore=")
            targets = y.astype(bool)
            if targets.shape[1] == 0:
                raise InvalidInput("multi-label targets have no label column")
            classes_ = np.array(classes if classes is not None else range(y.shape[1]))
            if len(classes_) != targets.shape[1]:
                raise InvalidInput(f"{len(classes_)} class names for {targets.shape[1]} label columns")
        else:
            if y.ndim != 1:
                raise InvalidInput("single-label targets must be one label per row (use multilabel=True for indicators)")
            if classes is not None:  # (the names of a multi-label fit's columns)
                raise InvalidInput("classes= names the columns of multi-label targets; single-label ones name themselves")
            if y.dtype.kind == "f" and not np.isfinite(y).all():  # NaN was a class of its own (numbers are classes: 0.5, 2.5)
                raise InvalidInput("single-label targets hold NaN or infinite values, which are no class")
            try:
                classes_, index = np.unique(y, return_inverse=True)
            except TypeError:  # labels that do not compare: None among strings, say
                raise InvalidInput(f"labels must be all numbers or all strings, got {sorted({type(v).__name__ for v in y})}") from None
            targets = one_hot(index, len(classes_))
            if len(classes_) < 2:
                raise InvalidInput(f"need at least 2 classes to train, got {len(classes_)}")
        positives = targets.sum(axis=0)
        for value, count in zip(classes_, positives):
            name = repr(str(value)) if isinstance(value, str) else str(value)
            if count == 0:
                raise InvalidInput(f"class {name} has no training example; remove it (e.g. --exclude-class) or add images")
            # With C fixed one example trains (an exemplar SVM); choosing C needs one per fold, or
            # one to train on and one to hold out.
            if self.C is None and self.holdout is None and count < self.cv:
                raise InvalidInput(f"class {name} has only {count} training example(s); at least {self.cv}, one per "
                                   "cross-validation fold, needed to choose C: fix C (--C, in place of --cv), lower cv "
                                   "(--cv), leave the class out (--exclude-class) or add images")
            if self.C is None and self.holdout is not None and count < 2:
                raise InvalidInput(f"class {name} has only {count} training example(s); at least 2, one to train on and "
                                   "one to hold out, needed to choose C on a hold-out: fix C (--C, in place of --holdout), "
                                   "leave the class out (--exclude-class) or add images")
            if count == rows:
                raise InvalidInput(f"class {name} holds every training example: nothing to tell it from")
        return targets, classes_


class _Fits:
    """The (C, converged) of every class's fit in one training, from its threads; ``progress``
    is told of each, with the number the training makes in all."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self.done: list[tuple[float, bool]] = []
        self.total, self.progress, self.lock = total, progress, threading.Lock()

    def add(self, C: float, converged: bool) -> None:
        with self.lock:
            self.done.append((C, converged))
            if self.progress is not None:
                self.progress(len(self.done), self.total)


# ---------------------------------------------------------------------- model files


@dataclass
class SavedModel:
    svm: LinearSVM
    extraction_configs: list[dict]  # one per fused features file, in order
    training: dict = field(default_factory=dict)  # files, rows, date: for the record
    source: str = ""  # the model file it was read from, and its checksum: for the files made with it
    checksum: str = ""


def save_model(path: str | os.PathLike, svm: LinearSVM, extraction_configs: list[dict], training: dict | None = None,
               provenance: dict | None = None) -> None:
    """Write ``svm`` as a plain HDF5 model file (:mod:`vggfeat.modelfile`), whole or not at all;
    ``provenance``: attributes to record besides (the command, say)."""
    check_is_fitted(svm, "coef_")
    # Which descriptors the model scores, as load_model checks them: it would refuse its own file
    if not isinstance(extraction_configs, list) or not all(isinstance(config, dict) for config in extraction_configs):
        raise InvalidInput("extraction_configs must be a list of extraction configurations (dicts), one per features "
                           "file fused: FeatureFile(...).config of each")
    _check_part_dims(svm, extraction_configs)
    check_written(path, SVM_MODEL_FORMAT)
    write_model_file(path, svm.coef_, svm.intercept_, svm.classes_, {
        "vggfeat_version": __version__,
        "sklearn_version": sklearn.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "params": json.dumps({key: jsonable(value) for key, value in svm.get_params().items()
                              if key not in ("copy", "holdout") and not (key in _UNSET_UNWRITTEN and value is None)},
                             sort_keys=True),
        "C_chosen": float(svm.C_),
        **({} if svm.holdout is None else {"holdout": float(svm.holdout)}),  # beside params: see _UNSET_UNWRITTEN
        "cv_scores": json.dumps({repr(c): s for c, s in svm.cv_scores_.items()}),
        "normalize": svm.normalize if isinstance(svm.normalize, str) else bool(svm.normalize),  # True, False or "parts"
        "multilabel": bool(svm.multilabel),
        "extraction_configs": json.dumps(extraction_configs, sort_keys=True),
        "training": json.dumps(training or {}, sort_keys=True),
        **_classes_dtype(svm.classes_),
        **(provenance or {}),
    })


def _check_part_dims(svm: LinearSVM, extraction_configs: list[dict]) -> None:
    """Refuse a model that normalises each part of its rows (``normalize="parts"``) whose
    ``part_dims`` are not the dimensions of the networks' descriptors that ``extraction_configs``
    record, in order (each file's ``dim``; a stacked file's, each of its parts'): its file would
    score those networks' rows normalised in other parts than theirs. Configurations that record
    no dimension (of files written by other code), or none given (``[]``, which save_model takes
    for any model), are not checked."""
    if not (isinstance(svm.normalize, str) and svm.normalize == "parts"):
        return
    dims = [part.get("dim") for part in network_parts(extraction_configs)]
    if not dims or not all(_is_integer_at_least(dim, 1) for dim in dims):  # the networks' dimensions unknown
        return
    part_dims = [int(dim) for dim in svm.part_dims]
    if part_dims != dims:
        raise InvalidInput(f"part_dims {part_dims} are not the dimensions of the networks' descriptors that "
                           f"extraction_configs record ({dims}, in order): give the configurations of the files "
                           "the model was trained on, or train it with their part_dims")


# Parameters added since the model format's first files, written to params only where set: a model of
# their defaults stays readable by the vggfeat versions before them (whose load_model refuses a parameter
# its LinearSVM does not take, rightly where it changes the scores: part_dims), and an older file, without
# them, reads as their defaults. holdout, which changes only how C was chosen, never the scores, is kept
# out of params: written where set as an attribute of its own (which those versions pass over), that
# read_model_file puts back into params, so that a model trained with --holdout loads in them too.
_UNSET_UNWRITTEN = ("part_dims",)


def _classes_dtype(classes: np.ndarray) -> dict:
    """The attribute that says ``classes`` are numbers or booleans (:data:`~vggfeat.modelfile.NUMBER_CLASSES`); none for names."""
    kind = np.asarray(classes).dtype.kind
    return {"classes_dtype": {"i": "int64", "u": "int64", "f": "float64", "b": "bool"}[kind]} if kind in "iufb" else {}


def load_model(path: str | os.PathLike) -> SavedModel:
    """Read a model file (:func:`~vggfeat.modelfile.read_model_file` refuses other files, other
    format versions and edited or damaged content) into a fitted :class:`LinearSVM`."""
    model = read_model_file(path)
    try:
        svm = LinearSVM(**{k: tuple(v) if k == "C_grid" else v for k, v in model.params.items()})
    except TypeError as error:  # a parameter this LinearSVM does not take
        raise VggfeatError(f"{path} is not a readable vggfeat SVM model file ({error})") from None
    classes = np.array(model.classes)
    svm.coef_, svm.intercept_ = model.coef, model.intercept
    if model.classes_dtype == "bool":  # written as str(value): "True", "False" (any text is True to astype)
        svm.classes_ = classes == "True"
    else:
        svm.classes_ = classes.astype(model.classes_dtype) if model.classes_dtype else classes
    svm.C_, svm.cv_scores_, svm.n_features_in_ = model.C, model.cv_scores, model.coef.shape[1]
    return SavedModel(svm, model.extraction_configs, model.training, os.fspath(path), model.checksum)


def _a_row_of_each_class_a_side(train: np.ndarray, held_out: np.ndarray, labels: np.ndarray,
                                classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held_out) with a row of each class on each side: StratifiedShuffleSplit rounds each
    class's share of the hold-out, so a small class can fall wholly on one side (of classes of 26,
    2 and 2 rows, 10% held out holds out 3 rows of the first and none of the others), which would
    choose C on the other classes alone, or score every C alike. Such a class's first row on the
    side that holds them all (the split's own shuffled order: seeded, so the same each time) is
    moved across; each class has two rows at least (:meth:`LinearSVM._targets`), so the side it
    leaves keeps one. The sides' sizes then differ from the hold-out's share by those rows."""
    def first_rows(side: np.ndarray, missing_on_other: np.ndarray) -> np.ndarray:
        return np.array([side[labels[side] == k][0] for k in missing_on_other], dtype=side.dtype)

    to_held = first_rows(train, np.flatnonzero(np.bincount(labels[held_out], minlength=classes) == 0))
    to_train = first_rows(held_out, np.flatnonzero(np.bincount(labels[train], minlength=classes) == 0))
    return (np.concatenate([train[~np.isin(train, to_held)], to_train]),
            np.concatenate([held_out[~np.isin(held_out, to_train)], to_held]))


def _a_positive_of_each_label_a_side(train: np.ndarray, held_out: np.ndarray,
                                     positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, held_out) of a multi-label hold-out with, for each label of two positives or more
    (``positives`` [N, K] bool: those that count), a positive on each side where the labels allow
    it: ShuffleSplit draws rows whatever their labels, so a label of few positives can fall wholly
    on one side, and C would be chosen without it (its AP undefined on a hold-out without a
    positive; not learnt from a training side without one).

    Rows are moved across, first to the hold-out, then back: each time the row that gives the
    most labels missing there a positive and is no label's last positive on the side it leaves;
    ties go to the first in the split's own shuffled order (seeded: the same each time). A label
    that no such row can give (rows {a, b}, {a, c} trained on, {b}, {c} held out: a) stays on one
    side. The hold-out's size then differs from its share by the rows moved."""
    total = positives.sum(axis=0)
    splittable = total >= 2
    side = np.zeros(len(positives), dtype=np.intp)  # each row's: 0 trained on, 1 held out
    side[held_out] = 1
    held = positives[held_out].sum(axis=0)
    on_side = np.stack([total - held, held])  # [2, K]: each label's positives on each side
    # The rows that may move: positives of a label missing on a side, in the split's order (no
    # move leaves a label missing that was not; few rows, those labels being rare).
    order = np.concatenate([train, held_out])
    may_move = positives[:, splittable & (on_side == 0).any(axis=0)].any(axis=1)
    pool = order[may_move[order]]
    for destination in (1, 0):
        source = 1 - destination
        while (missing := splittable & (on_side[destination] == 0)).any():
            rows = pool[side[pool] == source]
            last_there = positives[rows][:, splittable & (on_side[source] == 1)].any(axis=1)
            gives = np.where(last_there, 0, positives[rows][:, missing].sum(axis=1))
            if not gives.any():
                break
            row = rows[np.argmax(gives)]  # the first of those that give the most
            on_side[source] -= positives[row]
            on_side[destination] += positives[row]
            side[row] = destination
    # Each side's rows as split, then those moved in (as _a_row_of_each_class_a_side gives them).
    return (np.concatenate([train[side[train] == 0], held_out[side[held_out] == 0]]),
            np.concatenate([held_out[side[held_out] == 1], train[side[train] == 1]]))


def holdout_sizes(rows: int, holdout: float) -> tuple[int, int]:
    """(rows trained on, rows held out) of a hold-out of the share ``holdout`` of ``rows``, as
    scikit-learn's ShuffleSplit sizes it."""
    held = math.ceil(holdout * rows)
    return rows - held, held


def _liblinear_row_weights(signs: np.ndarray, weights: np.ndarray | None, balanced: bool) -> np.ndarray | None:
    """Each row's weight in liblinear's loss: its sample weight (None: 1), times its side's class
    weight where ``balanced``: scikit-learn's, the sample weights' total over twice its side's."""
    if not balanced:
        return weights
    weights = np.ones(len(signs)) if weights is None else np.asarray(weights, dtype=np.float64)
    total, positive = weights.sum(), weights[signs > 0].sum()
    return weights * np.where(signs > 0, total / (2 * positive), total / (2 * (total - positive)))


def _objective_and_gap(X: np.ndarray, signs: np.ndarray, weights: np.ndarray | None, C: float, coef: np.ndarray,
                       intercept: float) -> tuple[float, float]:
    """liblinear's squared-hinge objective at (coef, intercept) (the bias regularised, rows weighed
    by ``weights``), and a bound on how far above its optimum it is: the objective is 1-strongly
    convex, so f(w) - f* <= |grad f(w)|^2 / 2."""
    slack = np.maximum(0.0, 1 - signs * (X @ coef + intercept))
    weight = 1.0 if weights is None else weights
    pull = 2 * C * signs * slack * weight
    gradient_w, gradient_b = coef - X.T @ pull, intercept - pull.sum()
    objective = 0.5 * (coef @ coef + intercept**2) + C * float((weight * slack**2).sum())
    return objective, 0.5 * float(gradient_w @ gradient_w + gradient_b**2)


def _scores_of_rows(X: np.ndarray, rows: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """``X[rows] @ coef.T + intercept`` a block of rows at a time, without copying ``X[rows]`` whole."""
    scores = np.empty((len(rows), len(coef)), dtype=np.float64)
    for start in range(0, len(rows), _SCORE_ROWS):
        scores[start : start + _SCORE_ROWS] = X[rows[start : start + _SCORE_ROWS]] @ coef.T + intercept
    return scores


def _torch_device(name: str):
    from .settings import resolve_device  # torch: imported where the lbfgs solver runs

    return resolve_device(name)


def _is_positive_number(value) -> bool:
    is_number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return is_number and bool(np.isfinite(value)) and value > 0


def _is_integer_at_least(value, least: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= least
