r"""Observed leaf families of a fit as sufficient statistics: their rows summed once, per variance class.

A fit evaluates the likelihood at many parameter values.  An observed leaf
family (:mod:`gdag.observations`: fully observed, nothing depends on it) whose
node terms carry no parameter enters every evaluation only through sums over
its rows that no parameter changes.  Row ``i`` reads

.. math::

    y_i = o_i + Z_i u + X_i \beta + e_i, \qquad e_i \sim N(0, s_i^2 \theta_{k(i)}^2)

(``u``: the latent unobserved variables, ``Z_i`` its coefficients on them,
observed parents folded into the offset ``o``; ``X_i`` its coefficients on
the fixed effects; ``s_i`` the declared sd, ``theta_k`` the sd parameter of
its variance class, 1 for a constant sd).  With ``w = 1 / s^2`` and
``r = y - o - X beta0`` per class: the row count, ``sum log s^2``,
``r^T W r``, ``Z^T W r``, ``X^T W r``, ``Z^T W Z`` (sparse, lower triangle),
``Z^T W X`` and ``X^T W X``; a class adds ``1 / theta_k^2`` times them to the
latent system (:mod:`gdag.fitting.reduced`).

``beta0`` is a reference fit of the fixed effects (least squares on the first
rows): the residual sum of squares is then a quadratic form in ``beta - beta0``
whose terms have the size of the residuals, not of the data, so that it does
not cancel when the data have a large mean.

The sums add up over any split of the rows; :func:`add` adds them in the order
given (the same chunking, the same bits).  A data set on a cluster sums them per
partition and adds the partitions' sums.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import scipy.sparse as sp

from ..errors import DataError

# Rows in the reference least-squares fit of the fixed effects.
REFERENCE_ROWS = 1 << 16


@dataclass(frozen=True)
class ClassSums:
    """One variance class's sums over its rows (see the module docstring); ``entry`` -1: a constant sd."""

    entry: int
    count: int
    log_base: float  # sum log s^2
    rr: float  # r^T W r
    Zr: np.ndarray  # Z^T W r (n_U)
    Xr: np.ndarray  # X^T W r (p)
    ZZ: sp.csc_matrix  # lower triangle of Z^T W Z (n_U x n_U)
    ZX: np.ndarray  # Z^T W X (n_U x p)
    XX: np.ndarray  # X^T W X (p x p)
    Z2: np.ndarray  # sum of Z's squared coefficients per column, unweighted (for starting values)
    Zn: np.ndarray  # rows reading each column


@dataclass(frozen=True)
class LeafStatistics:
    """The sums of every class, over the leaf families ``names``, about the reference ``beta0``."""

    names: tuple[str, ...]
    beta0: np.ndarray
    classes: tuple[ClassSums, ...]

    @property
    def count(self) -> int:
        return sum(c.count for c in self.classes)

    def __add__(self, other: "LeafStatistics") -> "LeafStatistics":
        return add(self, other)


def add(a: LeafStatistics, b: LeafStatistics) -> LeafStatistics:
    """``a + b``: the sums of two sets of rows of the same families about the same reference."""
    if a.names != b.names or not np.array_equal(a.beta0, b.beta0):
        raise ValueError("internal error: leaf statistics of other families or another reference are not added")
    by_entry = {c.entry: c for c in a.classes}
    out = list(a.classes)
    for c in b.classes:
        if c.entry in by_entry:
            mine = by_entry[c.entry]
            out[out.index(mine)] = ClassSums(**{f.name: _sum(getattr(mine, f.name), getattr(c, f.name), f.name)
                                                for f in fields(ClassSums)})
        else:
            out.append(c)
    return LeafStatistics(a.names, a.beta0, tuple(sorted(out, key=lambda c: c.entry)))


def _sum(x, y, name: str):
    if name == "entry":
        return x
    if sp.issparse(x):
        total = (x + y).tocsc()
        total.sort_indices()
        return total
    return x + y


