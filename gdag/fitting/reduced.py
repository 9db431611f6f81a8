r"""Fits whose observed leaf families enter as sums over their rows (:mod:`gdag.fitting.leaves`).

The latent model (the declaration without the leaf families) keeps the exact
general path of :class:`~gdag.fitting.objective.Objective`; each variance class
``k`` of the leaves' rows adds ``omega_k = 1 / theta_k^2`` times its sums:

.. math::

    Q \mathrel{+}= \omega_k Z^T W Z, \quad b \mathrel{+}= \omega_k Z^T W \tilde y, \quad
    G \mathrel{-}= \omega_k Z^T W X, \quad F^T W F \mathrel{+}= \omega_k X^T W X, \quad
    F^T W r_0 \mathrel{-}= \omega_k X^T W \tilde y

(``tilde y``: the data less offsets and observed parents), and to the objective
its residual quadratic form, ``sum log d`` and row count.  ``Q`` lives on the
union of the latent pattern and the sums' patterns, analysed once.  For a
class whose sd is optimized (not the profiled scale) the gradient adds
``2 / theta (n_k - omega_k tr_k - omega_k q_k / sigma^2)`` with ``q_k`` the
class's ``e^T W e / omega_k`` and ``tr_k = sum w h = tr(Q^{-1} Z^T W Z)`` (REML:
plus the fixed effects' part), ``Q^{-1}`` from the selected inverse.

Nothing row-sized is kept: the leaves' memory is that of their sums.
"""

from __future__ import annotations

import copy

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from ..cache import QueryCache
from ..compiler import CompiledModel
from ..data import checked, data_vector, without
from ..errors import ModelSpecError
from ..linalg import factor as factors
from ..linalg.blocked import analyze_blocked
from ..observations import LeafRows, reducible_families
from ..pattern import Conditioning
from ..spec import ModelSpec
from ..timing import phase
from . import derivatives
from .derivatives import Point
from .leaves import ClassAccumulator, LeafStart, LeafStatistics, leaf_coefficients, observed_values, reference_fit, spread_of_values
from .objective import Evaluation, Objective
from .roles import Roles, exact_fit_error, infer_roles

# Rows a chunk when a fit sums the leaves: bounds the pass's temporaries (about 300 bytes a row, 20 MB).
FIT_CHUNK_ROWS = 1 << 16
# The sums' residual square is known to about 1e-16 of the square about beta0: at or below this fraction of it,
# the fit is exact (as is one at the joint system's criterion, EXACT_FIT^2 of the data's square).
LEAF_EXACT_FIT = 64 * np.finfo(float).eps


