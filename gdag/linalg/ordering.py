"""Fill-reducing orderings: none where none is needed, a cheap static one from the model's structure, or CHOLMOD's.

Many models need no fill-reducing ordering at all: a chain, a tree or a
nested model declared parents first has a Cholesky factor with exactly the
pattern of ``Q`` when its variables are eliminated children first, that is
in reverse declaration order (for a chain, either order).
:func:`zero_fill_order` checks the declaration order and its reverse in
O(nnz(Q)) (:func:`gdag.linalg.simplicial.is_closed`) before anything else;
computing AMD or METIS over a million-step chain is wasted work.

Multilevel models have a simple shape: many low-degree variables (one per
app, student or time step) hang off a few high-degree ones (publishers,
devices, the global mean).  Eliminating variables in increasing order of
their degree in ``Q`` (a minimum-degree ordering without updates) then
causes little fill, and it costs one sort.  CHOLMOD's AMD/METIS orderings are
general but much slower to compute on such patterns; on the app-store model
(500k unknowns, popular devices coupled to 100k apps) AMD took 8.7 s and gave
3x the fill of the static ordering, which took 0.1 s.

:func:`choose_ordering` measures instead of guessing: it counts the fill of
the static ordering exactly from the symbolic structure
(:func:`fill`).  Little fill (at most
:data:`ACCEPT_FILL` times the nonzeros of ``Q``) is accepted at once;
otherwise CHOLMOD's own ordering is computed too, and the one with fewer
factorization flops wins.  The ordering changes speed, never results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp

from ._kernels import column_counts
from .forest import ForestAnalysis, natural_forest, reversed_forest
from .gram import _unshift, bucket
from .simplicial import column_flops, is_closed

# Accept the static ordering without trying CHOLMOD's when nnz(L) <= ACCEPT_FILL * nnz(Q).
ACCEPT_FILL = 2.0


@dataclass(frozen=True)
class Permutation:
    """A symmetric permutation of a lower-triangular CSC pattern, applied to new values by one gather.

    ``Q_lower[perm][:, perm]`` (kept lower triangular) has pattern
    ``(indices, indptr)`` and values ``Q_lower.data[source]``.
    """

    perm: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    source: np.ndarray

    def apply(self, lower: sp.csc_matrix) -> sp.csc_matrix:
        """The permuted lower triangle of a matrix with the analysed pattern."""
        n = self.perm.shape[0]
        return sp.csc_matrix((lower.data[self.source], self.indices, self.indptr), shape=(n, n))


@dataclass(frozen=True)
class Order:
    """An elimination order that gdag's own forest factors read through: ``perm`` only, no permuted pattern."""

    perm: np.ndarray
    source = None  # (a Permutation's map of values; a forest reads Q's own positions)


@dataclass(frozen=True)
class ZeroFill:
    """An order in which ``Q``'s lower triangle is its own Cholesky pattern.

    A forest comes as its :class:`~gdag.linalg.forest.ForestAnalysis` (no
    permuted pattern is made); otherwise ``reorder`` is None for the given
    order, and ``indptr``/``indices`` are the pattern of the (permuted) lower
    triangle, and of ``L``.
    """

    reorder: Permutation | None
    indptr: np.ndarray | None
    indices: np.ndarray | None
    flops: float
    forest: ForestAnalysis | None = None


def zero_fill_order(lower: sp.csc_matrix) -> ZeroFill | None:
    """The given order or its reverse, if one of them does not fill in (checked exactly), else None.

    Forests (at most one later neighbour per variable) are recognised first,
    from ``Q``'s own pattern.

    ``lower`` must store its diagonal first in each column, rows sorted (as
    gdag's patterns do); otherwise None.
    """
    if lower.shape[0] == 0:
        return None
    forest = natural_forest(lower) or reversed_forest(lower)
    if forest is not None:
        return ZeroFill(None, None, None, forest.counts[1], forest)
    if is_closed(lower.indptr, lower.indices):
        return ZeroFill(None, lower.indptr, lower.indices, column_flops(lower.indptr))
    moved = reversed_permutation(lower)
    if is_closed(moved.indptr, moved.indices):
        return ZeroFill(moved, moved.indptr, moved.indices, column_flops(moved.indptr))
    return None


def reversed_permutation(lower: sp.csc_matrix) -> Permutation:
    """The :class:`Permutation` that reverses the order (one transpose of the pattern)."""
    n = lower.shape[0]
    indptr, indices, source = _reversed(lower.indptr, lower.indices, n)
    return Permutation(np.arange(n - 1, -1, -1, dtype=np.int64), indices, indptr, source)


