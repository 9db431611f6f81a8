"""Condition the compiled model on an observed subset: the sparse system for the rest.

Deterministic variables (sd 0) are eliminated first.  Writing S for them and R
for the stochastic ones, ``x_S = (I - B_SS)^{-1} (c_S + B_SR x_R) = g + M x_R``
(a finite sum, since ``B_SS`` is nilpotent), and the stochastic variables obey
``x_R = c'_R + B'_RR x_R + e_R`` with ``B' = B_RR + B_RS M`` and
``c' = c_R + B_RS g``.

With ``A = I - B'`` split by columns into the unobserved ``U`` and the
observed ``O`` and ``r = c' - A_O x_O``, the unobserved variables have
precision ``Q_UU = A_U^T D^{-1} A_U`` and mean ``m_U`` solving
``Q_UU m_U = b = A_U^T D^{-1} r``, and the log density of the data is

    log p(x_O) = -|O|/2 log(2 pi) - 1/2 sum log d_R - 1/2 log|Q_UU|
                 - 1/2 (r^T D^{-1} r - b^T m_U).

:class:`Conditioning` holds what depends only on the observed pattern (index
sets and the symbolic factorization); :meth:`Conditioning.system` fills in
values for given parameters and data, without a Python loop per variable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from . import factor
from .compiler import CompiledModel


@dataclass(frozen=True)
class LinearSystem:
    """Values of the conditioned system for one theta and one data vector."""

    Q: sp.csc_matrix  # Q_UU
    b: np.ndarray  # right-hand side
    r: np.ndarray  # residual c' - A_O x_O, over R
    d: np.ndarray  # variances over R
    A_U: sp.csc_matrix  # rows R, columns U
    A_O: sp.csc_matrix  # rows R, columns O
    g: np.ndarray  # deterministic offsets (|S|)
    M: sp.csr_matrix  # |S| x |R| map from stochastic to deterministic values


class Conditioning:
    """Index sets and symbolic analysis for one observed pattern.

    Parameters
    ----------
    cm : CompiledModel
    observed : bool array of length n
        True where a value is given.  Deterministic variables are never observed.
    """

    def __init__(self, cm: CompiledModel, observed: np.ndarray):
        self.cm = cm
        det = cm.deterministic
        self.S = np.flatnonzero(det)
        self.R = np.flatnonzero(~det)
        self.U = np.flatnonzero(~det & ~observed)
        self.O = np.flatnonzero(~det & observed)
        # position of each global variable inside R, U and O (-1 when absent)
        self.pos_R = _positions(self.R, cm.n)
        self.pos_U = _positions(self.U, cm.n)
        self.pos_O = _positions(self.O, cm.n)
        self._symbolic = None

    @property
    def n_unobserved(self) -> int:
        """Number of stochastic variables not observed."""
        return int(self.U.shape[0])

    def label_unobserved(self, positions: np.ndarray) -> list[str]:
        """Labels of positions in U (for messages)."""
        return self.cm.labels(self.U[np.asarray(positions, dtype=np.int64)])

    def system(self, theta: np.ndarray, x: np.ndarray) -> LinearSystem:
        """Assemble ``Q_UU``, ``b`` and the pieces of the evidence."""
        B, c, d = self.cm.values(theta)
        B_R, c_R, g, M = self._eliminate(B, c)
        A = (sp.identity(self.R.shape[0], format="csr") - B_R).tocsc()
        A_U = _columns(A, self.pos_U[self.R])
        A_O = _columns(A, self.pos_O[self.R])
        d_R = d[self.R]
        x_O = x[self.O]
        r = c_R - A_O @ x_O if self.O.size else c_R
        Q = _gram(A_U, 1.0 / d_R)
        b = A_U.T @ (r / d_R)
        return LinearSystem(Q, b, r, d_R, A_U, A_O, g, M)

    def factorize(self, system: LinearSystem) -> "factor.CholeskyFactor":
        """A new numeric factor of ``system.Q``, reusing this pattern's analysis."""
        if self._symbolic is None:
            self._symbolic = factor.analyze(self._structural_pattern())
        return factor.CholeskyFactor(self._symbolic, system.Q, self.label_unobserved)

    def _structural_pattern(self) -> sp.csc_matrix:
        """Pattern of ``Q_UU`` for every theta: built from all-positive values so nothing cancels."""
        cm = self.cm
        ones = sp.csr_matrix((np.ones(cm.B_rows.shape[0]), (cm.B_rows, cm.B_cols)), shape=(cm.n, cm.n))
        B_R, _, _, _ = self._eliminate(ones, np.zeros(cm.n))
        A = (sp.identity(self.R.shape[0], format="csr") + B_R).tocsc()
        return _gram(_columns(A, self.pos_U[self.R]), np.ones(self.R.shape[0]))

    def _eliminate(self, B: sp.csr_matrix, c: np.ndarray):
        """Remove deterministic variables; returns ``B'``, ``c'`` over R and ``g``, ``M``."""
        R, S = self.R, self.S
        if S.size == 0:
            return B, c, np.zeros(0), sp.csr_matrix((0, R.shape[0]))
        B_SS, B_SR = B[S][:, S], B[S][:, R]
        B_RS, B_RR = B[R][:, S], B[R][:, R]
        M, g = B_SR.copy(), c[S].copy()
        power_M, power_g = B_SR, c[S]
        for _ in range(S.shape[0]):  # B_SS is nilpotent: stops after the longest deterministic chain
            power_M = B_SS @ power_M
            power_g = B_SS @ power_g
            if power_M.nnz == 0 and not np.any(power_g):
                break
            M = M + power_M
            g = g + power_g
        M = sp.csr_matrix(M)
        return (B_RR + B_RS @ M).tocsr(), c[R] + B_RS @ g, g, M


def _positions(index: np.ndarray, n: int) -> np.ndarray:
    pos = np.full(n, -1, dtype=np.int64)
    pos[index] = np.arange(index.shape[0], dtype=np.int64)
    return pos


def _columns(A: sp.csc_matrix, new_col: np.ndarray) -> sp.csc_matrix:
    """The columns of ``A`` where ``new_col >= 0``, in their original order."""
    keep = np.flatnonzero(new_col >= 0)
    return A[:, keep] if keep.shape[0] != A.shape[1] else A


def _gram(A: sp.csc_matrix, weights: np.ndarray) -> sp.csc_matrix:
    """``A^T diag(weights) A`` as CSC (symmetric, so CSR data read as CSC)."""
    G = (A.T @ sp.csr_matrix(A.multiply(weights[:, None]))).tocsr()
    G.sort_indices()
    return sp.csc_matrix((G.data, G.indices, G.indptr), shape=G.shape)