class ReducedObjective(Objective):
    """:class:`~gdag.fitting.objective.Objective` of the latent model plus the leaves' :class:`LeafStatistics`."""

    def __init__(self, cm: CompiledModel, cond: Conditioning, x: np.ndarray, roles: Roles, reml: bool,
                 stats: LeafStatistics, factorization: str = "auto", scales: np.ndarray | None = None):
        self.stats = stats
        super().__init__(cm, cond, x, roles, reml, factorization, scales, leaf_rows=stats.count)
        classes = stats.classes
        self.leaf_classes = {c.entry: (stats.names, c.count) for c in classes}
        self._entries = np.array([c.entry for c in classes], dtype=np.int64)
        b0 = stats.beta0
        self._Zy = np.array([c.Zr + c.ZX @ b0 for c in classes]).reshape(len(classes), self.n_U)
        self._Xy = np.array([c.Xr + c.XX @ b0 for c in classes]).reshape(len(classes), self.p)
        # what the exact-fit check compares the residual square with (exact_fit = EXACT_FIT^2 times it)
        self._size = np.array([c.rr + 2.0 * b0 @ c.Xr + b0 @ c.XX @ b0 + LEAF_EXACT_FIT / self.exact_fit * c.rr
                               for c in classes])
        self._optimized = np.isin(self._entries, self.free)
        self._analysis = None
        if self.n_U:
            self._union_pattern()

    def _union_pattern(self) -> None:
        """``Q``'s pattern: the latent one and every class's ``Z^T W Z``; each class's values on it."""
        base = self.cond.gram.pattern
        n = base.shape[0]
        base_keys = _keys(base)
        class_keys = [_keys(c.ZZ) for c in self.stats.classes]
        keys = np.sort(np.concatenate([base_keys, *class_keys]), kind="stable")  # sorted runs: a merge
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if keys.size else keys
        cols, rows = np.divmod(keys, n)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=n), out=indptr[1:])
        self.pattern = sp.csc_matrix((np.ones(keys.size), rows, indptr), shape=(n, n))
        self._base_position = np.searchsorted(keys, base_keys)
        self._class_values = np.zeros((len(class_keys), keys.size))
        for k, (c, ck) in enumerate(zip(self.stats.classes, class_keys)):
            self._class_values[k, np.searchsorted(keys, ck)] = c.ZZ.data
        self._pattern_rows, self._pattern_cols = rows, cols
        self._pattern_mult = np.where(rows == cols, 1.0, 2.0)  # an off-diagonal entry stands for two

    # ------------------------------------------------------------ assembly and factor

    def omega(self, th: np.ndarray) -> np.ndarray:
        """``1 / theta_k^2`` of each class (1 for a constant sd)."""
        theta = np.where(self._entries >= 0, th[np.maximum(self._entries, 0)], 1.0)
        return 1.0 / (theta * theta)

    def _assemble(self, th: np.ndarray) -> Point:
        pt = super()._assemble(th)
        pt.omega = self.omega(th)
        if self.n_U:
            data = pt.omega @ self._class_values
            data[self._base_position] += pt.Q.data
            pt.Q = sp.csc_matrix((data, self.pattern.indices, self.pattern.indptr), shape=self.pattern.shape)
            pt.b = pt.b + pt.omega @ self._Zy
        return pt

    def new_factor(self, Q: sp.csc_matrix):
        """A factor on the union pattern's analysis (blocked for crossed designs where it pays)."""
        if self._analysis is None:
            with phase("analyze"):
                found = None
                if self.factorization != "sparse":
                    family = np.searchsorted(self.cm.family_offset, self.cond.U, side="right") - 1
                    found = analyze_blocked(self.pattern, family, required=self.factorization == "blocked")
                self._analysis = found if found is not None else factors.analyze(self.pattern)
        return self._analysis.factor(Q, self.cond.label_unobserved)

    def with_leaves(self, pt: Point, G, FWF, FWr):
        omega, classes = pt.omega, self.stats.classes
        for k, c in enumerate(classes):
            G = G - omega[k] * c.ZX
            FWF = FWF + omega[k] * c.XX
        return G, FWF, FWr - omega @ self._Xy

    def leaf_residual(self, pt: Point, beta: np.ndarray) -> tuple[float, float, float]:
        """``sum_k omega_k q_k`` with ``q_k`` the class's quadratic form in ``(m, beta - beta0)``."""
        m, delta = pt.m, beta - self.stats.beta0
        q = np.empty(len(self.stats.classes))
        for k, c in enumerate(self.stats.classes):
            Lm = c.ZZ @ m
            mZZm = 2.0 * float(m @ Lm) - float(np.dot(c.ZZ.diagonal() * m, m))
            q[k] = (c.rr - 2.0 * float(c.Zr @ m) - 2.0 * float(c.Xr @ delta) + mZZm
                    + 2.0 * float(m @ (c.ZX @ delta)) + float(delta @ c.XX @ delta))
        pt.leaf_q, pt.beta = q, beta
        counts = np.array([c.count for c in self.stats.classes], dtype=float)
        log_d = float(sum(c.log_base for c in self.stats.classes) - counts @ np.log(pt.omega))
        return float(pt.omega @ q), log_d, float(pt.omega @ self._size)

    # ------------------------------------------------------------ derivatives

    def _derivatives(self, out: Evaluation, pt: Point, v, gradient: bool, curvature: bool, moments: bool) -> None:
        super()._derivatives(out, pt, v, gradient or curvature, False, moments)
        if self._optimized.any() and (gradient or curvature or moments):
            self._leaf_derivatives(out, pt, gradient or curvature)
        if curvature and self.has_curvature:
            out.curvature = derivatives.curvature(self, pt, out.gradient, v, self._information)

    def _leaf_derivatives(self, out: Evaluation, pt: Point, gradient: bool) -> None:
        """The optimized classes' second moments (for EM) and their part of the gradient."""
        tr = self._traces(pt)
        out.leaf_second = pt.leaf_q + tr  # sum w (e^2 + h) per class, base units
        if gradient:
            qfac = 1.0 / pt.sigma2 if self.roles.profiled >= 0 else 1.0
            for k in np.flatnonzero(self._optimized):
                i = int(np.flatnonzero(self.free == self._entries[k])[0])
                w = pt.omega[k]
                per_class = self.stats.classes[k].count - w * tr[k] - qfac * w * pt.leaf_q[k]
                out.gradient[i] += 2.0 / pt.th[self._entries[k]] * per_class * self.scales[i]

    def _information(self, pt: Point, C: np.ndarray, M: np.ndarray, moves: np.ndarray) -> np.ndarray:
        """``C^T P C + 2 M^T P M`` (see :func:`gdag.fitting.derivatives.curvature`) with the leaves' rows.

        A column's part on class ``k``'s rows is ``a_k e_k``: ``2 / theta`` for its own sd, ``1 / sigma^2``
        for the profiled scale.  With ``u_k = -Z^T W e_k`` and ``f_k = X^T W e_k`` (base weights) the
        projection adds ``omega a u`` to ``A_U^T W c`` and ``omega a f`` to ``F^T W c``, and a pair of
        columns gains ``sum_k a_ki omega_k (a_kj q_k + f_k B_j - u_k M_j)``.
        """
        m, n_C = self.free.shape[0], C.shape[1]
        a = np.zeros((len(self.stats.classes), n_C + moves.size))
        for k in np.flatnonzero(self._optimized):
            i = int(np.flatnonzero(self.free == self._entries[k])[0])
            a[k, i] = 2.0 / pt.th[self._entries[k]] * self.scales[i]
        if n_C > m:  # the profiled scale's column
            a[:, m] = 1.0 / pt.sigma2
        Mm = M  # the columns `moves` only
        k = n_C + moves.size
        U, F_e = self._residual_products(pt)
        wa = pt.omega[:, None] * a
        A_U = (pt.A_U if pt.A_U is not None else self.A_U(pt.entry_vals)) if self.n_U else sp.csr_matrix((C.shape[0], 0))
        # c_i^T P c_j = c_i^T W c_j - (A_U^T W c_i)^T m_j + (F^T W c_i)^T B_j: no data-space P is formed
        WC, WM = pt.W[:, None] * C, pt.W[:, None] * Mm
        inner = np.block([[C.T @ WC, C.T @ WM], [Mm.T @ WC, Mm.T @ WM]])
        t_latent = np.hstack([np.asarray(A_U.T @ WC), np.asarray(A_U.T @ WM)]).reshape(self.n_U, k)
        FW = np.hstack([np.asarray(pt.F.T @ WC), np.asarray(pt.F.T @ WM)]).reshape(self.p, k) if self.reml and self.p else None
        del WC, WM
        t = t_latent + U.T @ wa
        solved = self._factor.solve(t).reshape(self.n_U, -1) if self.n_U else t
        B = np.zeros((self.p, k))
        if FW is not None:
            B = sla.cho_solve((pt.chol_S, True), pt.Z_F.T @ t - (FW + F_e.T @ wa), check_finite=False)
            solved = solved + pt.Z_F @ B
        full = inner - t_latent.T @ solved + (FW.T @ B if FW is not None else 0.0)
        full += wa.T @ (a * pt.leaf_q[:, None] + F_e @ B - U @ solved)
        H = full[:n_C, :n_C].copy()
        H[np.ix_(moves, moves)] += 2.0 * full[n_C:, n_C:]
        return H

    def _residual_products(self, pt: Point) -> tuple[np.ndarray, np.ndarray]:
        """``u_k = -Z^T W e_k`` (classes x |U|) and ``f_k = X^T W e_k`` (classes x p), base weights."""
        m, delta = pt.m, pt.beta - self.stats.beta0
        U = np.array([-(c.Zr - c.ZX @ delta - (c.ZZ @ m + c.ZZ.T @ m - c.ZZ.diagonal() * m))
                      for c in self.stats.classes]).reshape(len(self.stats.classes), self.n_U)
        F_e = np.array([c.Xr - c.XX @ delta - c.ZX.T @ m for c in self.stats.classes]).reshape(len(self.stats.classes), self.p)
        return U, F_e

    def _traces(self, pt: Point) -> np.ndarray:
        """``tr_k = sum_{rows of k} w h`` for the optimized classes (0 for the others)."""
        tr = np.zeros(len(self.stats.classes))
        cov = pt.fac.covariances(self._pattern_rows, self._pattern_cols) if self.n_U else np.zeros(0)
        for k in np.flatnonzero(self._optimized):
            c = self.stats.classes[k]
            tr[k] = float(self._class_values[k] @ (self._pattern_mult * cov)) if self.n_U else 0.0
            if self.reml and self.p:  # the fixed effects' part: tr(S^{-1} sum w V^T V), V = -(Z Z_F + X)
                ZF = pt.Z_F
                ZZ_ZF = c.ZZ @ ZF + c.ZZ.T @ ZF - c.ZZ.diagonal()[:, None] * ZF
                M = ZF.T @ ZZ_ZF + ZF.T @ c.ZX + c.ZX.T @ ZF + c.XX
                tr[k] += float(np.trace(sla.cho_solve((pt.chol_S, True), M, check_finite=False)))
        return tr

    def leaf_moments(self, ev: Evaluation):
        second, counts = np.zeros(self.cm.n_theta), np.zeros(self.cm.n_theta)
        found = getattr(ev, "leaf_second", None)
        for k in np.flatnonzero(self._optimized):
            second[self._entries[k]] += found[k]
            counts[self._entries[k]] += self.stats.classes[k].count
        if found is not None and float(np.sum(found)) <= self.exact_fit * float(np.sum(self._size)):
            raise exact_fit_error(self.cm.name, [self.roles.labels[k] for k in self.free], float(np.sum(found)))
        return second, counts


