"""Numerical safeguards of posteriors: representable systems, finite answers, and error bounds.

Rounding enters when ``Q_UU`` and ``b`` are formed (sds spanning many orders
of magnitude), when they are factored, and in the log evidence; see
docs/accuracy.md for what was measured against exact arithmetic.  The
functions here refuse systems that double precision cannot represent and
estimate the condition of the scaled posterior precision, which bounds the
relative error of every variance.
"""

from __future__ import annotations

from typing import Callable

import numba
import numpy as np
import scipy.linalg
import scipy.sparse as sp

from .arrays import all_finite
from .compiler import CompiledModel
from .entries import GramEntries
from .errors import AccuracyWarning, ModelError, ModelSpecError, NotIdentifiedError, ParamError, warn
from .pattern import Conditioning, LinearSystem

# Relative variance error bound above which var() warns, and above which it refuses.
VARIANCE_TOLERANCE = 1e-6
VARIANCE_HOPELESS = 0.1

# Variances d = sd^2 must be normal doubles whose reciprocals (the precision
# weights) are finite too: sds between about 1e-154 and 1e154.
SD_RANGE = "1e-154 and 1e154"


def _weights_finite(d: np.ndarray) -> bool:
    """Whether every variance is positive and finite with a finite inverse (the smallest has the largest)."""
    if d.size == 0:
        return True
    with np.errstate(divide="ignore", over="ignore"):
        lo = d.min()
        return bool(np.isfinite(d.max()) and lo > 0 and np.isfinite(1.0 / lo))


def check_system(cm: CompiledModel, cond: Conditioning, system: LinearSystem) -> None:
    """Refuse a conditioned system that double precision cannot represent (naming the variable)."""
    if _weights_finite(system.d) and all_finite(system.r) and all_finite(system.Q.data) and all_finite(system.b):
        return  # the usual case, in four pairs of reductions; else find what is wrong, in order
    d = system.d
    with np.errstate(divide="ignore", over="ignore"):
        bad = np.flatnonzero(~(np.isfinite(d) & (d > 0) & np.isfinite(1.0 / d)))
    if bad.size:
        k = int(cond.R[bad[0]])
        sd = cm.sd_base[k] if cm.sd_param[k] < 0 else None
        what = f"sd {sd:.3g}" if sd is not None else "sd (base times parameter value)"
        error = ModelSpecError if sd is not None else ParamError
        raise error(
            f"`{cm.labels(np.array([k]))[0]}` has {what}, whose variance is {d[bad[0]]:.3g} in double precision"
            f"{'' if bad.size == 1 else f' ({bad.size} variables in all)'}. gdag needs sds between {SD_RANGE}: "
            "rescale the variable's units, or give sd=0 to make it deterministic."
        )
    bad = np.flatnonzero(~np.isfinite(system.r))
    if bad.size:
        raise ModelError(
            f"The mean or data of `{cm.labels(cond.R[bad[:1]])[0]}` overflow double precision; rescale the model's units."
        )
    if not (np.all(np.isfinite(system.Q.data)) and np.all(np.isfinite(system.b))):
        raise ModelError(
            f"The posterior precision of `{cm.name}` overflows double precision: coefficients divided by sds "
            "are too large. Rescale the model's units."
        )


def inverse_one_norm(apply, n: int, itmax: int = 5) -> tuple[float, int]:
    """Estimate ``||B||_1`` of a symmetric ``B`` given ``apply(X) = B @ X``; returns ``(estimate, column)``.

    Hager's power method on three starting vectors at once (all ones, and two
    fixed pseudo-random sign vectors, since the all-ones start alone misses
    matrices like ``[[1, -1], [-1, 1]]``), plus Higham's alternating vector.
    A lower bound that is, in practice, within a small factor of the norm;
    deterministic (its own seeded generator, not numpy's global one).
    """
    rng = np.random.default_rng(20240611)
    X = np.ones((n, 3), order="F")  # column-major: solves take one column at a time
    X[:, 1:] = rng.choice([-1.0, 1.0], size=(n, 2))
    X /= n
    best, best_col = 0.0, 0
    for _ in range(itmax):
        Y = apply(X)
        norms = np.abs(Y).sum(axis=0)
        k = int(np.argmax(norms))
        if norms[k] > best:
            best, best_col = float(norms[k]), int(np.argmax(np.abs(Y[:, k])))
        Z = apply(np.where(Y >= 0, 1.0, -1.0))
        rows = np.argmax(np.abs(Z), axis=0)
        peak = np.abs(Z[rows, np.arange(Z.shape[1])])
        moving = peak > np.einsum("ij,ij->j", Z, X)
        if not moving.any():
            break
        X = np.zeros_like(X)
        X[rows, np.arange(X.shape[1])] = 1.0
    alternating = (-1.0) ** np.arange(n) * (1.0 + np.arange(n) / max(n - 1, 1))
    y = apply(alternating[:, None])[:, 0]
    alt = 2.0 * float(np.abs(y).sum()) / (3.0 * n)
    if alt > best:
        best, best_col = alt, int(np.argmax(np.abs(y)))
    return best, best_col


