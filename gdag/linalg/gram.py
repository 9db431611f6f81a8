"""Compiled kernels that assemble ``Q = A^T diag(w) A`` (lower triangle) from ``A``'s entries.

``A`` is given as entry lists (row, column, value) in any order.  The pattern
of ``Q`` is computed once per observed pattern (:func:`gram_structure`; rows of
at most two entries take the lighter road of :mod:`gdag.linalg.thin`); each
new set of values then costs one pass over the products (:func:`gram_values`),
Gustavson's row-by-row method with a dense work vector, in O(flops); the
same pass gives ``b = A^T rhs``, and :func:`class_gram_values` splits ``Q``
by classes of rows for the fit.  :func:`a_times`, :func:`at_times` and
:func:`weighted_residual` apply ``A`` and ``A^T`` through the same index maps
(the mean refinement).  Index arrays are int32 while every index fits
(:func:`index_dtype`), else int64.  :func:`principal_selection` cuts a
principal submatrix out of a CSC pattern (``Q_UU`` from the padded ``Q'``,
and the same for its factor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp

from .thin import thin_numeric, thin_pattern, thin_transpose_times


@dataclass(frozen=True)
class GramStructure:
    """Index arrays for ``A`` (CSR and CSC views) and the lower-triangular pattern of ``Q``.

    Both views refer to ``A``'s entries by their number in the caller's entry
    lists, so values are passed in that order and never gathered into a copy.
    """

    csr_indptr: np.ndarray
    csr_cols: np.ndarray
    csr_entry: np.ndarray  # entry number of each CSR position
    csc_indptr: np.ndarray | None  # the CSC view: None for a thin A (at most two entries per row)
    csc_rows: np.ndarray | None
    csc_entry: np.ndarray | None  # entry number of each CSC position
    q_indptr: np.ndarray
    q_rows: np.ndarray
    n_cols: int
    pair_pos: np.ndarray | None = None  # thin A: where each row's off-diagonal product goes (gdag.linalg.thin)

    def pattern(self) -> sp.csc_matrix:
        """The pattern of ``Q``'s lower triangle, with unit values (one read-only broadcast 1.0: no memory per entry)."""
        ones = np.broadcast_to(np.float64(1.0), self.q_rows.shape)
        return sp.csc_matrix((ones, self.q_rows, self.q_indptr), shape=(self.n_cols, self.n_cols))


