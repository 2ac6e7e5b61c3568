"""The linear SVMs' primal problem solved by L-BFGS in torch, every class at once (``--solver lbfgs``).

liblinear (:mod:`vggfeat.svm`'s default) trains one class at a time on its own float64 copy of the
descriptors, on the CPU. Here the one-vs-rest SVMs of all K classes are one problem whose parts
are independent, solved together by torch's L-BFGS on the descriptors as they are (float32, as
train-svm reads them, or float64: no copy on the CPU; one float32 copy on a GPU): each step is
two matrix products of [N, D] by [D, K], which a GPU does in milliseconds for a million rows.

The problem is liblinear's L2-regularised L2-loss SVM (LinearSVC's ``squared_hinge``), the bias
being a weight on a constant feature 1 and regularised with the others, as liblinear does
(``intercept_scaling=1``); for class k, with y = +1 for its rows and -1 for the others::

    0.5 * (|w_k|^2 + b_k^2) + C * sum_i s_ik * max(0, 1 - y_ik * (w_k . x_i + b_k))^2

``s_ik`` is row i's weight (0 for a row held out in cross-validation, or ignored for class k)
times the class weight. The hinge loss, not differentiable, is liblinear's alone.
"""

from __future__ import annotations

import numpy as np
import torch

# The share of liblinear's tol at which L-BFGS stops (see fit_primal).
LBFGS_TOL_SHARE = 0.1
# Iterations between checks of convergence; and the objective's decrease over them, in units of
# the float type's precision relative to it, under which L-BFGS has stalled.
CHECK_EVERY = 25
STALLED_EPS = 16


def fit_primal(X: np.ndarray, targets: np.ndarray, C: float, weights: np.ndarray, *, max_iter: int, tol: float,
               device: torch.device, start: tuple[np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(coef [K, D], intercept [K], converged) of the squared-hinge SVMs of ``targets`` [N, K]
    bool on ``X`` [N, D], with row-and-class weights ``weights`` [N, K] (see the module), from
    zero or from ``start`` (coef, intercept): cross-validation starts each C where the last ended.

    Stops where the gradient's largest entry is a tenth of ``tol`` times its largest at zero, or
    the objective stalls at the float type's precision (float32's, on a GPU), or after about
    ``max_iter`` iterations (a multiple of CHECK_EVERY): then ``converged`` is False.
    (liblinear's primal solver stops on the gradient's norm relative to zero's; L-BFGS at ``tol``
    itself stopped 0.9% above the objective liblinear reached, at a tenth of it 0.005% above:
    RESULTS.md, bench_svm.py.)
    """
    # On the CPU, X's own type (no copy); GPUs compute float32 fastest, and descriptors hold no more
    dtype = torch.float64 if device.type == "cpu" and X.dtype == np.float64 else torch.float32
    rows = torch.as_tensor(X).to(device=device, dtype=dtype)
    signs = torch.as_tensor(np.where(targets, 1.0, -1.0)).to(device=device, dtype=dtype)
    weighed = torch.as_tensor(weights).to(device=device, dtype=dtype)
    coef = torch.zeros((targets.shape[1], X.shape[1]), device=device, dtype=dtype, requires_grad=True)
    intercept = torch.zeros(targets.shape[1], device=device, dtype=dtype, requires_grad=True)

    def objective() -> torch.Tensor:
        margins = torch.addmm(intercept, rows, coef.T)  # [N, K]
        violations = torch.relu(1 - signs * margins)
        return 0.5 * (coef.square().sum() + intercept.square().sum()) + C * (weighed * violations.square()).sum()

    def value_and_gradient() -> tuple[float, float]:
        """The objective and its gradient's largest entry."""
        with torch.enable_grad():
            value = objective()
            grads = torch.autograd.grad(value, (coef, intercept))
        return float(value.detach()), max(float(grad.abs().max()) for grad in grads)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    previous, gradient = value_and_gradient()  # at zero, whatever the start: the stopping rule's scale
    tolerance = LBFGS_TOL_SHARE * tol * gradient
    if start is not None:
        with torch.no_grad():
            coef.copy_(torch.as_tensor(start[0]))
            intercept.copy_(torch.as_tensor(start[1]))
        previous, gradient = value_and_gradient()
    optimizer = torch.optim.LBFGS([coef, intercept], lr=1, max_iter=CHECK_EVERY, tolerance_grad=tolerance,
                                  tolerance_change=0, history_size=20, line_search_fn="strong_wolfe")
    converged, iterations = gradient <= tolerance, 0  # (a start that is the solution already)
    while not converged and iterations < max_iter:
        with torch.enable_grad():
            optimizer.step(closure)  # CHECK_EVERY iterations more, its history kept from the last
        iterations = optimizer.state[coef]["n_iter"]
        value, gradient = value_and_gradient()
        # Converged: the gradient small enough, or the objective no longer going down by more than
        # the float type tells apart (float32's 1e-7 of it: the sums of N x K terms stop there).
        converged = gradient <= tolerance or previous - value <= STALLED_EPS * torch.finfo(dtype).eps * abs(value)
        previous = value
    return coef.detach().double().cpu().numpy(), intercept.detach().double().cpu().numpy(), converged


def primal_objective(X: np.ndarray, targets: np.ndarray, C: float, weights: np.ndarray, coef: np.ndarray,
                     intercept: np.ndarray) -> np.ndarray:
    """Each class's objective (see the module) at ``coef``, ``intercept``: what both solvers minimise."""
    margins = X @ coef.T + intercept
    violations = np.maximum(0.0, 1 - np.where(targets, 1.0, -1.0) * margins)
    return 0.5 * ((coef**2).sum(1) + intercept**2) + C * (weights * violations**2).sum(0)
