"""An exact oracle for small linear-Gaussian models: rational arithmetic, no rounding at all.

The model ``x = c + B x + e``, ``e ~ N(0, diag(d))`` is given by float arrays,
which are exact binary fractions; :func:`exact_posterior` conditions it on the
observed entries of ``x`` with :class:`fractions.Fraction`, so its answers are
the exact posterior of the float inputs, rounded once at the end.  It is the
reference for sds spanning 1e-8..1e8, where a float64 (or longdouble) dense
oracle loses as many digits as the code under test.  Small models only
(cubic in the number of unobserved variables, with big rationals).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def _log(q: Fraction) -> float:
    return math.log(q.numerator) - math.log(q.denominator)


def exact_posterior(B, c, d, x):
    """Posterior of ``x = c + B x + e`` given the non-NaN entries of ``x``.

    Returns ``(U, mean, var, log_evidence)``: the unobserved positions, their
    posterior means and variances (floats, correctly rounded from exact
    values) and ``log p(x_O)`` (float).
    """
    n = len(c)
    U = [k for k in range(n) if np.isnan(x[k])]
    O = [k for k in range(n) if not np.isnan(x[k])]
    F = lambda v: Fraction(float(v))  # noqa: E731 - exact value of a double
    A = [[Fraction(int(i == j)) - F(B[i][j]) for j in range(n)] for i in range(n)]
    w = [1 / F(dk) for dk in d]
    r = [F(c[i]) - sum((A[i][j] * F(x[j]) for j in O), Fraction(0)) for i in range(n)]
    m = len(U)
    Q = [[sum((A[k][U[a]] * w[k] * A[k][U[b]] for k in range(n)), Fraction(0)) for b in range(m)] for a in range(m)]
    b = [sum((A[k][U[a]] * w[k] * r[k] for k in range(n)), Fraction(0)) for a in range(m)]
    # Gauss-Jordan with exact pivots: the inverse and the determinant
    M = [row[:] + [Fraction(int(i == j)) for j in range(m)] for i, row in enumerate(Q)]
    det = Fraction(1)
    for col in range(m):
        pivot = M[col][col]
        det *= pivot
        M[col] = [v / pivot for v in M[col]]
        for i in range(m):
            if i != col and M[i][col] != 0:
                f = M[i][col]
                M[i] = [p - f * q for p, q in zip(M[i], M[col])]
    Qinv = [row[m:] for row in M]
    mean = [sum((Qinv[a][j] * b[j] for j in range(m)), Fraction(0)) for a in range(m)]
    quad = sum((r[k] * r[k] * w[k] for k in range(n)), Fraction(0)) - sum((b[a] * mean[a] for a in range(m)), Fraction(0))
    log_evidence = -0.5 * (len(O) * math.log(2 * math.pi) + sum(_log(F(dk)) for dk in d)
                           + (_log(det) if m else 0.0) + float(quad))
    return U, np.array([float(v) for v in mean]), np.array([float(Qinv[a][a]) for a in range(m)]), log_evidence
