"""One pass over rows that each read a few columns: the sums a likelihood's rows contribute.

Rows are given term by term: ``columns[a, i]`` is the column row ``i``
reads through term ``a`` (``n`` for none: a spare slot past the end, so no
masks are needed) and ``coefs[a, i]`` its coefficient.  With weights ``w``:

* :func:`row_sums`: ``diag(Z^T W Z)`` (the same column read twice counts
  the cross term too) and ``-Z^T W r``;
* :func:`row_residual`: ``e^T D^{-1} e`` for ``e = r + Z m``, and ``-Z^T D^{-1} e``;
* :func:`row_transpose`: ``-Z^T y``.

Arrays over columns have length ``n + 1``; the last (spare) entry is dropped by the caller.
Sums run in row order, so a given split of the rows always gives the same bits.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def row_sums(columns, coefs, w, r, diag, b):
    """Adds this block of rows' sums into ``diag`` and ``b`` (length ``n + 1``), in row order."""
    for i in range(r.shape[0]):
        wi, ri = w[i], r[i]
        for a in range(columns.shape[0]):
            j, c = columns[a, i], coefs[a, i]
            diag[j] += wi * c * c
            b[j] -= wi * c * ri
            for t in range(a + 1, columns.shape[0]):  # a column read by two terms: the cross term too
                if columns[t, i] == j:
                    diag[j] += 2.0 * wi * c * coefs[t, i]


@numba.njit(cache=True)
def row_residual(columns, coefs, r, d, m, gradient):
    """``e^T D^{-1} e`` for ``e = r + Z m``, adding ``-Z^T D^{-1} e`` into ``gradient`` (length ``n + 1``).

    One pass, and nothing per row is kept: what the mean refinement needs of these rows.
    """
    f = 0.0
    for i in range(r.shape[0]):
        e = r[i]
        for a in range(columns.shape[0]):
            e += coefs[a, i] * m[columns[a, i]]
        we = e / d[i]
        f += e * we
        for a in range(columns.shape[0]):
            gradient[columns[a, i]] -= coefs[a, i] * we
    return f


@numba.njit(cache=True)
def row_transpose(columns, coefs, y, n):
    out = np.zeros(n + 1)
    for i in range(y.shape[0]):
        for a in range(columns.shape[0]):
            out[columns[a, i]] -= coefs[a, i] * y[i]
    return out
