"""Numeric factors of symmetric positive definite matrices: the one :class:`Factor` protocol.

Every factor gdag uses is built from an analysis of a pattern (done once per
pattern) and a matrix's values, and is refactored in place for new values on
that pattern; it solves, gives ``log det Q``, ``diag(Q^{-1})`` and entries of
``Q^{-1}`` on ``Q``'s pattern (:class:`Factor`).  The implementations:

* :class:`CholeskyFactor`: CHOLMOD (scikit-sparse), ``Q[p][:, p] = L L^T``
  with a fill-reducing permutation ``p`` chosen by :func:`analyze`;
* :class:`PaddedFactor`: the factor of ``Q_UU`` cut out of that of ``[[Q_UU, 0], [0, I]]``;
* :class:`gdag.linalg.blocked.BlockedFactor`: a diagonal head and a dense tail.

Failed pivots become :class:`NotIdentifiedError` naming the scalar variable
(:func:`not_identified`, the one wording for every factor).
"""

from __future__ import annotations

import warnings
from typing import Callable, Protocol

import numpy as np
import scipy.sparse as sp

from ..errors import AccuracyWarning, NotIdentifiedError, warn
from ..timing import timed
from . import gram
from .forest import ForestAnalysis, ForestFactor, NotPositiveDefinite, permuted_forest
from .ordering import Order, choose_ordering, zero_fill_order
from .selinv import selected_inverse
from .simplicial import BACKWARD, FORWARD, ZeroFillAnalysis, ZeroFillFactor, is_closed, solve_copy

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

# Patterns that do not fill in are factored by gdag's own simplicial kernel while their flops stay
# below this many per nonzero of L (CHOLMOD's own switch from simplicial to supernodal).
SIMPLICIAL_FLOPS = 40.0

