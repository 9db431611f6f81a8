r"""Selected inversion of a sparse SPD matrix from its Cholesky factor.

Given a sparse lower-triangular Cholesky factor ``L`` of a (possibly
fill-reducing permuted) symmetric positive definite matrix, ``Q = L L^T``,
this module computes the entries of ``Z = Q^{-1}`` that lie on the sparsity
pattern of ``L`` -- enough for posterior marginal variances and for the
covariances of every pair of variables that share a clique of the filled
graph -- without forming anything dense.

Mathematics (Takahashi recurrences)
-----------------------------------
Write ``L = L~ Lambda`` with ``L~`` unit lower triangular and
``Lambda = diag(L_jj)``, and let ``D_j = L_jj^2``.  From
``Z L~ = L~^{-T} D^{-1}`` (whose right-hand side is upper triangular with
diagonal ``1/D_j``) one reads off, for ``j = n-1, ..., 0`` and with ``S_j``
the strictly-below-diagonal row set of column ``j`` of ``L``:

.. math::

    Z_{ij} = -\sum_{k \in S_j} \tilde L_{kj} Z_{ik}, \quad i \in S_j,

    Z_{jj} = 1/D_j - \sum_{k \in S_j} \tilde L_{kj} Z_{kj}.

Every ``Z_ik`` with ``i, k in S_j`` lies on the pattern of ``L`` (column
``min(i, k)``, row ``max(i, k)``) because the filled graph is chordal:
``S_j \ {<= k} \subseteq S_k`` for each ``k in S_j``.  So sweeping columns
right to left only ever reads entries already computed.

Implementation
--------------
The kernel is compiled with numba and visits each unordered pair
``i > k`` of ``S_j`` once: the value ``Z_ik`` (found in column ``k``)
contributes ``L~_kj Z_ik`` to ``Z_ij`` and ``L~_ij Z_ik`` to ``Z_kj``.  The
rows of ``S_j`` above ``k`` are located in column ``k`` by a galloping
merge of two sorted lists, so the cost per column ``j`` is about
``sum_{k in S_j} |S_j| log(|col k| / |S_j|)`` at worst and linear in the
common case.  Work memory is one array of ``nnz(L)`` values; indices are
int64.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

__all__ = ["selected_inverse", "selected_inverse_diag", "selected_inverse_ldl"]

# Status codes of the pattern checker.
_OK = 0
_ABOVE_DIAGONAL = 1
_MISSING_DIAGONAL = 2
_BAD_DIAGONAL = 3
_NOT_CANONICAL = 4
_ROW_OUT_OF_RANGE = 5


def selected_inverse(L) -> sp.csc_matrix:
    r"""Entries of :math:`(L L^T)^{-1}` on the sparsity pattern of ``L``.

    Parameters
    ----------
    L : scipy.sparse matrix or array, shape (n, n)
        Lower-triangular Cholesky factor with a strictly positive diagonal
        whose pattern is closed under fill (as CHOLMOD's ``Factor.L()``
        returns it; explicitly stored zeros count as part of the pattern).
        Row indices need not be sorted.  ``L`` is not modified.

    Returns
    -------
    scipy.sparse.csc_matrix, shape (n, n)
        ``Z`` with ``Z[i, j] = ((L L^T)^{-1})[i, j]`` for every stored entry
        ``(i, j)`` of ``L`` (lower triangle including the diagonal).  Its
        ``indptr`` and ``indices`` are those of the canonical (sorted,
        duplicate-free) form of ``L``.  The upper triangle is not stored;
        by symmetry ``Z[k, i] = Z[i, k]``.

    Raises
    ------
    TypeError
        If ``L`` is not a scipy sparse matrix.
    ValueError
        If ``L`` is not square, has entries above the diagonal, lacks a
        diagonal entry, has a non-positive or non-finite diagonal entry, has
        complex values, or its pattern is not closed under fill.

    Notes
    -----
    See the module docstring for the recurrences.  Memory is
    :math:`O(\mathrm{nnz}(L))`; nothing dense of size n-by-n is formed.
    """
    factor, indptr, indices = _canonical_factor(L)
    values = _run_kernel(indptr, indices, factor.data)
    return sp.csc_matrix(
        (values, factor.indices, factor.indptr), shape=factor.shape
    )


def selected_inverse_diag(L) -> np.ndarray:
    r"""Diagonal of :math:`(L L^T)^{-1}`.

    Parameters
    ----------
    L : scipy.sparse matrix or array, shape (n, n)
        Lower-triangular Cholesky factor, as for :func:`selected_inverse`.

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
        ``diag((L L^T)^{-1})`` in the ordering of ``L`` (that is, of the
        permuted matrix if ``L`` factors a permuted one).

    Raises
    ------
    TypeError, ValueError
        As for :func:`selected_inverse`.

    Notes
    -----
    The diagonal depends on the off-diagonal entries of ``Z`` on the
    pattern, so the same kernel runs; the extra memory is still
    :math:`O(\mathrm{nnz}(L))`.
    """
    factor, indptr, indices = _canonical_factor(L)
    values = _run_kernel(indptr, indices, factor.data)
    # Canonical columns start with their diagonal entry.
    return values[indptr[:-1]]


def selected_inverse_ldl(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    r"""Values of :math:`(\tilde L D \tilde L^T)^{-1}` on the pattern of a trusted ``L~ D L~^T`` factor.

    ``values`` holds ``L~`` below the diagonal and ``D`` on it, in CSC
    columns that start with their diagonal, rows sorted, pattern closed
    under fill (gdag's own factors, :mod:`gdag.linalg.simplicial`, which
    guarantee all of it; nothing is checked or copied).  The recurrences
    are the module's, read with ``L~`` and ``D`` directly (no square roots).
    Returns the values, laid out like ``values``.
    """
    return _run_kernel(indptr, indices, values, unit=True)


# --------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------


def _canonical_factor(L):
    """Validated canonical CSC copy of ``L`` with float64 values.

    Returns ``(factor, indptr, indices)``: the copy (keeping its index
    dtype, for the output) and its index arrays as int64 for the kernels.
    """
    if not sp.issparse(L):
        raise TypeError(
            "L must be a scipy.sparse matrix (e.g. Factor.L() from "
            f"scikit-sparse), got {type(L).__name__}"
        )
    n_rows, n_cols = L.shape
    if n_rows != n_cols:
        raise ValueError(f"L must be square, got shape {L.shape}")
    if np.iscomplexobj(L.data):
        raise ValueError("L must be real; complex factors are not supported")
    # A copy, so sorting and summing duplicates never touch the caller's L.
    factor = sp.csc_matrix(L, dtype=np.float64, copy=True)
    factor.sum_duplicates()  # also sorts the row indices
    indptr, indices = _int64_index_arrays(factor)
    if not _check_factor_pattern(indptr, indices, factor):
        # scipy trusted a stale "canonical" flag; redo the work for real.
        factor.has_canonical_format = False
        factor.sum_duplicates()
        indptr, indices = _int64_index_arrays(factor)
        _check_factor_pattern(indptr, indices, factor)
    return factor, indptr, indices


def _check_factor_pattern(indptr, indices, factor: sp.csc_matrix) -> bool:
    """Raise ValueError unless ``factor`` is lower triangular with a positive diagonal.

    Returns False (without raising) if its row indices are not in fact
    sorted and duplicate-free, True if all is well.
    """
    status, column = _check_lower_with_diagonal(indptr, indices, factor.data)
    if status == _NOT_CANONICAL:
        return False
    if status == _ABOVE_DIAGONAL:
        raise ValueError(
            f"L must be lower triangular: column {column} has an entry "
            "above the diagonal"
        )
    if status == _MISSING_DIAGONAL:
        raise ValueError(
            f"L must store every diagonal entry: column {column} has none"
        )
    if status == _ROW_OUT_OF_RANGE:
        raise ValueError(
            f"L is malformed: column {column} has a row index >= {factor.shape[0]}"
        )
    if status == _BAD_DIAGONAL:
        raise ValueError(
            f"L must have a strictly positive, finite diagonal: "
            f"L[{column}, {column}] = {factor[column, column]!r}"
        )
    return True


def _int64_index_arrays(factor: sp.csc_matrix):
    """The index arrays of ``factor`` as int64 (no copy when they already are)."""
    return (
        factor.indptr.astype(np.int64, copy=False),
        factor.indices.astype(np.int64, copy=False),
    )


def _run_kernel(indptr, indices, data, unit: bool = False) -> np.ndarray:
    """Run the Takahashi sweep on a validated canonical factor (``unit``: ``L~`` and ``D``, see :func:`selected_inverse_ldl`)."""
    values = np.empty(data.size, dtype=np.float64)
    column, row_i, row_k = _takahashi_sweep(indptr, indices, data, values, unit)
    if column >= 0:
        raise ValueError(
            "the pattern of L is not closed under fill: column "
            f"{column} has rows {row_k} and {row_i}, but L[{row_i}, {row_k}] "
            "is not stored. Pass the factor with its full symbolic pattern "
            "(do not drop explicit zeros)."
        )
    return values


# --------------------------------------------------------------------------
# Compiled kernels
# --------------------------------------------------------------------------


@numba.njit(cache=True)
def _check_lower_with_diagonal(indptr, indices, data):
    """Check CSC columns: diagonal first and positive, nothing above.

    Also confirms the rows of each column strictly increase (sorted, no
    duplicates), which the sweep relies on.  Returns ``(status, column)``;
    ``status`` is ``_OK`` when all is well.
    """
    n = indptr.size - 1
    for j in range(n):
        start = indptr[j]
        end = indptr[j + 1]
        for p in range(start + 1, end):
            if indices[p] <= indices[p - 1]:
                return _NOT_CANONICAL, j
        if start == end:
            return _MISSING_DIAGONAL, j
        if indices[end - 1] >= n:
            return _ROW_OUT_OF_RANGE, j
        first_row = indices[start]
        if first_row < j:
            return _ABOVE_DIAGONAL, j
        if first_row > j:
            return _MISSING_DIAGONAL, j
        diagonal = data[start]
        # Written so that NaN fails too.
        if not (diagonal > 0.0 and diagonal < np.inf):
            return _BAD_DIAGONAL, j
    return _OK, -1


@numba.njit(cache=True)
def _seek(indices, lo, hi, target):
    """First position ``p`` in ``[lo, hi)`` with ``indices[p] >= target``.

    ``indices[lo:hi]`` is sorted.  Galloping (doubling steps, then bisection)
    costs O(log distance), so a merge that skips long stretches of a column
    stays cheap while a dense merge stays linear.  Returns ``hi`` if none.
    """
    if lo >= hi or indices[lo] >= target:
        return lo
    # Invariant from here on: indices[lo] < target.
    step = 1
    while lo + step < hi and indices[lo + step] < target:
        lo += step
        step *= 2
    high = min(lo + step, hi)
    lo += 1
    while lo < high:
        mid = (lo + high) >> 1
        if indices[mid] < target:
            lo = mid + 1
        else:
            high = mid
    return lo


@numba.njit(cache=True)
def _takahashi_sweep(indptr, indices, data, z, unit):
    """Fill ``z`` (laid out like ``data``) with the selected inverse.

    Columns run right to left.  For column ``j`` the below-diagonal slots
    of ``z`` first accumulate ``sum_m L_mj Z_km`` and are then scaled by
    ``-1 / L_jj``, which saves a division per term.

    Returns ``(-1, -1, -1)`` on success, or ``(j, i, k)`` when rows
    ``k < i`` of column ``j`` need ``L[i, k]`` and it is not stored.
    """
    n = indptr.size - 1
    for j in range(n - 1, -1, -1):
        diag_pos = indptr[j]
        end = indptr[j + 1]
        inv_ljj = 1.0 if unit else 1.0 / data[diag_pos]  # unit: data holds L~ and, on the diagonal, D
        for q in range(diag_pos + 1, end):
            z[q] = 0.0
        for q in range(diag_pos + 1, end):
            k = indices[q]
            l_kj = data[q]
            col_k_end = indptr[k + 1]
            # Term m = k of Z_kj: Z_kk sits first in column k.
            z[q] += l_kj * z[indptr[k]]
            # Pairs (i, k) with i > k in S_j: Z_ik is in column k, row i.
            # A local sum for slot q avoids a store per pair.
            sum_k = 0.0
            cursor = indptr[k] + 1
            for r in range(q + 1, end):
                i = indices[r]
                cursor = _seek(indices, cursor, col_k_end, i)
                if cursor == col_k_end or indices[cursor] != i:
                    return j, i, k
                z_ik = z[cursor]
                z[r] += l_kj * z_ik
                sum_k += data[r] * z_ik
                cursor += 1
            z[q] += sum_k
        # Scale to Z_kj and collect sum_k L~_kj Z_kj for the diagonal.
        diag_sum = 0.0
        for q in range(diag_pos + 1, end):
            z[q] *= -inv_ljj
            diag_sum += data[q] * z[q]
        if unit:
            z[diag_pos] = 1.0 / data[diag_pos] - diag_sum
        else:
            z[diag_pos] = inv_ljj * inv_ljj - inv_ljj * diag_sum
    return -1, -1, -1
