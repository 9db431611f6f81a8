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


def chunk_sums(columns: np.ndarray, coefs: np.ndarray, X: np.ndarray, r: np.ndarray, w: np.ndarray,
               entry: int, n_U: int) -> ClassSums:
    """The sums of one class's rows: ``columns[a, i]`` the latent column row ``i`` reads by term ``a``
    (-1 for none), ``coefs`` its coefficient, ``X`` the rows' fixed-effect design (rows x p), ``r``
    their data less offsets, known parents and ``X beta0``, ``w`` the base weights ``1 / s^2``.

    Vectorized over rows (scipy.sparse products); for chunks of a bounded number of rows.
    """
    n, terms = r.shape[0], columns.shape[0]
    has = columns >= 0
    if terms and has.all():  # every row reads every term: Z's CSR arrays directly, row by row
        Z = sp.csr_matrix((coefs.T.ravel(), columns.T.ravel(), np.arange(0, terms * n + 1, terms)), shape=(n, n_U))
        Z.sum_duplicates()  # a column read twice by one row: summed
    else:
        term_rows = np.broadcast_to(np.arange(n), columns.shape)[has]
        Z = sp.csr_matrix((coefs[has], (term_rows, columns[has])), shape=(n, n_U))
    WZ = sp.csr_matrix((Z.data * np.repeat(w, np.diff(Z.indptr)), Z.indices, Z.indptr), shape=Z.shape)
    ZZ = sp.tril(sp.csc_matrix(Z.T @ WZ)).tocsc()
    ZZ.sum_duplicates()
    ZZ.sort_indices()
    WX = w[:, None] * X
    return ClassSums(
        entry=int(entry), count=n, log_base=float(-np.sum(np.log(w))), rr=float(np.dot(w * r, r)),
        Zr=np.asarray(WZ.T @ r).reshape(-1), Xr=WX.T @ r, ZZ=ZZ, ZX=np.asarray(WZ.T @ X), XX=X.T @ WX,
        Z2=np.bincount(columns[has], weights=coefs[has] ** 2, minlength=n_U),
        Zn=np.bincount(columns[has], minlength=n_U).astype(float),
    )


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
