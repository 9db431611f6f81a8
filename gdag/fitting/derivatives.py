r"""Derivatives of the profiled ML and REML objectives: residual variances, gradient and curvature.

Notation is that of :mod:`gdag.fitting.objective`.  Gradient (Fisher's
identity, ``e`` at the posterior mean, ``h_k = Var(e_k | data)``, for REML
under the posterior that includes ``beta``):

.. math::

    \frac{\partial(-2\log L)}{\partial\phi} = \sum_k \frac{\partial d_k}{d_k}
        \Big(1 - \frac{h_k + e_k^2}{d_k}\Big) + \sum_k W_k (\partial h_k + 2 e_k\, \partial e_k)

``h_k`` is a quadratic form in ``Q^{-1}`` over pairs of unobserved variables
sharing row ``k`` of ``A`` (:mod:`gdag.linalg.pairs`): entries of ``Q``'s
pattern, read from the factor's :meth:`~gdag.linalg.factor.Factor.covariances`.
Curvature for variance components is the average information
``AI_ij = y^T P dV_i P dV_j P y = g_i^T P_R g_j``, ``g_i = dD_i W e`` (one
solve per component).

Each function takes the :class:`~gdag.fitting.objective.Objective` (``obj``,
for its per-pattern constants) and the :class:`Point` of one evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from ..linalg.factor import Factor
from ..linalg.pairs import RowPairs, row_pairs
from .roles import SD_FLOOR


@dataclass
class Point:
    """One evaluation's values (working units, over R unless said), filled stage by stage.

    :meth:`~gdag.fitting.objective.Objective.evaluate` assembles (the first
    block), factors (``fac``, ``logdet_Q``, ``m``) and profiles (the rest);
    the derivatives reuse all of it.
    """

    th: np.ndarray  # working parameters
    coef: np.ndarray  # B' on the coefficient pattern
    c: np.ndarray  # c' (fixed effects at 0)
    d: np.ndarray  # variances
    W: np.ndarray  # 1 / d
    r: np.ndarray  # r0 = c' - A_O x_O
    F: object  # F' of the fixed effects (|R| x p), dense or sparse
    entry_vals: np.ndarray  # values of A_U's entries
    Q: sp.csc_matrix | None = None  # lower triangle of Q (None when nothing is unobserved)
    b: np.ndarray | None = None  # A_U^T W r0
    fac: Factor | None = None  # the factor of Q
    logdet_Q: float = 0.0
    m: np.ndarray | None = None  # posterior mean over U (fixed effects at their GLS values once profiled)
    A_U: sp.csr_matrix | None = None
    Z_F: np.ndarray | None = None  # Q^{-1} G (|U| x p)
    chol_S: np.ndarray | None = None  # Cholesky factor of the fixed effects' information S
    c_full: np.ndarray | None = None  # c' with the fixed effects at their GLS values
    xbar: np.ndarray | None = None  # the posterior mean, observed values included
    e: np.ndarray | None = None  # the residual at the posterior mean
    sigma2: float = 1.0  # the profiled scale's square (1 when nothing is profiled)


def dense(X) -> np.ndarray:
    """``X`` as a dense array (sparse or not)."""
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def entry_pairs(entry_row: np.ndarray, entry_col: np.ndarray, rows: np.ndarray, n_rows: int) -> RowPairs:
    """The pairs of ``A_U`` entries sharing one of ``rows`` (:func:`gdag.linalg.pairs.row_pairs`); where each of
    those rows has one entry (a variance component's own rows), the diagonal pairs, found without a kernel."""
    keep = np.flatnonzero(rows[entry_row])
    if np.bincount(entry_row[keep], minlength=n_rows).max(initial=0) > 1:
        return row_pairs(entry_row, entry_col, rows, n_rows)
    keep = keep[np.argsort(entry_row[keep], kind="stable")]  # by row, as row_pairs
    col = entry_col[keep].astype(np.int64)
    return RowPairs(entry_row[keep].astype(np.int64), keep, keep, np.ones(keep.size), col, col)


def residual_variances(obj, pt: Point, rows: np.ndarray):
    """``h_k = Var(e_k | data)`` on ``rows`` (REML: including the fixed effects' uncertainty), and its parts."""
    n_R = obj.n_R
    extra = {}
    h = np.zeros(n_R)
    if obj.n_U and rows.any():
        pairs = obj.pairs(rows)
        pair_w = pairs.mult * pt.fac.covariances(pairs.col_first, pairs.col_second)
        values = pt.entry_vals
        h = np.bincount(pairs.row, weights=pair_w * values[pairs.first] * values[pairs.second], minlength=n_R)
        extra["pairs"] = (pairs, pair_w)
    if obj.reml and obj.p:
        V = ((pt.A_U @ pt.Z_F) - dense(pt.F)) if obj.n_U else -dense(pt.F)
        SinvVt = sla.cho_solve((pt.chol_S, True), V.T, check_finite=False)  # p x |R|
        h = h + np.einsum("ij,ji->i", V, SinvVt)
        extra["reml"] = (pt.Z_F, SinvVt)
    return h, extra


def gradient(obj, pt: Point, h: np.ndarray, extra: dict, qfac: float) -> np.ndarray:
    """Gradient w.r.t. the optimizer variables; ``qfac`` weighs the quadratic term (1/sigma^2 if profiled)."""
    gram, n_R, roles = obj.gram, obj.n_R, obj.roles
    th, W, e, xbar, entry_vals = pt.th, pt.W, pt.e, pt.xbar, pt.entry_vals
    sd_rows = obj.sd_R >= 0
    per_row = 1.0 - W * h - qfac * W * e * e
    sums = np.bincount(obj.sd_R[sd_rows], weights=per_row[sd_rows], minlength=obj.cm.n_theta)
    grad = np.zeros(obj.free.shape[0])
    for i, entry in enumerate(obj.free):
        g = 0.0
        if roles.sd[entry]:
            g += 2.0 / th[entry] * sums[entry]  # d_k = (base theta)^2: dd/d = 2/theta
        if roles.scale[entry]:
            dcoef = obj.coef_derivative(entry)
            de = -np.bincount(obj.rows, weights=dcoef * xbar[obj.cols], minlength=n_R)
            g += 2.0 * qfac * float(np.sum(W * e * de))
            if "pairs" in extra:
                pairs, pair_w = extra["pairs"]
                first, second = pairs.first, pairs.second
                da = np.concatenate([np.zeros(gram.diag_U.shape[0]), -dcoef[gram.coef_U]])
                dh = np.bincount(pairs.row, weights=pair_w * (da[first] * entry_vals[second]
                                                              + entry_vals[first] * da[second]), minlength=n_R)
                if "reml" in extra:  # 2 (dA_U Z_F S^{-1} V^T)_kk, entry by entry
                    Z_F, SinvVt = extra["reml"]
                    cross = np.einsum("ij,ji->i", Z_F[gram.entry_col], SinvVt[:, gram.entry_row])
                    dh = dh + 2.0 * np.bincount(gram.entry_row, weights=da * cross, minlength=n_R)
                g += float(np.sum(W * dh))
        if roles.linear[entry]:
            g -= 2.0 * qfac * float(np.sum(W * e * obj.free_offset(entry, th)))
        grad[i] = g
    return grad * obj.scales


def projected_residuals(obj, pt: Point, R: np.ndarray) -> np.ndarray:
    """``P_R R`` for columns of ``R`` (|R| x k), in working units.

    ``P_R r = W (r - A_U m(r) [+ F' beta(r)])``: the data-space residual of
    treating ``r`` as data (REML also projects out the fixed effects).
    """
    W = pt.W
    WR = W[:, None] * R
    if obj.n_U:
        A_U = pt.A_U if pt.A_U is not None else obj.A_U(pt.entry_vals)
        M = pt.fac.solve(np.asarray(A_U.T @ WR)).reshape(obj.n_U, -1)
    else:
        A_U, M = None, np.zeros((0, R.shape[1]))
    res = R.copy()
    if obj.reml and obj.p:
        G_R = dense(pt.F.T @ WR)  # F'^T W R
        rhs = (pt.Z_F.T @ np.asarray(A_U.T @ WR) if obj.n_U else 0.0) - G_R
        B = sla.cho_solve((pt.chol_S, True), rhs, check_finite=False)
        M = M + (pt.Z_F @ B if obj.n_U else 0.0)
        res = res + np.asarray(pt.F @ B)
    if obj.n_U:
        res = res - np.asarray(A_U @ M)
    return W[:, None] * res


def curvature(obj, pt: Point, grad: np.ndarray, v: np.ndarray, information=None) -> np.ndarray:
    """Average-information approximation of the Hessian w.r.t. the optimizer variables.

    ``AI = (C^T P C + 2 M^T P M) / sigma^2`` over the variables and a profiled
    scale ``sigma^2``, which is then eliminated (Schur).  The columns are
    offsets of ``c'`` whose data-space images are the working variates (P in
    working units, :func:`projected_residuals`):

    * ``C``, the covariance part ``dV P y``: ``(dd/d) W e`` for an sd (``2 e /
      theta`` on its rows), ``dB (xbar - mu) + D A^-T dB^T W e`` for a
      coefficient (``mu = A^-1 c'``; ``A^-T W e`` is ``P y`` on the observed
      variables and 0 on the others), ``e / sigma^2`` for the profiled scale;
    * ``M``, the mean part ``d mu``: ``dB mu`` for a coefficient, ``dc'`` for a
      parameter in a mean.

    At an optimum it was the Hessian to 1e-7 (relative) on ``(x | g)``
    slopes and to 3e-3 on two crossed components.  Sds also get
    ``max(0, grad/v)``, the part of the sd-to-variance map's curvature that
    matters at a boundary.  ``information(pt, C, M, moves)``, when given, computes
    ``C^T P C + 2 M^T P M`` (``M``: the columns ``moves`` only) in place of :func:`projected_residuals`.
    """
    th, e, roles = pt.th, pt.e, obj.roles
    m, prof = obj.free.shape[0], int(roles.profiled >= 0)
    means = [i for i, entry in enumerate(obj.free) if roles.scale[entry] or roles.linear[entry]]
    C, M = np.zeros((obj.n_R, m + prof)), np.zeros((obj.n_R, len(means)))  # M: the columns that can move a mean
    mu = None
    for i, entry in enumerate(obj.free):
        if roles.sd[entry]:
            rows = obj.sd_R == entry
            C[rows, i] = 2.0 / th[entry] * e[rows]
        if roles.scale[entry]:
            dcoef = obj.coef_derivative(int(entry))
            if mu is None:
                mu = ancestor_solve(obj, pt.coef, pt.c_full, False)
            s = ancestor_solve(obj, pt.coef, _times(obj, dcoef, pt.W * e, True), True)
            C[:, i] += _times(obj, dcoef, pt.xbar - mu, False) + pt.d * s
            M[:, means.index(i)] += _times(obj, dcoef, mu, False)
        if roles.linear[entry]:
            M[:, means.index(i)] += obj.free_offset(int(entry), th)
    C[:, :m] *= obj.scales
    M *= obj.scales[means]
    if prof:
        C[:, m] = e / pt.sigma2
    nonzero = np.any(M != 0, axis=0)  # the mean part's columns, solved only where there is one
    moves, M = np.array(means, dtype=np.int64)[nonzero], M[:, nonzero]
    if information is None:
        P = projected_residuals(obj, pt, np.hstack([C, M]))
        H = C.T @ P[:, :m + prof]
        H[np.ix_(moves, moves)] += 2.0 * (M.T @ P[:, m + prof:])
    else:  # rows summed apart add their part (gdag.fitting.reduced)
        H = information(pt, C, M, moves)
    H /= pt.sigma2
    H = 0.5 * (H + H.T)
    vv = np.maximum(np.asarray(v, float), SD_FLOOR)
    H[np.arange(m), np.arange(m)] += np.where(obj.is_sd, np.maximum(0.0, grad / vv), 0.0)
    if prof:
        H = H[:m, :m] - np.outer(H[:m, m], H[m, :m]) / H[m, m]
    return 0.5 * (H + H.T)


def _times(obj, coef: np.ndarray, x: np.ndarray, transpose: bool) -> np.ndarray:
    """``B x`` (or ``B^T x``) over R for values ``coef`` on the coefficient pattern."""
    out, inner = (obj.cols, obj.rows) if transpose else (obj.rows, obj.cols)
    return np.bincount(out, weights=coef * x[inner], minlength=obj.n_R)


def ancestor_solve(obj, coef: np.ndarray, rhs: np.ndarray, transpose: bool) -> np.ndarray:
    """``A^-1 rhs`` (or ``A^-T rhs``) where the curvature reads it: ``x = rhs + B x``, ``obj.ancestor_depth`` more times.

    ``B`` is nilpotent, so each pass makes one more generation of ancestors
    exact; the curvature reads ``A^-1 c'`` on the parents of scaled
    coefficients only, and ``A^-T q`` is nonzero only on them and their
    ancestors, which that many passes reach.
    """
    x = rhs.copy()
    for _ in range(obj.ancestor_depth):
        x = rhs + _times(obj, coef, x, transpose)
    return x


def ancestor_depth(rows: np.ndarray, cols: np.ndarray, start: np.ndarray, n: int, limit: int) -> int | None:
    """Generations of ancestors above the variables ``start`` (bool over R) in the pattern ``(rows, cols)``; None past ``limit``."""
    frontier = start
    for depth in range(limit + 1):
        parents = np.zeros(n, bool)
        parents[cols[frontier[rows]]] = True
        if not parents.any():
            return depth
        frontier = parents
    return None
