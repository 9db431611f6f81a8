r"""Pairs of a sparse matrix's entries that share a row: the terms of ``diag(A X A^T)``.

For symmetric ``X``, ``(A X A^T)_{kk} = \sum m_{ab} A_a A_b X_{c_a c_b}`` over the
unordered pairs ``(a, b)`` of entries in row ``k`` (diagonal pairs included,
``m = 1`` for them and 2 otherwise), ``c`` the entries' columns.  With
``X = (A^T W A)^{-1}`` every ``X_{c_a c_b}`` needed lies on the pattern of
``A^T W A``, so a selected inverse supplies them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp

from .gram import bucket


@dataclass(frozen=True)
class RowPairs:
    """The pairs of entries sharing a row: ``row``, the entries ``first`` and ``second``, ``mult``, their columns."""

    row: np.ndarray
    first: np.ndarray
    second: np.ndarray
    mult: np.ndarray  # 1 on the diagonal pairs, 2 elsewhere
    col_first: np.ndarray
    col_second: np.ndarray


def row_pairs(entry_row: np.ndarray, entry_col: np.ndarray, rows: np.ndarray, n_rows: int) -> RowPairs:
    """The pairs of entries (at ``entry_row``, ``entry_col``) that share one of ``rows`` (bool over the rows)."""
    keep = np.flatnonzero(rows[entry_row])
    indptr, order = bucket(entry_row[keep].astype(np.int64), n_rows)
    row, first, second = _row_pairs(indptr, keep[order])
    mult = np.where(first == second, 1.0, 2.0)
    return RowPairs(row, first, second, mult, entry_col[first].astype(np.int64), entry_col[second].astype(np.int64))


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


def diagonal_on_pattern(M: sp.csr_matrix, pattern: sp.csc_matrix, covariances) -> np.ndarray | None:
    """``diag(M X M^T)`` from ``covariances(a, b) = X[a, b]`` when every pair of columns one row of ``M`` reads
    lies on ``pattern`` (a lower triangle, where a selected inverse has ``X``); None when one does not.

    One pass over the pairs instead of a triangular solve per row: nested designs and rows that read one
    variable qualify; a row reading two crossed effects needs an entry the pattern may not have.
    """
    coo = M.tocoo()
    pairs = row_pairs(coo.row.astype(np.int64), coo.col.astype(np.int64), np.ones(M.shape[0], bool), M.shape[0])
    n = pattern.shape[0]
    Q = pattern if pattern.has_sorted_indices else pattern.sorted_indices()
    keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(Q.indptr)) * n + Q.indices.astype(np.int64)
    lo, hi = np.minimum(pairs.col_first, pairs.col_second), np.maximum(pairs.col_first, pairs.col_second)
    at = np.minimum(np.searchsorted(keys, lo * n + hi), max(keys.size - 1, 0))
    if keys.size == 0 or not np.all(keys[at] == lo * n + hi):
        return None
    products = pairs.mult * coo.data[pairs.first] * coo.data[pairs.second]
    return np.bincount(pairs.row, weights=products * covariances(pairs.col_first, pairs.col_second),
                       minlength=M.shape[0])
