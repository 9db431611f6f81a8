"""Numeric factors of symmetric positive definite matrices: the one :class:`Factor` protocol.

Every factor gdag uses is built from an analysis of a pattern (done once per
pattern) and a matrix's values, and is refactored in place for new values on
that pattern; it solves, gives ``log det Q``, ``diag(Q^{-1})`` and entries of
``Q^{-1}`` on ``Q``'s pattern (:class:`Factor`).  The implementations:

* :class:`CholeskyFactor`: CHOLMOD (scikit-sparse), ``Q[p][:, p] = L L^T``
  with a fill-reducing permutation ``p`` chosen by :func:`analyze`;
* :class:`PaddedFactor`: the factor of ``Q_UU`` cut out of a factor of the
  padded ``[[Q_UU, 0], [0, I]]``;
* :class:`gdag.linalg.blocked.BlockedFactor`: a diagonal head and a dense tail.

Failed pivots become :class:`NotIdentifiedError` naming the scalar variable
(:func:`not_identified`, the one wording for every factor).
"""

from __future__ import annotations

import warnings
from typing import Callable, Protocol

import numba
import numpy as np
import scipy.sparse as sp

from ..errors import AccuracyWarning, NotIdentifiedError, warn
from ..timing import timed
from . import gram
from .ordering import choose_ordering
from .selinv import selected_inverse, selected_inverse_diag

try:
    from sksparse import cholmod
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError(
        "gdag needs scikit-sparse (CHOLMOD). Install SuiteSparse headers "
        "(`apt-get install libsuitesparse-dev`) and then `pip install scikit-sparse==0.4.16`."
    ) from err

# Right-hand sides up to this many are solved one column at a time on gdag's simplicial
# factors (see CholeskyFactor.solve); more go to CHOLMOD as one block.
FEW_COLUMNS = 8

# Relative pivot size below which answers lose most of their digits.
ILL_CONDITIONED = 1e-14


class Factor(Protocol):
    """A numeric factor of a symmetric positive definite ``Q`` (n x n), refreshed in place for new values.

    Built from an analysis of ``Q``'s pattern and a first set of values;
    :meth:`refactor_inplace` takes later values on the same pattern.
    """

    n: int

    def refactor_inplace(self, Q: sp.csc_matrix) -> None:
        """Factor new values (lower triangle) on the analysed pattern."""

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``Q^{-1} b`` for a vector or a dense matrix of columns."""

    def logdet(self) -> float:
        """``log det Q``."""

    def inverse_diagonal(self) -> np.ndarray:
        """``diag(Q^{-1})``."""

    def covariances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(Q^{-1})[a[k], b[k]]`` for pairs of positions on ``Q``'s pattern."""


def not_identified(label: str) -> NotIdentifiedError:
    """The error for a variable whose Cholesky pivot is not positive (every factor's wording)."""
    return NotIdentifiedError(
        f"The posterior is not proper: `{label}` is not identified (its pivot in the Cholesky "
        "factorization is not positive). Give it a prior with finite sd or observe data that informs it. "
        # (reliability) for a valid model Q_UU is positive definite in exact arithmetic, so in practice
        # this is rounding: say what causes it.
        "In double precision this happens when the sds around it span too many orders of magnitude: "
        "a vague prior over barely informed children, or a near-deterministic node (use sd=0 for it)."
    )


def _cholmod_analyze(Q: sp.csc_matrix, mode: str = "auto", ordering_method: str = "default"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cholmod.CholmodTypeConversionWarning)
        return cholmod.analyze(Q, mode=mode, ordering_method=ordering_method)


class Analysis:
    """A symbolic analysis: a fill-reducing ordering and CHOLMOD's symbolic factor.

    The ordering is gdag's static degree ordering, applied to the values before
    CHOLMOD sees them (``reorder``), or CHOLMOD's own (``reorder`` is None);
    :func:`gdag.linalg.ordering.choose_ordering` measures which factors faster.
    """

    def __init__(self, symbolic, reorder=None, counts: tuple[int, float] | None = None):
        self.symbolic = symbolic
        self.reorder = reorder
        self.counts = counts  # (nnz(L), flops) in this ordering, when the ordering choice counted them

    def P(self) -> np.ndarray:
        """``p`` with ``Q[p][:, p] = L L^T``: gdag's ordering composed with CHOLMOD's."""
        inner = self.symbolic.P()
        return inner if self.reorder is None else self.reorder.perm[inner]

    def prepare(self, Q: sp.csc_matrix) -> sp.csc_matrix:
        """``Q`` (with the analysed pattern) as CHOLMOD is to factor it."""
        if self.reorder is None:
            return Q
        if Q.nnz != self.reorder.source.shape[0]:
            raise ValueError("internal error: a matrix with another pattern than the analysed one")
        return self.reorder.apply(Q)

    def factor(self, Q: sp.csc_matrix, describe: Callable[[np.ndarray], list[str]]) -> "CholeskyFactor":
        """A new numeric factor of ``Q`` (this pattern) on a copy of the symbolic factor."""
        return CholeskyFactor(self, Q, describe)


