"""``train-svm --solver lbfgs``: liblinear's SVMs, every class at once by L-BFGS in torch
(:mod:`vggfeat.primal`). Its solutions are checked against liblinear's on the same problems: the
objective that both minimise, per class, and the predictions."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning

from runhelpers import error_line, run_main
from svmhelpers import write_features
from vggfeat import primal, transfer
from vggfeat.errors import VggfeatError
from vggfeat.primal import primal_objective
from vggfeat.svm import LinearSVM, training_memory

TIGHT = {"tol": 1e-7, "max_iter": 20000}  # both solvers to the optimum, so that they can be compared


@pytest.fixture(scope="module")
def overlapping():
    """600 non-negative descriptors of 4 classes that overlap (no SVM separates them), normalised."""
    X, y = make_classification(600, 48, n_informative=12, n_classes=4, n_clusters_per_class=1, class_sep=0.8,
                               random_state=0)
    X = np.abs(X)
    return X / np.linalg.norm(X, axis=1, keepdims=True), y


def balanced(targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """LinearSVC's "balanced" weights of each row and class: the rows' weights, positives and
    negatives of a class weighing as much in total."""
    positives, total = (weights * targets).sum(0), weights.sum(0)
    return weights * np.where(targets, total / (2 * positives), total / (2 * (total - positives)))


@pytest.mark.parametrize("class_weight", [None, "balanced"])
@pytest.mark.parametrize("C", [0.1, 10.0])
def test_lbfgs_finds_the_svms_liblinear_finds(overlapping, class_weight, C):
    """The same problem, the same optimum: each class's objective equal to liblinear's to 1e-6,
    with cross-validation's held-out rows (weight 0) and balanced class weights; the same
    predictions."""
    X, y = overlapping
    targets = np.eye(4, dtype=bool)[y]
    held_out = np.arange(len(y)) % 3 == 0
    for rows in (None, (~held_out).astype(float)):
        fitted = {solver: LinearSVM(C=C, class_weight=class_weight, solver=solver, device="cpu", **TIGHT)
                  ._fit_all(X, targets, C, rows) for solver in ("liblinear", "lbfgs")}
        weights = np.ones(targets.shape) if rows is None else np.repeat(rows[:, None], 4, axis=1)
        if class_weight:
            weights = balanced(targets, weights)
        objective = {solver: primal_objective(X, targets, C, weights, *fit) for solver, fit in fitted.items()}
        np.testing.assert_allclose(objective["lbfgs"], objective["liblinear"], rtol=1e-6)
        scores = {solver: X @ coef.T + intercept for solver, (coef, intercept) in fitted.items()}
        assert (scores["lbfgs"].argmax(1) == scores["liblinear"].argmax(1)).mean() >= 0.99


def test_lbfgs_multilabel_leaves_ignored_rows_out_of_their_class_and_chooses_c_as_liblinear(overlapping):
    """Multi-label with VOC's difficult images (a row ignored for one class only) and C chosen by
    cross-validation: the fit of every label and the scores of every C as liblinear's."""
    X, y = overlapping
    Y = np.stack([y == 0, y >= 2, y == 3], axis=1)
    ignore = np.zeros(Y.shape, dtype=bool)
    ignore[::7, 1] = True
    fits = {solver: LinearSVM(multilabel=True, solver=solver, device="cpu", C_grid=(0.1, 10.0), **TIGHT)
            .fit(X, Y, ignore=ignore) for solver in ("liblinear", "lbfgs")}
    assert fits["lbfgs"].C_ == fits["liblinear"].C_
    for C, score in fits["liblinear"].cv_scores_.items():
        assert fits["lbfgs"].cv_scores_[C] == pytest.approx(score, abs=2e-3)
    weights = np.where(ignore, 0.0, 1.0)
    objective = {solver: primal_objective(X, Y, svm.C_, weights, svm.coef_, svm.intercept_) for solver, svm in fits.items()}
    np.testing.assert_allclose(objective["lbfgs"], objective["liblinear"], rtol=1e-6)


