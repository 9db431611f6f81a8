"""Compiled kernels that assemble ``Q = A^T diag(w) A`` (lower triangle) from ``A``'s entries.

``A`` is given as entry lists (row, column, value) in any order.  The pattern
of ``Q`` is computed once per observed pattern (:func:`gram_structure`); each
new set of values then costs one pass over the products (:func:`gram_values`),
Gustavson's row-by-row method with a dense work vector, in O(flops).
:func:`principal_selection` cuts a principal submatrix out of a CSC pattern
(``Q_UU`` from the padded ``Q'``, and the same for its factor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class GramStructure:
    """Index arrays for ``A`` (CSR and CSC views) and the lower-triangular pattern of ``Q``."""

    csr_indptr: np.ndarray
    csr_cols: np.ndarray
    csr_entry: np.ndarray  # entry number of each CSR position
    csc_indptr: np.ndarray
    csc_rows: np.ndarray
    csc_to_csr: np.ndarray  # CSR position of each CSC position
    q_indptr: np.ndarray
    q_rows: np.ndarray
    n_cols: int

    def pattern(self) -> sp.csc_matrix:
        """The pattern of ``Q``'s lower triangle, with unit values."""
        return sp.csc_matrix(
            (np.ones(self.q_rows.shape[0]), self.q_rows, self.q_indptr), shape=(self.n_cols, self.n_cols)
        )


def gram_structure(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> GramStructure:
    """Analyse the entries of ``A`` (``n_rows x n_cols``) once."""
    rows = rows.astype(np.int64, copy=False)
    cols = cols.astype(np.int64, copy=False)
    csr_indptr, csr_entry = _bucket(rows, n_rows)
    csr_cols = cols[csr_entry]
    csc_indptr, csc_to_csr = _bucket(csr_cols, n_cols)
    csr_row_of = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(csr_indptr))
    csc_rows = csr_row_of[csc_to_csr]
    q_indptr, q_rows = _gram_pattern(csr_indptr, csr_cols, csc_indptr, csc_rows, n_cols)
    return GramStructure(csr_indptr, csr_cols, csr_entry, csc_indptr, csc_rows, csc_to_csr, q_indptr, q_rows, n_cols)


def gram_values(structure: GramStructure, values: np.ndarray, weights: np.ndarray) -> sp.csc_matrix:
    """Lower triangle of ``A^T diag(weights) A`` for entry ``values`` (in the original entry order)."""
    s = structure
    csr_vals = values[s.csr_entry]
    out = np.zeros(s.q_rows.shape[0])
    _gram_numeric(s.csr_indptr, s.csr_cols, csr_vals, weights, s.csc_indptr, s.csc_rows, s.csc_to_csr,
                  s.q_indptr, s.q_rows, np.zeros(s.n_cols), out)
    return sp.csc_matrix((out, s.q_rows, s.q_indptr), shape=(s.n_cols, s.n_cols))


