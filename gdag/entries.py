"""The entries of ``A_U`` for one observed pattern, and the maps from coefficients to ``Q_UU`` and ``b``.

:class:`GramEntries` numbers the entries of ``A_U`` (unit diagonals of the
unobserved rows, then the coefficients on unobserved parents) and applies
``A_U`` and ``A_U^T`` by ``np.bincount``; :class:`GramAssembler` adds the
Gram structure of :mod:`gdag.linalg.gram`, built once per pattern, so that
each theta costs one compiled pass.  Used by :mod:`gdag.pattern`.
"""

from __future__ import annotations

import numpy as np

from .linalg import gram as assembly


class GramEntries:
    """Index maps of ``A_U``'s entries and of the observed part, for one observed pattern.

    ``A = I - B'`` over R; ``A_U`` keeps its unit diagonal on unobserved rows
    and the coefficients on unobserved parents.  Entry ``k`` of ``A_U`` sits
    at row ``entry_row[k]`` (over R) and column ``entry_col[k]`` (over U):
    first the unit diagonals (``diag_U``), then the coefficients ``coef_U``.

    Parameters
    ----------
    pattern : (rows, cols)
        Positions over R of the coefficients of ``B'`` (duplicates allowed).
    u_of_R : int array over R
        Position of each R variable in U, -1 when it is observed.
    observed_R : bool array over R
        True where the variable is observed (kept by reference, not copied).
    """

    def __init__(self, pattern, u_of_R: np.ndarray, observed_R: np.ndarray):
        rows, cols = pattern
        self.observed_R = observed_R
        self.diag_U = np.flatnonzero(~observed_R)  # rows of A with a unit diagonal entry in U
        self.n_U = int(self.diag_U.shape[0])
        observed_parent = observed_R[cols]
        self.coef_O = np.flatnonzero(observed_parent)  # coefficients on observed parents
        # coefficients on unobserved parents; a slice when that is all of them (no gathers then)
        self.coef_U = slice(None) if not self.coef_O.size else np.flatnonzero(~observed_parent)
        self.rows, self.cols = rows, cols
        itype = assembly.index_dtype(observed_R.shape[0], rows.shape[0] + self.n_U)
        self.entry_row = np.concatenate([self.diag_U, rows[self.coef_U]], dtype=itype)
        self.entry_col = np.concatenate([u_of_R[self.diag_U], u_of_R[cols[self.coef_U]]], dtype=itype)

    def residual(self, coef: np.ndarray, c_R: np.ndarray, x_R: np.ndarray) -> np.ndarray:
        """``r = c' - A_O x_O`` over R."""
        r = np.array(c_R, dtype=float)
        np.subtract(r, x_R, out=r, where=self.observed_R)
        if self.coef_O.size:
            k = self.coef_O
            r += np.bincount(self.rows[k], weights=coef[k] * x_R[self.cols[k]], minlength=r.shape[0])
        return r

    def times(self, values: np.ndarray, m: np.ndarray) -> np.ndarray:
        """``A_U @ m`` (over R) for entry ``values``."""
        return np.bincount(self.entry_row, weights=values * m[self.entry_col], minlength=self.observed_R.shape[0])

    def transpose_times(self, values: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``A_U^T @ y`` (over U) for entry ``values``."""
        return np.bincount(self.entry_col, weights=values * y[self.entry_row], minlength=self.n_U)

    def weighted_residual(self, values: np.ndarray, m: np.ndarray, r: np.ndarray, d: np.ndarray):
        """``e = r - A_U m``, ``w = e / d`` and ``f = e^T w`` (a sum of non-negative terms)."""
        e = r - self.times(values, m)
        w = e / d
        return e, w, float(e @ w)

    def entry_values(self, coef: np.ndarray) -> np.ndarray:
        """Values of ``A_U``'s entries (in the order of :attr:`entry_row`) for coefficients ``coef``."""
        values = np.empty(self.entry_row.shape[0])
        values[: self.n_U] = 1.0
        np.negative(coef[self.coef_U], out=values[self.n_U :])
        return values


class GramAssembler(GramEntries):
    """Maps from coefficient values to ``Q_UU = A_U^T W A_U`` and ``b``, built once per pattern.

    The pattern of ``Q_UU`` is analysed once (:mod:`gdag.linalg.gram`); each
    theta then costs one pass.  Parameters as for :class:`GramEntries`.
    """

    def __init__(self, pattern, u_of_R: np.ndarray, observed_R: np.ndarray):
        super().__init__(pattern, u_of_R, observed_R)
        self.structure = assembly.gram_structure(self.entry_row, self.entry_col, u_of_R.shape[0], self.n_U)
        self.pattern = self.structure.pattern()

    def times(self, values: np.ndarray, m: np.ndarray) -> np.ndarray:
        return assembly.a_times(self.structure, values, m, self.observed_R.shape[0])

    def transpose_times(self, values: np.ndarray, y: np.ndarray) -> np.ndarray:
        return assembly.at_times(self.structure, values, y)

    def weighted_residual(self, values: np.ndarray, m: np.ndarray, r: np.ndarray, d: np.ndarray):
        return assembly.weighted_residual(self.structure, values, m, r, d)

    def assemble(self, coef: np.ndarray, weight: np.ndarray, scaled_r: np.ndarray):
        """Lower triangle of ``A_U^T diag(weight) A_U`` and ``b = A_U^T scaled_r``."""
        return assembly.gram_values(self.structure, self.entry_values(coef), weight, scaled_r)
