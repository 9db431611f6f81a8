r"""The profiled ML and REML objectives of a model and data set (internal to :mod:`gdag.fitting`).

Notation is that of :mod:`gdag.compiler` and :mod:`gdag.pattern`: after
deterministic elimination the stochastic variables ``R`` obey
``x_R = c' + B' x_R + e``, ``e ~ N(0, diag(d))``; ``U`` are unobserved, ``O``
observed, ``A = I - B'``, ``W = D^{-1}``, ``Q = A_U^T W A_U``.  Fixed effects
``beta`` (:mod:`gdag.fitting.roles`) enter as ``c' = c'_0 + F' beta`` with
``F' = F_R + B_RS (I - B_SS)^{-1} F_S``.

With ``r(beta) = c'(beta) - A_O x_O`` and
``quad = min_{x_U, beta} (A_U x_U - r)^T W (A_U x_U - r) = e^T W e``:

.. math::

    -2 \log L   &= |O| \log 2\pi + \sum_R \log d + \log|Q| + quad \\
    -2 \log L_R &= (|O| - p) \log 2\pi + \sum_R \log d + \log|Q| + \log|S| + quad

``G = A_U^T W F'``, ``S = F'^T W F' - G^T Q^{-1} G`` (``p`` solves with the
factor of ``Q``) is the Schur complement of ``Q`` in the precision of
``(x_U, beta)`` under a flat prior on ``beta``, so ``log|Q| + log|S|`` is that
augmented precision's log-determinant (REML = the likelihood with ``beta``
integrated out).  When every stochastic variable's sd carries a parameter
entry, the residual one (``sigma``) is profiled out as in lme4: the others are
optimized as ratios ``t = sd / sigma`` and ``sigma^2 = quad_t / (|O| - p_REML)``,
so ``-2 log L = dof (1 + log 2 pi sigma^2) + sum log d_t + log|Q_t| (+ log|S_t|)``.

An evaluation is three stages, each a phase of :mod:`gdag.timing`: assemble
(``Q``, ``b``, ``F'``), factor (``Q``, refactored in place), fixed (the GLS
profile of ``beta`` and the scale, the residual and the objective); then,
when asked, gradient (:mod:`gdag.fitting.derivatives`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from ..compiler import CompiledModel
from ..errors import FitError, NotIdentifiedError
from ..linalg import LOG_2PI
from ..linalg import gram as assembly
from ..linalg.blas import one_blas_thread
from ..linalg.pairs import RowPairs
from ..pattern import Conditioning
from ..timing import phase
from . import derivatives
from .derivatives import Point, dense
from .roles import SD_FLOOR, Roles, exact_fit_error, not_identified_message

# A residual rms below this fraction of the data's is rounding: the data are fitted exactly
EXACT_FIT = 256 * np.finfo(float).eps
# Constant-design models keep one Gram matrix per variance class up to this many classes.
MAX_CLASSES = 64
# Scoring takes coefficients whose parents have at most this many generations of ancestors (else L-BFGS-B).
MAX_DEPTH = 32
FACTORIZATIONS = ("auto", "sparse", "blocked")


@dataclass
class Evaluation:
    """The objective and its by-products at one point.

    ``objective`` is -2 log L (ML) or -2 log L_R (REML); ``theta`` natural (fixed effects at
    GLS, a profiled scale at its optimum); ``e``, ``W``, ``h`` residual moments over R (working units).
    """

    objective: float
    theta: np.ndarray
    beta: np.ndarray
    cov_beta: np.ndarray
    sigma2: float
    gradient: np.ndarray | None = None
    curvature: np.ndarray | None = None
    e: np.ndarray | None = None
    W: np.ndarray | None = None
    h: np.ndarray | None = None


class Objective:
    """The profiled ML or REML objective of one model and data set.

    Built once per fit: the conditioning's index sets, its analysis of ``Q``'s pattern
    (:meth:`gdag.pattern.Conditioning.analysis`), the pairs of unobserved variables whose
    covariances the gradient needs, and for models whose ``B`` has no parameters one Gram
    matrix per variance class (``Q = sum_c G_c / theta_c^2``).  Each :meth:`evaluate` refactors in place.

    Optimizer variables ``v`` (one per entry of ``roles.optimized``) map to
    working parameters: a variance component is ``max(v, SD_FLOOR) * scale``
    (a ratio to the profiled sd, or an sd over a data scale), other free
    entries ``v * scale``; fixed effects are 0 (they enter through ``F'``) and
    a profiled sd is 1.

    Parameters
    ----------
    factorization : ``"auto"``, ``"sparse"`` or ``"blocked"``
        CHOLMOD, or the blocked head/dense-tail factor; ``"auto"`` takes the
        blocked one when the pattern allows and its tail is dense.  Changes
        speed, never results.
    scales : array, optional
        The ``scale`` of each optimizer variable (default 1).
    """

    exact_fit = EXACT_FIT**2  # quad at or below this fraction of the data's weighted square: an exact fit
    leaf_classes: dict = {}  # theta entry -> (leaf family names, rows): rows summed apart (gdag.fitting.reduced)

    def __init__(self, cm: CompiledModel, cond: Conditioning, x: np.ndarray, roles: Roles, reml: bool,
                 factorization: str = "auto", scales: np.ndarray | None = None, leaf_rows: int = 0):
        self.cm, self.cond, self.roles, self.reml = cm, cond, roles, reml
        self.x_R = x[cond.R]
        self.n_obs = int(cond.O.shape[0]) + leaf_rows
        self.p = int(roles.fixed.shape[0])
        self.dof = self.n_obs - (self.p if reml else 0)
        if self.dof <= 0:
            raise NotIdentifiedError(
                f"There are {self.n_obs} observations and {self.p} fixed effects; "
                + ("REML needs more observations than fixed effects." if reml else
                   "ML needs at least as many observations as fixed effects.")
            )
        if factorization not in FACTORIZATIONS:
            raise FitError(f"`factorization` must be 'auto', 'sparse' or 'blocked'; got {factorization!r}.")
        self.factorization = factorization
        self.gram = cond.gram
        self.n_R = int(cond.R.shape[0])
        self.n_U = cond.n_unobserved
        self.u_in_R = cond.pos_R[cond.U]
        self.rows, self.cols = cond.coefficient_pattern
        self.sd_R = cm.sd_param[cond.R]
        self.free = roles.optimized
        self.is_sd = roles.sd[self.free]
        self.scales = np.ones(self.free.shape[0]) if scales is None else np.array(scales, dtype=float)
        if self.scales.shape != self.free.shape:
            raise ValueError(f"internal error: {self.scales.shape[0]} scales for {self.free.shape[0]} variables")
        self.lower = np.where(self.is_sd | roles.positive[self.free], 0.0, -np.inf)
        # Gradients are exact unless a scaled coefficient touches an eliminated
        # (deterministic) variable: then F' and B' are polynomials in theta and
        # the optimizer falls back to finite differences.
        in_S = np.zeros(cm.n, bool)
        in_S[cond.S] = True
        scaled = cm.B_scale >= 0
        self.exact_gradient = not bool(np.any(scaled & (in_S[cm.B_rows] | in_S[cm.B_cols])))
        self.constant_design = not bool(np.any(scaled))
        self.pure_variance = bool(np.all(roles.pure_variance[self.free]))
        self._F_fixed: sp.csr_matrix | None = None
        self._F_free: dict[int, np.ndarray] = {}
        self._dcoef: dict[int, np.ndarray] = {}
        self._pairs: dict = {}
        self._factor = None
        self._classes = None
        self._A_U = None
        self._B = None  # B' as a sparse matrix (constant designs)
        self._entry_vals = None  # values of A_U's entries (constant designs)
        self._n_classes = None
        self.n_evaluations = 0
        # free sd entries and the rows they govern (the gradient needs h there)
        free_sd = np.zeros(cm.n_theta + 1, bool)
        free_sd[self.free[self.is_sd]] = True
        self._rows_grad = free_sd[self.sd_R] if self.n_R else np.zeros(0, bool)
        parents = np.zeros(self.n_R, bool)
        for entry in (self.free[roles.scale[self.free]] if self.exact_gradient else ()):
            dcoef = self.coef_derivative(int(entry))
            self._rows_grad[self.rows[dcoef != 0]] = True
            parents[self.cols[dcoef != 0]] = True
        # The average information (scoring) needs A^-1 over the ancestors of scaled coefficients' parents.
        self.ancestor_depth = derivatives.ancestor_depth(self.rows, self.cols, parents, self.n_R, MAX_DEPTH)
        self.has_curvature = self.exact_gradient and self.ancestor_depth is not None

    # ------------------------------------------------------------ constants

    def fixed_design(self, theta_w: np.ndarray):
        """``F'`` of the fixed effects over R (|R| x p): dense for up to 64 columns, else sparse."""
        if self._F_fixed is None or not self.exact_gradient:
            F = self.cond.reduced_offsets(theta_w, self.cm.F[:, self.roles.fixed])
            self._F_fixed = F.toarray() if self.p <= 64 else F
        return self._F_fixed

    def free_offset(self, entry: int, theta_w: np.ndarray) -> np.ndarray:
        """``d c' / d theta[entry]`` over R."""
        if entry not in self._F_free or not self.exact_gradient:
            col = self.cond.reduced_offsets(theta_w, self.cm.F[:, [entry]])
            self._F_free[entry] = np.asarray(col.toarray()).reshape(-1)
        return self._F_free[entry]

    def coef_derivative(self, entry: int) -> np.ndarray:
        """``d B' / d theta[entry]`` on the coefficient pattern."""
        if entry not in self._dcoef:
            cm, cond = self.cm, self.cond
            mask = cm.B_scale == entry
            if cond.S.size == 0:
                self._dcoef[entry] = np.where(mask, cm.B_base, 0.0)
            else:
                pos = cond.pos_R
                D = sp.csr_matrix((cm.B_base[mask], (pos[cm.B_rows[mask]], pos[cm.B_cols[mask]])),
                                  shape=(self.n_R, self.n_R))
                self._dcoef[entry] = np.asarray(D[self.rows, self.cols]).reshape(-1) if self.rows.size else np.zeros(0)
        return self._dcoef[entry]

    def pairs(self, rows: np.ndarray) -> RowPairs:
        """Pairs of ``A_U`` entries sharing one of ``rows`` (bool over R), computed once per ``rows``."""
        key = rows.tobytes()
        if key not in self._pairs:
            self._pairs[key] = derivatives.entry_pairs(self.gram.entry_row, self.gram.entry_col, rows, self.n_R)
        return self._pairs[key]

    # ------------------------------------------------------------ variables

    def working_theta(self, v: np.ndarray) -> np.ndarray:
        """Working parameters for optimizer variables ``v`` (see the class docstring)."""
        th = np.zeros(self.cm.n_theta)
        floor = np.where(self.is_sd | self.roles.positive[self.free], SD_FLOOR, -np.inf)
        th[self.free] = np.maximum(np.asarray(v, dtype=float), floor) * self.scales
        if self.roles.profiled >= 0:
            th[self.roles.profiled] = 1.0
        return th

    def natural_theta(self, th: np.ndarray, beta: np.ndarray, sigma2: float) -> np.ndarray:
        """Working parameters with the fixed effects and the profiled scale put back."""
        theta = th.copy()
        theta[self.roles.fixed] = beta
        if self.roles.profiled >= 0:
            theta[self.roles.pure_variance] *= math.sqrt(sigma2)
        return theta

    # ------------------------------------------------------------ evaluation

    def evaluate(self, v: np.ndarray, gradient: bool = False, curvature: bool = False,
                 moments: bool = False) -> Evaluation:
        """Objective at optimizer variables ``v``; optionally its gradient, curvature and residual moments
        (OpenBLAS on one thread unless OPENBLAS_NUM_THREADS is set: :class:`gdag.linalg.blas.OneBlasThread`)."""
        with one_blas_thread():
            self.n_evaluations += 1
            with phase("assemble"):
                pt = self._assemble(self.working_theta(v))
            with phase("factor"):
                self._factorize(pt)
            with phase("fixed"):
                out = self._profile(pt)
            if (gradient or moments or curvature) and self.exact_gradient:
                with phase("gradient"):
                    self._derivatives(out, pt, v, gradient, curvature, moments)
        return out

    def _assemble(self, th: np.ndarray) -> Point:
        """The values at working parameters ``th``: ``B'``, ``c'``, ``d``, ``r0``, ``F'``, ``Q`` and ``b0``."""
        coef, c_R, d_R = self.cond.reduced_values(th)
        W = 1.0 / d_R
        r0 = self.gram.residual(coef, c_R, self.x_R)
        pt = Point(th, coef, c_R, d_R, W, r0, self.fixed_design(th), np.zeros(0))
        if self.n_U:
            pt.Q, pt.b, pt.entry_vals = self._gram_values(th, coef, r0, W)
        return pt

    def _factorize(self, pt: Point) -> None:
        """Factor ``Q`` (the first time through the conditioning, then in place): ``log|Q|`` and, without fixed effects, ``m``."""
        if not self.n_U:
            pt.m = np.zeros(0)
            return
        if self._factor is None:
            self._factor = self.new_factor(pt.Q)
        else:
            self._factor.refactor_inplace(pt.Q)
        pt.fac = self._factor
        pt.logdet_Q = self._factor.logdet()
        if not self.p:  # with fixed effects m is solved together with G (_fixed_effects)
            pt.m = self._factor.solve(pt.b)

    def _profile(self, pt: Point) -> Evaluation:
        """-2 log L at ``pt`` with the fixed effects at their GLS values and a profiled scale at its optimum."""
        beta, logdet_S, pt.c_full = self._fixed_effects(pt) if self.p else (np.zeros(0), 0.0, pt.c)
        # residual at the posterior mean, e = A xbar - c'(beta-hat); quad = e^T W e
        pt.xbar = self.x_R.copy()
        pt.xbar[self.u_in_R] = pt.m
        pt.e = pt.xbar - pt.c_full - self._B_times(pt.coef, pt.xbar)
        quad_leaves, log_d_leaves, size_leaves = self.leaf_residual(pt, beta)
        quad = float(np.sum(pt.W * pt.e * pt.e)) + quad_leaves
        logdet = float(np.sum(np.log(pt.d))) + log_d_leaves + pt.logdet_Q + (logdet_S if self.reml else 0.0)
        if self.roles.profiled >= 0:
            pt.sigma2 = quad / self.dof
            if quad <= self.exact_fit * (float(np.sum(pt.W * pt.xbar * pt.xbar)) + size_leaves):
                raise exact_fit_error(self.cm.name, [self.roles.labels[self.roles.profiled]], quad)
            objective = self.dof * (1.0 + LOG_2PI + math.log(pt.sigma2)) + logdet
        else:
            objective = self.dof * LOG_2PI + logdet + quad
        cov_beta = pt.sigma2 * sla.cho_solve((pt.chol_S, True), np.eye(self.p), check_finite=False) if self.p else np.zeros((0, 0))
        return Evaluation(objective, self.natural_theta(pt.th, beta, pt.sigma2), beta, cov_beta, pt.sigma2)

    def _fixed_effects(self, pt: Point):
        """GLS: ``beta``, ``log|S|`` and ``c'(beta)``; sets ``m`` and what REML and its gradient reuse."""
        F, W, p = pt.F, pt.W, self.p
        WF = W[:, None] * F if isinstance(F, np.ndarray) else sp.csr_matrix(F.multiply(W[:, None]))
        if self.n_U:
            pt.A_U = self.A_U(pt.entry_vals)
        G = dense(pt.A_U.T @ WF) if self.n_U else np.zeros((0, p))
        FWF, FWr = dense(F.T @ WF), np.asarray(WF.T @ pt.r).reshape(-1)
        G, FWF, FWr = self.with_leaves(pt, G, FWF, FWr)
        if self.n_U:
            both = pt.fac.solve(np.column_stack([pt.b, G])).reshape(self.n_U, p + 1)  # one solve for both
            m0, pt.Z_F = both[:, 0], both[:, 1:]
        else:
            m0, pt.Z_F = pt.m, np.zeros((0, p))
        S = FWF - G.T @ pt.Z_F
        S = 0.5 * (S + S.T)
        # r(beta) = r0 + F' beta, b(beta) = b0 + G beta: quad is least at S beta = G^T m0 - F'^T W r0
        rhs = G.T @ m0 - FWr
        pt.chol_S = self._cholesky_S(S, np.diag(FWF))
        beta = sla.cho_solve((pt.chol_S, True), rhs, check_finite=False)
        pt.m = m0 + pt.Z_F @ beta
        return beta, 2.0 * float(np.sum(np.log(np.diag(pt.chol_S)))), pt.c + F @ beta

    def _cholesky_S(self, S: np.ndarray, data_info: np.ndarray) -> np.ndarray:
        """Cholesky factor of the fixed effects' information ``S``; NotIdentifiedError if singular.

        ``data_info = diag(F'^T W F')``: an ``S_kk`` below 1e-10 of it is cancellation (round-off
        of a fixed effect the data do not see), not information.
        """
        labels = [self.roles.labels[k] for k in self.roles.fixed]
        diag = np.diag(S)
        if not np.all(np.isfinite(S)) or np.any(~(diag > 1e-10 * data_info)):
            bad = [labels[i] for i in np.flatnonzero(~(diag > 1e-10 * data_info))] or labels
            raise NotIdentifiedError(not_identified_message(bad))
        scale = np.sqrt(diag)
        w, V = np.linalg.eigh(S / np.outer(scale, scale))
        if w[0] < 1e-11 * w[-1]:
            involved = np.flatnonzero(np.abs(V[:, 0]) > 1e-3)
            raise NotIdentifiedError(not_identified_message([labels[i] for i in involved]))
        return np.linalg.cholesky(S)

    def _derivatives(self, out: Evaluation, pt: Point, v, gradient: bool, curvature: bool, moments: bool) -> None:
        """Residual moments, gradient and curvature into ``out`` (see :mod:`gdag.fitting.derivatives`)."""
        rows = self._rows_grad if not moments else (self.sd_R >= 0) | self._rows_grad
        h, extra = derivatives.residual_variances(self, pt, rows)
        out.e, out.W, out.h = pt.e, pt.W, h
        qfac = 1.0 / pt.sigma2 if self.roles.profiled >= 0 else 1.0
        if gradient:
            out.gradient = derivatives.gradient(self, pt, h, extra, qfac)
        if curvature and self.has_curvature:
            out.curvature = derivatives.curvature(self, pt, out.gradient, v)

    # ------------------------------------------- leaf rows summed apart (none here)

    def new_factor(self, Q: sp.csc_matrix):
        return self.cond.factor(Q, self.factorization)

    def with_leaves(self, pt: Point, G: np.ndarray, FWF: np.ndarray, FWr: np.ndarray):
        """``G``, ``F'^T W F'`` and ``F'^T W r0`` with the leaves' rows added."""
        return G, FWF, FWr

    def leaf_residual(self, pt: Point, beta: np.ndarray) -> tuple[float, float, float]:
        """The leaves' ``e^T W e``, ``sum log d`` and weighted data square at ``pt`` and ``beta``."""
        return 0.0, 0.0, 0.0

    def leaf_moments(self, ev: Evaluation) -> tuple[np.ndarray, np.ndarray]:
        """EM's sums ``sum (e^2 + h) / base^2`` and row counts per parameter entry over the leaves' rows."""
        return np.zeros(self.cm.n_theta), np.zeros(self.cm.n_theta)

    # ------------------------------------------------------------- assembly

    def _gram_values(self, th: np.ndarray, coef: np.ndarray, r0: np.ndarray, W: np.ndarray):
        """Lower triangle of ``Q``, ``b0 = A_U^T W r0`` and the values of ``A_U``'s entries."""
        gram = self.gram
        if self.constant_design:
            if self._entry_vals is None:
                self._entry_vals = gram.entry_values(coef)
            entry_vals = self._entry_vals
            if self._n_classes is None:
                self._n_classes = np.unique(self.sd_R).size
            if self._n_classes <= MAX_CLASSES:
                entries, grams = self._variance_classes(entry_vals)
                omega = np.ones(entries.size)
                omega[entries >= 0] = 1.0 / th[entries[entries >= 0]] ** 2
                s = gram.structure
                Q = sp.csc_matrix((omega @ grams, s.q_rows, s.q_indptr), shape=(s.n_cols, s.n_cols))
                return Q, self.A_U(entry_vals).T @ (W * r0), entry_vals
        Q, b0 = gram.assemble(coef, W, r0 * W)
        return Q, b0, gram.entry_values(coef)

    def _variance_classes(self, entry_vals):
        """Per-class Gram values for ``Q = sum_c omega_c G_c`` (constant designs only).

        Class ``c`` holds the rows whose sd is ``sd_base * theta[entries[c]]``
        (``entries[c] = -1``: a constant sd); ``omega_c = 1 / theta^2`` (or 1).
        """
        if self._classes is None:
            st = self.gram.structure
            base = 1.0 / self.cm.sd_base[self.cond.R] ** 2
            entries, cls = np.unique(self.sd_R, return_inverse=True)
            grams = assembly.class_gram_values(st, entry_vals, base, cls, entries.size)
            self._classes = (entries, grams)
        return self._classes

    def _B_times(self, coef, x) -> np.ndarray:
        """``B' x`` over R (a cached sparse matrix when ``B`` has no parameters)."""
        if not self.constant_design:
            return np.bincount(self.rows, weights=coef * x[self.cols], minlength=self.n_R)
        if self._B is None:
            self._B = sp.csr_matrix((coef, (self.rows, self.cols)), shape=(self.n_R, self.n_R))
        return self._B @ x

    def A_U(self, entry_vals) -> sp.csr_matrix:
        """``A_U`` (|R| x |U|) as a sparse matrix, built once; later values are written into it in place.

        Its entries are kept in row order, duplicates not summed (products
        add them up), so that new values are one gather: building a CSR
        matrix from COO each evaluation was a sixth of a small fit's time.
        """
        if self._A_U is None:
            gram = self.gram
            order = np.lexsort((gram.entry_col, gram.entry_row))
            indptr = np.zeros(self.n_R + 1, dtype=np.int64)
            np.cumsum(np.bincount(gram.entry_row, minlength=self.n_R), out=indptr[1:])
            self._A_U = sp.csr_matrix((np.asarray(entry_vals, dtype=float)[order], gram.entry_col[order], indptr),
                                      shape=(self.n_R, self.n_U))
            self._A_U_order = order
        elif not self.constant_design:
            np.take(entry_vals, self._A_U_order, out=self._A_U.data)
        return self._A_U

