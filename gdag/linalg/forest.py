"""Cholesky factors of forests: every variable has at most one neighbour eliminated after it.

Chains, trees and nested models declared parents first are forests in the
declaration order or its reverse (a chain with leaves, or a tree, children
first).  Then ``Q = L~ D L~^T`` has one number of ``L~`` per variable, and
factoring, solving and the selected inverse are single sweeps over the
variables with nothing but three index arrays per variable: the parent's
step, and where the diagonal and the parent's entry sit in ``Q``'s data.
No permuted copy of ``Q``'s pattern is ever made; a variable's step is its
place in the elimination order (``order[step]`` is the variable).

:func:`natural_forest`, :func:`reversed_forest` and :func:`permuted_forest`
recognise the three orders gdag tries (:mod:`gdag.linalg.ordering`).
:class:`ForestAnalysis` and :class:`ForestFactor` have the part of CHOLMOD's
``Factor`` interface that :class:`gdag.linalg.factor.CholeskyFactor` uses,
with the conventions of a simplicial factor of a matrix permuted beforehand
(``Analysis.reorder`` holds the order: solves, ``L`` and its selected
inverse are in the permuted order; :meth:`ForestFactor.solve_vector` and
:meth:`ForestFactor.inverse_diagonal` take and give the original one).  The arithmetic is that of the general
left-looking kernel and the Takahashi sweep (:mod:`gdag.linalg.simplicial`,
:mod:`gdag.linalg.selinv`), operation for operation.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp


class NotPositiveDefinite(ValueError):
    """A pivot that is not positive, at ``column`` (of the analysed order), as CHOLMOD reports it."""

    def __init__(self, column: int):
        super().__init__(f"pivot {column} is not positive")
        self.column = column


class ForestAnalysis:
    """A forest in elimination order ``order``: per step its parent's step (-1: a root), and positions in ``Q.data``."""

    def __init__(self, order: np.ndarray, parent: np.ndarray, q_diag: np.ndarray, q_link: np.ndarray):
        self.n = order.shape[0]
        self.order, self.parent, self.q_diag, self.q_link = order, parent, q_diag, q_link

    @property
    def counts(self) -> tuple[int, float]:
        """``(nnz(L), flops)``: one or two entries per column of ``L``."""
        edges = int(np.count_nonzero(self.parent >= 0))
        return self.n + edges, float(self.n + 3 * edges)

    def P(self) -> np.ndarray:
        """The identity: the order is applied around the factor (``Analysis.reorder``), as for CHOLMOD's simplicial factors."""
        return np.arange(self.n, dtype=np.int64)

    def copy(self) -> "ForestFactor":
        return ForestFactor(self)


def natural_forest(lower: sp.csc_matrix) -> ForestAnalysis | None:
    """The forest of the given order: at most one row below each diagonal (stored first, rows sorted)."""
    n = lower.shape[0]
    if n == 0 or int(np.max(np.diff(lower.indptr))) > 2:
        return None
    parent, q_link = np.empty(n, dtype=lower.indices.dtype), np.empty(n, dtype=lower.indptr.dtype)
    if not _natural(lower.indptr, lower.indices, parent, q_link):
        return None
    return ForestAnalysis(np.arange(n, dtype=np.int64), parent, lower.indptr[:-1], q_link)


def reversed_forest(lower: sp.csc_matrix) -> ForestAnalysis | None:
    """The forest of the reverse order: at most one entry left of the diagonal in each row."""
    n = lower.shape[0]
    if n == 0 or lower.nnz > 2 * n:
        return None
    parent = np.full(n, -1, dtype=lower.indices.dtype)
    q_diag, q_link = np.empty(n, dtype=lower.indptr.dtype), np.full(n, -1, dtype=lower.indptr.dtype)
    if not _reversed(lower.indptr, lower.indices, parent, q_diag, q_link):
        return None
    return ForestAnalysis(np.arange(n - 1, -1, -1, dtype=np.int64), parent, q_diag, q_link)


def permuted_forest(perm: np.ndarray, indptr: np.ndarray, indices: np.ndarray, source: np.ndarray) -> ForestAnalysis | None:
    """The forest of a permuted pattern (``gdag.linalg.ordering.Permutation``'s arrays), if it is one."""
    n = perm.shape[0]
    counts = np.diff(indptr)
    if n == 0 or int(np.max(counts)) > 2 or not np.array_equal(indices[indptr[:-1]], np.arange(n)):
        return None
    has = counts == 2
    below = np.where(has, indptr[:-1] + 1, 0)
    parent = np.where(has, indices[below], -1).astype(indices.dtype)
    q_link = np.where(has, source[below], -1)
    return ForestAnalysis(np.asarray(perm, dtype=np.int64), parent, source[indptr[:-1]], q_link)


