"""Small compiled kernels for :mod:`gdag.resources` (internal)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def column_counts(indptr, indices, n):
    """Column counts of the Cholesky factor (diagonal included) from the rows of a lower triangle.

    ``indptr``/``indices``: CSR of the strictly lower triangle of a symmetric
    matrix in elimination order.  Builds the elimination tree (Liu's algorithm
    with path compression), then walks each row's subtree: ``L[i, j]`` is
    nonzero exactly for the ``j`` on the paths from each ``k`` with
    ``A[i, k] != 0`` up to ``i``.  O(nnz(L)) time, O(n) memory.
    """
    parent = np.full(n, -1, dtype=np.int64)
    ancestor = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            k = indices[p]
            while k != -1 and k < i:
                nxt = ancestor[k]
                ancestor[k] = i
                if nxt == -1:
                    parent[k] = i
                    break
                k = nxt
    counts = np.ones(n, dtype=np.int64)
    mark = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        mark[i] = i
        for p in range(indptr[i], indptr[i + 1]):
            k = indices[p]
            while k != -1 and mark[k] != i:
                mark[k] = i
                counts[k] += 1
                k = parent[k]
    return counts
