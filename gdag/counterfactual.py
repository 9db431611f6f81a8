"""Counterfactuals: abduction, action and prediction, exact for linear-Gaussian models.

Every scalar variable satisfies ``x = c + B x + e`` (``A = I - B``), so the
noises are ``e = A x - c``: linear in ``x``, and Gaussian given the data with
the posterior of ``x`` (abduction).  The intervention (action) replaces the
rows of the set entries by ``x*_k = v_k`` (``A*``: those rows of ``B`` zeroed,
their noise dropped) and adds ``delta`` to ``c`` at shifted entries.  The
counterfactual world keeps every other noise (prediction):
``A* x* = c* + e*`` with ``e*_k = e_k`` off the set entries.  Subtracting
``A x = c + e`` row by row leaves

    x* = x + A*^{-1} (J_set (v - x_set) + J_shift delta),

so with ``H = A*^{-1} J_set`` and the factual posterior ``x = m + G u``
(``u = x_U - m_U ~ N(0, Q_UU^{-1})``) the counterfactual is Gaussian with

    mean  m* = m + A*^{-1} (J_set (v - m_set) + J_shift delta),
    map   G* = G - H G_set,    cov  G* Q_UU^{-1} G*^T.

``A*^{-1} J`` is the finite series ``sum_k B*^k J`` (``B*`` is nilpotent), so
only descendants of the intervened entries move, exactly.  Observed leaf
families summed over their rows (:mod:`gdag.observations`) move through
their coefficient rows ``Z``: ``y* = y + Z (x* - x)``.  docs/concepts.md
derives this in full.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve_triangular

from .data import own
from .errors import DataError, ModelError, ModelSpecError
from .intervene import parse_interventions
from .pattern import nilpotent_series
from .resources import start_draws
from .spec import Node

# Dense covariance blocks and variance solves beyond this many entries are refused.
SOLVE_LIMIT = 50_000_000
# The descendants of the set entries by one dense forward substitution up to this many entries (n x k).
DENSE_SOLVE = 20_000_000


class Counterfactual:
    """The exact Gaussian distribution of the counterfactual world given the data.

    Returned by :meth:`gdag.Posterior.counterfactual`; query it like a
    posterior: :meth:`mean`, :meth:`var`, :meth:`sd`, :meth:`cov`,
    :meth:`sample`.  ``factual`` is the posterior it was computed from and
    ``interventions`` what was set or shifted.
    """

    def __init__(self, post, interventions):
        cm, cond = post._cm, post._cond
        post._settle_mean()  # the factual means it moves are those mean() gives
        self.factual = post
        self._factor = post._factor
        leaves = {leaf.name: leaf for leaf in getattr(cond, "leaves", ()) if leaf.name in cond.leaf_data}
        sizes = {name: int(cm.family_size[i]) for i, name in enumerate(cm.family_names)}
        sizes.update({name: leaf.size for name, leaf in leaves.items()})
        self.interventions = parse_interventions(interventions, sizes, set(cm.param_names), cm.name)
        nodes = getattr(post, "_nodes", None)  # the declared nodes, when the posterior knows them
        for key in interventions:
            own(key, nodes, cm.name, "counterfactual()", ModelSpecError)
        n = cm.n
        coef, _, _ = cm.values(post._theta)
        set_pos, set_val, shift_pos, shift_val = [], [], [], []
        for iv in self.interventions:
            if iv.name in leaves:
                continue
            pos = iv.entries + int(cm.family_offset[cm.family(iv.name)])
            (set_pos if iv.kind == "set" else shift_pos).append(pos)
            (set_val if iv.kind == "set" else shift_val).append(iv.values)
        set_pos, shift_pos = _cat(set_pos, np.int64), _cat(shift_pos, np.int64)
        set_val, shift_val = _cat(set_val, float), _cat(shift_val, float)
        keep = np.ones(n)
        keep[set_pos] = 0.0
        B_star = sp.diags(keep) @ cm.B_matrix(coef)  # A* = I - B*: the set rows cut from their parents
        k_set = set_pos.shape[0]
        cols = np.concatenate([set_pos, shift_pos])
        J = sp.csr_matrix((np.ones(cols.shape[0]), (cols, np.arange(cols.shape[0]))), shape=(n, cols.shape[0]))
        H = _descendant_solve(B_star, J)  # A*^{-1} J
        mu = post._mean
        move = H @ np.concatenate([set_val - mu[set_pos], shift_val])
        G = post._affine_map()
        H_set = H[:, :k_set].tocsr()
        change = (H_set @ G[set_pos]).tocsr()
        mean, G_star = mu + move, (G - change).tocsr()
        mean[set_pos] = set_val  # exactly the value (the series gives it up to rounding)
        self._changed = np.flatnonzero(np.diff(H_set.indptr))  # rows whose map differs from the factual one
        self._span = {name: slice(int(cm.family_offset[i]), int(cm.family_offset[i] + cm.family_size[i]))
                      for i, name in enumerate(cm.family_names)}
        self._scalar = {name: cm.family_plate[i] is None for i, name in enumerate(cm.family_names)}
        means, maps, start = [mean], [G_star], n
        moved, self._G_set = [H_set], G[set_pos]  # rows of G* - G = -(H G_set), leaves' rows below
        for name, leaf in leaves.items():  # observed leaves: y* = y + Z (x* - x)
            Z = leaf.Z(post._theta, n)
            y_mean = cond.leaf_data[name] + Z @ move
            y_H = (Z @ H_set).tocsr()
            for iv in self.interventions:
                if iv.name == name and iv.kind == "set":
                    y_mean[iv.entries] = iv.values
                    y_H = sp.diags(np.isin(np.arange(leaf.size), iv.entries, invert=True).astype(float)) @ y_H
                elif iv.name == name:
                    y_mean[iv.entries] += iv.values
            moved.append(y_H)
            y_map = -(y_H @ self._G_set)
            y_map = sp.csr_matrix(y_map)
            y_map.eliminate_zeros()
            self._changed = np.concatenate([self._changed, start + np.flatnonzero(np.diff(y_map.indptr))])
            self._span[name] = slice(start, start + leaf.size)
            self._scalar[name] = leaf.is_scalar
            means.append(y_mean)
            maps.append(y_map)
            start += leaf.size
        self._mean = np.concatenate(means)
        self._G = sp.vstack(maps).tocsr() if len(maps) > 1 else G_star
        self._H = sp.vstack(moved).tocsr() if len(moved) > 1 else H_set
        self._G_factual = G
        self._var = None

    # ------------------------------------------------------------------ API

    def mean(self, node) -> np.ndarray | float:
        """Counterfactual mean of every entry of ``node`` (a float for a scalar node)."""
        self.factual._check_mean_accuracy()  # the factual means it moves: refused or warned about as there
        return self._shaped(node, self._mean)

    def var(self, node) -> np.ndarray | float:
        """Counterfactual variances: ``diag(G* Q_UU^{-1} G*^T)``, the factual ones where nothing moved."""
        if self._var is None:
            self._var = self._variances()
        return self._shaped(node, self._var)

    def sd(self, node) -> np.ndarray | float:
        """Counterfactual standard deviations."""
        return np.sqrt(self.var(node))

    def cov(self, a, b=None) -> np.ndarray:
        """Dense covariance block between the entries of nodes ``a`` and ``b`` in the counterfactual world."""
        name_a = self._name(a)
        name_b = name_a if b is None else self._name(b)
        Ga, Gb = self._G[self._span[name_a]], self._G[self._span[name_b]]
        small, other, flip = (Gb, Ga, False) if Gb.shape[0] <= Ga.shape[0] else (Ga, Gb, True)
        check_block("counterfactual cov", name_a, name_b, Ga.shape[0], Gb.shape[0],
                    small.shape[0] if self._factor is not None else 0, small.shape[1])
        if self._factor is None:
            return np.zeros((Ga.shape[0], Gb.shape[0]))
        self.factual._check_variance_accuracy("counterfactual covariances")
        block = np.asarray(other @ self._factor.solve(small.T.toarray()))
        if name_a == name_b:  # a covariance matrix: symmetric to the bit
            return (block + block.T) / 2
        return block.T if flip else block

    def sample(self, n: int, seed=None, nodes=None) -> dict[str, np.ndarray]:
        """``n`` exact joint draws of the counterfactual world: ``{name: array (n, size)}``."""
        names = list(self._span) if nodes is None else [self._name(v) for v in (
            [nodes] if isinstance(nodes, str) or hasattr(nodes, "name") else nodes)]
        n_U = self._G.shape[1]
        rng = start_draws(n, seed, n_U + sum(self._span[v].stop - self._span[v].start for v in names))
        draws = np.zeros((n_U, n))
        if self._factor is not None:
            self.factual._check_variance_accuracy("counterfactual draws")
            self.factual._check_mean_accuracy()
            draws = self._factor.sample(rng.standard_normal((n_U, n)))
        return {name: (self._mean[self._span[name]][:, None] + self._G[self._span[name]] @ draws).T.copy()
                for name in names}

    def __repr__(self) -> str:
        what = ", ".join(f"{iv.name}" + (" (shift)" if iv.kind == "shift" else "") for iv in self.interventions)
        return f"<gdag.Counterfactual of `{self.factual._cm.name}`: do({what})>"

    # ------------------------------------------------------------ internals

    def _name(self, node) -> str:
        if isinstance(node, Node):  # of this model only, as the factual posterior's queries
            own(node, self.factual._nodes, self.factual._cm.name, "This counterfactual's query")
        name = getattr(node, "name", node)
        if not isinstance(name, str) or name not in self._span:
            known = ", ".join(f"`{f}`" for f in list(self._span)[:10])
            raise DataError(f"This counterfactual has no node `{name}`; its nodes are {known}.")
        return name

    def _shaped(self, node, values: np.ndarray):
        name = self._name(node)
        out = values[self._span[name]].copy()
        return float(out[0]) if self._scalar[name] else out

    def _variances(self, chunk: int = 256) -> np.ndarray:
        post = self.factual
        var = np.zeros(self._mean.shape[0])
        n = post._cm.n
        for name, span in self._span.items():
            if span.stop <= n:
                var[span] = post.var(name)
        if self._factor is None:
            return var
        rows, n_U, k = self._changed, self._G.shape[1], self._G_set.shape[0]
        if min(rows.shape[0], k) * n_U > SOLVE_LIMIT:
            raise ModelError(
                f"The counterfactual moves {rows.shape[0]} variables from {k} set entries; their variances need "
                f"{min(rows.shape[0], k)} solves of size {n_U}. Intervene on fewer entries, or ask for means and draws."
            )
        post._check_variance_accuracy("counterfactual variances")
        if rows.shape[0] <= k:  # one half-solve per moved variable: ||L^-1 P G*_r^T||^2, no cancellation
            for start in range(0, rows.shape[0], chunk):
                block = rows[start: start + chunk]
                half = self._factor.half_solve(self._G[block].T.toarray())
                var[block] = np.einsum("ij,ij->j", half, half)
            return var
        # few set entries moving many variables (a chain): one solve per set entry,
        # var*_r = var_r - 2 h_r C_r + h_r S h_r^T with C = Cov(x_set, x_r), S = Cov(x_set)
        solved = self._factor.solve(self._G_set.T.toarray())  # Q_UU^{-1} G_set^T
        S = np.asarray(self._G_set @ solved)
        for start in range(0, rows.shape[0], chunk * 16):
            block = rows[start: start + chunk * 16]
            h = self._H[block].toarray()
            inside = block[block < self._G_factual.shape[0]]
            C = np.zeros((block.shape[0], k))
            C[: inside.shape[0]] = np.asarray(self._G_factual[inside] @ solved)  # leaves' factual rows are 0
            moved = var[block] - 2 * np.einsum("ij,ij->i", h, C) + np.einsum("ij,ij->i", h @ S, h)
            var[block] = np.maximum(moved, 0.0)
        return var


def check_block(what: str, a: str, b: str, rows: int, cols: int, solves: int, size: int) -> None:
    """Refuse a dense covariance block of more than :data:`SOLVE_LIMIT` entries, or needing more solved entries
    (``solves`` of ``size``): a posterior's or a counterfactual's ``cov``, before anything is allocated."""
    need = (f"would be a dense {rows} x {cols} block" if rows * cols > SOLVE_LIMIT else
            f"would need {solves} solves of size {size}" if solves * size > SOLVE_LIMIT else None)
    if need is not None:
        raise ModelError(f"{what}(`{a}`, `{b}`) {need}; ask for smaller blocks or use var() for marginal variances.")


def _descendant_solve(B: sp.spmatrix, J: sp.csr_matrix) -> sp.csr_matrix:
    """``(I - B)^{-1} J`` for nilpotent ``B``: exact zeros off the descendants of J's rows.

    Families refer to earlier declarations, so ``B`` is usually strictly lower triangular in
    gdag's order: then one forward substitution (a non-descendant sums only zeros, so stays 0);
    otherwise the finite series ``sum_k B^k J``, one sparse product per generation.
    """
    B = sp.csr_matrix(B)
    B.eliminate_zeros()
    coo = B.tocoo()
    if np.all(coo.row > coo.col) and B.shape[0] * J.shape[1] <= DENSE_SOLVE:
        A = (sp.eye(B.shape[0], format="csr") - B).tocsr()
        return sp.csr_matrix(spsolve_triangular(A, J.toarray(), lower=True, unit_diagonal=True))
    return sp.csr_matrix(nilpotent_series(B, J))


def _cat(parts, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
