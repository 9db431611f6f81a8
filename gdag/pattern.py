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
:class:`PaddedConditioning` conditions on a pattern through the Gram structure
and analysis of the all-unobserved one instead, so that many observed subsets
share one analysis (docs/concepts.md, "Many queries").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from types import MappingProxyType

import numpy as np
import scipy.sparse as sp

from .compiler import CompiledModel
from .entries import GramAssembler, GramEntries
from .linalg import factor as factors
from .linalg import gram as assembly
from .linalg.blocked import analyze_blocked
from .linalg.forest import skeleton_forest_edges
from .resources import FactorSize, factor_size
from .timing import timed


@dataclass(frozen=True)
class LinearSystem:
    """Values of the conditioned system for one theta and one data vector."""

    Q: sp.csc_matrix  # lower triangle of Q_UU
    b: np.ndarray  # right-hand side
    r: np.ndarray  # residual c' - A_O x_O, over R
    d: np.ndarray  # variances over R
    g: np.ndarray  # deterministic offsets (|S|)
    M: sp.csr_matrix  # |S| x |R| map from stochastic to deterministic values
    Q_padded: sp.csc_matrix | None = None  # lower triangle of Q' over R (padded mode only)
    A_U_values: np.ndarray | None = None  # gram.entry_values of this theta, when the assembly formed them (read only)


