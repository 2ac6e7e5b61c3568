"""LinearSVM (the estimator), model files (plain HDF5, checksummed) and the refusals of the SVM
stage, on synthetic features files written with vggfeat's schema."""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from collections.abc import Callable

import h5py
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.svm import LinearSVC

from runhelpers import run_main
from svmhelpers import CONFIG, blobs, write_features
import vggfeat.features
import vggfeat.index
import vggfeat.svm
import vggfeat.whitening
from vggfeat import protocol, transfer
from vggfeat.errors import InvalidInput, VggfeatError
from vggfeat.features import FeatureFile, config_differences, load_features
from vggfeat.labels import read_labels_csv
from vggfeat.metrics import mean_class_recall
from vggfeat.primal import primal_objective
from vggfeat.host import available_memory
from vggfeat.store import STRING
from vggfeat.svm import LinearSVM, load_model, save_model, training_memory


def test_fits_separable_data_and_chooses_C_by_cross_validation():
    X, y, _, names = blobs(classes=3, per_class=12)
    svm = LinearSVM(C_grid=(0.01, 1.0, 100.0), cv=3).fit(X, np.array(names)[y])
    assert set(svm.cv_scores_) == {0.01, 1.0, 100.0}
    assert svm.C_ in svm.cv_scores_ and svm.cv_scores_[svm.C_] == max(svm.cv_scores_.values())
    assert list(svm.classes_) == names
    assert svm.decision_function(X).shape == (36, 3)
    assert svm.score(X, np.array(names)[y]) == 1.0