@timed("analyze")
def analyze(Q: sp.csc_matrix) -> Analysis:
    """Symbolic analysis (fill-reducing ordering and pattern of ``L``) of ``Q``'s pattern.

    ``Q`` is the lower triangle.  Patterns on which gdag's static degree
    ordering fills little are reordered by it and factored in CHOLMOD's
    simplicial mode (measured faster there, since a natural-order analysis
    forms no postordered supernodes); otherwise CHOLMOD orders and chooses.
    """
    reorder, symbolic, counts = choose_ordering(Q, _cholmod_analyze)
    if reorder is not None:
        symbolic = _cholmod_analyze(reorder.apply(Q), mode="simplicial", ordering_method="natural")
    return Analysis(symbolic if symbolic is not None else _cholmod_analyze(Q), reorder, counts)


class TriangularFactor:
    """What a factor ``Q[p][:, p] = L L^T`` answers from ``L`` and ``p`` alone (selected inversion).

    Subclasses set ``n`` and ``_P`` (the permutation) and provide :meth:`L`.
    """

    n: int
    _P: np.ndarray
    _pairs: tuple | None = None  # (a, b, nnz(L), positions of the pairs in the selected inverse's data)

    def L(self) -> sp.csc_matrix:
        raise NotImplementedError

    @property
    def permutation(self) -> np.ndarray:
        """``p`` with ``Q[p][:, p] = L L^T``."""
        return self._P

    @timed("variances")
    def inverse_diagonal(self) -> np.ndarray:
        """``diag(Q^{-1})`` by selected inversion over the factor's pattern."""
        if self.n == 0:
            return np.zeros(0)
        z = selected_inverse_diag(self.L())
        out = np.empty_like(z)
        out[self._P] = z
        return out

    def selected_inverse(self) -> sp.csc_matrix:
        """``Q^{-1}`` on the pattern of :meth:`L`, in the permuted order (see :attr:`permutation`)."""
        return selected_inverse(self.L())

    def covariances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(Q^{-1})[a[k], b[k]]`` for pairs on the pattern of ``Q`` (hence of ``L``), by selected inversion.

        Where the pairs sit in the selected inverse is found once for the
        arrays ``a`` and ``b`` (kept while they are the ones asked for).
        """
        L = self.L()
        if self._pairs is None or self._pairs[0] is not a or self._pairs[1] is not b or self._pairs[2] != L.nnz:
            n = L.shape[0]
            pinv = np.empty(n, np.int64)
            pinv[self._P] = np.arange(n)
            i, j = pinv[a], pinv[b]
            Lc = sp.csc_matrix(L)
            Lc.sort_indices()
            keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(Lc.indptr)) * n + Lc.indices
            self._pairs = (a, b, L.nnz, np.searchsorted(keys, np.minimum(i, j) * n + np.maximum(i, j)))
        return self.selected_inverse().data[self._pairs[3]]


class CholeskyFactor(TriangularFactor):
    """The numeric factor of one symmetric positive definite matrix (a :class:`Factor`).

    Parameters
    ----------
    analysis : Analysis
        An analysis of ``Q``'s pattern (from :func:`analyze`); its symbolic
        factor is copied, so one analysis serves many factors.
    Q : scipy.sparse.csc_matrix
        The matrix, with the analysed pattern.
    describe : callable
        Maps positions of ``Q`` to labels for error messages.
    """

    def __init__(self, analysis: Analysis, Q: sp.csc_matrix, describe: Callable[[np.ndarray], list[str]]):
        self.n = Q.shape[0]
        self._describe = describe
        self._analysis = analysis
        self._factor = analysis.symbolic.copy()
        self.refactor_inplace(Q)

    @timed("factor")
    def refactor_inplace(self, Q: sp.csc_matrix) -> None:
        """Numeric factorization of new values on the same pattern."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cholmod.CholmodTypeConversionWarning)
            self._P = self._analysis.P()
            try:
                self._factor.cholesky_inplace(self._analysis.prepare(Q))
            except cholmod.CholmodNotPositiveDefiniteError as err:
                column = getattr(err, "column", None)
                self._raise_not_identified(None if column is None else int(column))
        self._L = None
        pivots = self._factor.D()
        bad = np.flatnonzero(~(pivots > 0))
        if bad.size:
            self._raise_not_identified(int(bad[0]))
        # The ratio of a pivot to the diagonal it came from measures lost digits.
        diag = Q.diagonal()[self._P]
        worst = float(np.min(pivots / diag)) if self.n else 1.0
        if worst < ILL_CONDITIONED:
            warn(
                f"The posterior precision is nearly singular (relative pivot {worst:.1e}); "
                "means and variances may have lost most of their digits.",
                AccuracyWarning,
            )

    def _raise_not_identified(self, column: int | None):
        if column is None or column >= self.n:
            raise NotIdentifiedError("The posterior precision is not positive definite.")
        raise not_identified(self._describe(np.array([self._P[column]]))[0]) from None

    def L(self) -> sp.csc_matrix:
        """The lower-triangular factor (of the permuted matrix) as a CSC matrix."""
        if self._L is None:
            self._L = self._factor.L()
        return self._L

    def logdet(self) -> float:
        """``log det Q = 2 sum log L_jj``."""
        return float(self._factor.logdet()) if self.n else 0.0

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``Q^{-1} b`` for a vector or a dense matrix of columns."""
        if self.n == 0:
            return np.zeros_like(b, dtype=float)
        b = np.asarray(b, dtype=float)
        reorder = self._analysis.reorder
        if reorder is None:  # CHOLMOD's own ordering (supernodal where it pays): blocks in one call
            return self._factor.solve_A(b)
        if b.ndim == 2 and b.shape[1] <= FEW_COLUMNS:
            # gdag's ordering, simplicial factor, a few columns: one by one. At 1e6 unknowns a
            # 3-column block cost 5 single solves in CHOLMOD itself, plus row gathers and copies.
            b = np.asfortranarray(b)
            out = np.empty((self.n, b.shape[1]), order="F")
            for k in range(b.shape[1]):
                out[:, k] = self.solve(b[:, k])
            return out
        x = self._factor.solve_A(b[reorder.perm])
        out = np.empty_like(x)
        out[reorder.perm] = x
        return out

    def half_solve(self, b: np.ndarray) -> np.ndarray:
        """``L^{-1} (b[p])``: columns whose squared norms are ``b^T Q^{-1} b``."""
        return self._factor.solve_L(np.asarray(b, dtype=float)[self._P], use_LDLt_decomposition=False)

    def sample(self, z: np.ndarray) -> np.ndarray:
        """Map standard normals ``z`` (n x k) to draws with covariance ``Q^{-1}``."""
        y = self._factor.solve_Lt(z, use_LDLt_decomposition=False)
        out = np.empty_like(y)
        out[self._P] = y
        return out


class PaddedFactor(TriangularFactor):
    """A factor of ``Q_UU`` obtained by factoring the padded ``Q' = [[Q_UU, 0], [0, I]]``.

    ``Q'`` lives over R (all stochastic variables) with ``U`` at positions
    ``keep``; its values come from :class:`gdag.pattern.PaddedConditioning`
    and its analysis is the shared one of the all-unobserved pattern.  With
    ``P Q' P^T = L' L'^T``, ``L'`` is exactly zero between the elimination
    steps that fall in ``U`` and the others (every product touching an
    observed column is an exact zero, and the observed pivots are exactly 1),
    so the rows and columns of ``L'`` at the steps in ``U`` form the Cholesky
    factor ``L`` of ``Q_UU`` permuted by the induced order ``p``.  Its
    pattern is ``L'``'s restricted, still closed under fill (an induced
    subgraph of a chordal graph is chordal).  Hence:

    - ``logdet(Q_UU) = logdet(Q')`` (the observed pivots contribute log 1 = 0);
    - solves, half-solves and draws use ``L`` alone, so they cost
      ``O(nnz(L))``, as with a factor of ``Q_UU`` analysed on its own;
    - the selected inverse of ``Q_UU`` is that of ``L`` (``Q'^{-1}`` is block
      diagonal).

    CHOLMOD's factor of ``Q'`` is dropped once ``L`` is extracted.  The
    interface is :class:`CholeskyFactor`'s, in the positions of ``U``.
    """

    def __init__(self, symbolic, Q_padded: sp.csc_matrix, keep: np.ndarray,
                 describe: Callable[[np.ndarray], list[str]]):
        self.n = int(keep.shape[0])
        self._symbolic, self._keep, self._describe = symbolic, keep, describe
        self.refactor_inplace(Q_padded)

    @timed("factor")
    def refactor_inplace(self, Q_padded: sp.csc_matrix) -> None:
        """Numeric factorization of new padded values (same ``keep``, same analysis)."""
        padded = CholeskyFactor(self._symbolic, Q_padded, self._describe)  # describe: positions in R
        self._logdet = padded.logdet()
        P = padded.permutation
        position = np.full(padded.n, -1, dtype=np.int64)
        position[self._keep] = np.arange(self.n, dtype=np.int64)
        step = np.full(padded.n, -1, dtype=np.int64)  # position among the steps in U, per step
        in_U = position[P] >= 0
        step[in_U] = np.arange(self.n, dtype=np.int64)
        self._P = position[P[in_U]]
        full = padded.L()
        take, rows, indptr = gram.principal_selection(full.indptr, full.indices, step)
        L = sp.csc_matrix((full.data[take], rows, indptr), shape=(self.n, self.n))
        if self.n and not np.array_equal(rows[indptr[:-1]], np.arange(self.n)):  # kernels read the diagonal first
            L.sort_indices()
        self._L = L
        self._indptr, self._rows = L.indptr.astype(np.int64), L.indices.astype(np.int64)

    def L(self) -> sp.csc_matrix:
        """The Cholesky factor of ``Q_UU[p][:, p]``: ``L'`` restricted to the steps in U."""
        return self._L

    def logdet(self) -> float:
        """``log det Q_UU = log det Q'``."""
        return self._logdet if self.n else 0.0

    @staticmethod
    def _columns(b: np.ndarray, rows) -> tuple[np.ndarray, bool]:
        """A new C-ordered (n, k) copy of ``b[rows]`` for the in-place kernels, and whether ``b`` is a vector."""
        b = np.asarray(b, dtype=float)
        vector = b.ndim == 1
        return np.array((b[:, None] if vector else b)[rows], dtype=float, order="C", copy=True), vector

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``Q_UU^{-1} b`` for a vector or a dense matrix of columns."""
        if self.n == 0:
            return np.zeros_like(b, dtype=float)
        x, vector = self._columns(b, self._P)
        _lower_solve(self._indptr, self._rows, self._L.data, x)
        _upper_solve(self._indptr, self._rows, self._L.data, x)
        out = np.empty_like(x)
        out[self._P] = x
        return out[:, 0] if vector else out

    def half_solve(self, b: np.ndarray) -> np.ndarray:
        """``L^{-1} (b[p])``: columns whose squared norms are ``b^T Q_UU^{-1} b``."""
        x, vector = self._columns(b, self._P)
        _lower_solve(self._indptr, self._rows, self._L.data, x)
        return x[:, 0] if vector else x

    def sample(self, z: np.ndarray) -> np.ndarray:
        """Map standard normals ``z`` (n x k) to draws with covariance ``Q_UU^{-1}``."""
        y, vector = self._columns(z, slice(None))
        _upper_solve(self._indptr, self._rows, self._L.data, y)
        out = np.empty_like(y)
        out[self._P] = y
        return out[:, 0] if vector else out


@numba.njit(cache=True)
def _lower_solve(indptr, rows, values, x):
    """``x <- L^{-1} x`` in place (``L`` CSC, diagonal first in each column; ``x`` n x k, C order)."""
    n, k = x.shape
    for j in range(n):
        d = values[indptr[j]]
        for c in range(k):
            x[j, c] /= d
        for p in range(indptr[j] + 1, indptr[j + 1]):
            i, l = rows[p], values[p]
            for c in range(k):
                x[i, c] -= l * x[j, c]


@numba.njit(cache=True)
def _upper_solve(indptr, rows, values, x):
    """``x <- L^{-T} x`` in place (as :func:`_lower_solve`)."""
    n, k = x.shape
    for j in range(n - 1, -1, -1):
        for p in range(indptr[j] + 1, indptr[j + 1]):
            i, l = rows[p], values[p]
            for c in range(k):
                x[j, c] -= l * x[i, c]
        d = values[indptr[j]]
        for c in range(k):
            x[j, c] /= d