def _keys(pattern: sp.csc_matrix) -> np.ndarray:
    """``col * n + row`` of each stored entry (ascending for a canonical CSC matrix)."""
    n = pattern.shape[0]
    cols = np.repeat(np.arange(n, dtype=np.int64), np.diff(pattern.indptr))
    return cols * n + pattern.indices.astype(np.int64)


# ---------------------------------------------------------------- the sums of in-memory leaves


def reduced_setup(spec: ModelSpec, queries: QueryCache, data, profile: bool):
    """``(cm, cond, x, observed, roles, stats, start, full)``: the latent model, the leaves' sums, starting
    values' data and the leaves' validated data (a copy), or None when no
    observed leaf family can be summed (:func:`gdag.observations.reducible_families`, :func:`fit_ready`)."""
    data = checked(spec, data)
    # a leaf's unobserved rows integrate out (nothing depends on them): a partly observed leaf is summed too
    seen = {name: values for name, values in data.items() if not np.isnan(values).all()}
    leaves = reducible_families(queries.graph(spec), seen) if seen else ()
    if not leaves:
        return None
    full = {name: seen[name] for name in leaves}  # the leaves' data, NaN where unobserved
    latent_queries, latent = queries.latent(spec, leaves)
    cm = latent_queries.compiled(latent)
    x, observed = data_vector(latent, cm, without(spec, data, leaves))
    cond = latent_queries.conditioning_for(cm, observed)
    rows = [LeafRows(spec.nodes[name], cm) for name in sorted(leaves)]
    if cm.n_theta == 0 or any(s >= 0 for leaf in rows for s in leaf.scale):
        return None  # nothing to fit, or a parameter scales a leaf's node term: the joint system
    leaf_rows, leaf_linear = leaf_rows_of(rows, cm.n_theta, full)
    roles = infer_roles(cm, cond, profile, leaf_rows, leaf_linear)
    if not fit_ready(rows, roles):
        return None
    with phase("assemble"):
        stats = leaf_statistics(rows, full, x, cond.pos_U, cond.n_unobserved, roles.fixed)
    x_R = x[cond.R]
    start = LeafStart(spread_of_values([x_R[np.isfinite(x_R)], *(observed_values(full[name]) for name in stats.names)]),
                      leaf_coefficients(stats, cm.sd_param[cond.U], cm.n_theta))
    return cm, cond, x, observed, roles, stats, start, full


