"""Gram structures of thin designs: at most two entries in every row of ``A`` (chains, trees, nested models).

Then ``Q = A^T W A`` has a diagonal entry per column with an entry, one off-diagonal
entry per row with two entries (rows may share it), and its pattern needs no
column-by-column product: :func:`thin_pattern` sorts the rows' pairs by
column, and records where each row's pair sits in ``Q`` (``pair_pos``).  A
numeric pass (:func:`thin_numeric`) then visits the rows in order and adds
each row's three products where they belong, and :func:`thin_transpose_times`
applies ``A^T`` the same way: both add into every entry in increasing row
order with the products of the general column-by-column pass
(:mod:`gdag.linalg.gram`), so the two give the same bits.  A row with both
entries in one column is not thin (the general pass handles it).
"""

from __future__ import annotations

import numba
import numpy as np

INT32_MAX = np.iinfo(np.int32).max


def thin_pattern(csr_indptr: np.ndarray, csr_cols: np.ndarray, n_cols: int):
    """``(q_indptr, q_rows, pair_pos)`` of ``A^T A``'s lower triangle for a thin ``A`` (CSR), or None if not thin.

    ``pair_pos[r]`` is the position in ``q_rows`` of row ``r``'s off-diagonal
    entry (-1 for rows with fewer than two entries); each column starts with
    its diagonal.  Index arrays are int32 while they fit.
    """
    n_rows = csr_indptr.shape[0] - 1
    if n_rows and int(np.max(np.diff(csr_indptr))) > 2:
        return None
    found = _pairs_by_column(csr_indptr, csr_cols, n_cols)
    if found[0] < 0:
        return None
    _, start, pair_row, pair_col, present, q_indptr = found
    itype = np.int32 if q_indptr[-1] <= INT32_MAX and csr_cols.dtype == np.int32 else np.int64
    q_indptr = q_indptr.astype(itype, copy=False)
    q_rows = np.empty(q_indptr[-1], dtype=csr_cols.dtype)
    pair_pos = np.full(n_rows, -1, dtype=itype)
    _fill_pattern(start, pair_row, pair_col, present, q_indptr, q_rows, pair_pos)
    return q_indptr, q_rows, pair_pos


@numba.njit(cache=True)
def _pairs_by_column(csr_indptr, csr_cols, n_cols):
    """Every two-entry row's pair ``(i > j)``, grouped by ``j`` and sorted by ``i`` (ties in row order).

    Returns ``(status, start, pair_row, pair_col, present, indptr)``:
    ``status`` -1 when a row has both entries in one column; ``start``
    (n_cols + 1) delimits each column's pairs, ``pair_row`` holds their
    ``i``, ``pair_col`` the row of ``A``, ``present`` marks the columns with
    an entry, and ``indptr`` is the pattern's (per column its diagonal, if
    present, and its distinct pair rows).
    """
    n_rows = csr_indptr.shape[0] - 1
    start = np.zeros(n_cols + 1, dtype=np.int64)
    present = np.zeros(n_cols, dtype=np.bool_)
    for r in range(n_rows):
        s = csr_indptr[r]
        for q in range(s, csr_indptr[r + 1]):
            present[csr_cols[q]] = True
        if csr_indptr[r + 1] - s == 2:
            a, b = csr_cols[s], csr_cols[s + 1]
            if a == b:
                return -1, start, np.empty(0, dtype=csr_cols.dtype), np.empty(0, dtype=np.int64), present, start
            start[min(a, b) + 1] += 1
    for j in range(n_cols):
        start[j + 1] += start[j]
    pair_row = np.empty(start[n_cols], dtype=csr_cols.dtype)
    pair_col = np.empty(start[n_cols], dtype=np.int64)
    for r in range(n_rows):
        s = csr_indptr[r]
        if csr_indptr[r + 1] - s == 2:
            a, b = csr_cols[s], csr_cols[s + 1]
            k = start[min(a, b)]
            pair_row[k] = max(a, b)
            pair_col[k] = r
            start[min(a, b)] = k + 1
    for j in range(n_cols, 0, -1):  # start[j] served as column j's cursor: restore the starts
        start[j] = start[j - 1]
    start[0] = 0
    indptr = np.zeros(n_cols + 1, dtype=np.int64)
    for j in range(n_cols):  # insertion sort by row (stable: ties keep row order); columns are short
        for t in range(start[j] + 1, start[j + 1]):
            i, r = pair_row[t], pair_col[t]
            u = t - 1
            while u >= start[j] and pair_row[u] > i:
                pair_row[u + 1], pair_col[u + 1] = pair_row[u], pair_col[u]
                u -= 1
            pair_row[u + 1], pair_col[u + 1] = i, r
        count = 1 if present[j] else 0
        for t in range(start[j], start[j + 1]):
            if t == start[j] or pair_row[t] != pair_row[t - 1]:
                count += 1
        indptr[j + 1] = indptr[j] + count
    return 0, start, pair_row, pair_col, present, indptr


@numba.njit(cache=True)
def _fill_pattern(start, pair_row, pair_col, present, q_indptr, q_rows, pair_pos):
    for j in range(start.shape[0] - 1):
        k = q_indptr[j] - 1
        if present[j]:
            k += 1
            q_rows[k] = j
        for t in range(start[j], start[j + 1]):
            if t == start[j] or pair_row[t] != pair_row[t - 1]:
                k += 1
                q_rows[k] = pair_row[t]
            pair_pos[pair_col[t]] = k


@numba.njit(cache=True)
def thin_numeric(csr_indptr, csr_cols, csr_entry, values, weights, classes, q_indptr, pair_pos, out, rhs, b):
    """Add ``A^T diag(weights [class]) A`` into ``out[class]`` and ``A^T rhs`` into ``b``, row by row.

    The products are the general pass's: ``(v_j w) v_j``, ``(v_j w) v_i`` and
    ``(v_i w) v_i`` for a row with entries in columns ``j < i``.
    """
    for r in range(csr_indptr.shape[0] - 1):
        s, e = csr_indptr[r], csr_indptr[r + 1]
        if s == e:
            continue
        c = classes[r] if classes.shape[0] else 0
        j, v_j = csr_cols[s], values[csr_entry[s]]
        i, v_i = j, 0.0
        if e - s == 2 and csr_cols[s + 1] < j:
            j, v_j = csr_cols[s + 1], values[csr_entry[s + 1]]
            i, v_i = csr_cols[s], values[csr_entry[s]]
        elif e - s == 2:
            i, v_i = csr_cols[s + 1], values[csr_entry[s + 1]]
        if rhs.shape[0]:
            b[j] += v_j * rhs[r]
            if e - s == 2:
                b[i] += v_i * rhs[r]
        a_j = v_j * weights[r]
        out[c, q_indptr[j]] += a_j * v_j
        if e - s == 2:
            out[c, pair_pos[r]] += a_j * v_i
            out[c, q_indptr[i]] += (v_i * weights[r]) * v_i


@numba.njit(cache=True)
def thin_transpose_times(csr_indptr, csr_cols, csr_entry, values, y, out):
    """``out += A^T y``, row by row (each column's sum in increasing row order, as the general pass)."""
    for r in range(csr_indptr.shape[0] - 1):
        for q in range(csr_indptr[r], csr_indptr[r + 1]):
            out[csr_cols[q]] += values[csr_entry[q]] * y[r]
