"""Sparse Cholesky factorization through CHOLMOD (scikit-sparse).

``Q[p][:, p] = L L^T`` with CHOLMOD's fill-reducing permutation ``p``.  The
symbolic analysis depends only on the sparsity pattern, so it is done once
per pattern (:func:`analyze`) and each new set of values refactors a copy of
it.  CHOLMOD failures are translated into :class:`NotIdentifiedError` naming
the scalar variable whose pivot failed.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import scipy.sparse as sp

from .errors import AccuracyWarning, NotIdentifiedError

try:
    from sksparse import cholmod
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError(
        "gdag needs scikit-sparse (CHOLMOD). Install SuiteSparse headers "
        "(`apt-get install libsuitesparse-dev`) and then `pip install scikit-sparse==0.4.16`."
    ) from err

# Relative pivot size below which answers lose most of their digits.
ILL_CONDITIONED = 1e-14


def analyze(Q: sp.csc_matrix):
    """Symbolic analysis (fill-reducing ordering and pattern of ``L``) of ``Q``'s pattern."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cholmod.CholmodTypeConversionWarning)
        return cholmod.analyze(Q, mode="auto", ordering_method="default")


class CholeskyFactor:
    """The numeric factor of one symmetric positive definite matrix.

    Parameters
    ----------
    symbolic : cholmod.Factor
        An analysis of ``Q``'s pattern (from :func:`analyze`); it is copied, so
        one analysis serves many factors.
    Q : scipy.sparse.csc_matrix
        The matrix, with the analysed pattern.
    describe : callable
        Maps positions of ``Q`` to labels for error messages.
    """

    def __init__(self, symbolic, Q: sp.csc_matrix, describe: Callable[[np.ndarray], list[str]]):
        self.n = Q.shape[0]
        self._describe = describe
        self._factor = symbolic.copy()
        self.refactor_inplace(Q)

    def refactor_inplace(self, Q: sp.csc_matrix) -> None:
        """Numeric factorization of new values on the same pattern."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cholmod.CholmodTypeConversionWarning)
            try:
                self._factor.cholesky_inplace(Q)
            except cholmod.CholmodNotPositiveDefiniteError as err:
                column = getattr(err, "column", None)
                self._raise_not_identified(None if column is None else int(column))
        self._P = self._factor.P()
        self._L = None
        pivots = self._factor.D()
        bad = np.flatnonzero(~(pivots > 0))
        if bad.size:
            self._raise_not_identified(int(bad[0]))
        # The ratio of a pivot to the diagonal it came from measures lost digits.
        diag = Q.diagonal()[self._P]
        worst = float(np.min(pivots / diag)) if self.n else 1.0
        if worst < ILL_CONDITIONED:
            warnings.warn(
                f"The posterior precision is nearly singular (relative pivot {worst:.1e}); "
                "means and variances may have lost most of their digits.",
                AccuracyWarning,
                stacklevel=3,
            )

    def _raise_not_identified(self, column: int | None):
        if column is None or column >= self.n:
            raise NotIdentifiedError("The posterior precision is not positive definite.")
        label = self._describe(np.array([self._factor.P()[column]]))[0]
        raise NotIdentifiedError(
            f"The posterior is not proper: `{label}` is not identified (its pivot in the Cholesky "
            "factorization is not positive). Give it a prior with finite sd or observe data that informs it. "
            # (reliability) for a valid model Q_UU is positive definite in exact arithmetic, so in practice
            # this is rounding: say what causes it.
            "In double precision this happens when the sds around it span too many orders of magnitude: "
            "a vague prior over barely informed children, or a near-deterministic node (use sd=0 for it)."
        ) from None

    @property
    def permutation(self) -> np.ndarray:
        """``p`` with ``Q[p][:, p] = L L^T``."""
        return self._P

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
        return self._factor.solve_A(b)

    def half_solve(self, b: np.ndarray) -> np.ndarray:
        """``L^{-1} (b[p])``: columns whose squared norms are ``b^T Q^{-1} b``."""
        return self._factor.solve_L(self._factor.apply_P(b), use_LDLt_decomposition=False)

    def sample(self, z: np.ndarray) -> np.ndarray:
        """Map standard normals ``z`` (n x k) to draws with covariance ``Q^{-1}``."""
        y = self._factor.solve_Lt(z, use_LDLt_decomposition=False)
        out = np.empty_like(y)
        out[self._P] = y
        return out

    def inverse_diagonal(self) -> np.ndarray:
        """``diag(Q^{-1})`` by selected inversion over the factor's pattern."""
        from .selinv import selected_inverse_diag

        if self.n == 0:
            return np.zeros(0)
        z = selected_inverse_diag(self.L())
        out = np.empty_like(z)
        out[self._P] = z
        return out

    def selected_inverse(self) -> sp.csc_matrix:
        """``Q^{-1}`` on the pattern of ``L``, in the permuted order (see :attr:`permutation`)."""
        from .selinv import selected_inverse

        return selected_inverse(self.L())