def test_lbfgs_in_float32_reaches_float64s_objective(overlapping, monkeypatch):
    """train-svm reads float32 for lbfgs (half the memory; a GPU computes in float32 anyway) and
    the fit keeps it: each class's objective as float64's to 1e-4."""
    X, y = overlapping
    targets = np.eye(4, dtype=bool)[y]
    fits = {dtype: LinearSVM(C=1.0, solver="lbfgs", device="cpu").fit(X.astype(dtype), y)
            for dtype in (np.float32, np.float64)}
    objective = {dtype: primal_objective(X, targets, 1.0, np.ones(targets.shape), svm.coef_, svm.intercept_)
                 for dtype, svm in fits.items()}
    np.testing.assert_allclose(objective[np.float32], objective[np.float64], rtol=1e-4)
    prepared, prepare = [], LinearSVM._prepare

    def recorded(self, X, **options):
        prepared.append(prepare(self, X, **options).dtype)
        return prepare(self, X, **options)

    monkeypatch.setattr(LinearSVM, "_prepare", recorded)
    LinearSVM(C=1.0, solver="lbfgs", device="cpu").fit(X.astype(np.float32), y)
    LinearSVM(C=1.0).fit(X.astype(np.float32), y)
    assert prepared == [np.float32, np.float64]


def test_lbfgs_trains_a_float16_file_as_float16(overlapping, tmp_path, monkeypatch):
    """Descriptors stored as float16 (``extract --dtype float16``) are held so, half float32's
    memory, each block of rows computed in float32: the SVMs of the same values in float32 to
    1e-3 of each class's objective, the same predictions. Not summed in float16 as they are
    normalised: there a descriptor's sum of squares overflows at 65,504."""
    X, y = overlapping
    X16 = (X * 300).astype(np.float16)  # fc7-like magnitudes: a sum of squares in float16 would be inf
    assert not np.isfinite(np.einsum("ij,ij->i", X16, X16)).all()
    prepared, prepare = [], LinearSVM._prepare

    def recorded(self, X, **options):
        prepared.append(X.dtype)
        held = prepare(self, X, **options)
        prepared.append(held.dtype)
        return held

    monkeypatch.setattr(LinearSVM, "_prepare", recorded)
    names = ["a", "b", "c", "d"]
    features = write_features(tmp_path / "f.h5", X16, [f"{names[k]}/{i:03d}.png" for i, k in enumerate(y)], y, names)
    with h5py.File(features, "r+") as f:
        del f["features"]
        f["features"] = X16
    saved = transfer.train_svm(features, C=1.0, solver="lbfgs", device="cpu")
    assert prepared == [np.float16, np.float16]
    reference = LinearSVM(C=1.0, solver="lbfgs", device="cpu").fit(X16.astype(np.float32), y)
    targets = np.eye(4, dtype=bool)[y]
    unit = X16.astype(np.float64) / np.linalg.norm(X16.astype(np.float64), axis=1, keepdims=True)
    objective = {name: primal_objective(unit, targets, 1.0, np.ones(targets.shape), svm.coef_, svm.intercept_)
                 for name, svm in [("float16", saved.svm), ("float32", reference)]}
    np.testing.assert_allclose(objective["float16"], objective["float32"], rtol=1e-3)
    assert (saved.svm.decision_function(unit).argmax(1) == reference.decision_function(unit).argmax(1)).mean() >= 0.99
    assert training_memory(1000, 4096, solver="lbfgs", classes=10, itemsize=2) == (
        training_memory(1000, 4096, solver="lbfgs", classes=10) - 1000 * 4096 * 2)


