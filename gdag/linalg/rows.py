"""One pass over rows that each read a few latent variables: the sums a likelihood's rows contribute.

Rows are given term by term, straight from a family's declaration (no per-row
copies): row ``i`` reads, through term ``a``, the variable
``starts[a] + cols[a, i]`` (none when ``cols[a, i] < 0``) with coefficient
``vals[a, i] * scales[a]`` (``vals`` may have one column: one value for all
rows).  ``pos`` gives each variable's column among the unknowns (-1 for an
observed one, whose value ``x`` enters the residual).
Each row's residual ``r = offset - y + extra + sum(c x[observed parents])``
and variance ``d = (sd * theta[sd_theta])^2`` are computed on the fly
(``offset`` and ``sd`` may have length 1, ``sd_theta`` and ``extra`` length 0).
With ``w = 1/d`` and ``Z`` the coefficients on the unknowns:

* :func:`leaf_sums`: ``Z^T W Z`` (its diagonal, and off-diagonal pairs found
  by binary search in the pattern's sorted ``keys``) and ``-Z^T W r``;
* :func:`leaf_residual`: ``e^T W e`` for ``e = r + Z m``, adding ``-Z^T W e``;
* :func:`leaf_log_variances`: ``sum log d``.

Sums run in row order, so a given split of the rows always gives the same bits.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _find(keys, key):
    lo, hi = 0, keys.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, error_model="numpy")
def leaf_sums(cols, vals, starts, scales, pos, x, offset, y, sd, sd_theta, theta, extra, keys, n, diag, b, q):
    """Adds these rows' ``diag(Z^T W Z)`` into ``diag``, ``-Z^T W r`` into ``b`` and the pairs into ``q``.

    Returns ``(bad_d, bad_r)``: the first row whose variance is not a positive
    finite number with a finite inverse, and the first whose residual overflows
    (-1 for none); such rows add nothing.
    """
    bad_d, bad_r = -1, -1
    k = cols.shape[0]
    one = 1 if vals.shape[1] > 1 else 0
    us, cs = np.empty(k, dtype=np.int64), np.empty(k)  # the row's unknowns (-1: none) and coefficients
    for i in range(y.shape[0]):
        s = sd[i] if sd.shape[0] > 1 else sd[0]  # the row's residual r and variance d (written out in each
        if sd_theta.shape[0]:                    # kernel: a call passing a dozen arrays costs ~100 ns a row)
            s = s * theta[sd_theta[i]]
        d = s * s
        r = offset[i] if offset.shape[0] > 1 else offset[0]
        r -= y[i]
        if extra.shape[0]:
            r += extra[i]
        for a in range(k):
            j = cols[a, i]
            cs[a] = vals[a, i * one] * scales[a]
            us[a] = pos[starts[a] + j] if j >= 0 else -1
            if j >= 0 and us[a] < 0:
                r += cs[a] * x[starts[a] + j]
        if not (np.isfinite(d) and d > 0.0 and np.isfinite(1.0 / d)):
            bad_d = i if bad_d < 0 else bad_d
            continue
        if not np.isfinite(r):
            bad_r = i if bad_r < 0 else bad_r
            continue
        w = 1.0 / d
        for a in range(k):
            u, c = us[a], cs[a]
            if u < 0:
                continue
            diag[u] += w * c * c
            b[u] -= w * c * r
            for t in range(a + 1, k):  # a second unknown of the same row: the cross product
                v, ct = us[t], cs[t]
                if v < 0:
                    continue
                if v == u:
                    diag[u] += 2.0 * w * c * ct
                else:
                    q[_find(keys, min(u, v) * n + max(u, v))] += w * c * ct
    return bad_d, bad_r


@numba.njit(cache=True, error_model="numpy")
def leaf_residual(cols, vals, starts, scales, pos, x, offset, y, sd, sd_theta, theta, extra, m, gradient):
    """``e^T W e`` for ``e = r + Z m``, adding ``-Z^T W e`` into ``gradient``; nothing per row is kept."""
    f = 0.0
    k = cols.shape[0]
    one = 1 if vals.shape[1] > 1 else 0
    us, cs = np.empty(k, dtype=np.int64), np.empty(k)  # the row's unknowns (-1: none) and coefficients
    for i in range(y.shape[0]):
        s = sd[i] if sd.shape[0] > 1 else sd[0]  # the row's residual r and variance d (written out in each
        if sd_theta.shape[0]:                    # kernel: a call passing a dozen arrays costs ~100 ns a row)
            s = s * theta[sd_theta[i]]
        d = s * s
        r = offset[i] if offset.shape[0] > 1 else offset[0]
        r -= y[i]
        if extra.shape[0]:
            r += extra[i]
        for a in range(k):
            j = cols[a, i]
            cs[a] = vals[a, i * one] * scales[a]
            us[a] = pos[starts[a] + j] if j >= 0 else -1
            if j >= 0 and us[a] < 0:
                r += cs[a] * x[starts[a] + j]
        e = r
        for a in range(k):
            if us[a] >= 0:
                e += cs[a] * m[us[a]]
        we = e / d
        f += e * we
        for a in range(k):
            if us[a] >= 0:
                gradient[us[a]] -= cs[a] * we
    return f


@numba.njit(cache=True, error_model="numpy")
def leaf_log_variances(sd, sd_theta, theta, n_rows):
    """``sum log d`` over ``n_rows`` rows."""
    total = 0.0
    for i in range(n_rows):
        s = sd[i] if sd.shape[0] > 1 else sd[0]
        if sd_theta.shape[0]:
            s = s * theta[sd_theta[i]]
        total += np.log(s * s)
    return total