def skeleton_forest_edges(n: int, rows: np.ndarray, cols: np.ndarray) -> int | None:
    """The number of edges when ``Q = A^T W A`` (``A = I - B``, ``B`` at ``(rows, cols)``) is a forest that
    :func:`natural_forest` or :func:`reversed_forest` would recognise, else None.

    Needs at most one entry per row of ``B`` (each row of ``A`` then has at most
    two entries and adds the edge to its parent; a DAG gives each edge once).
    """
    if rows.shape[0] == 0 or rows.shape[0] > n:
        return None
    return _skeleton_forest(n, rows, cols)


@numba.njit(cache=True)
def _skeleton_forest(n, rows, cols):
    seen = np.zeros(n, dtype=np.bool_)
    later = np.zeros(n, dtype=np.int8)  # neighbours after (before) each variable, counted up to 2
    earlier = np.zeros(n, dtype=np.int8)
    natural, reverse = True, True
    for k in range(rows.shape[0]):
        r, c = rows[k], cols[k]
        if seen[r] or r == c:
            return None
        seen[r] = True
        a, b = min(r, c), max(r, c)
        if natural:
            later[a] += 1
            natural = later[a] <= 1
        if reverse:
            earlier[b] += 1
            reverse = earlier[b] <= 1
        if not (natural or reverse):
            return None
    return rows.shape[0]


# steps of the solves (here and in gdag.linalg.simplicial): L~^{-1}, D^{-1}, D^{-1/2}, L~^{-T}
FORWARD, BY_D, BY_ROOT_D, BACKWARD = 1, 2, 4, 8


class LDLSolves:
    """CHOLMOD's solve methods of an ``L~ D L~^T`` factor (``L = L~ D^{1/2}``), in the permuted order.

    Subclasses give ``D()`` and ``_steps(b, steps)``, which applies the ``steps`` to a copy of ``b``.
    """

    def solve_A(self, b: np.ndarray) -> np.ndarray:
        """``Q^{-1} b`` for a vector or columns."""
        return self._steps(b, FORWARD | BY_D | BACKWARD)

    def solve_L(self, b: np.ndarray, use_LDLt_decomposition: bool = False) -> np.ndarray:
        """``L^{-1} b = D^{-1/2} L~^{-1} b``."""
        return self._steps(b, FORWARD | BY_ROOT_D)

    def solve_Lt(self, b: np.ndarray, use_LDLt_decomposition: bool = False) -> np.ndarray:
        """``L^{-T} b = L~^{-T} D^{-1/2} b``."""
        return self._steps(b, BY_ROOT_D | BACKWARD)

    def logdet(self) -> float:
        return float(np.sum(np.log(self.D())))


class ForestFactor(LDLSolves):
    """``L~`` (one number per step) and ``D`` of a :class:`ForestAnalysis`; see the module docstring."""

    def __init__(self, analysis: ForestAnalysis):
        self._a = analysis
        self._d, self._l = np.empty(analysis.n), np.empty(analysis.n)
        self._z = self._scratch = None
        self.worst_ratio = 1.0  # the smallest pivot relative to the diagonal of Q it came from

    def cholesky_inplace(self, Q: sp.csc_matrix, source=None) -> None:
        """Factor ``Q`` (lower triangle, original order); raises on the first non-positive pivot."""
        a = self._a
        self._z = None
        bad, self.worst_ratio = _factor(a.parent, a.q_diag, a.q_link, Q.data, self._d, self._l)
        if bad >= 0:
            raise NotPositiveDefinite(int(bad))

    def D(self) -> np.ndarray:
        return self._d

    def solve_vector(self, b: np.ndarray, perm=None) -> np.ndarray:
        """``Q^{-1} b`` in the original order (one gather, two sweeps, one scatter; ``perm`` is the analysed order)."""
        if self._scratch is None:
            self._scratch = np.empty(self._a.n)
        out = np.empty(self._a.n)
        _solve_vector(self._a.order, self._a.parent, self._d, self._l, np.asarray(b, dtype=float), out, self._scratch)
        return out

    def L(self) -> sp.csc_matrix:
        """``L = L~ D^{1/2}`` in the permuted order (CSC, canonical, diagonal first)."""
        root = np.sqrt(self._d)
        return self._csc(root, self._l * root)

    def inverse_diagonal(self) -> np.ndarray:
        """``diag(Q^{-1})`` in the original order."""
        z_diag, _ = self._selected()
        out = np.empty(self._a.n)
        out[self._a.order] = z_diag
        return out

    def selected_inverse(self) -> sp.csc_matrix:
        """``Q^{-1}`` on the pattern of :meth:`L` (permuted order)."""
        return self._csc(*self._selected())

    def _selected(self):
        if self._z is None:
            n = self._a.n
            self._z = (np.empty(n), np.empty(n))
            _inverse(self._a.parent, self._d, self._l, *self._z)
        return self._z

    def _csc(self, diagonal: np.ndarray, below: np.ndarray) -> sp.csc_matrix:
        """A matrix on ``L``'s pattern (permuted order) from its diagonal and the entry below it, per column."""
        a = self._a
        has = a.parent >= 0
        indptr = np.zeros(a.n + 1, dtype=np.int64)
        np.cumsum(1 + has, out=indptr[1:])
        indices = np.empty(indptr[-1], dtype=np.int64)
        data = np.empty(indptr[-1])
        indices[indptr[:-1]], data[indptr[:-1]] = np.arange(a.n), diagonal
        indices[indptr[:-1][has] + 1], data[indptr[:-1][has] + 1] = a.parent[has], below[has]
        L = sp.csc_matrix((data, indices, indptr), shape=(a.n, a.n))
        L.has_sorted_indices = True  # a parent is eliminated after its child
        L.has_canonical_format = True
        return L

    def _steps(self, b: np.ndarray, steps: int) -> np.ndarray:
        b = np.asarray(b, dtype=float)
        vector = b.ndim == 1
        x = np.array(b[:, None] if vector else b, dtype=float, order="C", copy=True)
        _sweeps(self._a.parent, self._d, self._l, x, steps)
        return x[:, 0] if vector else x



