"""Cholesky factors of patterns that do not fill in: chains, trees, bands, nested models.

When ``Q``'s lower triangle, in some elimination order, is already closed
under elimination (the order is a *perfect elimination order*: the later
neighbours of every variable are pairwise adjacent), its Cholesky factor
``L`` has exactly ``Q``'s pattern.  Then no symbolic factorization is
needed, and a simplicial left-looking factorization on that pattern costs
``sum_j |col_j|^2`` flops with no overhead: a chain of a million steps
factors in a few milliseconds.  :func:`is_closed` checks the property in one
pass (``S_j \\ {p} ⊆ S_p`` for the first row ``p`` below the diagonal of each
column ``j``, which implies that every ``S_j`` is a clique, by induction from
the last column); :mod:`gdag.linalg.ordering` tries the declaration order,
its reverse and the static degree order.

:class:`ZeroFillAnalysis` and :class:`ZeroFillFactor` have the part of
scikit-sparse's CHOLMOD ``Factor`` interface that
:class:`gdag.linalg.factor.CholeskyFactor` uses (``copy``, ``P``,
``cholesky_inplace``, ``D``, ``L``, ``logdet``, ``solve_A``, ``solve_L``,
``solve_Lt``), so that class serves both.  Both factor the same matrix; only
the order of the floating-point operations differs from CHOLMOD's simplicial
factor, not the method.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

from .forest import BACKWARD, BY_D, BY_ROOT_D, FORWARD, LDLSolves, NotPositiveDefinite
from .gram import bucket
from .selinv import _seek, selected_inverse_ldl


def is_closed(indptr: np.ndarray, indices: np.ndarray) -> bool:
    """True if the lower-triangular CSC pattern is its own Cholesky pattern (no fill in this order).

    Also requires what the kernels here rely on: every column starts with
    its diagonal and its rows strictly increase.
    """
    return bool(_is_closed(indptr, indices))


def column_flops(indptr: np.ndarray) -> float:
    """``sum_j |col_j|^2``: the flops of factoring a pattern that does not fill in."""
    counts = np.diff(indptr).astype(float)
    return float(counts @ counts)


class ZeroFillAnalysis:
    """The symbolic side of a pattern closed under elimination (in the order given).

    ``indptr``/``indices`` are the lower triangle of the matrix to factor
    (already permuted), columns sorted with the diagonal first; ``L`` has
    exactly this pattern (forests take :mod:`gdag.linalg.forest` instead).
    The entries are grouped by row for the left-looking updates.
    ``copy()`` gives a new numeric factor, as CHOLMOD's symbolic factors do.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray):
        self.n = indptr.shape[0] - 1
        self.indptr, self.indices = indptr, indices
        row_ptr, order = bucket(indices, self.n)  # stable: the columns of each row ascend, its diagonal last
        self.row_ptr, self.row_pos = row_ptr, order
        self.row_col = np.repeat(np.arange(self.n, dtype=indices.dtype), np.diff(indptr))[order]

    def P(self) -> np.ndarray:
        """The identity: the order was applied before (``Analysis.reorder``)."""
        return np.arange(self.n, dtype=np.int64)

    def copy(self) -> "ZeroFillFactor":
        return ZeroFillFactor(self)