def test_fits_that_stop_at_max_iter_are_counted_and_warned_about_once():
    """Not one liblinear warning per fit (tens in a cross-validation): one, with the count and the Cs."""
    X, y, _, _ = blobs(classes=3, per_class=10, spread=2.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        svm = LinearSVM(C_grid=(1.0, 100.0), cv=2, max_iter=1).fit(X, y)
    convergence = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert svm.n_fits_ == 3 * 2 * 2 + 3 and svm.n_unconverged_ == svm.n_fits_  # one iteration never suffices here
    assert len(convergence) == 1
    assert "max_iter=1 before converging in 15 of 15 fits (C = 1, 100)" in str(convergence[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert LinearSVM(C=1).fit(X, y).n_unconverged_ == 0


def test_fixed_C_skips_cross_validation_and_matches_liblinear_one_vs_rest():
    X, y, _, _ = blobs(classes=3, per_class=10)
    svm = LinearSVM(C=0.5, normalize=False).fit(X, y)
    assert svm.C_ == 0.5 and svm.cv_scores_ == {}
    for k in range(3):  # each class is the binary LinearSVC a user would train
        alone = LinearSVC(C=0.5, random_state=0).fit(X, np.where(y == k, 1, -1))
        np.testing.assert_allclose(svm.coef_[k], alone.coef_[0], rtol=1e-6, atol=1e-8)


def test_normalisation_makes_the_scale_of_each_descriptor_irrelevant():
    X, y, _, _ = blobs()
    scaled = X * np.random.default_rng(1).uniform(0.1, 10, size=(len(X), 1))
    a = LinearSVM(C=1).fit(X, y).decision_function(X)
    b = LinearSVM(C=1).fit(scaled, y).decision_function(scaled)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(LinearSVM(C=1, normalize=False).fit(scaled, y).decision_function(scaled), a, atol=1e-3)


def test_holdout_chooses_C_on_one_stratified_split_scored_as_a_fold_is():
    """The paper's Caltech protocol: C chosen on 20% of the training images held out once. Each C's
    score is that of the SVMs trained on the other 80% (the rows weighed 0 are left out, as in a
    fold) on the held-out rows, stratified by class and seeded; one fit per class and C, not per fold."""
    X, y, _, _ = blobs(classes=3, per_class=10, spread=2.5)  # classes that overlap: the Cs score differently
    grid = (0.01, 1.0, 100.0)
    svm = LinearSVM(C_grid=grid, holdout=0.2, random_state=3).fit(X, y)
    (train, held), = StratifiedShuffleSplit(1, test_size=0.2, random_state=3).split(X, y)
    assert np.bincount(y[held]).tolist() == [2, 2, 2]  # 20% of each class
    by_hand = {c: mean_class_recall(y[held], LinearSVM(C=c).fit(X[train], y[train]).predict(X[held]), 3) for c in grid}
    assert svm.cv_scores_ == pytest.approx(by_hand) and len(set(by_hand.values())) > 1
    assert svm.C_ == min(c for c in grid if by_hand[c] == max(by_hand.values()))
    assert svm.n_fits_ == 3 * (len(grid) + 1)
    assert LinearSVM(C_grid=grid, holdout=0.2, random_state=4).fit(X, y).cv_scores_ != svm.cv_scores_  # another split
    # Multi-label: a random split (with a positive of each label on each side: the next test).
    multilabel = LinearSVM(C_grid=grid, holdout=0.3, multilabel=True).fit(X, np.eye(3, dtype=bool)[y])
    assert set(multilabel.cv_scores_) == set(grid) and multilabel.n_fits_ == 3 * (len(grid) + 1)
    # Too few rows to hold out one of each class, or a class of one image: said, before any fit.
    with pytest.raises(InvalidInput, match="holdout=0.05 of 30 training rows holds out 2 and trains on 28; choosing C on "
                                           "it needs at least 3 in each, one of each of the 3 classes"):
        LinearSVM(holdout=0.05).fit(X, y)
    with pytest.raises(InvalidInput, match=r"class 2 has only 1 training example\(s\); at least 2, one to train on and "
                                           r"one to hold out, needed to choose C on a hold-out: fix C \(--C, in place of --holdout\)"):
        LinearSVM(holdout=0.5).fit(X[:21], y[:21])


@pytest.mark.parametrize("holdout", [0.1, 0.9])
def test_a_holdout_holds_a_row_of_each_class_on_each_side_however_small_the_class(holdout):
    """StratifiedShuffleSplit rounds each class's share: of classes of 26, 2 and 2 rows it held out
    [3, 0, 0] at 10% (C chosen on the first class alone) and trained on [3, 0, 0] at 90% (every C
    scoring 1/3). A class left wholly on one side has a row moved across, seeded as the split is."""
    y = np.repeat([0, 1, 2], [26, 2, 2])
    X = np.random.default_rng(0).normal(size=(len(y), 4))
    targets = np.eye(3, dtype=bool)[y]
    svm = LinearSVM(holdout=holdout, random_state=0)
    (train, held), = svm._folds(X, targets)
    assert np.bincount(y[train], minlength=3).min() >= 1 and np.bincount(y[held], minlength=3).min() >= 1
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(len(y)))  # each row on one side, once
    (again_train, again_held), = svm._folds(X, targets)
    assert again_train.tolist() == train.tolist() and again_held.tolist() == held.tolist()
    # What the split alone gave: one side held none of the two small classes.
    (split_train, split_held), = StratifiedShuffleSplit(1, test_size=holdout, random_state=0).split(X, y)
    assert np.bincount(y[split_held if holdout < 0.5 else split_train], minlength=3).tolist() == [3, 0, 0]
    assert svm.fit(X, y).C_ in svm.C_grid


@pytest.mark.parametrize("holdout", [0.1, 0.9])
def test_a_multilabel_holdout_holds_a_positive_of_each_label_on_each_side(holdout, monkeypatch):
    """ShuffleSplit draws rows whatever their labels: of 40 rows, two labels of two positives
    each fell wholly on one side (C chosen without them). The rows moved across are as few as
    the labels need, seeded as the split is: one row, a positive of both; the rest as split.
    Positives left out of their label's SVM (ignore) count on neither side."""
    targets = np.zeros((40, 4), dtype=bool)
    targets[:20, 0] = targets[20:, 1] = True
    targets[[7, 23], 2] = targets[[7, 31], 3] = True  # row 7: a positive of both rare labels
    X = np.random.default_rng(0).normal(size=(len(targets), 4))
    (split_train, split_held), = ShuffleSplit(1, test_size=holdout, random_state=0).split(X)
    small = split_held if holdout < 0.5 else split_train
    assert not targets[small][:, 2:].any()  # what the split alone gave
    svm = LinearSVM(holdout=holdout, multilabel=True, random_state=0)
    (train, held), = svm._folds(X, targets)
    assert targets[train].any(axis=0).all() and targets[held].any(axis=0).all()
    small_after, large_after, large = (held, train, split_train) if holdout < 0.5 else (train, held, split_held)
    assert small_after.tolist() == [*small.tolist(), 7] and large_after.tolist() == [row for row in large if row != 7]
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(len(targets)))
    (again_train, again_held), = svm._folds(X, targets)
    assert again_train.tolist() == train.tolist() and again_held.tolist() == held.tolist()
    ignore = np.zeros_like(targets)
    ignore[7, 2:] = True  # (VOC's difficult) the rare labels have one positive that counts each: nothing to move
    real_folds, folds = LinearSVM._folds, []

    def recorded_folds(*args):
        folds.extend(real_folds(*args))
        return folds

    monkeypatch.setattr(LinearSVM, "_folds", recorded_folds)
    svm.fit(X, targets, ignore=ignore)
    assert [side.tolist() for side in folds[0]] == [split_train.tolist(), split_held.tolist()]


def test_a_multilabel_holdout_moves_no_label_s_last_positive_away():
    """Labels a, b, c: rows {a}, {a, b} trained on, {b}, {c}, {b, c} held out: {a} goes across (c
    comes back with {c}, the first of the split's order that gives it). Rows {a, b}, {a, c}
    trained on, {b}, {c} held out: either row of a is another label's last positive there, so
    none moves, and a stays on one side rather than b or c."""
    a, b, c, none = [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]
    positives = np.array([a, np.add(a, b), b, c, np.add(b, c), none], dtype=bool)
    train, held = vggfeat.svm._a_positive_of_each_label_a_side(np.array([5, 0, 1]), np.array([2, 3, 4]), positives)
    assert (train.tolist(), held.tolist()) == ([5, 1, 3], [2, 4, 0])
    stuck = np.array([np.add(a, b), np.add(a, c), b, c], dtype=bool)
    train, held = vggfeat.svm._a_positive_of_each_label_a_side(np.array([0, 1]), np.array([2, 3]), stuck)
    assert (train.tolist(), held.tolist()) == ([0, 1], [2, 3])


def test_each_part_normalised_on_its_own_weighs_as_much_as_the_others():
    """Two networks' descriptors side by side, one of norms 10,000 times the other's: normalised as a
    whole, the row is the long part's and the short one, which tells the classes apart, weighs
    nothing; with normalize="parts" each part is a unit vector, in training and in scoring alike."""
    X, y, _, _ = blobs(classes=2, per_class=20, dim=4, spread=0.3)
    noise = np.abs(np.random.default_rng(1).standard_normal((len(X), 6)))
    rows = np.hstack([1e-2 * X, 100 * noise])  # the classes are in the short part alone
    parts = LinearSVM(C=1, normalize="parts", part_dims=[4, 6]).fit(rows, y)
    whole = LinearSVM(C=1).fit(rows, y)
    assert parts.score(rows, y) == 1.0 and whole.score(rows, y) < 0.8
    # Each part a unit vector first: the SVM of those rows, unnormalised, scoring the raw rows as them.
    unit = np.hstack([block / np.linalg.norm(block, axis=1, keepdims=True) for block in (rows[:, :4], rows[:, 4:])])
    by_hand = LinearSVM(C=1, normalize=False).fit(unit, y)
    np.testing.assert_allclose(parts.coef_, by_hand.coef_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(parts.decision_function(rows), by_hand.decision_function(unit), rtol=1e-6, atol=1e-9)
    # An all-zero part stays zero; parts that do not make the row are refused, at fit and in scoring.
    zero = rows.copy()
    zero[0, :4] = 0
    assert np.isfinite(parts.decision_function(zero)).all()
    with pytest.raises(InvalidInput, match=r"part_dims \[4, 5\] sum to 9, the descriptors have 10 dimensions"):
        LinearSVM(C=1, normalize="parts", part_dims=[4, 5]).fit(rows, y)
    with pytest.raises(InvalidInput, match="descriptors have 9 dimensions, the model expects 10"):
        parts.decision_function(rows[:, :9])


def test_copy_false_normalises_in_place_and_copy_true_leaves_X_alone():
    X, y, _, _ = blobs()
    X = X.astype(np.float64)
    kept = X.copy()
    LinearSVM(C=1).fit(X, y)
    np.testing.assert_array_equal(X, kept)
    LinearSVM(C=1, copy=False).fit(X, y)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0)


def test_threads_give_the_same_model():
    X, y, _, _ = blobs(classes=4)
    one = LinearSVM(C=1, n_jobs=1).fit(X, y)
    two = LinearSVM(C=1, n_jobs=2).fit(X, y)
    np.testing.assert_array_equal(one.coef_, two.coef_)


def test_training_says_how_far_its_fits_have_got(tmp_path):
    """Minutes a fit on large sets: the commands show a bar over them, told by each fit as it ends."""
    X, y, paths, names = blobs(classes=4)
    seen = []
    svm = LinearSVM(C_grid=(0.1, 1.0), cv=2, n_jobs=2).fit(X, y, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(done, 4 * (2 * 2 + 1)) for done in range(1, 21)] and svm.n_fits_ == 20  # per class: 2 C x 2 folds, + 1
    file = write_features(tmp_path / "f.h5", X, paths, y, names)
    seen.clear()
    protocol.caltech(file, train_per_class=4, test_per_class=2, splits=3, C=1.0, progress=lambda *fit: seen.append(fit))
    assert seen == [(done, 3 * 4) for done in range(1, 13)]  # 4 classes a split, one fit each, over the 3 splits


def test_caltech_reads_the_rows_its_splits_draw_alone(tmp_path, monkeypatch):
    """A 4-per-class experiment on a file of 40 rows a class read every row (at 10 million rows of
    4096-d, 330 GB of float64) before the splits were drawn. Its numbers are those of the splits
    drawn from every labelled row, as before."""
    X, y, paths, names = blobs(classes=3, per_class=40, spread=3.0)
    file = write_features(tmp_path / "f.h5", X, paths, y, names)
    read = []
    monkeypatch.setattr(protocol, "training_features",
                        lambda files, targets, params: read.append(len(targets.paths)) or transfer.training_features(
                            files, targets, params))
    result = protocol.caltech(file, train_per_class=4, test_per_class=2, splits=2, seed=3, C=1.0)
    assert read == [len({i for split in protocol.caltech_splits(y, 3, 4, 2, 2, 3) for i in [*split.train, *split.test]})]
    assert read[0] <= 2 * 3 * (4 + 2) < len(X)
    for number, split in enumerate(protocol.caltech_splits(y, 3, 4, 2, 2, 3)):  # by hand, from every row
        svm = LinearSVM(C=1.0).fit(X[split.train], y[split.train])
        recall = protocol.mean_class_recall(y[split.test], svm.predict(X[split.test]), 3)
        assert result["splits"][number]["mean_class_recall"] == pytest.approx(recall)


def test_at_a_large_C_each_svm_ends_at_the_optimum_not_where_the_primal_solver_stopped(monkeypatch):
    """liblinear's primal solver (scikit-learn's choice where rows outnumber dimensions) stopped,
    without a warning, 1.3% above the optimum's objective here (2-12% on thousands of 4,096-d rows
    at C = 100, a value of the default grid); the dual, tried where the primal's gradient says it
    may be far, ends at it. Where the primal is close (classes that overlap, which the dual takes
    thousands of passes over), the dual is not run."""
    def rows(kind: str, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(0)
        if kind == "overlap":
            X = rng.standard_normal((n, d))
            return X, np.argmax(X @ rng.standard_normal((d, 3)) + 2.0 * rng.standard_normal((n, 3)), 1)
        y = rng.integers(0, 3, n)
        return np.maximum(0.3 * rng.standard_normal((3, d))[y] + rng.standard_normal((n, d)), 0), y

    duals = []

    class Counted(LinearSVC):
        def fit(self, X, y, sample_weight=None):
            duals.append(self.dual is True)
            return super().fit(X, y, sample_weight=sample_weight)

    monkeypatch.setattr(vggfeat.svm, "LinearSVC", Counted)
    for kind, dual_runs in (("fc7", 3), ("overlap", 0)):
        duals.clear()
        X, y = rows(kind, 1200, 256)
        svm = LinearSVM(C=100.0).fit(X, y)
        Xn, targets = X / np.linalg.norm(X, axis=1, keepdims=True), y[:, None] == np.arange(3)
        exact = [LinearSVC(C=100.0, dual=False, tol=1e-10, max_iter=10000).fit(Xn, np.where(y == k, 1, -1)) for k in range(3)]
        optimum = primal_objective(Xn, targets, 100.0, np.ones((1200, 1)), np.array([s.coef_[0] for s in exact]),
                                   np.array([s.intercept_[0] for s in exact]))
        reached = primal_objective(Xn, targets, 100.0, np.ones((1200, 1)), svm.coef_, svm.intercept_)
        assert np.all(reached <= optimum * (1 + 1e-5)), (kind, reached / optimum - 1)
        assert sum(duals) == dual_runs, kind
    # Balanced class weights too: each row weighs its side's weight in the objective checked.
    X, y = rows("fc7", 1200, 256)
    svm = LinearSVM(C=100.0, class_weight="balanced").fit(X, y)
    Xn, targets = X / np.linalg.norm(X, axis=1, keepdims=True), y[:, None] == np.arange(3)
    weights = np.where(targets, 1200 / (2 * targets.sum(0)), 1200 / (2 * (~targets).sum(0)))
    exact = [LinearSVC(C=100.0, class_weight="balanced", dual=False, tol=1e-10, max_iter=10000)
             .fit(Xn, np.where(y == k, 1, -1)) for k in range(3)]
    optimum = primal_objective(Xn, targets, 100.0, weights, np.array([s.coef_[0] for s in exact]),
                               np.array([s.intercept_[0] for s in exact]))
    reached = primal_objective(Xn, targets, 100.0, weights, svm.coef_, svm.intercept_)
    assert np.all(reached <= optimum * (1 + 1e-5)), reached / optimum - 1


def test_multilabel_is_an_independent_binary_svm_per_label():
    X, y, _, _ = blobs(classes=3, per_class=10)
    Y = np.stack([y == 0, y >= 1, y == 2], axis=1)
    svm = LinearSVM(C=1, multilabel=True).fit(X, Y, classes=["a", "b", "c"])
    np.testing.assert_array_equal(svm.predict(X), Y)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    alone = LinearSVC(C=1, random_state=0).fit(Xn, np.where(Y[:, 1], 1, -1))
    np.testing.assert_allclose(svm.coef_[1], alone.coef_[0], rtol=1e-6, atol=1e-8)


def test_is_a_scikit_learn_estimator():
    svm = LinearSVM(C=2.0, class_weight="balanced")
    assert clone(svm).get_params() == svm.get_params()
    X, y, _, _ = blobs()
    assert LinearSVM(C=1, class_weight="balanced").fit(X, y).score(X, y) == 1.0


def test_balanced_class_weights_count_only_the_rows_trained_on():
    """A cross-validation fold trains with held-out rows at weight 0: "balanced" must count the
    training rows only, so the fit equals scikit-learn's on the training rows alone."""
    X, y, _, _ = blobs(classes=3, per_class=12)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    targets = np.eye(3, dtype=bool)[y]
    trained = np.arange(len(y)) % 3 != 0
    trained[np.flatnonzero(y == 0)[:6]] = False  # folds change the class balance
    svm = LinearSVM(C=1, class_weight="balanced")
    coef, intercept = svm._fit_all(X, targets, 1.0, trained.astype(float))
    alone = LinearSVC(C=1, class_weight="balanced", random_state=0).fit(X[trained], np.where(y[trained] == 0, 1, -1))
    np.testing.assert_allclose(coef[0], alone.coef_[0], rtol=1e-5, atol=1e-7)
    whole = LinearSVC(C=1, class_weight="balanced", random_state=0).fit(X, np.where(y == 0, 1, -1))
    np.testing.assert_allclose(svm._fit_all(X, targets, 1.0, None)[0][0], whole.coef_[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("params, message", [
    ({"C": -1}, "C must be a positive number"),
    ({"C_grid": ()}, "C grid must hold positive numbers"),
    ({"cv": 1}, "cv must be an integer >= 2"),
    ({"loss": "log"}, "unknown loss 'log'"),
    ({"class_weight": "auto"}, "class_weight must be None or 'balanced'"),
    ({"n_jobs": 0}, "n_jobs must be a positive integer"),
    ({"max_iter": 0}, "max_iter must be a positive integer"),
    ({"tol": -1e-4}, "tol must be a positive number"),
    ({"C": "1"}, "C must be a positive number, got '1'"),
    ({"holdout": 1.0}, r"holdout must be None or a fraction between 0 and 1 \(0.2: 20% held out\), got 1.0"),
    ({"holdout": True}, "holdout must be None or a fraction"),
    ({"normalize": "yes"}, "normalize must be True, False or 'parts', got 'yes'"),
    ({"normalize": "parts"}, "normalize='parts' needs part_dims: the dimensions of each part"),
    ({"normalize": "parts", "part_dims": [4, 0, 4]}, r"part_dims must be a list of positive integers, got \[4, 0, 4\]"),
    ({"part_dims": [4, 4]}, "part_dims go with normalize='parts' .* normalised whole with normalize=True"),
])
def test_bad_parameters_are_refused_clearly(params, message):
    X, y, _, _ = blobs()
    with pytest.raises(VggfeatError, match=message):
        LinearSVM(**params).fit(X, y)


def test_a_class_of_one_example_trains_with_a_fixed_C():
    """An exemplar SVM: with C given nothing is cross-validated, so one positive is enough."""
    X, y, _, _ = blobs(classes=3, per_class=4)
    svm = LinearSVM(C=1).fit(X[:9], y[:9])  # class 2: only X[8]
    assert svm.classes_.tolist() == [0, 1, 2]
    assert svm.predict(X[8:9]).tolist() == [2]


def test_bad_training_data_is_refused_clearly():
    X, y, _, _ = blobs(classes=3, per_class=4)
    with pytest.raises(VggfeatError, match=r"class 0 has only 4 training example\(s\); at least 5, one per "
                                           r"cross-validation fold, needed to choose C: fix C \(--C, in place of --cv\), "
                                           r"lower cv \(--cv\)"):
        LinearSVM(cv=5).fit(X, y)
    with pytest.raises(VggfeatError, match="need at least 2 classes"):
        LinearSVM(C=1).fit(X[:4], y[:4])
    with pytest.raises(VggfeatError, match="12 descriptors but 11 labels"):
        LinearSVM(C=1).fit(X, y[:11])
    with pytest.raises(VggfeatError, match="NaN"):
        LinearSVM(C=1).fit(np.where(X > 2, np.nan, X), y)
    with pytest.raises(VggfeatError, match="class 'b' has no training example"):
        LinearSVM(C=1, multilabel=True).fit(X, np.stack([y == 0, np.zeros_like(y, bool)], 1), classes=["a", "b"])
    with pytest.raises(ValueError, match="expected a label per row, got None"):
        LinearSVM(C=1).fit(X, None)
    with pytest.raises(ValueError, match=r"labels must be all numbers or all strings, got \['NoneType', 'str'\]"):
        LinearSVM(C=1).fit(X, ["a", None] * 6)
    fitted = LinearSVM(C=1).fit(X, y)
    with pytest.raises(VggfeatError, match="descriptors have 5 dimensions, the model expects 8"):
        fitted.decision_function(X[:, :5])
    # A refit refused keeps the SVMs fitted before whole (it named them by the refused labels).
    before = fitted.predict(X)
    with pytest.raises(VggfeatError, match="class 'plum' has only 2 training example"):
        fitted.set_params(C=None).fit(X, ["apple"] * 6 + ["pear"] * 4 + ["plum"] * 2)
    np.testing.assert_array_equal(fitted.predict(X), before)


@pytest.mark.parametrize("solver, device, message", [
    ("liblinear", "tpu", "unknown device 'tpu'; use auto, cpu, cuda or cuda:N"),
    ("liblinear", "cuda:0", "device='cuda:0' is where solver='lbfgs' runs; liblinear runs on the CPU"),
    ("lbfgs", "tpu", "unknown device 'tpu'; use auto, cpu, cuda or cuda:N"),
])
def test_a_device_the_solver_cannot_use_is_refused_as_the_other_parameters_are(solver, device, message):
    """liblinear, on the CPU, trained whatever device= it was given: a typo, or a GPU asked for in
    vain, went unnoticed (train-svm refuses --device cuda with liblinear). Refused in fit as the
    other parameters are: an InvalidInput, a ValueError as scikit-learn's (lbfgs's was neither)."""
    X, y, _, _ = blobs()
    svm = LinearSVM(C=1.0, solver=solver, device=device)  # kept as given, as scikit-learn's estimators keep theirs
    with pytest.raises(InvalidInput, match=message):
        svm.fit(X, y)
    assert svm.get_params()["device"] == device and not hasattr(svm, "coef_")
    for fine in ("auto", "cpu"):
        assert LinearSVM(C=1.0, solver=solver, device=fine).fit(X, y).coef_.shape == (3, 8)


def test_two_classes_are_scored_as_scikit_learn_scores_them():
    """One score per row, positive for classes_[1]: scikit-learn's scorers (roc_auc, average
    precision) and calibration take a two-class decision_function so; its [N, 2] failed them.
    class_scores keeps each class's SVM score, as the CSVs of predictions write them."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import cross_val_score

    X, y, _, names = blobs(classes=2, per_class=15, spread=2.0)
    labels = np.array(names)[y]
    svm = LinearSVM(C=1).fit(X, labels)
    scores, per_class = svm.decision_function(X), svm.class_scores(X)
    assert scores.shape == (30,) and per_class.shape == (30, 2)
    np.testing.assert_allclose(scores, per_class[:, 1] - per_class[:, 0])
    np.testing.assert_array_equal(svm.predict(X), np.where(scores > 0, svm.classes_[1], svm.classes_[0]))
    assert cross_val_score(LinearSVM(C=1), X, labels, cv=3, scoring="roc_auc", error_score="raise").min() > 0.5
    assert CalibratedClassifierCV(LinearSVM(C=1), cv=3).fit(X, labels).predict_proba(X).shape == (30, 2)
    multilabel = LinearSVM(C=1, multilabel=True).fit(X, np.stack([y == 0, y == 1], 1))
    assert multilabel.decision_function(X).shape == (30, 2)  # a score per label, as OneVsRestClassifier's


def test_what_the_estimator_refuses_is_a_value_error_said_plainly(tmp_path):
    """As scikit-learn's estimators refuse bad parameters and data: code that catches ValueError
    (GridSearchCV's error_score) takes it; a sparse matrix or one row was said to be of 0 or D
    dimensions; a generator of Cs was used up by the check, and fit then failed on len()."""
    import scipy.sparse

    X, y, _, _ = blobs()
    fitted = LinearSVM(C=1).fit(X, y)
    for make, words in [
        (lambda: LinearSVM(C=-1).fit(X, y), "C must be a positive number"),
        (lambda: LinearSVM(C_grid=(c for c in (0.1, 1.0))).fit(X, y), "C_grid must be a list or tuple"),
        (lambda: LinearSVM(C=1).fit(scipy.sparse.csr_matrix(X), y), "must be a dense array: pass X.toarray()"),
        (lambda: fitted.predict(scipy.sparse.csr_matrix(X)), "must be a dense array: pass X.toarray()"),
        (lambda: fitted.predict(X[0]), r"descriptors must be a \[rows, dimensions\] array, got shape \(8,\)"),
    ]:
        with pytest.raises(ValueError, match=words) as raised:
            make()
        assert isinstance(raised.value, VggfeatError)  # the CLI's one-line error
    # LinearSVM's own keywords are train_svm's: copy too, which it sets itself (its X is its own).
    features = write_features(tmp_path / "train.h5", X, [f"{i}.jpg" for i in range(len(X))], y, ["a", "b", "c"])
    assert transfer.train_svm(features, C=1.0, copy=True).svm.C_ == 1.0


# --------------------------------------------------------------------------- model files


def trained(tmp_path):
    X, y, paths, names = blobs()
    features = write_features(tmp_path / "train.h5", X, paths, y, names)
    saved = transfer.train_svm(features, tmp_path / "model.h5", C=1.0)
    return features, tmp_path / "model.h5", saved


def test_model_file_is_plain_data_and_round_trips(tmp_path):
    features, model, saved = trained(tmp_path)
    with h5py.File(model, "r") as f:
        assert set(f.keys()) == {"coef", "intercept", "classes"}
        assert f["coef"].dtype == np.float64 and f["coef"].shape == (3, 8)
        assert f.attrs["format"] == "vggfeat-linear-svm" and f.attrs["normalize"] and f.attrs["C_chosen"] == 1.0
        for value in f.attrs.values():  # nothing that unpickles: strings and numbers only
            assert isinstance(value, (str, bytes, np.generic, int, float, bool)), type(value)
    loaded = load_model(model)
    X = load_features(features).X
    np.testing.assert_array_equal(loaded.svm.decision_function(X), saved.svm.decision_function(X))
    assert loaded.extraction_configs == saved.extraction_configs
    assert loaded.extraction_configs[0]["layer"] == "fc7"
    assert loaded.training["examples_per_class"] == {"class0": 10, "class1": 10, "class2": 10}


def two_networks(tmp_path, test: bool = False):
    """d.h5 (4-d, "vgg16") and e.h5 (6-d, "vgg19") of the same images, of norms 100 times apart."""
    X, y, paths, names = blobs(classes=3, per_class=8, dim=10, seed=1 if test else 0)
    suffix = "-test" if test else ""
    d = write_features(tmp_path / f"d{suffix}.h5", X[:, :4], paths, y, names)
    e = write_features(tmp_path / f"e{suffix}.h5", 100 * X[:, 4:], paths, y, names, config={"model": "vgg19"})
    return d, e


def test_a_model_normalising_each_part_is_saved_with_its_parts_and_scores_only_such_descriptors(tmp_path):
    """normalize="parts" takes its parts from the files (each file fused, each part of a stacked
    file), records them, and scores with them; descriptors of other parts are refused."""
    from vggfeat.stack import stack_files

    d, e = two_networks(tmp_path)
    saved = transfer.train_svm([d, e], tmp_path / "m.h5", C=1.0, normalize="parts")
    assert saved.svm.part_dims == [4, 6]
    loaded = load_model(tmp_path / "m.h5")
    assert (loaded.svm.normalize, loaded.svm.part_dims) == ("parts", [4, 6])
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert f.attrs["normalize"] == "parts"
    test_d, test_e = two_networks(tmp_path, test=True)
    X = load_features([test_d, test_e]).X
    unit = np.hstack([X[:, :4] / np.linalg.norm(X[:, :4], axis=1, keepdims=True),
                      X[:, 4:] / np.linalg.norm(X[:, 4:], axis=1, keepdims=True)])
    scores = transfer.score(tmp_path / "m.h5", [test_d, test_e]).scores
    np.testing.assert_allclose(scores, unit @ saved.svm.coef_.T + saved.svm.intercept_, rtol=1e-6, atol=1e-9)
    # A stacked file's parts are its networks': the same model.
    stack_files([d, e], tmp_path / "de.h5")
    stacked = transfer.train_svm(tmp_path / "de.h5", C=1.0, normalize="parts").svm
    assert stacked.part_dims == [4, 6]
    np.testing.assert_allclose(stacked.coef_, saved.svm.coef_, rtol=1e-6, atol=1e-9)
    # Other parts, of the same width: the networks swapped (6 + 4) are refused, not scored.
    with pytest.raises(VggfeatError, match=r"different configuration than the model \(features file 1\): "
                                           r".*dim: 4 expected, 6 found"):
        transfer.score(tmp_path / "m.h5", [test_e, test_d])
    # One network's descriptors have no parts to normalise.
    with pytest.raises(VggfeatError, match=r"--normalize-parts \(normalize='parts'\) L2-normalises each network's part .* "
                                           rf"{d} holds one network's \(4-d\)"):
        transfer.train_svm(d, C=1.0, normalize="parts")


def test_a_model_normalising_each_part_is_saved_only_with_the_configurations_of_those_parts(tmp_path):
    """save_model wrote any extraction configurations with a model of part_dims [4, 6]: a file
    that then scored other networks' rows, normalised in other parts than theirs. Refused, before
    anything is written, unless each network's dimension (of a stacked file, each part's) is the
    part's, in order; train_svm refuses part_dims that are not its files', before it trains."""
    from vggfeat.stack import stacked_config

    X, y, _, _ = blobs(dim=10)
    svm = LinearSVM(C=1.0, normalize="parts", part_dims=[4, 6]).fit(X, y)
    d, e = {**CONFIG, "dim": 4}, {**CONFIG, "model": "vgg19", "dim": 6}
    path = tmp_path / "m.h5"
    for configs, dims in (([{**d, "dim": 5}, {**e, "dim": 5}], [5, 5]), ([e, d], [6, 4]),
                          ([stacked_config([e, d], [False, False])], [6, 4]), ([{**CONFIG, "dim": 10}], [10])):
        refusal = f"part_dims [4, 6] are not the dimensions of the networks' descriptors that extraction_configs record ({dims}, "
        with pytest.raises(InvalidInput, match="^" + re.escape(refusal)):
            save_model(path, svm, configs)
        assert not path.exists()
    # No dimension recorded, or no configuration at all ([]: taken for any model; it refused one
    # of part_dims saying they were not the dimensions [] records): nothing to check them against.
    for configs in ([d, e], [stacked_config([d, e], [False, False])], [{}], []):
        save_model(path, svm, configs)
        assert load_model(path).svm.part_dims == [4, 6]
        path.unlink()
    d_file, e_file = two_networks(tmp_path)
    with pytest.raises(InvalidInput, match=rf"^part_dims \[6, 4\] are not the dimensions of the networks' descriptors of "
                                           rf"{re.escape(f'{d_file}, {e_file}')} \(\[4, 6\], in order\)"):
        transfer.train_svm([d_file, e_file], path, C=1.0, normalize="parts", part_dims=[6, 4])
    assert not path.exists()


def test_a_model_file_of_before_holdout_and_part_dims_loads_as_it_did(tmp_path):
    """Files written before these parameters (none in their params) load with their defaults, and a
    model of the defaults is written so still, for the versions before them to read."""
    features, model, saved = trained(tmp_path)
    with h5py.File(model, "r+") as f:
        params = json.loads(f.attrs["params"])
        assert "holdout" not in params and "part_dims" not in params and params["normalize"] is True
        f.attrs["params"] = json.dumps({key: value for key, value in params.items() if key not in ("solver", "device")})
        _resealed(f)  # as vggfeat 1's files: without solver and device either
    loaded = load_model(model).svm
    assert (loaded.holdout, loaded.part_dims, loaded.normalize) == (None, None, True)
    X = load_features(features).X
    np.testing.assert_array_equal(loaded.decision_function(X), saved.svm.decision_function(X))
    code, out, err = run_main(["info", model])
    assert code == 0 and "  input        8-d, L2-normalised; C = 1 (fixed); solver liblinear" in out, err


# The parameters that vggfeat's LinearSVM took before holdout and part_dims (commit c9a2ddf), less
# copy (never written): its load_model built LinearSVM(**params), refusing any other key.
_PARAMS_BEFORE_HOLDOUT = {"C", "C_grid", "cv", "loss", "class_weight", "normalize", "multilabel", "n_jobs", "max_iter",
                          "tol", "random_state", "solver", "device"}


def test_a_model_whose_C_was_chosen_on_a_holdout_is_readable_by_the_versions_before_holdout(tmp_path):
    """The hold-out changes how C was chosen, never the scores: it is recorded beside params (an
    attribute of its own, which earlier versions pass over), so that their load_model, which
    refused a parameter it did not know ("unexpected keyword argument 'holdout'"), reads the model;
    this one reads the hold-out back into the estimator's parameters and says so."""
    X, y, paths, names = blobs()
    features = write_features(tmp_path / "train.h5", X, paths, y, names)
    model = tmp_path / "model.h5"
    saved = transfer.train_svm(features, model, holdout=0.2, C_grid=(0.1, 1.0))
    with h5py.File(model, "r") as f:
        assert set(json.loads(f.attrs["params"])) <= _PARAMS_BEFORE_HOLDOUT and f.attrs["holdout"] == 0.2
    loaded = load_model(model).svm
    assert loaded.get_params() == {**saved.svm.get_params(), "C_grid": (0.1, 1.0)} and loaded.holdout == 0.2
    np.testing.assert_array_equal(loaded.decision_function(X), saved.svm.decision_function(X))
    code, out, err = run_main(["info", model])
    assert code == 0 and "(chosen on a 20% hold-out)" in out, err
    # A file written with the hold-out in params (vggfeat between these) reads as it did.
    with h5py.File(model, "r+") as f:
        f.attrs["params"] = json.dumps({**json.loads(f.attrs["params"]), "holdout": 0.3})
        del f.attrs["holdout"]
        _resealed(f)
    assert load_model(model).svm.holdout == 0.3


class Column:
    """Labels as a dataframe library's column may hold them: NumPy reads them (__array__), but the
    column dispatches no NumPy function (scikit-learn's estimator checks pass one such)."""

    def __init__(self, values) -> None:
        self.values = np.asarray(values)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.values

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"{func.__name__} is not for this column")


def test_labels_of_an_array_like_that_numpy_reads_train_as_an_array():
    """np.ndim(y), before y was read as an array, raised this column's TypeError."""
    X, y, _, _ = blobs()
    assert np.array_equal(LinearSVM(C=1.0).fit(X, Column(y)).coef_, LinearSVM(C=1.0).fit(X, y).coef_)
    with pytest.raises(VggfeatError, match="expected a label per row, got 3"):
        LinearSVM(C=1.0).fit(X, 3)


def test_multilabel_targets_other_than_0_and_1_are_refused():
    """VOC's ground truth writes -1 for a negative: astype(bool) took it as a positive, silently."""
    X, y, _, _ = blobs()
    voc_style = np.where(np.eye(3, dtype=bool)[y], 1, -1)
    with pytest.raises(VggfeatError, match=r"multi-label targets must be 0 or 1 \(or bool\), got \[-1, 1\]"):
        LinearSVM(C=1.0, multilabel=True).fit(X, voc_style)
    LinearSVM(C=1.0, multilabel=True).fit(X, (voc_style > 0).astype(np.int8))  # 0 and 1: trains


def test_an_excluded_class_multilabel_is_every_class_negative_from_own_labels_as_from_a_csv(tmp_path):
    """The file's own labels dropped the excluded class's rows, which a labels CSV and evaluation
    keep as every class's negatives: trained on other rows than it was evaluated on."""
    X, y, paths, _ = blobs()
    names = ["BACKGROUND", "cat", "dog"]
    features = write_features(tmp_path / "train.h5", X, paths, y, names)
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"{path},{names[k]}\n" for path, k in zip(paths, y)))
    own = transfer.train_svm(features, multilabel=True, exclude=["BACKGROUND"], C=1.0)
    listed = transfer.train_svm(features, labels_csv=labels, multilabel=True, exclude=["BACKGROUND"], C=1.0)
    assert own.training["rows"] == listed.training["rows"] == 30
    assert list(own.svm.classes_) == ["cat", "dog"]
    np.testing.assert_allclose(own.svm.coef_, listed.svm.coef_)
    assert transfer.train_svm(features, exclude=["BACKGROUND"], C=1.0).training["rows"] == 20  # single-label: its rows out


@pytest.mark.parametrize("classes", [[3, 7, 12], [0.5, 1.0, 2.5], ["3", "7", "12"], [False, True]])
def test_a_saved_model_predicts_the_classes_it_was_fitted_on_numbers_or_names(tmp_path, classes):
    """The Python API's fit(X, [3, 7, 12]): a loaded model predicted '3', which equalled no label
    (accuracy 0, silently) and made score() raise; booleans came back as 'True' and 'False'."""
    X, y, _, _ = blobs(classes=len(classes))
    labels = np.array(classes)[y]
    svm = LinearSVM(C=1.0).fit(X, labels)
    save_model(tmp_path / "model.h5", svm, [{}])
    code, out, _ = run_main(["info", tmp_path / "model.h5"])  # its training not given: "0 rows of ; labels: None"
    assert code == 0 and "trained on   not recorded (saved from Python without its training)" in out, out
    loaded = load_model(tmp_path / "model.h5").svm
    assert loaded.predict(X).dtype == svm.predict(X).dtype
    np.testing.assert_array_equal(loaded.predict(X), labels)
    if labels.dtype.kind != "f":  # (scikit-learn's accuracy takes no fractional labels)
        assert loaded.score(X, labels) == 1.0


@pytest.mark.parametrize("tamper", ["coef", "classes", "attr"])
def test_tampered_model_is_refused(tmp_path, tamper):
    _, model, _ = trained(tmp_path)
    with h5py.File(model, "r+") as f:
        if tamper == "coef":
            f["coef"][0, 0] += 1e-9
        elif tamper == "classes":
            f["classes"][0] = "class9"
        else:
            f.attrs["normalize"] = False
    with pytest.raises(VggfeatError, match="was modified or is damaged"):
        load_model(model)


def _resealed(f):  # a model edited on purpose: its checksum computed again, as anyone can
    from vggfeat.modelfile import _checksum

    f.attrs["checksum"] = _checksum(f)


def _compressed_coef(f):
    coef = f["coef"][:]
    del f["coef"]
    f.create_dataset("coef", data=coef, compression="gzip")


@pytest.mark.parametrize("edit, said", [
    (lambda f: f.create_group("zz"), "is damaged: it holds classes, coef, intercept, zz, where a model holds"),
    (_compressed_coef, r"was not written by vggfeat \(its arrays are compressed, chunked or elsewhere\)"),
    (lambda f: f.attrs.__setitem__("cv_scores", "[1, 2]"), r"not a readable vggfeat SVM model file \(AttributeError"),
    (lambda f: f.attrs.__setitem__("training", "[1]"), r"\(training not of its kind\)"),
    (lambda f: f.attrs.__setitem__("params", "[]"), r"\(params not of its kind\)"),
    (lambda f: f.attrs.__setitem__("params", "[" * 100_000 + "]" * 100_000), "not a readable vggfeat SVM model file"),
    (lambda f: f.attrs.__setitem__("extraction_configs", "[5]"), r"\(extraction_configs not of its kind\)"),
    (lambda f: f.attrs.__setitem__("params", json.dumps({**json.loads(f.attrs["params"]), "multilabel": 7})),
     r"\(multilabel not true or false\)"),
    (lambda f: f.attrs.__setitem__("classes_dtype", "int64"), "its classes are not int64 values, as it says"),
    (lambda f: f["classes"].__setitem__(1, f["classes"].asstr()[0]), "a class is named twice"),
    (lambda f: f["coef"].__setitem__((0, 0), np.nan), "its weights hold NaN or infinite values"),
    (lambda f: f.attrs.__setitem__("format_version", "1"), "has model format '1'; this vggfeat reads 1"),
    # Scores of each part normalised, of parts other than its rows': wrong, silently.
    (lambda f: f.attrs.__setitem__("params", json.dumps({**json.loads(f.attrs["params"]), "normalize": "parts",
                                                         "part_dims": [4, 5]})),
     r"is damaged: it normalises each part of its rows, and its part_dims \[4, 5\] are not the parts of its 8 dimensions"),
    (lambda f: f.attrs.__setitem__("params", json.dumps({**json.loads(f.attrs["params"]), "holdout": "20%"})),
     r"\(holdout 20% not a fraction\)"),
])
def test_a_model_edited_and_resealed_is_refused_in_a_line(tmp_path, edit, said):
    """A checksum anyone can compute again guards against damage, not against edits: a model file
    edited so, or made by other code, is refused for what it holds (each of these was a traceback,
    a gzip-compressed coef of a 75 KB file declared 7.5 GB, or NaN scores and duplicate columns)."""
    _, model, _ = trained(tmp_path)
    with h5py.File(model, "r+") as f:
        edit(f)
        if "zz" not in f:  # (a group: refused before the checksum, which reads datasets)
            _resealed(f)
    with pytest.raises(VggfeatError, match=said):
        load_model(model)
    code, _, err = run_main(["info", model])
    assert code == 2 and "Traceback" not in err, err


def _declared(name: str, shape: tuple, dtype) -> Callable[[h5py.File], None]:
    """An edit that replaces ``name`` by a gzip dataset declaring ``shape``, of which nothing is
    stored: a file of a few KB that reading the dataset whole allocates gigabytes for."""
    def edit(f: h5py.File) -> None:
        if name in f:
            del f[name]
        f.create_dataset(name, shape=shape, dtype=dtype, compression="gzip")
    return edit


def _group_for(name: str) -> Callable[[h5py.File], None]:
    return lambda f: (f.__delitem__(name), f.create_group(name))


@pytest.mark.parametrize("edit, said", [
    # train-svm trained the dogs as cats, silently.
    (lambda f: f["classes"].__setitem__(1, f["classes"].asstr()[0]), "not a readable vggfeat features file "
                                                                       r"\(a class is named twice in /classes\)"),
    # Each of these was read whole (gigabytes allocated, for a file of kilobytes) before its length was checked.
    (_declared("labels", (2_000_000_000,), "int32"), r"damaged: /labels has the shape \(2000000000,\), where the file's "
                                                     r"30 rows make \(30,\)"),
    (_declared("classes", (2_000_000_000,), STRING), "damaged: /classes declares 2,000,000,000 values, far more than"),
    (_declared("failed/paths", (2_000_000_000,), STRING), "damaged: /failed/paths declares 2,000,000,000 values"),
    (_declared("failed/labels", (2_000_000_000,), "int32"), "damaged: /failed/labels has the shape"),
    (_declared("sizes", (2_000_000_000, 2), "int32"), "damaged: /sizes has the shape"),
    (_declared("read_after", (30, 2), "float64"), r"damaged: /read_after has the shape \(30, 2\)"),
    (_declared("labels", (30,), "float32"), "damaged: /labels holds float32, not integers"),
    # Tracebacks: a group where a dataset is, and a configuration of another JSON kind.
    (_group_for("features"), "damaged: /features is not a dataset"),
    (_group_for("classes"), "damaged: /classes is not a dataset"),
    (_group_for("failed/paths"), "damaged: /failed/paths is not a dataset"),
    (lambda f: f.attrs.__setitem__("config", "[1, 2]"), "damaged: its config attribute is not a JSON object"),
    (lambda f: f.attrs.__setitem__("config", json.dumps({**CONFIG, "stacked": 5})), "its config's stacked is not a list"),
    # A model trained on it recorded descriptors of 4096 dimensions, and held weights for 8.
    (lambda f: f.attrs.__setitem__("config", json.dumps({**CONFIG, "dim": 4096})), "its config says descriptors of "
                                                                                   "dimension 4096, its /features holds 8"),
])
def test_a_features_file_edited_so_is_refused_before_a_model_is_trained_on_it(tmp_path, edit, said):
    X, y, paths, names = blobs()
    features = write_features(tmp_path / "train.h5", X, paths, y, names, failed={"class0/bad.png": "broken"})
    with h5py.File(features, "r+") as f:
        edit(f)
    with pytest.raises(VggfeatError, match=said):
        vggfeat.features.load_features([features])
    code, _, err = run_main(["info", features])
    assert code == (0 if "named twice" in said else 2) and "Traceback" not in err, err  # (info shows what it names)


def test_other_files_are_not_models(tmp_path):
    features, _, _ = trained(tmp_path)
    with pytest.raises(VggfeatError, match="not a vggfeat SVM model file"):
        load_model(features)
    with pytest.raises(VggfeatError, match="model file not found"):
        load_model(tmp_path / "nope.h5")


def test_features_of_another_configuration_are_refused_naming_the_difference(tmp_path):
    _, model, _ = trained(tmp_path)
    X, y, paths, names = blobs(seed=3)
    other = write_features(tmp_path / "test.h5", X, paths, y, names, config={"layer": "fc6", "scales": [256, 384]})
    with pytest.raises(VggfeatError, match=r"different configuration than the model: layer: fc7 expected, fc6 found; "
                                           r"scales: \[224\] expected, \[256, 384\] found"):
        transfer.predict(model, other)
    # Precision and storage type do not change what a descriptor means: accepted.
    same = write_features(tmp_path / "bf16.h5", X, paths, y, names, config={"precision": "bf16", "dtype": "float16"})
    assert transfer.predict(model, same).scores.shape == (30, 3)


@pytest.mark.filterwarnings("ignore:.* is what the model was trained on")  # scored on its training rows, knowingly
def test_a_features_file_without_failures_recorded_is_trained_on_and_scored(tmp_path):
    """A file written by other code than vggfeat's, with the required datasets but no /failed group:
    no image failed."""
    X, y, paths, names = blobs()
    features = write_features(tmp_path / "own.h5", X, paths, y, names)
    with h5py.File(features, "r+") as f:
        del f["failed"]
    saved = transfer.train_svm(features, C=1.0)
    written = transfer.write_predictions(tmp_path / "p.csv", saved, features)
    assert (written.rows, written.failed) == (len(paths), 0)
    metrics, _ = transfer.evaluate(saved, features)
    assert metrics["accuracy"] == 1.0
    code, out, _ = run_main(["info", features])
    assert code == 0 and "  failed       0" in out


def test_config_differences_lists_each_key():
    a = {"layer": "fc7", "flip": True, "precision": "fp32"}
    assert config_differences(a, {**a, "precision": "bf16"}) == []
    assert config_differences(a, {**a, "flip": False, "layer": "fc6"}) == ["layer: fc7 expected, fc6 found",
                                                                             "flip: true expected, false found"]


def test_incomplete_and_foreign_features_files_are_refused(tmp_path):
    X, y, paths, names = blobs()
    incomplete = write_features(tmp_path / "part.h5", X, paths, y, names, complete=False)
    with pytest.raises(VggfeatError, match="incomplete"):
        load_features(incomplete)
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(VggfeatError, match="not an HDF5 file"):
        load_features(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1]
    with pytest.raises(VggfeatError, match="not a vggfeat features file"):
        load_features(tmp_path / "other.h5")


def test_fusion_matches_rows_by_path(tmp_path):
    X, y, paths, names = blobs()
    order = np.random.default_rng(0).permutation(len(paths))
    a = write_features(tmp_path / "a.h5", X, paths, y, names)
    b = write_features(tmp_path / "b.h5", 2 * X[order], [paths[i] for i in order], y[order], names, config={"model": "vgg19"})
    fused = load_features([a, b])
    assert fused.X.shape == (30, 16) and fused.paths == paths
    np.testing.assert_allclose(fused.X[:, 8:], 2 * fused.X[:, :8], rtol=1e-6)
    assert [c["model"] for c in fused.configs] == ["vgg16", "vgg19"]
    c = write_features(tmp_path / "c.h5", X[:20], paths[:20], y[:20], names)
    with pytest.raises(VggfeatError, match="cannot fuse .* 10 path\\(s\\) are not in the second"):
        load_features([a, c])
    # Made from different folders (a list's, the images' own): the error says so.
    d = write_features(tmp_path / "d.h5", X, [path.split("/", 1)[1] for path in paths], y, names)
    for file, root in ((a, "/data"), (d, "/data/images")):
        with h5py.File(file, "r+") as f:
            f.attrs["input_root"] = root
    with pytest.raises(VggfeatError, match="cannot fuse .* 30 path\\(s\\) are not in the second .*; their paths are "
                                           "relative to different folders \\(/data and /data/images\\)"):
        load_features([a, d])


@pytest.mark.filterwarnings("ignore:.* is what the model was trained on")  # scored on its training rows, knowingly
def test_predictions_read_and_score_the_descriptors_a_block_at_a_time(tmp_path, monkeypatch):
    """A collection of millions is scored without its descriptors held whole (1M fc7 rows: 32 GiB
    as float64): the scores of blocks of rows, fused files matched by path, are the scores of all."""
    X, y, paths, names = blobs()
    order = np.random.default_rng(1).permutation(len(paths))
    a = write_features(tmp_path / "a.h5", X, paths, y, names)
    b = write_features(tmp_path / "b.h5", 2 * X[order], [paths[i] for i in order], y[order], names, config={"model": "vgg19"})
    saved = transfer.train_svm([a, b], C=1.0)
    expected = saved.svm.decision_function(load_features([a, b]).X)
    monkeypatch.setattr(vggfeat.features, "TRANSFORM_BYTES", 8 * 16 * 4)  # 4 rows of 16 float64 a block
    blocks = []
    class_scores = saved.svm.class_scores
    monkeypatch.setattr(saved.svm, "class_scores", lambda block: blocks.append(len(block)) or class_scores(block))
    scored = transfer.predict(saved, [a, b])
    assert blocks == [4] * 7 + [2] and scored.paths == paths
    np.testing.assert_allclose(scored.scores, expected, rtol=1e-12)
    _, picked = transfer.evaluate(saved, [a, b])  # the labelled rows, in blocks too
    np.testing.assert_allclose(picked.scores, expected, rtol=1e-12)
    assert transfer.score(saved, [a, b], paths=[]).scores.shape == (0, 3)
    # predict's CSV is written as the blocks are scored: neither descriptors nor scores held whole.
    blocks.clear()
    progress = []
    written = transfer.write_predictions(tmp_path / "p.csv", saved, [a, b], progress=progress.append)
    assert blocks == [4] * 7 + [2] and progress == blocks and written.rows == len(paths)
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [row["path"] for row in rows] == paths
    np.testing.assert_allclose([[float(row[f"score:{c}"]) for c in names] for row in rows], expected, rtol=1e-5)
    assert [row["predicted"] for row in rows] == [names[k] for k in expected.argmax(axis=1)]


def read_scores_file(path) -> dict:
    with h5py.File(path, "r") as f:
        return {"scores": f["scores"][:], "paths": list(f["paths"].asstr()[:]), "classes": list(f["classes"].asstr()[:]),
                "predicted": f["predicted"][:], "failed": list(zip(f["failed/paths"].asstr()[:], f["failed/errors"].asstr()[:])),
                "attrs": dict(f.attrs)}


def test_a_scores_file_holds_what_the_csv_does_written_a_block_at_a_time(tmp_path, monkeypatch):
    """predict's HDF5 output, for collections too large for a CSV: every row's scores (float32),
    in the descriptors' order, the predicted class, and the images without a descriptor (here: one
    that the fused second file failed), scored and written a block at a time as the CSV is."""
    X, y, paths, names = blobs()
    a = write_features(tmp_path / "a.h5", X, paths, y, names, failed={"zz.png": "not an image"})
    kept = [i for i in range(len(paths)) if i != 3]
    e = write_features(tmp_path / "e.h5", X[kept], [paths[i] for i in kept], y[kept], names, config={"model": "vgg19"},
                       failed={paths[3]: "Input/output error", "zz.png": "not an image"})
    with pytest.warns(RuntimeWarning):
        transfer.train_svm([a, e], tmp_path / "model.h5", C=1.0)
    monkeypatch.setattr(vggfeat.features, "TRANSFORM_BYTES", 8 * 16 * 4)  # 4 rows of 16 float64 a block
    progress = []
    with pytest.warns(RuntimeWarning):
        written = transfer.write_scores(tmp_path / "s.h5", tmp_path / "model.h5", [a, e], progress=progress.append,
                                        provenance={"command": "vggfeat predict ..."})
        transfer.write_predictions(tmp_path / "p.csv", tmp_path / "model.h5", [a, e])
    assert progress == [4] * 7 + [1, 2] and (written.rows, written.failed) == (len(kept), 2)
    stored = read_scores_file(tmp_path / "s.h5")
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    scored = [row for row in rows if not row["error"]]
    assert stored["paths"] == [row["path"] for row in scored] == [paths[i] for i in kept] and stored["classes"] == names
    assert stored["scores"].dtype == np.float32
    np.testing.assert_allclose(stored["scores"], [[float(row[f"score:{c}"]) for c in names] for row in scored], rtol=1e-5)
    assert [names[k] for k in stored["predicted"]] == [row["predicted"] for row in scored]
    assert stored["failed"] == [(paths[3], f"failed in {e}: Input/output error"), ("zz.png", "not an image")]
    assert {key: stored["attrs"][key] for key in ("format", "multilabel", "model", "features", "command")} == {
        "format": "vggfeat-scores", "multilabel": False, "model": str(tmp_path / "model.h5"),
        "features": f'["{a}", "{e}"]', "command": "vggfeat predict ..."}
    assert stored["attrs"]["model_checksum"] == load_model(tmp_path / "model.h5").checksum != ""
    # Multi-label: /predicted holds each class scored above 0.
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"{path},{names[k]};{names[(k + 1) % 3]}\n" for path, k in zip(paths, y)))
    saved = transfer.train_svm(a, labels_csv=labels, multilabel=True, C=1.0)
    transfer.write_scores(tmp_path / "m.h5", saved, a)
    stored = read_scores_file(tmp_path / "m.h5")
    assert stored["predicted"].dtype == bool and stored["attrs"]["multilabel"] and stored["attrs"]["model"] == ""
    np.testing.assert_array_equal(stored["predicted"], stored["scores"] > 0)
    assert stored["predicted"].sum(axis=1).tolist() == [2] * len(paths)