def require_finite(values: np.ndarray, what: str, cm: CompiledModel) -> None:
    if all_finite(values):
        return
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ModelError(
            f"The {what} of `{cm.labels(bad[:1])[0]}` overflows double precision"
            f"{'' if bad.size == 1 else f' ({bad.size} entries in all)'}; rescale the model's units or data."
        )


# Up to this many unobserved variables, ||S^{-1}||_1 is computed exactly (n solves), not estimated.
EXACT_NORM = 256


def scaled_condition(Q: sp.csc_matrix, solve: Callable[[np.ndarray], np.ndarray]) -> tuple[float, int]:
    """``(kappa_1(S), j)`` for ``S = diag(Q)^{-1/2} Q diag(Q)^{-1/2}``, and the column ``j`` attaining it.

    ``Q`` is the lower triangle of a symmetric positive definite matrix and
    ``solve(X) = Q^{-1} X``.  ``||S||_1`` is exact; so is ``||S^{-1}||_1`` up to
    :data:`EXACT_NORM` variables (from every column); beyond, it comes from
    :func:`inverse_one_norm`, a lower estimate (usually within a small factor,
    but 31x low on one 7-variable system of the sweeps).  ``4 eps kappa_1(S)`` bounds the relative error of the variances
    computed from a factor of ``Q`` (docs/accuracy.md).
    """
    n = Q.shape[0]
    root = np.sqrt(lower_diagonal(Q))
    norm_S = scaled_norm(Q, root)
    if n == 1:
        return 1.0, 0
    with np.errstate(over="ignore", invalid="ignore"):
        # S^{-1} = diag(root) Q^{-1} diag(root)
        apply = lambda X: root[:, None] * solve(root[:, None] * X)  # noqa: E731
        if n <= EXACT_NORM:  # exactly, from every column (n solves): Hager's estimate was 31x low at n = 7
            columns = np.abs(apply(np.eye(n)))
            k = int(np.argmax(columns.sum(axis=0)))
            estimate, column = float(columns[:, k].sum()), int(np.argmax(columns[:, k]))
        else:
            estimate, column = inverse_one_norm(apply, n)
    return float(norm_S * estimate), column


def lower_diagonal(Q: sp.csc_matrix) -> np.ndarray:
    """``diag(Q)`` of a lower-triangular CSC ``Q``: one pass when every column starts with its diagonal
    (gdag's assemblies write it first), else scipy's search of every column."""
    out = np.empty(Q.shape[0])
    return out if _diagonal_first(Q.indptr, Q.indices, Q.data, out) else Q.diagonal()


@numba.njit(cache=True)
def _diagonal_first(indptr, indices, data, out):
    for j in range(out.shape[0]):
        p = indptr[j]
        if p >= indptr[j + 1] or indices[p] != j:
            return False
        out[j] = data[p]
    return True


def scaled_norm(Q: sp.csc_matrix, root: np.ndarray) -> float:
    """``||S||_1`` exactly, for ``S = diag(Q)^{-1/2} Q diag(Q)^{-1/2}`` (``Q`` by its lower triangle, ``root = sqrt(diag(Q))``)."""
    sums = np.zeros(Q.shape[0])
    _scaled_column_sums(Q.indptr, Q.indices, Q.data, root, sums, np.zeros(0))
    return float(np.max(sums))


@numba.njit(cache=True)
def _scaled_column_sums(indptr, indices, data, root, sums, variances):
    """Column sums of ``|S|`` from its lower triangle: an entry off the diagonal counts in its row too.

    Given ``variances``, also returns the max and sum of ``t_j = sqrt(root_j^2 variances_j)`` (a NaN stays
    in the sum): the rest of :func:`condition_upper_bound`, in the same pass."""
    t_max, t_sum = 0.0, 0.0
    for j in range(indptr.shape[0] - 1):
        if variances.shape[0]:
            t = np.sqrt(root[j] * root[j] * variances[j])
            t_max = max(t_max, t)
            t_sum += t
        for p in range(indptr[j], indptr[j + 1]):
            i = indices[p]
            v = abs(data[p]) / (root[i] * root[j])
            sums[j] += v
            if i != j:
                sums[i] += v
    return t_max, t_sum