def _bucket(keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable counting sort: ``indptr`` and the order of entries grouped by key."""
    return _counting_sort(keys, n_keys)


@numba.njit(cache=True)
def _counting_sort(keys, n_keys):
    indptr = np.zeros(n_keys + 1, dtype=np.int64)
    for k in keys:
        indptr[k + 1] += 1
    for j in range(n_keys):
        indptr[j + 1] += indptr[j]
    fill = indptr[:-1].copy()
    order = np.empty(keys.shape[0], dtype=np.int64)
    for e in range(keys.shape[0]):
        order[fill[keys[e]]] = e
        fill[keys[e]] += 1
    return indptr, order


@numba.njit(cache=True)
def _gram_pattern(csr_indptr, csr_cols, csc_indptr, csc_rows, n_cols):
    """Rows ``i >= j`` of each column ``j`` of ``A^T A``, sorted."""
    marker = np.full(n_cols, -1, dtype=np.int64)
    counts = np.zeros(n_cols, dtype=np.int64)
    for j in range(n_cols):
        for p in range(csc_indptr[j], csc_indptr[j + 1]):
            r = csc_rows[p]
            for q in range(csr_indptr[r], csr_indptr[r + 1]):
                i = csr_cols[q]
                if i >= j and marker[i] != j:
                    marker[i] = j
                    counts[j] += 1
    indptr = np.zeros(n_cols + 1, dtype=np.int64)
    for j in range(n_cols):
        indptr[j + 1] = indptr[j] + counts[j]
    rows = np.empty(indptr[n_cols], dtype=np.int64)
    marker[:] = -1
    for j in range(n_cols):
        k = indptr[j]
        for p in range(csc_indptr[j], csc_indptr[j + 1]):
            r = csc_rows[p]
            for q in range(csr_indptr[r], csr_indptr[r + 1]):
                i = csr_cols[q]
                if i >= j and marker[i] != j:
                    marker[i] = j
                    rows[k] = i
                    k += 1
        _sort_small(rows, indptr[j], k)
    return indptr, rows


@numba.njit(cache=True)
def _sort_small(a, start, stop):
    """Sort ``a[start:stop]`` in place: insertion sort for the short columns of most models."""
    if stop - start > 32:
        a[start:stop].sort()
        return
    for i in range(start + 1, stop):
        v = a[i]
        j = i - 1
        while j >= start and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


@numba.njit(cache=True)
def _gram_numeric(csr_indptr, csr_cols, csr_vals, weights, csc_indptr, csc_rows, csc_to_csr,
                  q_indptr, q_rows, work, out):
    """Fill ``out`` (values on the pattern) with ``sum_r A_rj w_r A_ri``."""
    n_cols = q_indptr.shape[0] - 1
    for j in range(n_cols):
        for p in range(csc_indptr[j], csc_indptr[j + 1]):
            r = csc_rows[p]
            a_rj = csr_vals[csc_to_csr[p]] * weights[r]
            for q in range(csr_indptr[r], csr_indptr[r + 1]):
                i = csr_cols[q]
                if i >= j:
                    work[i] += a_rj * csr_vals[q]
        for k in range(q_indptr[j], q_indptr[j + 1]):
            out[k] = work[q_rows[k]]
            work[q_rows[k]] = 0.0


def principal_selection(indptr: np.ndarray, indices: np.ndarray, position: np.ndarray):
    """Select a principal submatrix of a CSC pattern: ``(take, indices, indptr)``.

    ``position[i]`` is the new index of row/column ``i``, or -1 to drop it
    (increasing over the kept ones, so sorted columns stay sorted).  The
    submatrix's values are ``data[take]``.
    """
    n_new = int(np.count_nonzero(position >= 0))
    return _principal_selection(indptr.astype(np.int64, copy=False), indices.astype(np.int64, copy=False),
                                position.astype(np.int64, copy=False), n_new)


@numba.njit(cache=True)
def _principal_selection(indptr, indices, position, n_new):
    new_indptr = np.zeros(n_new + 1, dtype=np.int64)
    n = indptr.shape[0] - 1
    for j in range(n):
        pj = position[j]
        if pj >= 0:
            count = 0
            for p in range(indptr[j], indptr[j + 1]):
                if position[indices[p]] >= 0:
                    count += 1
            new_indptr[pj + 1] = count
    for j in range(n_new):
        new_indptr[j + 1] += new_indptr[j]
    take = np.empty(new_indptr[n_new], dtype=np.int64)
    rows = np.empty(new_indptr[n_new], dtype=np.int64)
    for j in range(n):
        pj = position[j]
        if pj >= 0:
            k = new_indptr[pj]
            for p in range(indptr[j], indptr[j + 1]):
                r = position[indices[p]]
                if r >= 0:
                    take[k] = p
                    rows[k] = r
                    k += 1
    return take, rows, new_indptr