def test_a_damaged_chunk_of_a_scores_file_is_refused_by_any_hdf5_reader(tmp_path):
    """Scores files are read by the user's own code: each chunk of /scores and /predicted carries
    HDF5's Fletcher-32 checksum, which h5py checks, so a flipped bit is an error, not another score."""
    X, y, paths, names = blobs()
    a = write_features(tmp_path / "a.h5", X, paths, y, names)
    transfer.write_scores(tmp_path / "s.h5", transfer.train_svm(a, C=1.0), a)
    with h5py.File(tmp_path / "s.h5") as f:
        scores = f["scores"][:]
        assert f["scores"].fletcher32 and f["predicted"].fletcher32
        chunk = f["scores"].id.get_chunk_info(0)
    data = bytearray((tmp_path / "s.h5").read_bytes())
    data[chunk.byte_offset + 5] ^= 0x10  # a bit of the first row's second score
    (tmp_path / "s.h5").write_bytes(bytes(data))
    refused = "filter returned failure during read|Fletcher32 checksum"  # the newest HDF5's words; h5py 3.8's
    with h5py.File(tmp_path / "s.h5") as f, pytest.raises(OSError, match=refused):
        f["scores"][:]
    assert scores.shape == (len(paths), len(names))


def test_a_scores_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A scoring that fails midway (a damaged block, a full disk) leaves neither a scores file nor
    a temporary one; an existing file is replaced only when the new one is whole."""
    X, y, paths, names = blobs()
    a = write_features(tmp_path / "a.h5", X, paths, y, names)
    saved = transfer.train_svm(a, C=1.0)
    monkeypatch.setattr(vggfeat.features, "TRANSFORM_BYTES", 8 * 16 * 4)
    class_scores, blocks = saved.svm.class_scores, []

    def failing(block):
        blocks.append(len(block))
        if len(blocks) == 3:
            raise OSError(28, "No space left on device")
        return class_scores(block)
    monkeypatch.setattr(saved.svm, "class_scores", failing)
    with pytest.raises(OSError, match="No space left"):
        transfer.write_scores(tmp_path / "s.h5", saved, a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def test_images_that_one_fused_file_failed_are_left_out_with_a_warning(tmp_path):
    """Two networks' files of the same images, where the second could not read two of them as it
    was made: fused, the others are used and the two are counted in a warning; asked for by path,
    they are refused with --retry-failed named; files of other images are refused."""
    X, y, paths, names = blobs()
    a = write_features(tmp_path / "a.h5", X, paths, y, names)
    kept = [i for i in range(len(paths)) if i not in (3, 17)]
    e = write_features(tmp_path / "e.h5", X[kept], [paths[i] for i in kept], y[kept], names, config={"model": "vgg19"},
                       failed={paths[3]: "Input/output error", paths[17]: "Input/output error"})
    warning = (f"2 image\\(s\\) of {a} are left out, having no descriptor \\(e.g. {paths[3]}: failed in {e}: "
               "Input/output error\\)")
    with pytest.warns(RuntimeWarning, match=warning):
        fused = load_features([a, e])
    assert fused.paths == [paths[i] for i in kept] and fused.X.shape == (len(kept), 16)
    np.testing.assert_array_equal(fused.X[:, 8:], X[kept].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the first file's own rows are all described by the second
        assert load_features([e, a]).paths == fused.paths
    with pytest.warns(RuntimeWarning, match=warning):
        saved = transfer.train_svm([a, e], C=1.0)
    assert saved.training["rows"] == len(kept)
    progress = []
    with pytest.warns(RuntimeWarning, match=warning):
        written = transfer.write_predictions(tmp_path / "p.csv", saved, [a, e], progress=progress.append)
    assert (written.rows, written.failed) == (len(kept), 2) and sum(progress) == len(paths)  # every CSV row counted
    rows = {row["path"]: row for row in csv.DictReader(open(tmp_path / "p.csv"))}
    assert len(rows) == len(paths) and rows[paths[3]]["error"] == f"failed in {e}: Input/output error"
    assert rows[paths[3]]["predicted"] == "" and rows[paths[4]]["predicted"] and rows[paths[4]]["error"] == ""
    with pytest.raises(VggfeatError, match="2 path\\(s\\) are not in the second") as refused:
        load_features([a, e], paths=paths)
    assert (f"they failed in {e} ({paths[3]}: Input/output error): once they can be read, 'vggfeat extract IMAGES {e} "
            "--retry-failed'") in str(refused.value)
    c = write_features(tmp_path / "c.h5", X[:20], paths[:20], y[:20], names)  # other images
    with pytest.raises(VggfeatError, match="10 path\\(s\\) are not in the second"):
        load_features([a, c])
    with pytest.raises(VggfeatError, match="they hold different images"):
        load_features([c, a])


def test_a_labelled_image_that_the_features_file_failed_is_left_out_with_a_warning(tmp_path):
    X, y, paths, names = blobs()
    features = write_features(tmp_path / "a.h5", X[1:], paths[1:], y[1:], names, failed={paths[0]: "empty file"})
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"{path},{names[label]}\n" for path, label in zip(paths, y)))
    with pytest.warns(RuntimeWarning, match=f"1 image\\(s\\) of {labels} are left out, having no descriptor "
                                            f"\\(e.g. {paths[0]}: empty file\\)"):
        saved = transfer.train_svm(features, labels_csv=labels)
    assert saved.training["rows"] == len(paths) - 1
    labels.write_text(labels.read_text() + "not/there.jpg,x\n")  # not an image of the file at all: refused
    with pytest.raises(VggfeatError, match="1 path\\(s\\) of .* are not in the features file \\(e.g. not/there.jpg\\)"):
        transfer.train_svm(features, labels_csv=labels)


def test_chunked_row_reads_are_exact(tmp_path, monkeypatch):
    import vggfeat.features

    monkeypatch.setattr(vggfeat.features, "_READ_BYTES", 3 * 8 * 4)  # 3 rows a chunk
    X, y, paths, names = blobs()
    f = write_features(tmp_path / "a.h5", X, paths, y, names)
    picked = [paths[i] for i in (7, 2, 29, 3, 4, 5, 0)]
    np.testing.assert_array_equal(load_features(f, paths=picked).X, X[[7, 2, 29, 3, 4, 5, 0]].astype(np.float32))
    np.testing.assert_array_equal(load_features(f).X, X.astype(np.float32))  # consecutive rows: sliced reads
    np.testing.assert_array_equal(load_features(f, paths=paths[4:13]).X, X[4:13].astype(np.float32))


def test_rows_read_in_any_order_with_repeats_and_into_any_dtype(tmp_path, monkeypatch):
    import vggfeat.features

    monkeypatch.setattr(vggfeat.features, "_READ_BYTES", 3 * 8 * 4)  # 3 rows a read
    X, y, paths, names = blobs()
    X32 = X.astype(np.float32)
    with FeatureFile(write_features(tmp_path / "a.h5", X, paths, y, names)) as f:
        rows = np.array([5, 5, 0, 29, 5, 6, 7, 8, 1])
        np.testing.assert_array_equal(f.read(rows), X32[rows])
        np.testing.assert_array_equal(f.read(dtype=np.float32), X32)  # straight into a float32 array
        fused = np.zeros((9, 16))
        f.read(np.arange(4, 13), out=fused[:, 8:])  # a column block of a wider matrix
        np.testing.assert_array_equal(fused[:, 8:], X32[4:13])
        assert f.read(np.array([], dtype=np.int64)).shape == (0, 8)
        with pytest.raises(VggfeatError, match=r"row 30 is not in .*a\.h5 \(30 rows\)"):
            f.read([1, 30])
        labelled = f.labels >= 1  # a mask, as numpy takes one: its rows (as indices, it read rows 0 and 1)
        np.testing.assert_array_equal(f.read(labelled), X32[labelled])
        with pytest.raises(VggfeatError, match=r"a mask of \(29,\) for .*a\.h5 \(30 rows\)"):
            f.read(labelled[1:])
        assert f.failed().paths == [] and "paths" not in vars(f)  # 10 million paths: a GB, read only when asked for
        assert f.paths == paths


def test_a_features_file_whose_paths_are_not_text_or_not_utf8_is_refused(tmp_path):
    X, y, paths, names = blobs()
    numbers = write_features(tmp_path / "numbers.h5", X, paths, y, names)
    with h5py.File(numbers, "r+") as f:
        del f["paths"]
        f["paths"] = np.arange(len(paths))
    with pytest.raises(VggfeatError, match="numbers.h5 is damaged: /paths holds int64, not text"):
        FeatureFile(numbers)
    latin1 = write_features(tmp_path / "latin1.h5", X, paths, y, names)
    with h5py.File(latin1, "r+") as f:
        f["paths"][0] = "caf\xe9.png".encode("latin-1")
    with FeatureFile(latin1) as f, pytest.raises(VggfeatError, match="latin1.h5 is not a readable vggfeat features file"):
        f.paths


@pytest.mark.parametrize("chunk_rows", [1, 4, 7])
def test_scattered_rows_of_a_chunked_file_are_read_exactly(tmp_path, monkeypatch, chunk_rows):
    import vggfeat.features

    monkeypatch.setattr(vggfeat.features, "_READ_BYTES", 9 * 8 * 4)  # spans of at most 9 rows (or one chunk)
    X, y, paths, names = blobs(classes=5, per_class=20)
    X32 = X.astype(np.float32)
    rng = np.random.default_rng(chunk_rows)
    with FeatureFile(write_features(tmp_path / "a.h5", X, paths, y, names, chunk_rows=chunk_rows)) as f:
        for rows in (rng.choice(100, 40, replace=False), rng.choice(100, 60), np.array([99, 0, 50, 51, 98]),
                     np.arange(3, 97, 5)):
            np.testing.assert_array_equal(f.read(rows), X32[rows])


def test_labels_outside_the_classes_are_refused_as_damage(tmp_path):
    X, y, paths, names = blobs()
    damaged = write_features(tmp_path / "a.h5", X, paths, np.where(y == 2, 3, y), names)
    with pytest.raises(VggfeatError, match="is damaged: /labels holds indices outside /classes"):
        load_features(damaged)


def test_labels_csv_from_a_spreadsheet(tmp_path):
    # A byte-order mark, a comment before the header, a label repeated within and across lines.
    labels = tmp_path / "labels.csv"
    labels.write_bytes("\ufeff# exported\npath,label\na.jpg,cat;cat\nb.jpg,dog\na.jpg,cat;tree\n".encode())
    assert read_labels_csv(labels) == {"a.jpg": ["cat", "tree"], "b.jpg": ["dog"]}


def test_a_labels_csv_names_files_as_the_features_file_does(tmp_path):
    """A path whose bytes are not UTF-8 (a features file's /paths writes them \\xNN) was not in the
    features file; a path that begins with '#', which csv.writer does not quote, was a comment:
    its image is left unlabelled, now with a warning that says how to label it."""
    X, y, _, names = blobs(classes=2, per_class=3)
    paths = ["caf\\xe9.jpg", "#1.jpg", "a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    features = write_features(tmp_path / "f.h5", X, paths, y, names)
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"path,label\ncaf\xe9.jpg,class0\n#1.jpg,class0\na.jpg,class0\nb.jpg,class1\nc.jpg,class1\n"
                       b"d.jpg,class1\n# a comment, as comments go\n")
    assert read_labels_csv(labels).commented == {"#1.jpg", "# a comment"}
    with pytest.warns(RuntimeWarning, match=r"1 line\(s\) of .*labels.csv that begin with '#' name an image of the "
                                             r"features file \(e.g. #1.jpg\), and were taken as comments: quote such a "
                                             r'path \("#1.jpg",label\)'):
        saved = transfer.train_svm(features, labels_csv=labels, C=1.0)
    assert saved.training["rows"] == 5


def test_a_labels_csv_path_written_with_spaces_is_the_row_so_named_or_else_the_one_without_them(tmp_path):
    """' lead.jpg' (a file named so, as the features file's /paths names it) was 'not in the features
    file'; ' a.jpg ' written by hand, with stray spaces, still labels a.jpg."""
    X, y, _, names = blobs(classes=2, per_class=2)
    features = write_features(tmp_path / "f.h5", X, [" lead.jpg", "a.jpg", "b.jpg", "c.jpg"], y, names)
    labels = tmp_path / "labels.csv"
    labels.write_text(" lead.jpg ,class0\n a.jpg ,class0\nb.jpg,class1\nc.jpg,class1\n")  # spaces after: left out
    assert transfer.targets_of(features, labels).paths == [" lead.jpg", "a.jpg", "b.jpg", "c.jpg"]
    # So too the lists of protocol voc's sets (they were stripped: "no label in labels.csv (e.g. lead.jpg)").
    targets = protocol._voc_targets(features, labels, [" lead.jpg ", " a.jpg"], "training")
    assert targets.paths == [" lead.jpg", "a.jpg"] and targets.classes == ["class0"]


def test_training_that_would_not_fit_in_memory_is_warned_of_before_its_rows_are_read(tmp_path, monkeypatch):
    X, labels, paths, names = blobs(classes=3, per_class=20, dim=16)
    X[:, 8:] = 0  # half zeros, as fc7's after its ReLU: liblinear keeps only the others
    features = write_features(tmp_path / "f.h5", X, paths, labels, names)
    needed = training_memory(60, 16, n_jobs=2, nonzero_fraction=0.5)
    assert needed == 60 * 16 * 8 + 2 * 60 * (8 + 2) * 16
    read = []
    monkeypatch.setattr(transfer, "load_features", lambda *args, **kwargs: read.append(1) or load_features(*args, **kwargs))
    monkeypatch.setattr(transfer, "available_memory", lambda: needed - 1)
    with pytest.warns(RuntimeWarning, match=r"training on 60 rows of 16-d needs about 0.0 GiB of memory .* for each of "
                                             r"2 classes trained at once.* Train fewer classes at once \(n_jobs, --n-jobs\)") as caught:
        transfer.train_svm(features, C=1.0, n_jobs=2)
    assert read == [1] and len(caught) == 1
    for available in (needed, None):  # enough, or not known
        monkeypatch.setattr(transfer, "available_memory", lambda: available)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            transfer.train_svm(features, C=1.0, n_jobs=2)


def test_solver_auto_is_lbfgs_on_the_cpu_for_training_large_enough(tmp_path, monkeypatch):
    """Where importing torch is small against the training (rows x dims x classes x fits), lbfgs
    on the CPU, 1.6 to 6 times as fast (RESULTS.md), unless it would hold more memory than liblinear;
    never on a GPU unasked; liblinear for smaller ones, and for the hinge loss."""
    X, labels, paths, names = blobs(classes=3, per_class=20, dim=256)
    features = write_features(tmp_path / "f.h5", X, paths, labels, names)
    assert transfer.solver_in_memory(features, 60, 3, {"solver": "auto", "C": None})["solver"] == "liblinear"
    monkeypatch.setattr(transfer, "LBFGS_WORK", 60 * 256 * 3 * 13)  # the default grid of 4 C, 3 folds, and the final fit
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        chosen = transfer.solver_in_memory(features, 60, 3, {"solver": "auto", "device": "auto", "C": None})
        assert (chosen["solver"], chosen["device"]) == ("lbfgs", "cpu")
        assert transfer.solver_in_memory(features, 60, 3, {"solver": "auto", "C": 1.0})["solver"] == "liblinear"  # 1 fit
        assert transfer.solver_in_memory(features, 60, 3, {"solver": "auto", "C": None, "loss": "hinge"})["solver"] == "liblinear"
        assert transfer.solver_in_memory(features, 60, 3, {"solver": "liblinear", "C": None})["solver"] == "liblinear"
        # 300 classes of 60 rows: lbfgs's arrays of each class outweigh liblinear's copy of 256-d rows
        assert transfer.solver_in_memory(features, 60, 300, {"solver": "auto", "C": None})["solver"] == "liblinear"
        saved = transfer.train_svm(features, tmp_path / "m.h5", solver="auto")
    assert (saved.svm.solver, saved.svm.device) == ("lbfgs", "cpu") and load_model(tmp_path / "m.h5").svm.solver == "lbfgs"


def test_solver_auto_is_liblinear_where_its_copies_fit_in_memory_else_lbfgs(tmp_path, monkeypatch):
    """train-svm's default: liblinear's exact solution where it fits; where it would not and lbfgs
    (float32, no copies) would, lbfgs, said in a warning; liblinear still for the hinge loss."""
    X, labels, paths, names = blobs(classes=3, per_class=20, dim=256)
    features = write_features(tmp_path / "f.h5", X, paths, labels, names)
    liblinear, lbfgs = training_memory(60, 256), training_memory(60, 256, solver="lbfgs", classes=3)
    assert lbfgs < liblinear
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert transfer.train_svm(features, C=1.0, solver="auto").svm.solver == "liblinear"
        monkeypatch.setattr(transfer, "available_memory", lambda: lbfgs)
        with pytest.warns(RuntimeWarning, match=r"^liblinear would need about 0.0 GiB of memory for 60 rows of 256-d and "
                                                 r"0.0 GiB is available: training with --solver lbfgs \(the same SVMs, "
                                                 r"about 0.0 GiB\)$") as caught:
            saved = transfer.train_svm(features, tmp_path / "m.h5", C=1.0, solver="auto", device="auto")
    assert len(caught) == 1 and saved.svm.solver == "lbfgs" and load_model(tmp_path / "m.h5").svm.solver == "lbfgs"
    with pytest.warns(RuntimeWarning, match=r"^training on 60 rows of 256-d needs about"):
        assert transfer.train_svm(features, C=1.0, solver="auto", loss="hinge").svm.solver == "liblinear"


def test_available_memory_is_linuxs_estimate_within_its_containers_limit(tmp_path):
    meminfo, cgroup = tmp_path / "meminfo", tmp_path / "cgroup"
    meminfo.write_text("MemTotal:       2000 kB\nMemFree:         500 kB\nMemAvailable:   1000 kB\n")
    assert available_memory(str(meminfo), str(cgroup)) == 1000 * 1024  # no cgroup files
    cgroup.mkdir()
    (cgroup / "memory.max").write_text("500000\n")
    (cgroup / "memory.current").write_text("100000\n")
    assert available_memory(str(meminfo), str(cgroup)) == 400_000
    (cgroup / "memory.max").write_text("max\n")
    assert available_memory(str(meminfo), str(cgroup)) == 1000 * 1024
    assert available_memory(str(tmp_path / "none"), str(tmp_path / "none")) is None


def test_predictions_csv_is_the_text_of_csv_writer_for_any_file_or_class_name(tmp_path):
    """predict writes its rows in one formatting, not through csv.writer: a name with a comma, a
    quote or a line break must come out quoted as csv.writer quotes it, so that every CSV reader
    gets the names back."""
    X, y, _, _ = blobs()
    names = ["big, cats", 'dogs "small"', "fish\nand chips"]
    odd_names = ("a,b", 'say "hi"')
    paths = [f"{names[k]}/{i:03d} {odd_names[i % 2]}.png" for i, k in enumerate(y)]
    assert paths == sorted(paths)  # a file's rows are in path order
    features = write_features(tmp_path / "f.h5", X, paths, y, names, failed={"zz, failed.png": 'a "bad" file'})
    saved = transfer.train_svm(features, C=1.0)
    written = transfer.write_predictions(tmp_path / "p.csv", saved, features)
    scores = saved.svm.decision_function(load_features(features).X)
    expected = io.StringIO()
    writer = csv.writer(expected)
    writer.writerow(["path", "predicted", *(f"score:{name}" for name in names), "error"])
    writer.writerows([path, names[k], *("%.6g" % s for s in row), ""] for path, k, row in zip(paths, scores.argmax(axis=1), scores))
    writer.writerow(["zz, failed.png", "", "", "", "", 'a "bad" file'])
    assert (tmp_path / "p.csv").read_bytes().decode("utf-8") == expected.getvalue()
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="", encoding="utf-8")))
    assert [row["path"] for row in rows] == [*paths, "zz, failed.png"] and written.rows == len(paths)
    assert {row["predicted"] for row in rows[:-1]} <= set(names)