def condition_upper_bound(Q: sp.csc_matrix, variances: np.ndarray) -> float:
    """An upper bound on ``kappa_1(S)`` from the exact variances ``diag(Q^{-1})``, in O(nnz(Q)).

    ``S^{-1} = diag(Q)^{1/2} Q^{-1} diag(Q)^{1/2}`` is positive definite with
    diagonal ``t = diag(Q) * variances``, so ``|S^{-1}_ij| <= sqrt(t_i t_j)`` and
    ``||S^{-1}||_1 <= max(sqrt(t)) * sum(sqrt(t))``.  When this bound already
    clears the tolerance, the automatic check needs no estimator (no solves).
    """
    root = np.sqrt(lower_diagonal(Q))
    sums = np.zeros(Q.shape[0])
    t_max, t_sum = _scaled_column_sums(Q.indptr, Q.indices, Q.data, root, sums, np.ascontiguousarray(variances))
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.max(sums)) * t_max * t_sum  # a NaN or inf carried: then no bound clears a threshold


def check_variance_bound(model: str, what: str, bound: float, kappa: float, label: str) -> None:
    """Refuse answers whose variance error bound leaves no digit (``>= VARIANCE_HOPELESS``), else warn.

    For a bound above :data:`VARIANCE_TOLERANCE`; ``kappa`` is ``kappa_1(S)`` and
    ``label`` the variable where it is worst.
    """
    if not bound < VARIANCE_HOPELESS:
        raise NotIdentifiedError(
            f"The posterior {what} of `{model}` cannot be computed in double precision: the scaled posterior "
            f"precision has condition number {kappa:.1e}, worst around `{label}`. Its prior sd is too large, or "
            "its data too precise, next to the other sds of the model: shrink the range of sds (rescale units), "
            "or make near-deterministic nodes exactly deterministic (sd=0)."
        )
    warn(
        f"Posterior {what} of `{model}` may be inaccurate: variances may have relative errors up to {bound:.0e} "
        f"(scaled precision condition number {kappa:.1e}, worst around `{label}`); sds spanning many orders of "
        "magnitude cost digits.",
        AccuracyWarning,
    )


# Refinement steps before a mean that is still moving is declared uncertain (well-conditioned
# models stop after one or two; on random models with sds over 1e-6..1e8, all but those whose
# scaled condition number exceeds 1e17 settled within 30)
MEAN_STEPS = 30
# A step that moves no mean by more than this many posterior sds ends the refinement without another
# residual pass: the next would move them by about eps kappa(S) times as much, and kappa(S) is checked
# (variance bound below VARIANCE_HOPELESS, so eps kappa < 0.025) before any mean is read.
STEP_SETTLED = 1e-8


def refined_mean(solve, gram, values: np.ndarray, system: LinearSystem, max_steps: int = MEAN_STEPS):
    """``Q_UU m = b`` solved, then refined against the unformed least-squares problem: ``(m, doubt)``.

    ``m`` minimizes ``f(m) = e^T D^{-1} e`` with ``e = r - A_U m``.  Forming
    ``Q_UU = A_U^T D^{-1} A_U`` and ``b`` rounds away information when sds span
    many orders of magnitude (1e-8 next to 1e8), so the first solve can be off by
    many posterior sds.  Each step solves ``Q_UU delta = A_U^T D^{-1} e`` with the
    gradient computed from the residual itself (corrected semi-normal equations)
    and is kept only if it lowers ``f``, which is summed from non-negative terms.
    The steps contract by about ``eps kappa(S)`` each; they stop when a step gains
    no more than the rounding of ``f``, or when ``f`` stops falling, or, without
    evaluating ``f`` again, when a step moves no mean by more than
    :data:`STEP_SETTLED` posterior sds (the usual case: one step).

    ``doubt`` is None when they stopped so with a small last step.  Otherwise it is
    ``(estimate, j, settled)``: the largest error left in posterior sds, at scalar
    ``j`` of U, estimated from the last step scaled by ``sqrt(Q_jj)`` (a posterior sd
    is at least ``1/sqrt(Q_jj)``).  ``settled`` is False when ``max_steps`` steps still
    moved ``m`` (the estimate is that step times ``rho / (1 - rho)`` for the contraction
    ``rho`` of the last two, infinite when they did not contract), True when a step
    of more than one such sd was rejected (the factor cannot correct ``m``).
    """
    eps = np.finfo(float).eps
    m = solve(system.b)
    root = np.sqrt(lower_diagonal(system.Q))
    sizes = []
    with np.errstate(over="ignore", invalid="ignore"):
        _, w, f = gram.weighted_residual(values, m, system.r, system.d)  # w = D^{-1} e
        for _ in range(max_steps):
            step = solve(gram.transpose_times(values, w))
            candidate = m + step
            if np.max(np.abs(step) * root, initial=0.0) <= STEP_SETTLED:  # False for NaN
                return candidate, None
            _, w_new, f_new = gram.weighted_residual(values, candidate, system.r, system.d)
            if not f_new < f:
                scaled = np.abs(step) * root
                j = int(np.argmax(scaled)) if scaled.size else 0
                return m, (float(scaled[j]), j, True) if scaled.size and not scaled[j] <= 1.0 else None
            negligible = f - f_new <= 8 * eps * f  # a gain at the rounding of f itself
            m, w, f = candidate, w_new, f_new
            if negligible or np.max(np.abs(step)) <= 4 * eps * np.max(np.abs(m)):
                return m, None
            sizes.append(np.abs(step) * root)
    rho = float(np.max(sizes[-1]) / np.max(sizes[-2])) if len(sizes) > 1 else np.inf
    j = int(np.argmax(sizes[-1]))
    return m, (float(sizes[-1][j]) * rho / (1.0 - rho) if rho < 1 else np.inf, j, False)


