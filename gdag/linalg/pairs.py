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
