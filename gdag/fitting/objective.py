r"""The ML and REML objectives of a model, their gradients and curvature (internal to :mod:`gdag.fit`).

Notation is that of :mod:`gdag.compiler` and :mod:`gdag.conditioning`: after
deterministic elimination the stochastic variables ``R`` obey
``x_R = c' + B' x_R + e``, ``e ~ N(0, diag(d))``; ``U`` are unobserved, ``O``
observed, ``A = I - B'``, ``W = D^{-1}``, ``Q = A_U^T W A_U``.

Roles of the parameter entries
------------------------------
* **fixed effect** ``beta``: enters means only linearly (a column of ``F``)
  and is not declared positive: ``c' = c'_0 + F' beta`` with
  ``F' = F_R + B_RS (I - B_SS)^{-1} F_S``.  Profiled out by GLS.
* **variance component**: a positive parameter used as an ``sd``.
* **coefficient**: a parameter scaling a node term (``rho * u0``).
* anything else that is used (a positive parameter in a mean, a parameter
  with several roles) is optimized numerically like a coefficient.

Objective
---------
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

Gradient (Fisher's identity, ``e`` at the posterior mean, ``h_k = Var(e_k |
data)``, for REML under the posterior that includes ``beta``):

.. math::

    \frac{\partial(-2\log L)}{\partial\phi} = \sum_k \frac{\partial d_k}{d_k}
        \Big(1 - \frac{h_k + e_k^2}{d_k}\Big) + \sum_k W_k (\partial h_k + 2 e_k\, \partial e_k)

``h_k`` is a quadratic form in ``Q^{-1}`` over pairs of unobserved variables
sharing row ``k`` of ``A``: entries of ``Q``'s pattern, read from the selected
inverse of the factor.  Curvature for variance components is the average
information ``AI_ij = y^T P dV_i P dV_j P y = g_i^T P_R g_j``,
``g_i = dD_i W e`` (one solve per component).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numba
import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from ..compiler import CompiledModel
from ..errors import FitError, NotIdentifiedError
from ..linalg import gram as assembly
from ..linalg.blas import one_blas_thread
from ..linalg.blocked import BlockedFactor, choose_split
from ..linalg.gram import bucket
from ..pattern import Conditioning

LOG_2PI = float(np.log(2 * np.pi))
# Variance components are evaluated at no less than this sd (relative to their
# scale): the precision form needs d > 0, and below it the objective is flat.
SD_FLOOR = 1e-6
# Constant-design models keep one Gram matrix per variance class up to this many classes.
MAX_CLASSES = 64


# --------------------------------------------------------------------- roles


@dataclass(frozen=True)
class Roles:
    """What each entry of ``theta`` does (boolean masks over ``theta``).

    ``fixed`` entries are profiled by GLS, ``free`` ones optimized; ``profiled``
    is the sd entry whose scale is profiled out (-1 for none).
    """

    fixed: np.ndarray  # indices
    free: np.ndarray  # indices
    sd: np.ndarray
    scale: np.ndarray
    linear: np.ndarray
    positive: np.ndarray
    profiled: int
    labels: tuple[str, ...]

    @property
    def pure_variance(self) -> np.ndarray:
        """Entries used only as an sd."""
        return self.sd & ~self.scale & ~self.linear


def entry_labels(cm: CompiledModel) -> tuple[str, ...]:
    """``name`` for scalar parameters, ``name[i]`` for entries of vectors."""
    out: list[str] = []
    for i, name in enumerate(cm.param_names):
        out.extend([name] if cm.param_scalar[i] else [f"{name}[{k}]" for k in range(int(cm.param_size[i]))])
    return tuple(out)


def infer_roles(cm: CompiledModel, cond: Conditioning, profile: bool = True) -> Roles:
    """Classify every parameter entry; see the module docstring."""
    n = cm.n_theta
    owner = np.repeat(np.arange(len(cm.param_names)), cm.param_size)
    positive = cm.param_positive[owner] if n else np.zeros(0, bool)
    sd = np.zeros(n, bool)
    sd_R = cm.sd_param[cond.R]
    sd[sd_R[sd_R >= 0]] = True
    scale = np.zeros(n, bool)
    scale[cm.B_scale[cm.B_scale >= 0]] = True
    linear = np.zeros(n, bool)
    if n:
        linear[np.unique(sp.coo_matrix(cm.F).col)] = True
    fixed = linear & ~sd & ~scale & ~positive
    free = (sd | scale | linear) & ~fixed
    labels = entry_labels(cm)
    unused = np.flatnonzero(~(sd | scale | linear))
    if unused.size:
        one = unused.size == 1
        names = ", ".join(f"`{labels[k]}`" for k in unused[:10]) + (" ..." if unused.size > 10 else "")
        raise NotIdentifiedError(
            f"Parameter entr{'y' if one else 'ies'} {names} appear{'s' if one else ''} in no mean and no sd of a "
            f"stochastic node, so the data say nothing about {'it' if one else 'them'}. "
            f"Remove {'it' if one else 'them'} from the model or use {'it' if one else 'them'} in a mean or sd."
        )
    # Profile a common scale when every stochastic variable's sd carries an entry used
    # only as an sd: then d = sigma^2 d(t), sigma the entry of most observed variables.
    profiled = -1
    if profile and sd_R.size and np.all(sd_R >= 0) and cond.O.size:
        pure = sd & ~scale & ~linear
        if np.all(pure[np.unique(sd_R)]):
            profiled = int(np.argmax(np.bincount(cm.sd_param[cond.O], minlength=n)))
    return Roles(np.flatnonzero(fixed), np.flatnonzero(free), sd, scale, linear, positive, profiled, labels)


def not_identified_message(labels) -> str:
    """The NotIdentifiedError message for fixed effects the data leave unidentified."""
    names = ", ".join(f"`{x}`" for x in labels[:12]) + (" ..." if len(labels) > 12 else "")
    return (
        f"The fixed effects {names} are not identified by the data: in the means of the observed "
        "nodes their columns are zero or linearly dependent (a parameter with no data, or collinear "
        "predictors). Remove or merge them, or make them random effects."
    )


# ------------------------------------------------------------------- kernels


@numba.njit(cache=True)
def _row_pairs(indptr, order):
    """Every unordered pair (diagonal included) of entries that share a row."""
    n_rows = indptr.shape[0] - 1
    total = 0
    for k in range(n_rows):
        m = indptr[k + 1] - indptr[k]
        total += m * (m + 1) // 2
    row = np.empty(total, np.int64)
    first = np.empty(total, np.int64)
    second = np.empty(total, np.int64)
    t = 0
    for k in range(n_rows):
        for a in range(indptr[k], indptr[k + 1]):
            for b in range(a, indptr[k + 1]):
                row[t] = k
                first[t] = order[a]
                second[t] = order[b]
                t += 1
    return row, first, second


class SparseFactor:
    """CHOLMOD factor (analysed once, refactored in place) with covariances from its selected inverse."""

    def __init__(self, cond: Conditioning, Q: sp.csc_matrix):
        self._fac = cond.factor_for(Q)
        self._cache: dict = {}

    def refactor_inplace(self, Q: sp.csc_matrix) -> None:
        self._fac.refactor_inplace(Q)

    def logdet(self) -> float:
        return self._fac.logdet()

    def solve(self, b: np.ndarray) -> np.ndarray:
        return self._fac.solve(b)

    def covariances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(Q^{-1})[a[k], b[k]]`` for pairs on the pattern of ``Q``, by selected inversion."""
        L = self._fac.L()
        key = (id(a), L.nnz)
        if key not in self._cache:
            n = L.shape[0]
            pinv = np.empty(n, np.int64)
            pinv[self._fac.permutation] = np.arange(n)
            i, j = pinv[a], pinv[b]
            Lc = sp.csc_matrix(L)
            Lc.sort_indices()
            keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(Lc.indptr)) * n + Lc.indices
            self._cache = {key: np.searchsorted(keys, np.minimum(i, j) * n + np.maximum(i, j))}
        return self._fac.selected_inverse().data[self._cache[key]]