def test_the_python_writers_never_write_over_their_inputs_or_another_kind_of_file(tmp_path):
    """As the commands refuse them (--overwrite or not): train_svm("f.h5", "f.h5") replaced the
    descriptors with the model, write_scores a model with scores, index.save a descriptor file."""
    X, y, paths, names = blobs()
    features = write_features(tmp_path / "f.h5", X, paths, y, names)
    model = tmp_path / "m.h5"
    saved = transfer.train_svm(features, model, C=1.0)
    held = features.read_bytes(), model.read_bytes()
    for write in (lambda: transfer.train_svm(features, features, C=1.0),
                  lambda: transfer.write_scores(model, model, features),
                  lambda: transfer.write_scores(features, model, features),
                  lambda: transfer.write_predictions(features, saved, features),
                  lambda: vggfeat.whitening.fit_whitening(features, features)):
        with pytest.raises(VggfeatError, match="is an input of this command too"):
            write()
    for write in (lambda: vggfeat.index.index_features(features).save(features),
                  lambda: vggfeat.whitening.PCAWhitening().fit(X).save(model)):
        with pytest.raises(VggfeatError, match="already exists: it is a"):
            write()
    assert (features.read_bytes(), model.read_bytes()) == held
    transfer.train_svm(features, model, C=2.0)  # a model replaced by a model, as --overwrite does
    assert load_model(model).svm.C_ == 2.0