def gram_structure(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> GramStructure:
    """Analyse the entries of ``A`` (``n_rows x n_cols``) once."""
    itype = index_dtype(n_rows, n_cols, rows.shape[0])
    rows = rows.astype(itype, copy=False)
    cols = cols.astype(itype, copy=False)
    csr_indptr, csr_entry, csr_cols = bucket(rows, n_rows, cols)  # the columns placed in the same pass
    thin = thin_pattern(csr_indptr, csr_cols, n_cols)
    if thin is not None:  # rows of at most two entries: pairs sorted by column, no CSC view, no products
        return GramStructure(csr_indptr, csr_cols, csr_entry, None, None, None, thin[0], thin[1], n_cols, thin[2])
    csc_indptr, csc_rows, csc_entry = _transpose(csr_indptr, csr_cols, csr_entry, n_cols)
    q_indptr, q_rows = _gram_pattern(csr_indptr, csr_cols, csc_indptr, csc_rows, n_cols)
    if q_indptr[-1] <= INT32_MAX and itype == np.int32:
        q_indptr = q_indptr.astype(np.int32)
    return GramStructure(csr_indptr, csr_cols, csr_entry, csc_indptr, csc_rows, csc_entry, q_indptr, q_rows, n_cols)


def gram_values(structure: GramStructure, values: np.ndarray, weights: np.ndarray,
                rhs: np.ndarray | None = None, divide: bool = False):
    """Lower triangle of ``A^T diag(weights) A`` for entry ``values`` (in the original entry order).

    With ``rhs`` (one value per row of ``A``), also returns ``A^T rhs``,
    accumulated in the same pass: ``(Q, b)``.  With ``divide``, ``weights``
    are variances ``d`` and the pass uses ``1 / d`` and ``rhs / d`` (the same
    bits as dividing first, without the two arrays).
    """
    s = structure
    out = np.zeros((1, s.q_rows.shape[0]))
    b = np.zeros(s.n_cols if rhs is not None else 0)
    _numeric(s, values, weights, _NO_CLASSES, out, _NO_RHS if rhs is None else rhs, b, divide)
    Q = sp.csc_matrix((out[0], s.q_rows, s.q_indptr), shape=(s.n_cols, s.n_cols))
    return Q if rhs is None else (Q, b)


def class_gram_values(structure: GramStructure, values: np.ndarray, weights: np.ndarray,
                      classes: np.ndarray, n_classes: int) -> np.ndarray:
    """``G_c = A^T diag(weights * [class == c]) A`` on ``Q``'s pattern for every class, in one pass.

    ``classes`` gives each row of ``A`` a class in ``0 .. n_classes-1``;
    row ``c`` of the result holds the values of ``G_c``.  The fit uses it when
    ``Q`` is a weighted sum of such terms (one per variance parameter).
    """
    out = np.zeros((n_classes, structure.q_rows.shape[0]))
    _numeric(structure, values, weights, classes.astype(np.int64, copy=False), out, _NO_RHS, np.zeros(0), False)
    return out


def _numeric(s: GramStructure, values, weights, classes, out, rhs, b, divide: bool) -> None:
    """One numeric pass: the thin one (row by row) or the general one (column by column); the same bits."""
    if s.pair_pos is not None:
        thin_numeric(s.csr_indptr, s.csr_cols, s.csr_entry, values, weights, classes, s.q_indptr, s.pair_pos,
                     out, rhs, b, divide)
    else:
        _gram_numeric(s.csr_indptr, s.csr_cols, s.csr_entry, s.csc_indptr, s.csc_rows, s.csc_entry, values, weights,
                      classes, s.q_indptr, s.q_rows, np.zeros((out.shape[0], s.n_cols)), out, rhs, b, divide)


def a_times(structure: GramStructure, values: np.ndarray, x: np.ndarray, n_rows: int) -> np.ndarray:
    """``A @ x`` for entry ``values`` (length ``n_rows``), one pass over the CSR view."""
    s = structure
    out = np.zeros(n_rows)
    _csr_times(s.csr_indptr, s.csr_cols, s.csr_entry, values, x, out)
    return out


def at_times(structure: GramStructure, values: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``A^T @ y`` for entry ``values``, one pass over the CSC view."""
    s = structure
    out = np.zeros(s.n_cols)
    if s.pair_pos is not None:
        thin_transpose_times(s.csr_indptr, s.csr_cols, s.csr_entry, values, y, out)
    else:
        _csr_times(s.csc_indptr, s.csc_rows, s.csc_entry, values, y, out)  # the CSC of A is the CSR of A^T
    return out


def weighted_residual(structure: GramStructure, values: np.ndarray, m: np.ndarray, r: np.ndarray, d: np.ndarray,
                      keep_e: bool = True):
    """``e = r - A m``, ``w = e / d`` and ``f = sum(e * w)`` (a sum of non-negative terms), in one pass.

    ``keep_e=False`` returns None for ``e`` and never forms it (one array over
    every row fewer: the mean refinement reads ``w`` and ``f`` only).
    """
    s = structure
    e, w = np.empty(r.shape[0] if keep_e else 0), np.empty(r.shape[0])
    f = _weighted_residual(s.csr_indptr, s.csr_cols, s.csr_entry, values, m, r, d, e, w)
    return (e if keep_e else None), w, f


@numba.njit(cache=True)
def _weighted_residual(indptr, cols, entry, values, m, r, d, e, w):
    f = 0.0
    keep = e.shape[0] > 0
    for row in range(indptr.shape[0] - 1):
        total = 0.0
        for q in range(indptr[row], indptr[row + 1]):
            total += values[entry[q]] * m[cols[q]]
        e_row = r[row] - total
        if keep:
            e[row] = e_row
        w[row] = e_row / d[row]
        f += e_row * w[row]
    return f


@numba.njit(cache=True)
def _csr_times(indptr, indices, entry, values, x, out):
    for r in range(indptr.shape[0] - 1):
        total = 0.0
        for q in range(indptr[r], indptr[r + 1]):
            total += values[entry[q]] * x[indices[q]]
        out[r] = total


_NO_CLASSES = np.zeros(0, dtype=np.int64)
_NO_RHS = np.zeros(0)


INT32_MAX = np.iinfo(np.int32).max


def index_dtype(*sizes: int):
    """int32 for index arrays when every index and count fits (half the memory traffic), else int64."""
    return np.int32 if max(sizes, default=0) < INT32_MAX else np.int64


def bucket(keys: np.ndarray, n_keys: int, carried: np.ndarray | None = None) -> tuple:
    """Stable counting sort: ``indptr`` and the order of entries grouped by key (in the keys' integer type).

    With ``carried`` (one value per entry), also ``carried[order]``, placed in the same pass.
    """
    if keys.dtype == np.int32 and keys.shape[0] >= INT32_MAX:
        keys = keys.astype(np.int64)
    if carried is None:
        return counting_sort(keys, n_keys)
    placed = np.empty_like(carried)
    indptr, order = _counting_sort_carrying(keys, n_keys, carried, placed)
    return indptr, order, placed


@numba.njit(cache=True)
def _counting_sort_carrying(keys, n_keys, carried, placed):
    indptr = _starts(keys, n_keys, keys)
    order = np.empty(keys.shape[0], dtype=keys.dtype)
    for e in range(keys.shape[0]):
        k = indptr[keys[e]]
        order[k] = e
        placed[k] = carried[e]
        indptr[keys[e]] = k + 1
    _unshift(indptr)
    return indptr, order


@numba.njit(cache=True)
def counting_sort(keys, n_keys):
    indptr = _starts(keys, n_keys, keys)
    order = np.empty(keys.shape[0], dtype=keys.dtype)
    for e in range(keys.shape[0]):  # indptr[k] serves as key k's cursor, then shifts back
        order[indptr[keys[e]]] = e
        indptr[keys[e]] += 1
    _unshift(indptr)
    return indptr, order


@numba.njit(cache=True)
def _starts(keys, n_keys, like):
    """Where each key's run starts in a stable sort by key (the counts' prefix sums), in ``like``'s dtype."""
    indptr = np.zeros(n_keys + 1, dtype=like.dtype)
    for k in keys:
        indptr[k + 1] += 1
    for j in range(n_keys):
        indptr[j + 1] += indptr[j]
    return indptr


@numba.njit(cache=True)
def _unshift(indptr):
    """After filling with ``indptr[j]`` as the cursor of slot ``j`` (now the start of ``j + 1``): restore the starts."""
    for j in range(indptr.shape[0] - 1, 0, -1):
        indptr[j] = indptr[j - 1]
    indptr[0] = 0


@numba.njit(cache=True)
def _transpose(csr_indptr, csr_cols, csr_entry, n_cols):
    """CSC view from the CSR one: rows sorted within each column, and entry numbers."""
    indptr = _starts(csr_cols, n_cols, csr_entry)
    rows = np.empty(csr_entry.shape[0], dtype=csr_entry.dtype)
    entry = np.empty(csr_entry.shape[0], dtype=csr_entry.dtype)
    for r in range(csr_indptr.shape[0] - 1):
        for q in range(csr_indptr[r], csr_indptr[r + 1]):
            k = indptr[csr_cols[q]]
            rows[k] = r
            entry[k] = csr_entry[q]
            indptr[csr_cols[q]] = k + 1
    _unshift(indptr)
    return indptr, rows, entry


@numba.njit(cache=True)
def _gram_pattern(csr_indptr, csr_cols, csc_indptr, csc_rows, n_cols):
    """Rows ``i >= j`` of each column ``j`` of ``A^T A``, sorted."""
    marker = np.full(n_cols, -1, dtype=csr_cols.dtype)
    indptr = np.zeros(n_cols + 1, dtype=np.int64)  # nnz(Q) may pass int32 where nnz(A) does not
    for j in range(n_cols):
        count = 0
        for p in range(csc_indptr[j], csc_indptr[j + 1]):
            r = csc_rows[p]
            for q in range(csr_indptr[r], csr_indptr[r + 1]):
                i = csr_cols[q]
                if i >= j and marker[i] != j:
                    marker[i] = j
                    count += 1
        indptr[j + 1] = indptr[j] + count
    rows = np.empty(indptr[n_cols], dtype=csr_cols.dtype)
    for j in range(n_cols):  # the second pass marks column j with -2 - j: no reset of the first pass's marks
        k = indptr[j]
        for p in range(csc_indptr[j], csc_indptr[j + 1]):
            r = csc_rows[p]
            for q in range(csr_indptr[r], csr_indptr[r + 1]):
                i = csr_cols[q]
                if i >= j and marker[i] != -2 - j:
                    marker[i] = -2 - j
                    rows[k] = i
                    k += 1
        _sort_small(rows, indptr[j], k)
    return indptr, rows


@numba.njit(cache=True)
def _sort_small(a, start, stop):
    """Sort ``a[start:stop]`` in place: insertion sort for the short columns of most models."""
    if stop - start > 32:
        for k in range(start + 1, stop):  # long columns often arrive sorted (a hub's children in order)
            if a[k - 1] > a[k]:
                a[start:stop].sort()
                return
        return
    for i in range(start + 1, stop):
        v = a[i]
        j = i - 1
        while j >= start and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


@numba.njit(cache=True, error_model="numpy")  # 1/0 is inf, as numpy divides
def _gram_numeric(csr_indptr, csr_cols, csr_entry, csc_indptr, csc_rows, csc_entry, values, weights, classes,
                  q_indptr, q_rows, work, out, rhs, b, divide):
    """Fill ``out[c]`` (values on the pattern) with ``sum_r [class_r = c] A_rj w_r A_ri``; ``b = A^T rhs``
    (``divide``: ``weights`` are variances, ``w = 1 / weights`` and ``rhs / weights`` for ``rhs``).

    Column ``j`` sums its rows in increasing order, so a matrix with extra
    zero entries gives bitwise the same values (the padded queries rely on it).
    """
    n_cols = q_indptr.shape[0] - 1
    n_classes = out.shape[0]
    for j in range(n_cols):
        for p in range(csc_indptr[j], csc_indptr[j + 1]):
            r = csc_rows[p]
            c = classes[r] if classes.shape[0] else 0
            v = values[csc_entry[p]]
            if rhs.shape[0]:
                b[j] += v * (rhs[r] / weights[r] if divide else rhs[r])
            a_rj = v * (1.0 / weights[r] if divide else weights[r])
            for q in range(csr_indptr[r], csr_indptr[r + 1]):
                i = csr_cols[q]
                if i >= j:
                    work[c, i] += a_rj * values[csr_entry[q]]
        for k in range(q_indptr[j], q_indptr[j + 1]):
            i = q_rows[k]
            for c in range(n_classes):
                out[c, k] = work[c, i]
                work[c, i] = 0.0


def principal_selection(indptr: np.ndarray, indices: np.ndarray, position: np.ndarray):
    """Select a principal submatrix of a CSC pattern: ``(take, indices, indptr)``.

    ``position[i]`` is the new index of row/column ``i``, or -1 to drop it
    (increasing over the kept ones, so sorted columns stay sorted).  The
    submatrix's values are ``data[take]``.
    """
    n_new = int(np.count_nonzero(position >= 0))
    return _principal_selection(indptr, indices, position, n_new)


@numba.njit(cache=True)
def _principal_selection(indptr, indices, position, n_new):
    new_indptr = np.zeros(n_new + 1, dtype=indptr.dtype)  # positions in the input's index types
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
    take = np.empty(new_indptr[n_new], dtype=indptr.dtype)
    rows = np.empty(new_indptr[n_new], dtype=indices.dtype)
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