# Means the factor cannot settle are recomputed by a dense QR up to this many entries of D^{-1/2} A_U.
QR_ENTRIES = 4_000_000


def qr_mean(gram, values: np.ndarray, system: LinearSystem) -> np.ndarray | None:
    """``m`` minimizing ``||D^{-1/2} (r - A_U m)||`` by a dense Householder QR, or None when too large.

    The square-root form: its condition is the square root of ``S``'s, where
    ``Q_UU = A_U^T D^{-1} A_U`` squares it.  Rows sorted by decreasing size and
    columns pivoted make Householder QR row-wise backward stable (Cox and
    Higham 1998): the answer is exact for every weighted equation changed by a
    few ulps of its own size, the errors that rounding the inputs already makes.
    """
    if not isinstance(gram, GramEntries):  # rows summed apart (leaf families): no rows to factor
        return None
    n_R, n_U = system.r.shape[0], int(gram.n_U)
    if n_R * n_U > QR_ENTRIES or n_U > n_R:
        return None
    weight = 1.0 / np.sqrt(system.d)
    M = np.zeros((n_R, n_U))
    np.add.at(M, (gram.entry_row, gram.entry_col), values)
    M *= weight[:, None]
    order = np.argsort(-np.abs(M).max(axis=1), kind="stable")
    q, r, pivots = scipy.linalg.qr(M[order], mode="economic", pivoting=True)
    m = np.empty(n_U)
    m[pivots] = scipy.linalg.solve_triangular(r, q.T @ (system.r * weight)[order])
    return m


def check_mean_accuracy(model: str, doubt, variance_bound: Callable[[], float], label: Callable[[int], str],
                        no_digit: Callable[[], int | None] = lambda: None) -> None:
    """Warn about means whose refinement left a doubt (see :func:`refined_mean`), or refuse them.

    Refused (NotIdentifiedError) when the error estimate is a posterior sd or more and
    either the steps did not settle or the factor has no certain digit
    (``variance_bound() >= VARIANCE_HOPELESS``, where ``var()`` refuses too); an
    AccuracyWarning stating the estimate when it is above ``VARIANCE_TOLERANCE``.

    Refused too when the refinement settled but ``no_digit()`` returns a position
    of U (the factor has no certain digit; see :meth:`gdag.Posterior._no_digit`):
    the refinement's test, a fall of ``e^T D^{-1} e`` beyond its rounding, cannot
    see an error along a direction so flat that moving along it changes ``f`` by
    less than that rounding.  AR chains with sds from 1e-9 to 1e12 returned means
    0.17 and 356 posterior sds off that way, with no warning on the mean.
    """
    if doubt is None:
        j = no_digit()
        if j is not None:
            raise NotIdentifiedError(
                f"The posterior means of `{model}` cannot be computed in double precision: the factor of the "
                f"posterior precision has no certain digit (the variance error bound is {variance_bound():.1e}, "
                f"worst around `{label(j)}`), so no bound on the means' error can be given. Shrink the range of "
                "sds (rescale units), or make near-deterministic nodes exactly deterministic (sd=0)."
            )
        return
    estimate, j, settled = doubt
    if not estimate < 1.0 and (not settled or not variance_bound() < VARIANCE_HOPELESS):
        raise NotIdentifiedError(
            f"The posterior means of `{model}` cannot be computed in double precision: refining them "
            f"{'did not converge' if not settled else 'failed'} (worst around `{label(j)}`), so not even their "
            "first digit is certain. Shrink the range of sds (rescale units), or make near-deterministic nodes "
            "exactly deterministic (sd=0)."
        )
    if estimate > VARIANCE_TOLERANCE:
        warn(
            f"Posterior means of `{model}` may be inaccurate: errors up to about {estimate:.0e} posterior sds "
            f"(worst around `{label(j)}`); sds spanning many orders of magnitude cost digits.",
            AccuracyWarning,
        )