def test_the_estimator_train_svm_returns_copies_what_it_is_given_and_shows_briefly(tmp_path):
    """It trained on an array read for it alone, normalised in place: a clone of it then normalised
    the caller's own array. Features, scores and indexes show their sizes, not every path."""
    X, y, paths, names = blobs()
    features = write_features(tmp_path / "f.h5", X, paths, y, names)
    saved = transfer.train_svm(features, None, C=1.0)
    mine = X.copy()
    clone(saved.svm).fit(mine, y)
    np.testing.assert_array_equal(mine, X)
    assert repr(load_features(features)) == f"Features(rows=30, dim=8, classes=3, sources=['{features}'])"
    assert repr(transfer.predict(saved, features)) == "Scored(rows=30, classes=3, multilabel=False, failed=0)"
    assert repr(vggfeat.index.index_features(features, backend="numpy")) == (
        "VectorIndex(kind='flat', rows=30, dim=8, classes=3, backend='numpy')")


def test_a_features_file_shows_its_path_size_and_model_open_or_closed(tmp_path):
    """Its repr was Python's default, <vggfeat.features.FeatureFile object at 0x...>."""
    X, y, paths, names = blobs()
    features = write_features(tmp_path / "f.h5", X, paths, y, names)
    with FeatureFile(features) as f:
        assert repr(f) == f"FeatureFile({str(features)!r}, rows=30, dim=8, model='vgg16')"
    assert repr(f) == f"FeatureFile({str(features)!r}, rows=30, dim=8, model='vgg16', closed=True)"