class Conditioning:
    """Index sets, assembly maps and symbolic analysis for one observed pattern.

    Parameters
    ----------
    cm : CompiledModel
    observed : bool array of length n
        True where a value is given.  Deterministic variables are never observed.
    """

    leaf_data = MappingProxyType({})  # families summed over their rows (gdag.observations): none here

    @timed("pattern")
    def __init__(self, cm: CompiledModel, observed: np.ndarray):
        self.cm = cm
        det = cm.deterministic
        self.S = np.flatnonzero(det)
        if self.S.size:
            self.R = np.flatnonzero(~det)
            self.U = np.flatnonzero(~det & ~observed)
            self.O = np.flatnonzero(~det & observed)
        else:  # the usual case: every variable is stochastic
            self.R = np.arange(cm.n)
            self.O = np.flatnonzero(observed)
            self.U = self.R if not self.O.size else np.flatnonzero(~observed)  # nothing observed: one array
        self._pattern = self._coefficient_pattern()
        self._observed = observed
        self._analyses: dict = {}  # factorization -> analysis of this pattern, each made once
        self._size = None

    @cached_property
    @timed("pattern")
    def _gram(self) -> GramAssembler:
        """The Gram structure, built on first use (sizing a forest needs none: :meth:`factor_size`)."""
        return _Gram(self._pattern, _over_R(self, self.pos_U), _over_R(self, self._observed))

    def __getstate__(self) -> dict:
        """Pickled without its analyses (CHOLMOD's do not pickle): :meth:`analysis` redoes them, identically, on first use."""
        return {**self.__dict__, "_analyses": {}}

    @cached_property
    def _no_deterministic_map(self) -> sp.csr_matrix:
        """The empty ``M`` (0 x |R|) of a model with nothing to eliminate, built once (read-only use)."""
        return sp.csr_matrix((0, self.R.shape[0]))

    # position of each global variable inside R and U (-1 when absent), built on first use
    @cached_property
    def pos_R(self) -> np.ndarray:
        return _positions(self.R, self.cm.n)

    @cached_property
    def pos_U(self) -> np.ndarray:
        return _positions(self.U, self.cm.n)

    @property
    def n_unobserved(self) -> int:
        """Number of stochastic variables not observed."""
        return int(self.U.shape[0])

    @property
    def n_observed(self) -> int:
        """Number of observed stochastic variables (the log evidence's count)."""
        return int(self.O.shape[0])

    def label_unobserved(self, positions: np.ndarray) -> list[str]:
        """Labels of positions in U (for messages)."""
        return self.cm.labels(self.U[np.asarray(positions, dtype=np.int64)])

    @timed("assemble")
    def system(self, theta: np.ndarray, x: np.ndarray) -> LinearSystem:
        """Assemble ``Q_UU`` (lower triangle), ``b`` and the pieces of the evidence."""
        coef, c, d = self.cm.values(theta)
        coef, c_R, g, M = self._reduced_coefficients(coef, c)
        d_R = _over_R(self, d)
        r = self._gram.residual(coef, c_R, _over_R(self, x))
        values = self._gram.entry_values(coef)
        Q, b = assembly.gram_values(self._gram.structure, values, d_R, r, divide=True)
        return LinearSystem(Q, b, r, d_R, g, M, A_U_values=values)

    # ------------------------------------------------------------------
    # The one road to a factor, for queries and fits: an analysis per pattern, then factors of it.

    def analysis(self, factorization: str = "sparse"):
        """The symbolic analysis of this pattern (computed once, shared by every factor; timed as "analyze").

        ``"sparse"``: CHOLMOD's (:func:`gdag.linalg.factor.analyze`);
        ``"blocked"``: the head/dense-tail split of :mod:`gdag.linalg.blocked`;
        ``"auto"``: the blocked one where it pays, else the sparse one.
        """
        if factorization not in self._analyses:
            if factorization == "sparse":
                found = factors.analyze(self._gram.pattern)
            else:
                family = np.searchsorted(self.cm.family_offset, self.U, side="right") - 1
                found = analyze_blocked(self._gram.pattern, family, required=factorization == "blocked")
                if found is None:
                    found = self.analysis("sparse")
            self._analyses[factorization] = found
        return self._analyses[factorization]

    def factor(self, Q: sp.csc_matrix, factorization: str = "sparse") -> "factors.Factor":
        """A new numeric factor of ``Q`` (lower triangle of ``Q_UU``, this pattern) on its analysis."""
        return self.analysis(factorization).factor(Q, self.label_unobserved)

    def factorize(self, system: LinearSystem) -> "factors.Factor":
        """A posterior's factor: :meth:`factor` of ``system.Q``."""
        return self.factor(system.Q)

    # ------------------------------------------------------------------
    # Accessors for gdag.fitting, which re-evaluates this system for many theta.

    @property
    def gram(self) -> "GramAssembler":
        """The assembly maps of ``Q_UU`` and ``b`` for this pattern (used by :mod:`gdag.fitting`)."""
        return self._gram

    @property
    def coefficient_pattern(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` over R of the reduced coefficients ``B'``, fixed for every theta.

        When nothing is eliminated these are ``cm.B_rows, cm.B_cols`` (same
        order, duplicates kept); otherwise one entry per position of ``B'``.
        """
        return self._pattern

    def reduced_values(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(coef, c_R, d_R)``: ``B'`` on :attr:`coefficient_pattern`, ``c'`` and the variances over R."""
        coef, c, d = self.cm.values(theta)
        coef, c_R, _, _ = self._reduced_coefficients(coef, c)
        return coef, c_R, _over_R(self, d)  # d is new: no copy needed

    def reduced_offsets(self, theta: np.ndarray, C: sp.spmatrix) -> sp.csr_matrix:
        """``C' = C_R + B_RS (I - B_SS)^{-1} C_S`` for offsets ``C`` (n x k, columns like ``c``).

        ``c'`` is linear in ``c``; this maps each column of ``C`` the way
        :meth:`system` maps ``c`` (e.g. ``F``'s columns to the ``F'`` of fixed effects).
        """
        C = sp.csr_matrix(C)
        if self.S.size == 0:
            return C[self.R]
        coef, _, _ = self.cm.values(theta)
        B = self.cm.B_matrix(coef)
        B_SS, B_RS = B[self.S][:, self.S], B[self.R][:, self.S]
        return sp.csr_matrix(C[self.R] + B_RS @ nilpotent_series(B_SS, C[self.S]))

    def factor_size(self):
        """The :class:`~gdag.resources.FactorSize` of this pattern (computed once, from the analysis).

        With nothing observed or eliminated and at most one parent per variable,
        ``Q``'s pattern is the graph's skeleton: when that is a forest in the
        declaration order or its reverse (chains, trees), the analysis would find
        it, and its counts follow from the edges alone, with no Gram structure.
        """
        if self._size is None:
            edges = None
            if not self.O.size and not self.S.size and "_gram" not in self.__dict__:
                edges = skeleton_forest_edges(self.cm.n, self._pattern[0], self._pattern[1])
            n = self.cm.n
            self._size = factor_size(self) if edges is None else FactorSize(n, n + edges, n + edges, n + 3.0 * edges, n)
        return self._size

    def _coefficient_pattern(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) over R of the reduced coefficients ``B'``, fixed for every theta."""
        cm = self.cm
        if self.S.size == 0:
            return cm.B_rows, cm.B_cols
        ones = sp.csr_matrix((np.ones(cm.B_rows.shape[0]), (cm.B_rows, cm.B_cols)), shape=(cm.n, cm.n))
        B_R, _, _, _ = self._eliminate(ones, np.zeros(cm.n))  # all positive: nothing cancels
        coo = B_R.tocoo()
        return coo.row.astype(np.int64), coo.col.astype(np.int64)

    def _reduced_coefficients(self, coef: np.ndarray, c: np.ndarray):
        """Values of ``B'`` on the fixed pattern, ``c'``, ``g`` and ``M``."""
        if self.S.size == 0:
            return coef, c, np.zeros(0), self._no_deterministic_map
        B_R, c_R, g, M = self._eliminate(self.cm.B_matrix(coef), c)
        rows, cols = self._pattern
        return _entries(B_R, rows, cols), c_R, g, M

    def _eliminate(self, B: sp.csr_matrix, c: np.ndarray):
        """Remove deterministic variables; returns ``B'``, ``c'`` over R and ``g``, ``M``."""
        R, S = self.R, self.S
        B_SS, B_SR = B[S][:, S], B[S][:, R]
        B_RS, B_RR = B[R][:, S], B[R][:, R]
        M = sp.csr_matrix(nilpotent_series(B_SS, B_SR))  # stops after the longest deterministic chain
        g = nilpotent_series(B_SS, c[S])
        return (B_RR + B_RS @ M).tocsr(), c[R] + B_RS @ g, g, M


class _Gram(GramAssembler):
    """:class:`~gdag.entries.GramAssembler` whose ``weighted_residual`` forms no ``e`` (None): its callers,
    the mean refinement and the leaf rows' wrapper, read ``w`` and ``f`` only (one array over every row fewer)."""

    def weighted_residual(self, values: np.ndarray, m: np.ndarray, r: np.ndarray, d: np.ndarray):
        return assembly.weighted_residual(self.structure, values, m, r, d, keep_e=False)


class PaddedConditioning:
    """One observed pattern conditioned through the shared analysis of the all-unobserved system.

    With R the stochastic variables and ``O`` observed, the padded matrix

        Q' = [[Q_UU, 0], [0, I]]     (U x U, then O x O, in R's order)

    has a pattern inside that of ``Q_RR``, the precision with nothing observed.
    So one Gram structure and one CHOLMOD analysis (those of ``shared``, the
    all-unobserved :class:`Conditioning`) serve every observed subset: the
    values of ``Q_RR`` are assembled with the observed columns of ``A`` zeroed,
    which makes every product touching them vanish exactly, and the observed
    diagonal is set to 1.  ``Q_UU`` inside ``Q'`` is bitwise the matrix
    :class:`Conditioning` assembles, and :class:`~gdag.linalg.factor.PaddedFactor`
    answers solves, draws, log-determinants and selected inverses for ``Q_UU``
    from the factor of ``Q'`` (see there).

    Building one costs O(n + nnz(Q_RR)) index work and no analysis; each
    posterior then factors ``Q'`` (size |R|, not |U|).  Used by queries
    (:func:`gdag.posterior.query_conditioning`), never by the fit.  The
    accessors :class:`~gdag.posterior.Posterior` uses are those of
    :class:`Conditioning`; :attr:`gram` holds the index maps of ``A_U`` only.
    """

    leaf_data = MappingProxyType({})

    @timed("pattern")
    def __init__(self, shared: Conditioning, observed: np.ndarray):
        if shared.O.shape[0]:
            raise ValueError("the shared conditioning must have nothing observed")
        cm = self.cm = shared.cm
        self.shared = shared
        det = cm.deterministic
        self.S, self.R = shared.S, shared.R
        self.U = np.flatnonzero(~det & ~observed)
        self.O = np.flatnonzero(~det & observed)
        self.pos_R = shared.pos_R
        self.pos_U = _positions(self.U, cm.n)
        self._pattern = shared.coefficient_pattern
        observed_R = observed[self.R]
        self._gram = GramEntries(self._pattern, self.pos_U[self.R], observed_R)
        self.u_in_R = self.pos_R[self.U]  # where U sits in the padded system
        full = shared.gram
        self._zeroed = np.flatnonzero(observed_R[full.entry_col])  # entries of A in observed columns
        q_indptr, q_rows = full.structure.q_indptr, full.structure.q_rows
        self._diag_O = q_indptr[self.pos_R[self.O]]  # each column's diagonal comes first (rows sorted, i >= j)
        self._take, self._U_rows, self._U_indptr = assembly.principal_selection(q_indptr, q_rows, self.pos_U[self.R])

    @property
    def n_unobserved(self) -> int:
        """Number of stochastic variables not observed."""
        return int(self.U.shape[0])

    @property
    def gram(self) -> GramEntries:
        """The index maps of ``A_U``'s entries (``entry_row``, ``entry_col``, ``diag_U``, ``coef_U``)."""
        return self._gram

    @property
    def coefficient_pattern(self) -> tuple[np.ndarray, np.ndarray]:
        """As :attr:`Conditioning.coefficient_pattern` (the shared one)."""
        return self._pattern

    @property
    def n_observed(self) -> int:
        """Number of observed stochastic variables."""
        return int(self.O.shape[0])

    def label_unobserved(self, positions: np.ndarray) -> list[str]:
        """Labels of positions in U (for messages)."""
        return self.cm.labels(self.U[np.asarray(positions, dtype=np.int64)])

    def reduced_values(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`Conditioning.reduced_values`."""
        return self.shared.reduced_values(theta)

    def analysis(self):
        """The shared CHOLMOD analysis of ``Q_RR``'s pattern (the one every padded factor copies)."""
        return self.shared.analysis()

    def factor_size(self):
        """The size of what is factored: the padded system (the shared one's), for ``n_unobserved`` variables."""
        shared = self.shared.factor_size()
        return replace(shared, n_unobserved=self.n_unobserved, padded_to=shared.n_unobserved)

    @timed("assemble")
    def system(self, theta: np.ndarray, x: np.ndarray) -> LinearSystem:
        """``Q_UU`` (lower triangle), ``b`` and the evidence pieces, plus the padded ``Q'`` to factor."""
        cm, shared = self.cm, self.shared
        coef, c, d = cm.values(theta)
        coef, c_R, g, M = shared._reduced_coefficients(coef, c)
        d_R = _over_R(self, d)
        r = self._gram.residual(coef, c_R, _over_R(self, x))
        full = shared.gram
        values = full.entry_values(coef)
        values[self._zeroed] = 0.0
        Q_pad, b_pad = assembly.gram_values(full.structure, values, d_R, r, divide=True)
        Q_pad.data[self._diag_O] = 1.0
        Q = sp.csc_matrix((Q_pad.data[self._take], self._U_rows, self._U_indptr), shape=(self.n_unobserved,) * 2)
        return LinearSystem(Q, b_pad[self.u_in_R], r, d_R, g, M, Q_pad)

    def factor(self, Q_padded: sp.csc_matrix) -> "factors.PaddedFactor":
        """A new factor of ``Q_UU`` through the padded ``Q'`` (lower triangle over R) and the shared analysis."""
        return factors.PaddedFactor(self.analysis(), Q_padded, self.u_in_R, self.shared.label_unobserved)

    def factorize(self, system: LinearSystem) -> "factors.PaddedFactor":
        """A posterior's factor: :meth:`factor` of ``system.Q_padded``."""
        return self.factor(system.Q_padded)


def nilpotent_series(B: sp.spmatrix, X):
    """``(I - B)^{-1} X = sum_k B^k X`` for a nilpotent ``B`` and a sparse or dense ``X``.

    One product per generation, stopping at the first power that is exactly
    zero (after the longest chain of ``B``); sparse powers drop their explicit
    zeros, so a sparse result has entries only where a chain reaches.  The one
    series of the deterministic elimination (:class:`Conditioning`) and of
    counterfactuals' descendants (:mod:`gdag.counterfactual`).
    """
    total = term = X
    for _ in range(B.shape[0]):
        term = B @ term
        if sp.issparse(term):
            term = sp.csr_matrix(term)
            term.eliminate_zeros()
        if (term.nnz == 0) if sp.issparse(term) else not np.any(term):
            break
        total = total + term
    return total


def _over_R(cond, values: np.ndarray) -> np.ndarray:
    """``values[cond.R]``; with no deterministic variables R is everything, so no copy is made."""
    return values if cond.S.size == 0 else values[cond.R]


def _entries(A: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``A[rows[k], cols[k]]`` for every k (0 where A has no entry)."""
    if rows.shape[0] == 0:
        return np.zeros(0)
    return np.asarray(A[rows, cols], dtype=float).reshape(-1)


def _positions(index: np.ndarray, n: int) -> np.ndarray:
    itype = assembly.index_dtype(n)
    pos = np.full(n, -1, dtype=itype)
    pos[index] = np.arange(index.shape[0], dtype=itype)
    return pos