# ---------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """The objective and its by-products at one point.

    ``objective`` is -2 log L (ML) or -2 log L_R (REML); ``theta`` the natural
    parameter vector (fixed effects at GLS, a profiled scale at its optimum).
    ``e``, ``W``, ``h`` are residual moments over R in working units.
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

    Built once per fit: the conditioning's index sets and assembly maps, one
    analysis of ``Q``'s pattern (a CHOLMOD symbolic factorization, or for
    crossed designs the head/tail split of :mod:`gdag.blocked`), the pairs of
    unobserved variables whose covariances the gradient needs, and for models
    whose ``B`` has no parameters one Gram matrix per variance class
    (``Q = sum_c G_c / theta_c^2``).  Each :meth:`evaluate` refactors in place.

    Optimizer variables ``v`` map to working parameters: a variance component
    is ``max(v, SD_FLOOR) * scale`` (a ratio to the profiled sd, or an sd over
    a data scale), other free entries ``v * scale``; fixed effects are 0 (they
    enter through ``F'``) and a profiled sd is 1.

    Parameters
    ----------
    factorization : ``"auto"``, ``"sparse"`` or ``"blocked"``
        CHOLMOD, or the blocked head/dense-tail factor; ``"auto"`` takes the
        blocked one when the pattern allows and its tail is dense.  Changes
        speed, never results.
    """

    def __init__(self, cm: CompiledModel, cond: Conditioning, x: np.ndarray, roles: Roles, reml: bool,
                 factorization: str = "auto"):
        self.cm, self.cond, self.roles, self.reml = cm, cond, roles, reml
        self.x_R = x[cond.R]
        self.n_obs = int(cond.O.shape[0])
        self.p = int(roles.fixed.shape[0])
        self.dof = self.n_obs - (self.p if reml else 0)
        if self.dof <= 0:
            raise NotIdentifiedError(
                f"There are {self.n_obs} observations and {self.p} fixed effects; "
                + ("REML needs more observations than fixed effects." if reml else
                   "ML needs at least as many observations as fixed effects.")
            )
        if factorization not in ("auto", "sparse", "blocked"):
            raise FitError(f"`factorization` must be 'auto', 'sparse' or 'blocked'; got {factorization!r}.")
        self.factorization = factorization
        self.gram = cond.gram
        self.n_R = int(cond.R.shape[0])
        self.n_U = cond.n_unobserved
        self.u_in_R = cond.pos_R[cond.U]
        self.rows, self.cols = cond.coefficient_pattern
        self.sd_R = cm.sd_param[cond.R]
        self.free = roles.free[roles.free != roles.profiled]
        self.is_sd = roles.sd[self.free]
        self.var_scale = np.ones(self.free.shape[0])
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
        self.times = {"assemble": 0.0, "factor": 0.0, "fixed": 0.0, "gradient": 0.0}
        # free sd entries and the rows they govern (the gradient needs h there)
        free_sd = np.zeros(cm.n_theta + 1, bool)
        free_sd[self.free[self.is_sd]] = True
        self._rows_grad = free_sd[self.sd_R] if self.n_R else np.zeros(0, bool)
        for entry in (self.free[roles.scale[self.free]] if self.exact_gradient else ()):
            dcoef = self.coef_derivative(int(entry))
            self._rows_grad[self.rows[dcoef != 0]] = True

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

    def pairs(self, rows: np.ndarray):
        """Pairs of ``A_U`` entries sharing one of ``rows`` (bool over R): row, first, second, mult."""
        key = rows.tobytes()
        if key not in self._pairs:
            gram = self.gram
            keep = np.flatnonzero(rows[gram.entry_row])
            indptr, order = bucket(gram.entry_row[keep].astype(np.int64), self.n_R)
            row, first, second = _row_pairs(indptr, keep[order])
            mult = np.where(first == second, 1.0, 2.0)
            u1, u2 = gram.entry_col[first].astype(np.int64), gram.entry_col[second].astype(np.int64)
            self._pairs[key] = (row, first, second, mult, u1, u2)
        return self._pairs[key]

    # ------------------------------------------------------------ variables

    def working_theta(self, v: np.ndarray) -> np.ndarray:
        """Working parameters for optimizer variables ``v`` (see the class docstring)."""
        th = np.zeros(self.cm.n_theta)
        floor = np.where(self.is_sd | self.roles.positive[self.free], SD_FLOOR, -np.inf)
        th[self.free] = np.maximum(np.asarray(v, dtype=float), floor) * self.var_scale
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

    # ------------------------------------------------------------- assembly

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

    def _assemble(self, th, coef, d_R, r0, W):
        """Lower triangle of ``Q`` and ``b0``."""
        gram = self.gram
        if self.constant_design and self.n_U:
            if self._entry_vals is None:
                self._entry_vals = gram.entry_values(coef)
            entry_vals = self._entry_vals
            if self._n_classes is None:
                self._n_classes = np.unique(self.sd_R).size
            if self._n_classes <= MAX_CLASSES:
                entries, grams = self._variance_classes(entry_vals)
                omega = np.ones(entries.size)
                omega[entries >= 0] = 1.0 / th[entries[entries >= 0]] ** 2
                data = omega @ grams
                s = gram.structure
                Q = sp.csc_matrix((data, s.q_rows, s.q_indptr), shape=(s.n_cols, s.n_cols))
                b0 = self.A_U(entry_vals).T @ (W * r0)
                return Q, b0, entry_vals
        entry_vals = gram.entry_values(coef)
        Q, b0 = gram.assemble(coef, W, r0 * W)
        return Q, b0, entry_vals


    def _factorize(self, Q: sp.csc_matrix):
        if self._factor is None:
            split = None
            if self.factorization != "sparse":
                family = np.searchsorted(self.cm.family_offset, self.cond.U, side="right") - 1
                split = choose_split(Q, family)
                if split is None and self.factorization == "blocked":
                    split = (np.zeros(0, np.int64), np.arange(self.n_U))
            blocked = None
            if split is not None:
                blocked = BlockedFactor(Q, split[0], split[1], self.cond.label_unobserved)
                if self.factorization == "auto" and not blocked.worthwhile:
                    blocked = None
            if blocked is not None:
                self._factor = blocked
                self._factor.refactor_inplace(Q)
            else:
                self._factor = SparseFactor(self.cond, Q)
        else:
            self._factor.refactor_inplace(Q)
        return self._factor

    def _B_times(self, coef, x) -> np.ndarray:
        """``B' x`` over R (a cached sparse matrix when ``B`` has no parameters)."""
        if not self.constant_design:
            return np.bincount(self.rows, weights=coef * x[self.cols], minlength=self.n_R)
        if self._B is None:
            self._B = sp.csr_matrix((coef, (self.rows, self.cols)), shape=(self.n_R, self.n_R))
        return self._B @ x

    def A_U(self, entry_vals) -> sp.csr_matrix:
        """``A_U`` (|R| x |U|) as a sparse matrix."""
        if self._A_U is None or not self.constant_design:
            gram = self.gram
            self._A_U = sp.csr_matrix((entry_vals, (gram.entry_row, gram.entry_col)), shape=(self.n_R, self.n_U))
        return self._A_U

    # ------------------------------------------------------------ evaluation

    def evaluate(self, v: np.ndarray, gradient: bool = False, curvature: bool = False,
                 moments: bool = False) -> Evaluation:
        """Objective at optimizer variables ``v``; optionally its gradient, curvature and residual moments.

        Runs OpenBLAS on one thread unless OPENBLAS_NUM_THREADS is set (see :class:`gdag.blocked.OneBlasThread`).
        """
        with one_blas_thread():
            return self._evaluate(v, gradient, curvature, moments)

    def _evaluate(self, v, gradient, curvature, moments) -> Evaluation:
        self.n_evaluations += 1
        t0 = time.perf_counter()
        th = self.working_theta(v)
        cond, gram, p = self.cond, self.gram, self.p
        coef, c_R, d_R = cond.reduced_values(th)
        W = 1.0 / d_R
        r0 = gram.residual(coef, c_R, self.x_R)
        F = self.fixed_design(th)
        fac = None
        if self.n_U:
            Q, b0, entry_vals = self._assemble(th, coef, d_R, r0, W)
            t1 = time.perf_counter()
            fac = self._factorize(Q)
            logdet_Q = fac.logdet()
            m0 = fac.solve(b0) if not p else None  # with fixed effects: solved together with G below
        else:
            entry_vals = np.zeros(0)
            t1 = time.perf_counter()
            logdet_Q, m0 = 0.0, np.zeros(0)
        t2 = time.perf_counter()
        A_U = Z_F = chol_S = None
        if p:
            WF = W[:, None] * F if isinstance(F, np.ndarray) else sp.csr_matrix(F.multiply(W[:, None]))
            if self.n_U:
                A_U = self.A_U(entry_vals)
                G = _dense(A_U.T @ WF)
                both = fac.solve(np.column_stack([b0, G])).reshape(self.n_U, p + 1)  # one solve for both
                m0, Z_F = both[:, 0], both[:, 1:]
            else:
                G, Z_F = np.zeros((0, p)), np.zeros((0, p))
            S = _dense(F.T @ WF) - G.T @ Z_F
            S = 0.5 * (S + S.T)
            # r(beta) = r0 + F' beta, b(beta) = b0 + G beta: quad is least at S beta = G^T m0 - F'^T W r0
            rhs = G.T @ m0 - np.asarray(WF.T @ r0).reshape(-1)
            chol_S = self._cholesky_S(S)
            beta = sla.cho_solve((chol_S, True), rhs)
            logdet_S = 2.0 * float(np.sum(np.log(np.diag(chol_S))))
            m = m0 + Z_F @ beta
            c_full = c_R + F @ beta
        else:
            beta, logdet_S, m, c_full = np.zeros(0), 0.0, m0, c_R
        # residual at the posterior mean, e = A xbar - c'(beta-hat); quad = e^T W e
        xbar = self.x_R.copy()
        xbar[self.u_in_R] = m
        e = xbar - c_full - self._B_times(coef, xbar)
        quad = float(np.sum(W * e * e))
        logdet = float(np.sum(np.log(d_R))) + logdet_Q + (logdet_S if self.reml else 0.0)
        profiled = self.roles.profiled >= 0
        if profiled:
            sigma2 = quad / self.dof
            objective = self.dof * (1.0 + LOG_2PI + math.log(sigma2)) + logdet
        else:
            sigma2 = 1.0
            objective = self.dof * LOG_2PI + logdet + quad
        cov_beta = sigma2 * sla.cho_solve((chol_S, True), np.eye(p)) if p else np.zeros((0, 0))
        out = Evaluation(objective, self.natural_theta(th, beta, sigma2), beta, cov_beta, sigma2)
        t3 = time.perf_counter()
        if (gradient or moments or curvature) and self.exact_gradient:
            rows = self._rows_grad if not moments else (self.sd_R >= 0) | self._rows_grad
            ctx = _Context(fac, entry_vals, A_U, Z_F, chol_S, F, W)
            h, extra = self._variances(ctx, rows)
            out.e, out.W, out.h = e, W, h
            qfac = 1.0 / sigma2 if profiled else 1.0
            if gradient:
                out.gradient = self._gradient(th, W, e, h, xbar, entry_vals, extra, qfac)
            if curvature and self.pure_variance:
                out.curvature = self._curvature(th, ctx, e, sigma2, out.gradient, v)
        t4 = time.perf_counter()
        tm = self.times
        tm["assemble"] += t1 - t0
        tm["factor"] += t2 - t1
        tm["fixed"] += t3 - t2
        tm["gradient"] += t4 - t3
        return out

    def _cholesky_S(self, S: np.ndarray) -> np.ndarray:
        """Cholesky factor of the fixed effects' information ``S``; NotIdentifiedError if singular."""
        labels = [self.roles.labels[k] for k in self.roles.fixed]
        diag = np.diag(S)
        if not np.all(np.isfinite(S)) or np.any(~(diag > 0)):
            bad = [labels[i] for i in np.flatnonzero(~(diag > 0))] or labels
            raise NotIdentifiedError(not_identified_message(bad))
        scale = np.sqrt(diag)
        w, V = np.linalg.eigh(S / np.outer(scale, scale))
        if w[0] < 1e-11 * w[-1]:
            involved = np.flatnonzero(np.abs(V[:, 0]) > 1e-3)
            raise NotIdentifiedError(not_identified_message([labels[i] for i in involved]))
        return np.linalg.cholesky(S)

    def _variances(self, ctx: "_Context", rows: np.ndarray):
        """``h_k = Var(e_k | data)`` on ``rows`` (REML: including the fixed effects' uncertainty)."""
        n_R = self.n_R
        extra = {}
        h = np.zeros(n_R)
        if self.n_U and rows.any():
            row, first, second, mult, u1, u2 = self.pairs(rows)
            pair_w = mult * ctx.fac.covariances(u1, u2)
            h = np.bincount(row, weights=pair_w * ctx.entry_vals[first] * ctx.entry_vals[second], minlength=n_R)
            extra["pairs"] = (row, first, second, pair_w)
        if self.reml and self.p:
            V = ((ctx.A_U @ ctx.Z_F) - _dense(ctx.F)) if self.n_U else -_dense(ctx.F)
            SinvVt = sla.cho_solve((ctx.chol_S, True), V.T)  # p x |R|
            h = h + np.einsum("ij,ji->i", V, SinvVt)
            extra["reml"] = (ctx.Z_F, SinvVt)
        return h, extra

    def _gradient(self, th, W, e, h, xbar, entry_vals, extra, qfac) -> np.ndarray:
        """Gradient w.r.t. the optimizer variables; ``qfac`` weighs the quadratic term (1/sigma^2 if profiled)."""
        gram, n_R = self.gram, self.n_R
        sd_rows = self.sd_R >= 0
        per_row = 1.0 - W * h - qfac * W * e * e
        sums = np.bincount(self.sd_R[sd_rows], weights=per_row[sd_rows], minlength=self.cm.n_theta)
        grad = np.zeros(self.free.shape[0])
        for i, entry in enumerate(self.free):
            g = 0.0
            if self.roles.sd[entry]:
                g += 2.0 / th[entry] * sums[entry]  # d_k = (base theta)^2: dd/d = 2/theta
            if self.roles.scale[entry]:
                dcoef = self.coef_derivative(entry)
                de = -np.bincount(self.rows, weights=dcoef * xbar[self.cols], minlength=n_R)
                g += 2.0 * qfac * float(np.sum(W * e * de))
                if "pairs" in extra:
                    row, first, second, pair_w = extra["pairs"]
                    da = np.concatenate([np.zeros(gram.diag_U.shape[0]), -dcoef[gram.coef_U]])
                    dh = np.bincount(row, weights=pair_w * (da[first] * entry_vals[second]
                                                            + entry_vals[first] * da[second]), minlength=n_R)
                    if "reml" in extra:  # 2 (dA_U Z_F S^{-1} V^T)_kk, entry by entry
                        Z_F, SinvVt = extra["reml"]
                        cross = np.einsum("ij,ji->i", Z_F[gram.entry_col], SinvVt[:, gram.entry_row])
                        dh = dh + 2.0 * np.bincount(gram.entry_row, weights=da * cross, minlength=n_R)
                    g += float(np.sum(W * dh))
            if self.roles.linear[entry]:
                g -= 2.0 * qfac * float(np.sum(W * e * self.free_offset(entry, th)))
            grad[i] = g
        return grad * self.var_scale

    # ------------------------------------------------------------- curvature

    def projected_residuals(self, ctx: "_Context", R: np.ndarray) -> np.ndarray:
        """``P_R R`` for columns of ``R`` (|R| x k), in working units.

        ``P_R r = W (r - A_U m(r) [+ F' beta(r)])``: the data-space residual of
        treating ``r`` as data (REML also projects out the fixed effects).
        """
        W = ctx.W
        WR = W[:, None] * R
        if self.n_U:
            A_U = ctx.A_U if ctx.A_U is not None else self.A_U(ctx.entry_vals)
            M = ctx.fac.solve(np.asarray(A_U.T @ WR)).reshape(self.n_U, -1)
        else:
            A_U, M = None, np.zeros((0, R.shape[1]))
        res = R.copy()
        if self.reml and self.p:
            G_R = _dense(ctx.F.T @ WR)  # F'^T W R
            rhs = (ctx.Z_F.T @ np.asarray(A_U.T @ WR) if self.n_U else 0.0) - G_R
            B = sla.cho_solve((ctx.chol_S, True), rhs)
            M = M + (ctx.Z_F @ B if self.n_U else 0.0)
            res = res + np.asarray(ctx.F @ B)
        if self.n_U:
            res = res - np.asarray(A_U @ M)
        return W[:, None] * res

    def _curvature(self, th, ctx: "_Context", e, sigma2, grad, v) -> np.ndarray:
        """Average-information approximation of the Hessian w.r.t. the optimizer variables.

        Components are variance classes ``psi_c`` (each free sd entry, and the
        profiled one): ``AI = g^T P g`` with ``g_c = e 1_c / psi_c``; mapped to
        the variables by the Jacobian of ``psi`` (plus ``max(0, grad/v)``, the
        part of the transformation's curvature that matters at a boundary),
        and with the profiled scale's row and column eliminated (Schur).
        """
        prof = self.roles.profiled
        classes = list(self.free) + ([prof] if prof >= 0 else [])
        k = len(classes)
        Rm = np.zeros((self.n_R, k))
        psi_t = np.array([th[c] ** 2 for c in classes])
        for i, c in enumerate(classes):
            rows = self.sd_R == c
            Rm[rows, i] = e[rows] / psi_t[i]
        PR = self.projected_residuals(ctx, Rm)
        AI = Rm.T @ PR / sigma2 ** 3 if prof >= 0 else Rm.T @ PR  # natural units: P/s2, g/s2 twice
        AI = 0.5 * (AI + AI.T)
        m = self.free.shape[0]
        # Jacobian of psi (natural) w.r.t. (v or w = v^2, [sigma^2])
        J = np.zeros((k, m + (1 if prof >= 0 else 0)))
        s2 = sigma2 if prof >= 0 else 1.0
        for i in range(m):
            J[i, i] = 2.0 * s2 * th[self.free[i]] * self.var_scale[i]
            if prof >= 0:
                J[i, m] = th[self.free[i]] ** 2
        if prof >= 0:
            J[m, m] = 1.0
        H = J.T @ AI @ J
        vv = np.maximum(np.asarray(v, float), SD_FLOOR)
        H[np.arange(m), np.arange(m)] += np.maximum(0.0, grad / vv)
        if prof >= 0:
            H = H[:m, :m] - np.outer(H[:m, m], H[m, :m]) / H[m, m]
        return 0.5 * (H + H.T)


def _dense(X) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X)


@dataclass
class _Context:
    """What one evaluation's gradient and curvature reuse."""

    fac: object
    entry_vals: np.ndarray
    A_U: sp.csr_matrix | None
    Z_F: np.ndarray | None
    chol_S: np.ndarray | None
    F: object  # F', dense or sparse
    W: np.ndarray