def test_targets_that_are_not_classes_and_configs_that_are_not_a_list_are_refused(tmp_path):
    """A NaN label was a class of its own (numbers are classes: 0.5, 2.5); save_model wrote a file
    that load_model refused."""
    X, y, _, _ = blobs()
    for value in (np.nan, np.inf):
        with pytest.raises(ValueError, match="single-label targets hold NaN or infinite values, which are no class"):
            LinearSVM(C=1.0).fit(X, np.where(np.arange(len(y)) == 0, value, y))
    with pytest.raises(ValueError, match="classes= names the columns of multi-label targets"):
        LinearSVM(C=1.0).fit(X, y, classes=["a"])
    svm = LinearSVM(C=1.0).fit(X, y)
    for configs in (None, {"model": "vgg16"}, ["vgg16"]):
        with pytest.raises(ValueError, match="extraction_configs must be a list of extraction configurations"):
            save_model(tmp_path / "m.h5", svm, configs)
    assert not (tmp_path / "m.h5").exists()


def test_one_path_or_class_given_where_a_list_belongs_is_refused_saying_so(tmp_path):
    """A string is a list of characters: "14 path(s) are not in f.h5 (e.g. c)", "cannot exclude
    unknown class 'c'"."""
    X, y, paths, names = blobs()
    features = write_features(tmp_path / "f.h5", X, paths, y, names)
    with pytest.raises(TypeError, match=r"expected a sequence of the rows' paths, got one: 'class0/000.png'; give \["):
        load_features(features, paths=paths[0])
    with pytest.raises(TypeError, match="expected a sequence of class names, got one: 'class0'"):
        transfer.train_svm(features, None, exclude="class0", C=1.0)