class ZeroFillFactor(LDLSolves):
    """``Q = L~ D L~^T`` (unit ``L~``) on the analysed pattern; CHOLMOD's method names (see the module docstring).

    Like CHOLMOD's simplicial factors, it computes ``L~`` and ``D`` without
    square roots; :meth:`L` gives ``L = L~ D^{1/2}``.
    """

    def __init__(self, analysis: ZeroFillAnalysis):
        self._a = analysis
        n_L = analysis.indices.shape[0]
        self._data = np.empty(n_L)  # L~ below the diagonal, D on it
        self._unscaled = np.empty(n_L)  # L~ D below the diagonal, before the division by the pivot
        self._work = np.empty(analysis.n)
        self._L = self._Z = self._scratch = None
        self.worst_ratio = 1.0  # the smallest pivot relative to the diagonal of Q it came from

    def cholesky_inplace(self, Q: sp.csc_matrix, source: np.ndarray | None = None) -> None:
        """Factor ``Q`` (lower triangle on the analysed pattern); raises on the first non-positive pivot.

        With ``source``, ``Q`` is in the original order and entry ``p`` of the
        analysed pattern is ``Q.data[source[p]]`` (the permutation is read, never applied).
        """
        a = self._a
        if Q.nnz != a.indices.shape[0]:
            raise ValueError("internal error: a matrix with another pattern than the analysed one")
        self._L = self._Z = None
        source = _NO_PERM if source is None else source
        bad, self.worst_ratio = _left_looking(a.indptr, a.indices, a.row_ptr, a.row_pos, a.row_col, Q.data, source,
                                              self._data, self._unscaled, self._work)
        if bad >= 0:
            raise NotPositiveDefinite(int(bad))

    def L(self) -> sp.csc_matrix:
        """``L = L~ D^{1/2}`` (CSC, canonical, diagonal first), made once per factorization."""
        if self._L is None:
            a = self._a
            values = self._data * np.repeat(np.sqrt(self.D()), np.diff(a.indptr))
            values[a.indptr[:-1]] = np.sqrt(self.D())
            L = sp.csc_matrix((values, a.indices, a.indptr), shape=(a.n, a.n))
            L.has_sorted_indices = True  # checked sorted and duplicate-free by is_closed
            L.has_canonical_format = True
            self._L = L
        return self._L

    def D(self) -> np.ndarray:
        """The pivots ``D`` (``L_jj^2``)."""
        return self._data[self._a.indptr[:-1]]

    def selected_inverse(self) -> sp.csc_matrix:
        """``Q^{-1}`` on the pattern of :meth:`L`, from ``L~`` and ``D`` directly; made once per factorization."""
        a = self._a
        if self._Z is None:
            self._Z = selected_inverse_ldl(a.indptr, a.indices, self._data)
        return sp.csc_matrix((self._Z, a.indices, a.indptr), shape=(a.n, a.n))

    def solve_vector(self, b: np.ndarray, perm: np.ndarray | None) -> np.ndarray:
        """``x`` with ``Q[perm][:, perm] x[perm] = b`` (``perm`` None: the identity), in one gather, two sweeps and one scatter."""
        a = self._a
        if self._scratch is None:
            self._scratch = np.empty(a.n)
        out = np.empty(a.n)
        _solve_vector(a.indptr, a.indices, self._data, _NO_PERM if perm is None else perm,
                      np.asarray(b, dtype=float), out, self._scratch)
        return out

    def _steps(self, b: np.ndarray, steps: int) -> np.ndarray:
        return solve_copy(self._a.indptr, self._a.indices, self._data, b, steps, unit=True)


_NO_PERM = np.zeros(0, dtype=np.int64)




def solve_copy(indptr: np.ndarray, rows: np.ndarray, values: np.ndarray, b: np.ndarray, steps: int,
               unit: bool = False) -> np.ndarray:
    """The ``steps`` of :func:`triangular_solve` applied to a copy of ``b`` (a vector or columns)."""
    b = np.asarray(b, dtype=float)
    vector = b.ndim == 1
    x = np.array(b[:, None] if vector else b, dtype=float, order="C", copy=True)
    triangular_solve(indptr, rows, values, x, steps, unit)
    return x[:, 0] if vector else x


@numba.njit(cache=True)
def _is_closed(indptr, indices):
    n = indptr.shape[0] - 1
    for j in range(n):
        start, end = indptr[j], indptr[j + 1]
        if start == end or indices[start] != j:
            return False
        for q in range(start + 1, end):
            if indices[q] <= indices[q - 1]:
                return False
        if end - start > 2:  # S_j minus its first row p must lie in column p
            p = indices[start + 1]
            cursor, stop = indptr[p] + 1, indptr[p + 1]
            for q in range(start + 2, end):
                cursor = _seek(indices, cursor, stop, indices[q])
                if cursor == stop or indices[cursor] != indices[q]:
                    return False
                cursor += 1
    return True