class ClassAccumulator:
    """One variance class's sums, added chunk by chunk in the order given (the same chunking, the same bits).

    A chunk's work is proportional to its rows: its products run over the latent columns it reads
    (``np.unique``, then local indices), the dense sums are added into those columns only, and
    ``Z^T W Z``'s entries, as sorted keys ``col * n_U + row``, go into a binary counter of runs
    merged pairwise.  A running sparse total, or dense vectors over every latent column per
    chunk, cost the latent size per chunk instead: quadratic in the rows.
    """

    def __init__(self, entry: int, n_U: int, p: int):
        self.entry, self.n_U, self.count, self.log_base, self.rr = int(entry), n_U, 0, 0.0, 0.0
        self.Zr, self.Z2, self.Zn = np.zeros(n_U), np.zeros(n_U), np.zeros(n_U)
        self.Xr, self.ZX, self.XX = np.zeros(p), np.zeros((n_U, p)), np.zeros((p, p))
        self._runs: list = []  # level k: the (keys, values) of 2^k chunks' Z^T W Z, or None

    def add(self, columns: np.ndarray, coefs: np.ndarray, X: np.ndarray, r: np.ndarray, w: np.ndarray) -> None:
        """Add rows: ``columns[a, i]`` the latent column row ``i`` reads by term ``a`` (-1 for none),
        ``coefs`` its coefficient, ``X`` their fixed-effect design, ``r`` their data less offsets, known
        parents and ``X beta0``, ``w`` their base weights ``1 / s^2``."""
        n, terms = r.shape[0], columns.shape[0]
        has = columns >= 0
        local, inverse = np.unique(columns[has], return_inverse=True)  # the columns read, ascending
        m = local.shape[0]
        if terms and has.all():  # every row reads every term: Z's CSR arrays directly, row by row
            at = np.empty(columns.shape, dtype=np.int64)
            at[has] = inverse
            Z = sp.csr_matrix((coefs.T.ravel(), at.T.ravel(), np.arange(0, terms * n + 1, terms)), shape=(n, m))
            Z.sum_duplicates()  # a column read twice by one row: summed
        else:
            term_rows = np.broadcast_to(np.arange(n), columns.shape)[has]
            Z = sp.csr_matrix((coefs[has], (term_rows, inverse)), shape=(n, m))
        WZ = sp.csr_matrix((Z.data * np.repeat(w, np.diff(Z.indptr)), Z.indices, Z.indptr), shape=Z.shape)
        ZZ = sp.tril(sp.csc_matrix(Z.T @ WZ)).tocsc()
        ZZ.sum_duplicates()
        ZZ.sort_indices()
        cols = np.repeat(np.arange(m), np.diff(ZZ.indptr))
        self._push(local[cols] * self.n_U + local[ZZ.indices], ZZ.data)  # local order is global order
        WX = w[:, None] * X
        self.count += n
        self.log_base += float(-np.sum(np.log(w)))
        self.rr += float(np.dot(w * r, r))
        self.Xr += WX.T @ r
        self.XX += X.T @ WX
        self.Zr[local] += np.asarray(WZ.T @ r).reshape(-1)
        self.ZX[local] += np.asarray(WZ.T @ X)
        self.Z2[local] += np.bincount(inverse, weights=coefs[has] ** 2, minlength=m)
        self.Zn[local] += np.bincount(inverse, minlength=m)

    def _push(self, keys: np.ndarray, values: np.ndarray) -> None:
        run, k = (keys, values), 0
        while k < len(self._runs) and self._runs[k] is not None:
            run, self._runs[k] = _merged(self._runs[k], run), None
            k += 1
        if k == len(self._runs):
            self._runs.append(None)
        self._runs[k] = run

    def sums(self) -> ClassSums:
        run = (np.zeros(0, np.int64), np.zeros(0))
        for level in self._runs:  # the remaining runs, most recent first
            if level is not None:
                run = _merged(level, run)
        keys, values = run
        cols, rows = np.divmod(keys, self.n_U) if self.n_U else (keys, keys)
        indptr = np.zeros(self.n_U + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=self.n_U), out=indptr[1:])
        ZZ = sp.csc_matrix((values, rows, indptr), shape=(self.n_U, self.n_U))
        return ClassSums(self.entry, self.count, self.log_base, self.rr, self.Zr, self.Xr, ZZ, self.ZX, self.XX,
                         self.Z2, self.Zn)


def _merged(a: tuple, b: tuple) -> tuple:
    """Two sorted runs of (keys, values) as one, values of equal keys added (``a``'s first)."""
    keys, values = np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if keys.size else np.zeros(0, np.int64)
    return keys[first], np.add.reduceat(values, first) if keys.size else values


def reference_fit(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``beta0``: weighted least squares of the first rows' data on their fixed-effect design (minimum norm)."""
    if X.shape[1] == 0:
        return np.zeros(0)
    n = min(REFERENCE_ROWS, y.shape[0])
    sw = np.sqrt(w[:n])
    beta0, *_ = np.linalg.lstsq(sw[:, None] * X[:n], sw * y[:n], rcond=None)
    if not np.all(np.isfinite(beta0)):
        raise DataError("The observed data or their design overflow double precision; rescale the model's units.")
    return beta0


@dataclass(frozen=True)
class LeafStart:
    """What starting values read of the data: their sd and, per sd entry, (count, sum of squares) of the
    coefficients with which its variables enter the leaves' rows."""

    spread: float
    coefficients: tuple[np.ndarray, np.ndarray]


def observed_values(values: np.ndarray) -> np.ndarray:
    """The observed entries of ``values`` (the array itself when all are)."""
    missing = np.isnan(values)
    return values[~missing] if missing.any() else values


def spread_of_values(parts: list[np.ndarray]) -> float:
    """The sd of the values of all ``parts`` together."""
    return spread_of([moments_of(p) for p in parts])


def moments_of(values: np.ndarray) -> tuple[int, float, float]:
    """``(count, mean, sum of squared deviations)`` of ``values``: what :func:`spread_of` combines."""
    mean = float(values.mean()) if values.size else 0.0
    return int(values.size), mean, float(np.sum((values - mean) ** 2))


def spread_of(moments: list[tuple[int, float, float]]) -> float:
    """The sd of several sets of values together, from each set's :func:`moments_of` (1 with fewer than 2 values)."""
    n = np.array([m[0] for m in moments], dtype=float)
    if n.sum() < 2:
        return 1.0
    means = np.array([m[1] for m in moments])
    mean = float(n @ means / n.sum())
    return float(np.sqrt((sum(m[2] for m in moments) + float(n @ (means - mean) ** 2)) / n.sum()))


def leaf_coefficients(stats: LeafStatistics, sd_of_U: np.ndarray, n_theta: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sd entry, (count, sum of squares) of the coefficients with which its variables enter the leaves' rows."""
    has = sd_of_U >= 0
    count = sum(np.bincount(sd_of_U[has], weights=c.Zn[has], minlength=n_theta) for c in stats.classes)
    square = sum(np.bincount(sd_of_U[has], weights=c.Z2[has], minlength=n_theta) for c in stats.classes)
    return count, square
