"""The linear SVMs' primal problem solved by L-BFGS in torch, every class at once (``--solver lbfgs``).

liblinear (:mod:`vggfeat.svm`'s default) trains one class at a time on its own float64 copy of the
descriptors, on the CPU. Here the one-vs-rest SVMs of all K classes are one problem whose parts
are independent, solved together by torch's L-BFGS on the descriptors as they are (float32, as
train-svm reads them, float16, as it reads a float16 file, or float64: no copy on the CPU; one
copy on a GPU, float32 or float16): each step is two matrix products of [N, D] by [D, K], in
float32 at least, which a GPU does in milliseconds for a million rows.
They go through the rows a block at a time (:class:`Problem`), so that the solver holds the
targets as bool and a block's values of each class, not arrays of N x K values: for ImageNet's
1.28 million rows of 1,000 classes, 5 GiB each in float32.

The problem is liblinear's L2-regularised L2-loss SVM (LinearSVC's ``squared_hinge``), the bias
being a weight on a constant feature 1 and regularised with the others, as liblinear does
(``intercept_scaling=1``); for class k, with y = +1 for its rows and -1 for the others::

    0.5 * (|w_k|^2 + b_k^2) + C * sum_i s_ik * max(0, 1 - y_ik * (w_k . x_i + b_k))^2

``s_ik`` is row i's weight (0 for a row held out in cross-validation, or ignored for class k)
times the class weight. The hinge loss, not differentiable, is liblinear's alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .errors import VggfeatError
from .svm import LBFGS_BLOCK_VALUES, LBFGS_GPU_BLOCK_VALUES

# The share of liblinear's tol at which L-BFGS stops (see fit_primal).
LBFGS_TOL_SHARE = 0.1
# Iterations between checks of convergence; and the objective's decrease over them, in units of
# the float type's precision relative to it, under which L-BFGS has stalled.
CHECK_EVERY = 25
STALLED_EPS = 16


class Problem:
    """The squared-hinge SVMs of every class (see the module) on ``X`` [N, D], computed a block of
    rows at a time on ``device``: the objective, its gradient, and the balanced class weights.

    Row i's weight for class k is ``row_weights[i]`` (None: 1; 0 for a row held out in
    cross-validation), 0 where ``ignore[i, k]``, times class k's weight of positives or negatives
    (``balanced``: as LinearSVC's ``class_weight="balanced"``, counting rows by their weights).
    Nothing of size [N, K] is held but ``targets`` and ``ignore`` themselves, as bool.
    """

    def __init__(self, X: np.ndarray, targets: np.ndarray, C: float, row_weights: np.ndarray | None,
                 ignore: np.ndarray | None, balanced: bool, device: torch.device) -> None:
        # On the CPU, X's own type (no copy); GPUs compute float32 fastest, and descriptors hold no more.
        # Float16 descriptors (a float16 file) stay so, each block computed in float32.
        self.dtype = torch.float64 if device.type == "cpu" and X.dtype == np.float64 else torch.float32
        held = torch.float16 if X.dtype == np.float16 else self.dtype
        self.rows = torch.as_tensor(X).to(device=device, dtype=held)
        self.targets = torch.as_tensor(targets).to(device=device, dtype=torch.bool)
        self.kept = None if ignore is None else ~torch.as_tensor(ignore).to(device=device, dtype=torch.bool)
        self.row_weights = None if row_weights is None else torch.as_tensor(row_weights).to(device=device,
                                                                                             dtype=self.dtype)
        # Rows per block: those of 2^20 values of each class (2^24 on a GPU); and of X's, where they
        # are converted (float16), a copy of each block.
        block_values = LBFGS_BLOCK_VALUES if device.type == "cpu" else LBFGS_GPU_BLOCK_VALUES
        per_row = targets.shape[1] if held == self.dtype else max(targets.shape[1], X.shape[1])
        self.C, self.block = C, max(1, block_values // per_row)
        ones = torch.ones(targets.shape[1], device=device, dtype=self.dtype)
        self.positive_weight, self.negative_weight = ones, ones
        if balanced:
            self.positive_weight, self.negative_weight = self._balanced()

    def _blocks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(rows, signs, weights) of each block of rows: X's, +1/-1 per class, weights per class."""
        for start in range(0, len(self.rows), self.block):
            stop = start + self.block
            positive = self.targets[start:stop]
            signs = positive.to(self.dtype).mul_(2).sub_(1)
            weights = torch.where(positive, self.positive_weight, self.negative_weight)
            if self.row_weights is not None:
                weights.mul_(self.row_weights[start:stop, None])
            if self.kept is not None:
                weights.mul_(self.kept[start:stop])
            yield self.rows[start:stop].to(self.dtype), signs, weights

    def _balanced(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each class's weight of its positives and of its negatives, so that both weigh as much
        in all: half the rows' weight each (0 for a side without weight, which nothing uses)."""
        positives = torch.zeros_like(self.positive_weight)
        total = torch.zeros_like(self.positive_weight)
        for _, signs, weights in self._blocks():  # the weights of rows and ignored rows, classes' still 1
            total += weights.sum(0)
            positives += (weights * (signs > 0)).sum(0)
        negatives = total - positives
        return (torch.where(positives > 0, total / (2 * positives), 0),
                torch.where(negatives > 0, total / (2 * negatives), 0))

    def value_and_gradient(self, coef: torch.Tensor, intercept: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The objective at (coef [K, D], intercept [K]) and its gradient by each: the loss's by a
        row's margin is -2 C w (1 - y m) y where the row violates its margin, 0 elsewhere."""
        value = 0.5 * (coef.square().sum() + intercept.square().sum())
        coef_gradient, intercept_gradient = coef.clone(), intercept.clone()
        for rows, signs, weights in self._blocks():
            # In place where it can be: each [block, K] array is one more in the process's peak.
            violations = torch.addmm(intercept, rows, coef.T).mul_(signs).neg_().add_(1).relu_()
            weighed = weights.mul_(violations)
            value = value + self.C * torch.dot(weighed.view(-1), violations.view(-1))
            by_margin = weighed.mul_(signs).mul_(-2 * self.C)
            coef_gradient.addmm_(by_margin.T, rows)
            intercept_gradient += by_margin.sum(0)
        return value, coef_gradient, intercept_gradient


def fit_primal(X: np.ndarray, targets: np.ndarray, C: float, row_weights: np.ndarray | None = None,
               ignore: np.ndarray | None = None, balanced: bool = False, *, max_iter: int, tol: float,
               device: torch.device, start: tuple[np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(coef [K, D], intercept [K], converged) of the squared-hinge SVMs of ``targets`` [N, K]
    bool on ``X`` [N, D], each row weighing ``row_weights`` [N], not at all for class k where
    ``ignore`` [N, K], with ``balanced`` class weights (:class:`Problem`), from zero or from
    ``start`` (coef, intercept): cross-validation starts each C where the last ended.

    Stops where the gradient's largest entry is a tenth of ``tol`` times its largest at zero, or
    the objective stalls at the float type's precision (float32's, on a GPU), or after about
    ``max_iter`` iterations (a multiple of CHECK_EVERY): then ``converged`` is False.
    (liblinear's primal solver stops on the gradient's norm relative to zero's; L-BFGS at ``tol``
    itself stopped 0.9% above the objective liblinear reached, at a tenth of it 0.005% above:
    RESULTS.md, bench_svm.py.)

    On a GPU, the descriptors are uploaded whole: where they (or the solver's state) do not fit in
    its memory, :class:`VggfeatError` says so and suggests the CPU, rather than torch's traceback.
    """
    try:
        return _fit_primal(X, targets, C, row_weights, ignore, balanced, max_iter=max_iter, tol=tol, device=device,
                           start=start)
    except torch.cuda.OutOfMemoryError:
        pass
    # (outside the except block: the failed attempt's tensors are freed first)
    torch.cuda.empty_cache()
    raise VggfeatError(too_large_for_gpu(X, targets.shape[1], device)) from None


def too_large_for_gpu(X: np.ndarray, classes: int, device: torch.device) -> str:
    """Why the solver stopped: the descriptors (held whole on the GPU, as float32 or float16) and
    the solver's state do not fit in its memory."""
    held = 2 if X.dtype == np.float16 else 4
    return (f"the SVMs of {classes:,} classes on {X.shape[0]:,} descriptors of {X.shape[1]:,} dimensions "
            f"({X.shape[0] * X.shape[1] * held / 2**30:.1f} GiB on the GPU, and the solver's state) do not fit in "
            f"{device}'s memory; train them on the CPU: device='cpu' (--device cpu)")


def _fit_primal(X: np.ndarray, targets: np.ndarray, C: float, row_weights: np.ndarray | None,
                ignore: np.ndarray | None, balanced: bool, *, max_iter: int, tol: float, device: torch.device,
                start: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, bool]:
    problem = Problem(X, targets, C, row_weights, ignore, balanced, device)
    dtype = problem.dtype
    coef = torch.zeros((targets.shape[1], X.shape[1]), device=device, dtype=dtype)
    intercept = torch.zeros(targets.shape[1], device=device, dtype=dtype)

    def value_and_gradient() -> tuple[float, float]:
        """The objective and its gradient's largest entry."""
        value, *gradients = problem.value_and_gradient(coef, intercept)
        return float(value), max(float(gradient.abs().max()) for gradient in gradients)

    def closure() -> torch.Tensor:
        value, coef.grad, intercept.grad = problem.value_and_gradient(coef, intercept)
        return value

    previous, gradient = value_and_gradient()  # at zero, whatever the start: the stopping rule's scale
    tolerance = LBFGS_TOL_SHARE * tol * gradient
    if start is not None:
        coef.copy_(torch.as_tensor(start[0]))
        intercept.copy_(torch.as_tensor(start[1]))
        previous, gradient = value_and_gradient()
    optimizer = torch.optim.LBFGS([coef, intercept], lr=1, max_iter=CHECK_EVERY, tolerance_grad=tolerance,
                                  tolerance_change=0, history_size=20, line_search_fn="strong_wolfe")
    converged, iterations = gradient <= tolerance, 0  # (a start that is the solution already)
    while not converged and iterations < max_iter:
        optimizer.step(closure)  # CHECK_EVERY iterations more, its history kept from the last
        iterations = optimizer.state[coef]["n_iter"]
        value, gradient = value_and_gradient()
        # Converged: the gradient small enough, or the objective no longer going down by more than
        # the float type tells apart (float32's 1e-7 of it: the sums of N x K terms stop there).
        converged = gradient <= tolerance or previous - value <= STALLED_EPS * torch.finfo(dtype).eps * abs(value)
        previous = value
    return coef.double().cpu().numpy(), intercept.double().cpu().numpy(), converged


def primal_objective(X: np.ndarray, targets: np.ndarray, C: float, weights: np.ndarray, coef: np.ndarray,
                     intercept: np.ndarray) -> np.ndarray:
    """Each class's objective (see the module) at ``coef``, ``intercept``: what both solvers minimise."""
    margins = X @ coef.T + intercept
    violations = np.maximum(0.0, 1 - np.where(targets, 1.0, -1.0) * margins)
    return 0.5 * ((coef**2).sum(1) + intercept**2) + C * (weights * violations**2).sum(0)