@numba.njit(cache=True)
def _reversed(indptr, indices, n):
    """Entry ``(i, j)`` moves to column ``n-1-i``, row ``n-1-j``; rows come out sorted."""
    new_indptr = np.zeros(n + 1, dtype=indptr.dtype)
    for p in range(indptr[n]):
        new_indptr[n - indices[p]] += 1
    for j in range(n):
        new_indptr[j + 1] += new_indptr[j]
    rows = np.empty(indptr[n], dtype=indices.dtype)
    source = np.empty(indptr[n], dtype=indptr.dtype)
    for j in range(n - 1, -1, -1):
        for p in range(indptr[j], indptr[j + 1]):
            c = n - 1 - indices[p]
            k = new_indptr[c]
            rows[k] = n - 1 - j
            source[k] = p
            new_indptr[c] = k + 1
    _unshift(new_indptr)
    return new_indptr, rows, source


def static_degree_order(lower: sp.csc_matrix) -> np.ndarray:
    """Variables sorted by their number of neighbours in ``Q`` (ties keep declaration order).

    Stored diagonal entries are recognised as the first entry of a column
    (sorted rows, as gdag's patterns have); elsewhere one would only be
    counted as a neighbour, giving a worse ordering, never a wrong answer.
    """
    n = lower.shape[0]
    indptr, indices = lower.indptr, lower.indices
    # each entry counts for its row and its column; diagonal entries (first in a sorted column) for neither
    degree = np.bincount(indices, minlength=n) + np.diff(indptr)
    nonempty = np.flatnonzero(indptr[:-1] < indptr[1:])
    on_diagonal = nonempty[indices[indptr[nonempty]] == nonempty]
    degree[on_diagonal] -= 2
    return np.argsort(degree, kind="stable").astype(np.int64)


def permutation(lower: sp.csc_matrix, perm: np.ndarray) -> Permutation:
    """Precompute how the entries of ``lower`` move under ``perm``."""
    return _permuted(lower, perm)[0]


def fill(lower: sp.csc_matrix, perm: np.ndarray) -> tuple[Permutation, int, float]:
    """The permutation of ``lower`` by ``perm``, with ``nnz(L)`` and the flops of factoring in that order."""
    moved, (row_indptr, row_cols) = _permuted(lower, perm)
    counts = column_counts(row_indptr, row_cols, lower.shape[0])
    return moved, int(counts.sum()), float(np.sum(counts.astype(float) ** 2))


def _permuted(lower: sp.csc_matrix, perm: np.ndarray):
    """The :class:`Permutation`, and the permuted entries grouped by row (``indptr``, columns)."""
    n = lower.shape[0]
    perm = np.asarray(perm, dtype=np.int64)
    inverse = np.empty(n, dtype=np.int64)
    inverse[perm] = np.arange(n, dtype=np.int64)
    # entry k of the CSC arrays (data[k]) sits at row indices[k] of its column
    r = inverse[lower.indices]
    c = np.repeat(inverse, np.diff(lower.indptr))
    rows, cols = np.maximum(r, c), np.minimum(r, c)  # stay in the lower triangle
    # CSC order of the permuted entries, by column and then row: two stable counting sorts
    row_indptr, by_row = bucket(rows, n)
    row_cols = cols[by_row]
    indptr, by_col = bucket(row_cols, n)
    order = by_row[by_col]
    return Permutation(perm, rows[order], indptr, order), (row_indptr, row_cols)


def choose_ordering(lower: sp.csc_matrix, cholmod_analysis):
    """The static degree ordering when it is good, else the better of it and CHOLMOD's.

    Parameters
    ----------
    lower : scipy.sparse.csc_matrix
        Lower triangle of the pattern to factor.
    cholmod_analysis : callable
        ``cholmod_analysis(matrix)`` returns a CHOLMOD symbolic factor with
        its own ordering (tried only when the static ordering fills in).

    Returns
    -------
    (Permutation or None, symbolic or None, (nnz_L, flops))
        A permutation to apply before a natural-order analysis, or CHOLMOD's
        own analysis to use as it is; and the exact size of the factor in
        the chosen ordering (for memory estimates).
    """
    n = lower.shape[0]
    if n == 0:
        return None, None, (0, 0.0)
    static, nnz_static, flops_static = fill(lower, static_degree_order(lower))
    if nnz_static <= ACCEPT_FILL * lower.nnz:
        return static, None, (nnz_static, flops_static)
    symbolic = cholmod_analysis(lower)
    _, nnz_cholmod, flops_cholmod = fill(lower, symbolic.P())
    if flops_static < flops_cholmod:
        return static, None, (nnz_static, flops_static)
    return None, symbolic, (nnz_cholmod, flops_cholmod)