def test_lbfgs_starts_from_a_nearby_solution_and_ends_at_its_own(overlapping):
    """Cross-validation starts each C's fit of a fold where the last C's ended: the same optimum
    (the problem is strictly convex), and a start at the optimum is done at once."""
    X, y = overlapping
    targets = np.eye(4, dtype=bool)[y]
    svm = LinearSVM(solver="lbfgs", device="cpu", **TIGHT)
    weights = np.ones(targets.shape)
    fresh = svm._fit_all(X, targets, 10.0, None)
    nearby = svm._fit_all(X, targets, 10.0, None, start=svm._fit_all(X, targets, 1.0, None))
    np.testing.assert_allclose(primal_objective(X, targets, 10.0, weights, *nearby),
                               primal_objective(X, targets, 10.0, weights, *fresh), rtol=1e-6)
    fits = []
    again = svm._fit_all(X, targets, 10.0, None, SimpleNamespace(add=lambda C, converged: fits.append(converged)), start=fresh)
    assert fits == [True] * 4
    np.testing.assert_array_equal(again[0], fresh[0])  # not one step taken


def test_lbfgs_that_stops_at_max_iter_is_warned_about(overlapping):
    X, y = overlapping
    with pytest.warns(ConvergenceWarning, match="lbfgs reached max_iter=2 before converging in 4 of 4 fits"):
        svm = LinearSVM(C=10.0, solver="lbfgs", device="cpu", max_iter=2).fit(X, y)
    assert svm.n_unconverged_ == 4


@pytest.mark.parametrize("params, message", [
    ({"solver": "sgd"}, "unknown solver 'sgd'; choose one of liblinear, lbfgs"),
    ({"solver": "lbfgs", "loss": "hinge"},
     r"the lbfgs solver trains the squared hinge loss .* use solver='liblinear' \(--solver liblinear\)"),
    ({"solver": "lbfgs", "device": "tpu"}, "unknown device 'tpu'"),
])
def test_solver_parameters_are_refused_clearly(overlapping, params, message):
    with pytest.raises(VggfeatError, match=message):
        LinearSVM(C=1.0, **params).fit(*overlapping)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_lbfgs_on_a_gpu_where_there_is_none_says_so(overlapping):
    with pytest.raises(VggfeatError, match=r"device cuda asked for, but CUDA is not available here; use device='cpu' "
                                           r"\(--device cpu\)"):
        LinearSVM(C=1.0, solver="lbfgs", device="cuda").fit(*overlapping)


def test_train_svm_with_lbfgs_writes_a_model_that_predict_and_info_read(overlapping, tmp_path):
    X, y = overlapping
    names = ["a", "b", "c", "d"]
    features = write_features(tmp_path / "f.h5", X, [f"{names[k]}/{i:03d}.png" for i, k in enumerate(y)], y, names)
    code, out, err = run_main(["train-svm", features, tmp_path / "m.h5", "--solver", "lbfgs", "--device", "cpu", "--C", "1",
                               "--quiet"])
    assert code == 0 and out.startswith("trained 4 classes on 600 rows"), err
    saved = transfer.load_model(tmp_path / "m.h5")
    assert (saved.svm.solver, saved.svm.device) == ("lbfgs", "cpu")
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert '"solver": "lbfgs"' in f.attrs["params"]
    liblinear = transfer.train_svm(features, C=1.0, **TIGHT)
    assert (saved.svm.predict(X) == liblinear.svm.predict(X)).mean() >= 0.99
    code, out, _ = run_main(["info", tmp_path / "m.h5"])
    assert code == 0 and "; C = 1 (fixed); solver lbfgs" in out
    assert run_main(["predict", tmp_path / "m.h5", features, tmp_path / "p.csv"])[0] == 0
    code, _, err = run_main(["train-svm", features, tmp_path / "m2.h5", "--device", "cuda", "--solver", "liblinear"])
    assert code == 2 and "--device cuda is where --solver lbfgs runs; liblinear runs on the CPU" in err
    code, _, err = run_main(["train-svm", features, tmp_path / "m2.h5", "--device", "cuda", "--loss", "hinge"])
    assert code == 2 and "--loss hinge is liblinear's, which runs on the CPU: leave out --device cuda" in err  # not "use liblinear"
    if not torch.cuda.is_available():  # --solver auto: lbfgs, which a GPU is asked for
        code, _, err = run_main(["train-svm", features, tmp_path / "m2.h5", "--device", "cuda"])
        assert code == 2 and "device cuda asked for, but CUDA is not available here" in error_line(err)
    assert run_main(["train-svm", features, tmp_path / "m2.h5", "--device", "cpu", "--C", "1"])[0] == 0  # as liblinear runs


