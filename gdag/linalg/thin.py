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
    its diagonal.  Index arrays have ``csr_cols``' type (int32 while every
    index fits), positions in ``Q`` too while they fit.
    """
    itype = csr_cols.dtype
    start = np.zeros(n_cols + 1, dtype=itype)  # pairs per column, then where each column's pairs start
    present = np.zeros(n_cols, dtype=np.bool_)
    if not _count_pairs(csr_indptr, csr_cols, start, present):
        return None
    n_pairs = int(start[-1])
    pair_row, pair_col = np.empty(n_pairs, dtype=itype), np.empty(n_pairs, dtype=itype)
    qtype = itype if n_cols + n_pairs <= INT32_MAX else np.int64
    q_indptr = np.zeros(n_cols + 1, dtype=qtype)
    q_rows = np.empty(n_cols + n_pairs, dtype=itype)  # an upper bound: the pages past the end are never touched
    pair_pos = np.full(csr_indptr.shape[0] - 1, -1, dtype=qtype)
    _sort_pairs(csr_indptr, csr_cols, start, present, pair_row, pair_col, q_indptr, q_rows, pair_pos)
    return q_indptr, q_rows[: q_indptr[-1]], pair_pos


@numba.njit(cache=True)
def _count_pairs(csr_indptr, csr_cols, start, present):
    """Whether ``A`` is thin; if so, ``start`` delimits each column's pairs ``(i > j)`` (by ``j``) and
    ``present`` marks the columns with an entry."""
    n_cols = start.shape[0] - 1
    for r in range(csr_indptr.shape[0] - 1):
        s, e = csr_indptr[r], csr_indptr[r + 1]
        if e - s > 2 or (e - s == 2 and csr_cols[s] == csr_cols[s + 1]):
            return False  # three entries, or two in one column (they add up): the general road
        for q in range(s, e):
            present[csr_cols[q]] = True
        if e - s == 2:
            start[min(csr_cols[s], csr_cols[s + 1]) + 1] += 1
    for j in range(n_cols):
        start[j + 1] += start[j]
    return True


@numba.njit(cache=True)
def _sort_pairs(csr_indptr, csr_cols, start, present, pair_row, pair_col, indptr, q_rows, pair_pos):
    """Each column's pairs, sorted by row ``i`` (ties in the order of ``A``'s rows), and the pattern.

    ``pair_row`` holds the pairs' ``i`` and ``pair_col`` their row of ``A``;
    per column, the pattern has its diagonal (if present) and its distinct
    ``i``, and ``pair_pos`` gets where each row's pair sits in it.
    """
    n_cols = start.shape[0] - 1
    for r in range(csr_indptr.shape[0] - 1):
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
    for j in range(n_cols):  # insertion sort by row (stable: ties keep row order); columns are short
        for t in range(start[j] + 1, start[j + 1]):
            i, r = pair_row[t], pair_col[t]
            u = t - 1
            while u >= start[j] and pair_row[u] > i:
                pair_row[u + 1], pair_col[u + 1] = pair_row[u], pair_col[u]
                u -= 1
            pair_row[u + 1], pair_col[u + 1] = i, r
        k = indptr[j] - 1  # then the column's pattern: its diagonal, then its distinct rows
        if present[j]:
            k += 1
            q_rows[k] = j
        for t in range(start[j], start[j + 1]):
            if t == start[j] or pair_row[t] != pair_row[t - 1]:
                k += 1
                q_rows[k] = pair_row[t]
            pair_pos[pair_col[t]] = k
        indptr[j + 1] = k + 1


@numba.njit(cache=True, error_model="numpy")  # 1/0 is inf, as numpy divides
def thin_numeric(csr_indptr, csr_cols, csr_entry, values, weights, classes, q_indptr, pair_pos, out, rhs, b, divide):
    """Add ``A^T diag(weights [class]) A`` into ``out[class]`` and ``A^T rhs`` into ``b``, row by row
    (``divide``: ``weights`` are variances, ``w = 1 / weights`` and ``rhs / weights`` for ``rhs``).

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
            s_r = rhs[r] / weights[r] if divide else rhs[r]
            b[j] += v_j * s_r
            if e - s == 2:
                b[i] += v_i * s_r
        w_r = 1.0 / weights[r] if divide else weights[r]
        a_j = v_j * w_r
        out[c, q_indptr[j]] += a_j * v_j
        if e - s == 2:
            out[c, pair_pos[r]] += a_j * v_i
            out[c, q_indptr[i]] += (v_i * w_r) * v_i


@numba.njit(cache=True)
def thin_transpose_times(csr_indptr, csr_cols, csr_entry, values, y, out):
    """``out += A^T y``, row by row (each column's sum in increasing row order, as the general pass)."""
    for r in range(csr_indptr.shape[0] - 1):
        for q in range(csr_indptr[r], csr_indptr[r + 1]):
            out[csr_cols[q]] += values[csr_entry[q]] * y[r]