@numba.njit(cache=True)
def _left_looking(indptr, indices, row_ptr, row_pos, row_col, q_data, source, l_data, unscaled, work):
    """``L~`` and ``D``, column by column: column ``j`` of ``Q`` minus the updates from earlier columns ``k``.

    The pattern is closed under elimination, so every row an update touches
    is in column ``j``'s pattern, whose slots of ``work`` were just set from
    ``Q`` (entry ``p`` read at ``source[p]`` unless ``source`` is empty).
    The products are CHOLMOD's (``L~_jk`` times the unscaled ``L~_ik D_k``,
    no square roots), which keeps a pivot that rounding has nearly cancelled
    as accurate as CHOLMOD keeps it.  Returns the first column whose pivot is
    not positive (or -1), and the smallest ratio of a pivot to the diagonal
    of ``Q`` it came from.
    """
    n = indptr.shape[0] - 1
    moved = source.shape[0] > 0
    worst = 1.0
    for j in range(n):
        start, end = indptr[j], indptr[j + 1]
        for p in range(start, end):
            work[indices[p]] = q_data[source[p]] if moved else q_data[p]
        for r in range(row_ptr[j], row_ptr[j + 1] - 1):  # the row's last entry is its diagonal
            p_jk = row_pos[r]
            l_jk = l_data[p_jk]
            for q in range(p_jk, indptr[row_col[r] + 1]):
                work[indices[q]] -= l_jk * unscaled[q]
        pivot = work[j]
        if not pivot > 0.0:
            return j, 0.0
        worst = min(worst, pivot / (q_data[source[start]] if moved else q_data[start]))
        l_data[start] = pivot
        for p in range(start + 1, end):
            y = work[indices[p]]
            unscaled[p] = y
            l_data[p] = y / pivot
    return -1, worst


@numba.njit(cache=True)
def triangular_solve(indptr, rows, values, x, steps, unit):
    """In place on ``x`` (n x k, C order), in this order as ``steps`` asks: ``L^{-1}``, ``D^{-1}`` or ``D^{-1/2}``, ``L^{-T}``.

    ``L`` is CSC with the diagonal first in each column.  With ``unit``,
    ``values`` holds ``L~`` below the diagonal and ``D`` on it (an
    ``L~ D L~^T`` factor); otherwise ``L`` itself (``L L^T``, no D steps).
    """
    n, k = x.shape
    if steps & FORWARD:
        for j in range(n):
            if not unit:
                d = values[indptr[j]]
                for c in range(k):
                    x[j, c] /= d
            for p in range(indptr[j] + 1, indptr[j + 1]):
                i, l = rows[p], values[p]
                for c in range(k):
                    x[i, c] -= l * x[j, c]
    if unit and steps & (BY_D | BY_ROOT_D):
        for j in range(n):
            d = values[indptr[j]] if steps & BY_D else np.sqrt(values[indptr[j]])
            for c in range(k):
                x[j, c] /= d
    if steps & BACKWARD:
        for j in range(n - 1, -1, -1):
            for p in range(indptr[j] + 1, indptr[j + 1]):
                i, l = rows[p], values[p]
                for c in range(k):
                    x[j, c] -= l * x[i, c]
            if not unit:
                d = values[indptr[j]]
                for c in range(k):
                    x[j, c] /= d


@numba.njit(cache=True)
def _solve_vector(indptr, rows, values, perm, b, out, x):
    """``out[perm] = L~^{-T} D^{-1} L~^{-1} b[perm]`` (``perm`` empty: the identity); ``x`` is scratch.

    The operations of :func:`triangular_solve` with ``FORWARD | BY_D | BACKWARD``, in the same order.
    """
    n = indptr.shape[0] - 1
    identity = perm.shape[0] == 0
    for j in range(n):
        x[j] = b[j] if identity else b[perm[j]]
    for j in range(n):
        x_j = x[j]
        for p in range(indptr[j] + 1, indptr[j + 1]):
            x[rows[p]] -= values[p] * x_j
    for j in range(n - 1, -1, -1):
        x_j = x[j] / values[indptr[j]]
        for p in range(indptr[j] + 1, indptr[j + 1]):
            x_j -= values[p] * x[rows[p]]
        x[j] = x_j
        out[j if identity else perm[j]] = x_j