def test_lbfgs_on_the_cpu_needs_no_copy_of_the_descriptors():
    """Its peak: the float32 descriptors, a byte per row and class for the targets and one for the
    rows ignored, the solver's arrays of each class and one block of rows' values at a time (the
    last two on the GPU where it runs there); not float64 descriptors and liblinear's 16-byte node
    per value for each class trained at once."""
    solving = 48 * 10 * 4097 * 4 + 24 * 1000 * 10 * 4
    assert training_memory(1000, 4096, solver="lbfgs", classes=10) == 1000 * 4096 * 4 + 1000 * 10 * 2 + solving
    assert training_memory(1000, 4096, solver="lbfgs", classes=10) < training_memory(1000, 4096) / 3
    assert training_memory(1000, 4096, solver="lbfgs", classes=10, on_gpu=True) == 1000 * 4096 * 4 + 1000 * 10 * 2
    # ImageNet's 1.28 million rows of 4,096-d and 1,000 classes: the descriptors and 3.3 GiB more
    # (eight values of 8 bytes per row and class, as it held them whole before: 76 GiB)
    assert training_memory(1_281_167, 4096, solver="lbfgs", classes=1000) - 1_281_167 * 4096 * 4 < 3.4 * 2**30


def test_lbfgs_goes_through_the_rows_a_block_at_a_time(overlapping, monkeypatch):
    """The objective and its gradient summed over blocks of rows (7 here, the last one short) are
    those of the whole arrays, with rows held out, rows ignored for one class and balanced class
    weights: what autograd gives for the objective of the module's formula."""
    X, y = overlapping
    targets = np.eye(4, dtype=bool)[y]
    row_weights = (np.arange(len(y)) % 3 != 0).astype(float)
    ignore = np.zeros(targets.shape, dtype=bool)
    ignore[::5, 2] = True
    coef = torch.tensor(np.random.default_rng(0).standard_normal((4, X.shape[1])), requires_grad=True)
    intercept = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64, requires_grad=True)
    weights = balanced(targets, np.where(ignore, 0.0, row_weights[:, None]))
    margins = torch.as_tensor(X) @ coef.T + intercept
    violations = torch.relu(1 - torch.as_tensor(np.where(targets, 1.0, -1.0)) * margins)
    whole = 0.5 * (coef.square().sum() + intercept.square().sum()) + 2.0 * (torch.as_tensor(weights) * violations**2).sum()
    whole.backward()
    monkeypatch.setattr(primal, "LBFGS_BLOCK_VALUES", 7 * 4)
    problem = primal.Problem(X, targets, 2.0, row_weights, ignore, balanced=True, device=torch.device("cpu"))
    assert problem.block == 7 and len(X) % 7
    value, coef_gradient, intercept_gradient = problem.value_and_gradient(coef.detach(), intercept.detach())
    assert float(value) == pytest.approx(float(whole.detach()), rel=1e-12)
    np.testing.assert_allclose(coef_gradient, coef.grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(intercept_gradient, intercept.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("class_weight", [None, "balanced"])
@pytest.mark.parametrize("held_out", ["positives", "negatives"])
def test_a_class_whose_positives_or_negatives_are_all_held_out_gets_the_svm_of_the_other_side(
        overlapping, class_weight, held_out, capfd):
    """Cross-validation of a rare label (or one of nearly every image) can hold out all its
    positives (negatives) in one fold. Both solvers then give that class the SVM of the other side
    alone (each scored below 0, above), at the same optimum, and leave the other classes' SVMs as
    they are: lbfgs gave every class NaN with balanced weights (0 x infinity), liblinear the SVM
    with its signs turned (it trains the one side it is given as its positives), and said on
    standard error "class label 1 specified in weight is not found"."""
    X, y = overlapping
    targets = np.eye(4, dtype=bool)[y]
    if held_out == "negatives":
        targets[:, 3] = y != 3  # every row but class 3's, which are held out
    row_weights = np.where(y == 3, 0.0, 1.0)
    fitted = {solver: LinearSVM(C=1.0, class_weight=class_weight, solver=solver, device="cpu", **TIGHT)
              ._fit_all(X, targets, 1.0, row_weights) for solver in ("liblinear", "lbfgs")}
    assert capfd.readouterr().err == ""  # liblinear's own warning, which no Python filter catches
    weights = np.repeat(row_weights[:, None], 4, axis=1)
    if class_weight:  # a class's positives and negatives weigh as much; one side alone, half its rows
        weights[:, :3] = balanced(targets[:, :3], weights[:, :3])
        weights[:, 3] *= 0.5
    for solver, (coef, intercept) in fitted.items():
        assert np.isfinite(coef).all() and np.isfinite(intercept).all()
        scores = X[y != 3] @ coef[3] + intercept[3]
        assert (scores < 0).all() if held_out == "positives" else (scores > 0).all(), solver
    objective = {solver: primal_objective(X, targets, 1.0, weights, *fit) for solver, fit in fitted.items()}
    np.testing.assert_allclose(objective["lbfgs"], objective["liblinear"], rtol=1e-6)


def test_lbfgs_holds_no_array_of_every_row_and_class(tmp_path):
    """Training 1,000 classes on 30,000 rows (30 million row-and-class values): the process grows
    by the targets and one block's arrays (training_memory's estimate), not by arrays of every
    row and class (a float64 one alone is 229 MiB; it held eight)."""
    script = tmp_path / "peak.py"
    script.write_text(textwrap.dedent("""
        import resource, warnings
        import numpy as np
        from vggfeat.svm import LinearSVM
        rng = np.random.default_rng(0)
        X = np.abs(rng.standard_normal((30000, 8), dtype=np.float32))
        y = np.arange(30000) % 1000
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_iter=1: not converged
            LinearSVM(C=1.0, solver="lbfgs", device="cpu", max_iter=1).fit(X[:2000], y[:2000])  # torch's start
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            LinearSVM(C=1.0, solver="lbfgs", device="cpu", max_iter=1).fit(X, y)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """))
    grown = int(subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout)
    assert grown < training_memory(30000, 8, solver="lbfgs", classes=1000) + 32 * 2**20 < 30000 * 1000 * 8


def test_descriptors_too_large_for_the_gpu_say_to_train_on_the_cpu(overlapping, monkeypatch):
    """``--solver lbfgs`` on a GPU holds the descriptors whole there: where they (or the solver's
    state) do not fit, the run stops saying so and what to do, not in torch's traceback. Simulated
    without a GPU: the upload runs out of memory."""
    X, y = overlapping
    targets = np.eye(4, dtype=bool)[y]

    class Uploading(primal.Problem):
        def __init__(self, X, *args):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 112.00 KiB (simulated)")

    monkeypatch.setattr(primal, "Problem", Uploading)
    with pytest.raises(VggfeatError, match=r"^the SVMs of 4 classes on 600 descriptors of 48 dimensions \(0\.0 GiB "
                                           r"on the GPU, and the solver's state\) do not fit in cuda:1's memory; train "
                                           r"them on the CPU: device='cpu' \(--device cpu\)$"):
        primal.fit_primal(X, targets, 1.0, max_iter=100, tol=1e-4, device=torch.device("cuda", 1))
    # ImageNet's fc7 descriptors, float64 (held as float32 on a GPU) and float16 (held so): their shape alone.
    for dtype, size in ((np.float64, "19.5"), (np.float16, "9.8")):
        imagenet = np.broadcast_to(np.zeros((), dtype), (1_281_167, 4096))
        assert f"({size} GiB on the GPU," in primal.too_large_for_gpu(imagenet, 1000, torch.device("cuda"))