def own_data(spec: ModelSpec, data, full: dict) -> dict:
    """The data a reduced fit's posterior reads, copied (the caller may change theirs): the leaves' validated
    values and the rest as given."""
    return {**{k: copy.deepcopy(v) for k, v in without(spec, data, full).items()}, **{k: v.copy() for k, v in full.items()}}


def fit_ready(leaves: list[LeafRows], roles: Roles) -> bool:
    """Whether every leaf can be summed for a fit: no parameter scales a node term, the parameters in their
    means are fixed effects and those setting their sds only that."""
    fixed = np.zeros(roles.sd.shape[0], bool)
    fixed[roles.fixed] = True
    for leaf in leaves:
        if any(s >= 0 for s in leaf.scale) or not all(np.all(fixed[t]) for _, t, _ in leaf.fixed):
            return False
        if leaf.sd_theta is not None and not np.all(roles.pure_variance[np.unique(leaf.sd_theta)]):
            return False
    return True


def leaf_rows_of(leaves: list[LeafRows], n_theta: int, data: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(observed rows per sd entry, the last for constant sds; entries in the means)`` for :func:`infer_roles`
    (every row when ``data`` is None)."""
    rows, linear = np.zeros(n_theta + 1, np.int64), np.zeros(n_theta, bool)
    for leaf in leaves:
        seen = None if data is None or not np.isnan(data[leaf.name]).any() else ~np.isnan(data[leaf.name])
        if leaf.sd_theta is None:
            rows[n_theta] += leaf.size if seen is None else int(seen.sum())
        else:
            rows[:n_theta] += np.bincount(leaf.sd_theta if seen is None else leaf.sd_theta[seen], minlength=n_theta)
        for _, t, _ in leaf.fixed:
            linear[t] = True
    return rows, linear


def leaf_statistics(leaves: list[LeafRows], data: dict, x: np.ndarray, pos_U: np.ndarray, n_U: int,
                    fixed: np.ndarray, chunk_rows: int = FIT_CHUNK_ROWS, beta0: np.ndarray | None = None) -> LeafStatistics:
    """The sums of in-memory leaves, chunk by chunk in row order; ``fixed``: the fixed effects' theta entries."""
    column = np.full(max(int(fixed.max(initial=-1)) + 1, 1), -1, dtype=np.int64)
    column[fixed] = np.arange(fixed.shape[0])
    p = fixed.shape[0]
    if beta0 is None:
        first = leaves[0]
        rows = slice(0, min(first.size, chunk_rows))
        X, y_tilde, _, w, _ = _chunk(first, data[first.name], x, pos_U, column, p, rows, _ascending(first))
        seen = ~np.isnan(y_tilde)
        beta0 = reference_fit(X[seen], y_tilde[seen], w[seen])
    classes: dict[int, ClassAccumulator] = {}
    for leaf in leaves:
        ordered = _ascending(leaf)
        for start in range(0, leaf.size, max(chunk_rows, 1)):
            rows = slice(start, min(start + chunk_rows, leaf.size))
            X, y_tilde, cols, w, entries = _chunk(leaf, data[leaf.name], x, pos_U, column, p, rows, ordered)
            coefs = _coefs(leaf, rows)
            seen = ~np.isnan(y_tilde)
            if not seen.all():  # unobserved rows integrate out: they add nothing
                X, y_tilde, cols, w, entries, coefs = (X[seen], y_tilde[seen], cols[:, seen], w[seen], entries[seen],
                                                       coefs[:, seen])
            r = y_tilde - X @ beta0
            if entries.min(initial=0) == entries.max(initial=0):  # one class (the usual case): no selection
                entry = int(entries[0]) if entries.size else -1
                classes.setdefault(entry, ClassAccumulator(entry, n_U, p)).add(cols, coefs, X, r, w)
                continue
            for entry in np.unique(entries):
                keep = entries == entry
                accumulator = classes.setdefault(int(entry), ClassAccumulator(int(entry), n_U, p))
                accumulator.add(cols[:, keep], coefs[:, keep], X[keep], r[keep], w[keep])
    names = tuple(sorted(lf.name for lf in leaves))
    return LeafStatistics(names, beta0, tuple(classes[e].sums() for e in sorted(classes)))


def _ascending(leaf: LeafRows) -> list[bool]:
    """Whether each parameter term's rows ascend (a chunk's part is then a slice found by binary search)."""
    return [bool(np.all(r[1:] >= r[:-1])) for r, _, _ in leaf.fixed]


def _coefs(leaf: LeafRows, rows: slice) -> np.ndarray:
    n = rows.stop - rows.start
    return np.array([c[rows] for c in leaf.coef], dtype=float).reshape(len(leaf.coef), n)


def _chunk(leaf: LeafRows, y: np.ndarray, x: np.ndarray, pos_U: np.ndarray, column: np.ndarray, p: int, rows: slice,
           ordered: list[bool]):
    """One chunk's ``X``, data less offsets and observed parents, latent columns, base weights and sd entries."""
    n, start = rows.stop - rows.start, rows.start
    X = np.zeros((n, p))
    for (t_rows, t_theta, t_vals), ascending in zip(leaf.fixed, ordered):
        keep = slice(*np.searchsorted(t_rows, [start, rows.stop])) if ascending else (t_rows >= start) & (t_rows < rows.stop)
        flat = (t_rows[keep] - start) * p + column[t_theta[keep]]
        X += np.bincount(flat, weights=t_vals[keep], minlength=n * p).reshape(n, p)
    y_tilde = y[rows] - np.broadcast_to(leaf.offset, (leaf.size,))[rows]
    cols = np.empty((len(leaf.cols), n), dtype=np.int64)
    for a, (declared, start_a, coef) in enumerate(zip(leaf.cols, leaf.starts, leaf.coef)):
        par = declared[rows] + start_a
        has = declared[rows] >= 0
        u = np.where(has, pos_U[np.maximum(par, 0)], -1)
        seen = has & (u < 0)  # an observed parent: its value is data
        if seen.any():
            y_tilde = y_tilde - np.where(seen, coef[rows] * x[np.maximum(par, 0)], 0.0)
        cols[a] = u
    base = leaf.sd_base[rows]
    w = 1.0 / (base * base)
    if not np.all(np.isfinite(w) & (w > 0)):
        raise ModelSpecError(f"`{leaf.name}` has sds whose squares are not positive numbers in double precision; "
                                 "rescale its units.")
    entries = np.full(n, -1, np.int64) if leaf.sd_theta is None else leaf.sd_theta[rows]
    return X, y_tilde, cols, w, entries