# gdag's own factors (no CHOLMOD): they read Q through the permutation and check their pivots themselves
OWN_FACTORS = (ZeroFillFactor, ForestFactor)

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
        self._P = None

    def P(self) -> np.ndarray:
        """``p`` with ``Q[p][:, p] = L L^T``: gdag's ordering composed with CHOLMOD's (computed once, read-only)."""
        if self._P is None:
            inner = None if isinstance(self.symbolic, ForestAnalysis) else self.symbolic.P()  # a forest's: identity
            self._P = inner if self.reorder is None else self.reorder.perm[inner] if inner is not None else \
                self.reorder.perm.view()  # (a forest always comes with its order)
            self._P.flags.writeable = False
        return self._P

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

    ``Q`` is the lower triangle.  An order in which ``Q`` does not fill in
    (the given one or its reverse: chains, trees, nested models) needs no
    ordering and no symbolic factorization; such patterns, when thin
    (:data:`SIMPLICIAL_FLOPS`), are factored by gdag's own left-looking
    kernel (:mod:`gdag.linalg.simplicial`).  Patterns on which gdag's static
    degree ordering fills little are reordered by it and factored in
    CHOLMOD's simplicial mode (measured faster there, since a natural-order
    analysis forms no postordered supernodes); otherwise CHOLMOD orders and chooses.
    """
    zero = zero_fill_order(Q)
    if zero is not None and zero.forest is not None:  # a forest in the given order or its reverse
        return Analysis(zero.forest, Order(zero.forest.order), zero.forest.counts)
    if zero is not None:
        reorder, symbolic, counts = zero.reorder, None, (int(Q.nnz), zero.flops)
    else:
        reorder, symbolic, counts = choose_ordering(Q, _cholmod_analyze)
        if reorder is None:  # CHOLMOD's own ordering (or nothing to order)
            return Analysis(symbolic if symbolic is not None else _cholmod_analyze(Q), None, counts)
    pattern = (Q.indptr, Q.indices) if reorder is None else (reorder.indptr, reorder.indices)
    nnz_L, flops = counts
    if nnz_L == Q.nnz and flops < SIMPLICIAL_FLOPS * nnz_L and (zero is not None or is_closed(*pattern)):
        forest = None if reorder is None else permuted_forest(reorder.perm, *pattern, reorder.source)
        if forest is not None:  # the static order: a forest too
            return Analysis(forest, Order(forest.order), counts)
        return Analysis(ZeroFillAnalysis(*pattern), reorder, counts)
    mode = "simplicial" if zero is None else "auto"  # a dense pattern that does not fill: supernodes pay
    prepared = Q if reorder is None else reorder.apply(Q)
    return Analysis(_cholmod_analyze(prepared, mode=mode, ordering_method="natural"), reorder, counts)


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
        Z = self.selected_inverse()
        z = Z.data[Z.indptr[:-1]]  # each column of the selected inverse starts with its diagonal
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
            reorder, own = self._analysis.reorder, isinstance(self._factor, OWN_FACTORS)
            self.form_fixed = own  # CHOLMOD's L D L^T turns into L L^T on a half-solve, draw or selected inverse
            prepared = Q if own else self._analysis.prepare(Q)  # gdag's own kernels read through the permutation
            try:
                if own:
                    self._factor.cholesky_inplace(Q, None if reorder is None else reorder.source)
                else:
                    self._factor.cholesky_inplace(prepared)
            except (cholmod.CholmodNotPositiveDefiniteError, NotPositiveDefinite) as err:
                column = getattr(err, "column", None)
                self._raise_not_identified(None if column is None else int(column))
        self._L = None
        # The ratio of a pivot to the diagonal it came from measures lost digits.
        if own:  # its kernel refused non-positive pivots and took the ratio
            worst = self._factor.worst_ratio
        else:
            pivots = self._factor.D()
            bad = np.flatnonzero(~(pivots > 0))
            if bad.size:
                self._raise_not_identified(int(bad[0]))
            diag = prepared.diagonal() if self._analysis.reorder is not None else Q.diagonal()[self._P]
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

    def selected_inverse(self) -> sp.csc_matrix:
        """``Q^{-1}`` on the pattern of :meth:`L` (gdag's own factors: from ``L~`` and ``D``, without forming ``L``)."""
        if isinstance(self._factor, OWN_FACTORS):
            return self._factor.selected_inverse()
        return super().selected_inverse()

    @timed("variances")
    def inverse_diagonal(self) -> np.ndarray:
        """``diag(Q^{-1})``: a forest's straight from its recurrences, else by selected inversion."""
        if self.n and isinstance(self._factor, ForestFactor):
            return self._factor.inverse_diagonal()
        return super().inverse_diagonal()

    def logdet(self) -> float:
        """``log det Q = 2 sum log L_jj``."""
        return float(self._factor.logdet()) if self.n else 0.0

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``Q^{-1} b`` for a vector or a dense matrix of columns."""
        if self.n == 0:
            return np.zeros_like(b, dtype=float)
        b = np.asarray(b, dtype=float)
        reorder = self._analysis.reorder
        if b.ndim == 1 and isinstance(self._factor, OWN_FACTORS):
            return self._factor.solve_vector(b, None if reorder is None else reorder.perm)
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

    form_fixed = True  # its L is extracted once and read by gdag's kernels only
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

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``Q_UU^{-1} b`` for a vector or a dense matrix of columns."""
        if self.n == 0:
            return np.zeros_like(b, dtype=float)
        x = self._solve(np.asarray(b, dtype=float)[self._P], FORWARD | BACKWARD)
        out = np.empty_like(x)
        out[self._P] = x
        return out

    def half_solve(self, b: np.ndarray) -> np.ndarray:
        """``L^{-1} (b[p])``: columns whose squared norms are ``b^T Q_UU^{-1} b``."""
        return self._solve(np.asarray(b, dtype=float)[self._P], FORWARD)

    def sample(self, z: np.ndarray) -> np.ndarray:
        """Map standard normals ``z`` (n x k) to draws with covariance ``Q_UU^{-1}``."""
        y = self._solve(z, BACKWARD)
        out = np.empty_like(y)
        out[self._P] = y
        return out

    def _solve(self, b: np.ndarray, steps: int) -> np.ndarray:
        return solve_copy(self._indptr, self._rows, self._L.data, b, steps)