@numba.njit(cache=True)
def _natural(indptr, indices, parent, q_link):
    for j in range(indptr.shape[0] - 1):
        start = indptr[j]
        if indptr[j + 1] == start or indices[start] != j:
            return False
        parent[j], q_link[j] = -1, -1
        if indptr[j + 1] - start == 2:
            if indices[start + 1] <= j:
                return False
            parent[j], q_link[j] = indices[start + 1], start + 1
    return True


@numba.njit(cache=True)
def _reversed(indptr, indices, parent, q_diag, q_link):
    """Step ``n-1-v`` eliminates variable ``v``; its parent is the one variable ``j < v`` in row ``v``."""
    n = indptr.shape[0] - 1
    for j in range(n):
        start = indptr[j]
        if indptr[j + 1] == start or indices[start] != j:
            return False
        q_diag[n - 1 - j] = start
        for p in range(start + 1, indptr[j + 1]):
            i = indices[p]
            if i <= indices[p - 1] or parent[n - 1 - i] >= 0:
                return False
            parent[n - 1 - i], q_link[n - 1 - i] = n - 1 - j, p
    return True


@numba.njit(cache=True)
def _factor(parent, q_diag, q_link, q_data, d, l):
    """``D`` and ``L~``: each step passes ``L~ y`` (``y`` its entry of ``Q``) to its parent's pivot."""
    n = parent.shape[0]
    for k in range(n):
        d[k] = q_data[q_diag[k]]
    worst = 1.0
    for k in range(n):
        pivot = d[k]
        if not pivot > 0.0:
            return k, 0.0
        worst = min(worst, pivot / q_data[q_diag[k]])
        l[k] = 0.0
        if parent[k] >= 0:
            y = q_data[q_link[k]]
            l[k] = y / pivot
            d[parent[k]] -= l[k] * y
    return -1, worst


@numba.njit(cache=True)
def _solve_vector(order, parent, d, l, b, out, x):
    n = order.shape[0]
    for k in range(n):
        x[k] = b[order[k]]
    for k in range(n):
        if parent[k] >= 0:
            x[parent[k]] -= l[k] * x[k]
    for k in range(n - 1, -1, -1):
        x_k = x[k] / d[k]
        if parent[k] >= 0:
            x_k -= l[k] * x[parent[k]]
        x[k] = x_k
        out[order[k]] = x_k


@numba.njit(cache=True)
def _sweeps(parent, d, l, x, steps):
    n, m = x.shape
    if steps & FORWARD:
        for k in range(n):
            if parent[k] >= 0:
                for c in range(m):
                    x[parent[k], c] -= l[k] * x[k, c]
    if steps & (BY_D | BY_ROOT_D):
        for k in range(n):
            s = d[k] if steps & BY_D else np.sqrt(d[k])
            for c in range(m):
                x[k, c] /= s
    if steps & BACKWARD:
        for k in range(n - 1, -1, -1):
            if parent[k] >= 0:
                for c in range(m):
                    x[k, c] -= l[k] * x[parent[k], c]


@numba.njit(cache=True)
def _inverse(parent, d, l, z_diag, z_below):
    """The Takahashi recurrences on a forest, from the roots: ``Z_pk = -L~_pk Z_pp``, ``Z_kk = 1/D_k - L~_pk Z_pk``."""
    for k in range(parent.shape[0] - 1, -1, -1):
        z_below[k] = 0.0
        if parent[k] >= 0:
            z_below[k] = -(l[k] * z_diag[parent[k]])
            z_diag[k] = 1.0 / d[k] - l[k] * z_below[k]
        else:
            z_diag[k] = 1.0 / d[k]
