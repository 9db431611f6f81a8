"""Exact posteriors: means, variances, covariance blocks, draws and the log evidence.

A :class:`Posterior` owns everything it needs (its own numeric factor and
copies of the data), so later queries, later declarations on the model and
other posteriors never change it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .accuracy import (
    VARIANCE_HOPELESS,
    VARIANCE_TOLERANCE,
    check_mean_accuracy,
    check_system,
    check_variance_bound,
    condition_upper_bound,
    qr_mean,
    refined_mean,
    require_finite,
    scaled_condition,
)
from .compiler import CompiledModel
from .counterfactual import Counterfactual, check_block
from .data import own
from .errors import DataError, ModelError
from .linalg import LOG_2PI
from .linalg.pairs import diagonal_on_pattern
from .pattern import Conditioning, LinearSystem
from .resources import start_draws
from .spec import Node, Param
from .tables import posterior_frame, posterior_html, posterior_summary
from .timing import timed

# The mean check inverts (~ the factor's flops) rather than estimates (~30 solves) while flops <= this * nnz(L).
INVERSION_PER_SOLVES = 128


class Posterior:
    """The exact Gaussian posterior of a model's unobserved variables.

    Query by node object or name: :meth:`mean`, :meth:`var`, :meth:`sd`,
    :meth:`cov`, :meth:`sample`; :attr:`log_evidence` is the log density of
    the observed values.  Observed entries have their value as mean and
    variance 0.
    """

    def __init__(self, cm: CompiledModel, conditioning: Conditioning, theta: np.ndarray, x: np.ndarray, nodes=None):
        self._cm, self._nodes = cm, nodes  # nodes: the declared Node objects by name (None: names only)
        self._cond = conditioning
        self._theta = theta.copy()
        self._x = x.copy()
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # checked just below
            self._system: LinearSystem = conditioning.system(self._theta, self._x)
        check_system(cm, conditioning, self._system)
        self._factor = conditioning.factorize(self._system) if conditioning.n_unobserved else None
        self._A_U_values, self._mean_error = None, None
        self._mean_U = self._refined_mean() if self._factor is not None else np.zeros(0)
        self._settle_factor()
        with np.errstate(over="ignore", invalid="ignore"):
            self._mean = self._full_mean()
        require_finite(self._mean, "posterior mean", cm)
        self._var = self._G = self._kappa = self._var_U = self._hopeless = self._cheap_bound = None

    def __getstate__(self) -> dict:  # without the factor (CHOLMOD's does not pickle): loading refactors the system
        return {**self.__dict__, "_factor": None, "_nodes": None if self._nodes is None else dict(self._nodes)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._factor = self._cond.factorize(self._system) if self._cond.n_unobserved else None
        self._settle_factor()

    def _settle_factor(self) -> None:
        """Put the factor in the one form later calls use: CHOLMOD turns a simplicial ``L D L^T`` into ``L L^T``
        on the first draw, half-solve or selected inversion, and solves before and after differ in their last
        bits; one half-solve right after the mean (O(nnz(L))) makes answers independent of the order of calls."""
        if self._factor is not None and not getattr(self._factor, "form_fixed", False):
            self._factor.half_solve(np.zeros((self._factor.n, 1)))

    # ------------------------------------------------------------------ API

    @property
    def params(self) -> dict[str, np.ndarray | float]:
        """The parameter values this posterior was computed at."""
        return self._cm.param_values(self._theta)

    @property
    def log_evidence(self) -> float:
        """``log p(observed values)`` (0 when nothing is observed); its quadratic form is ``e^T D^{-1} e`` with
        ``e = r - A_U m_U``, non-negative terms (``r^T D^{-1} r - b^T m_U`` lost every digit at an sd of 1e-8)."""
        s, cond = self._system, self._cond
        if cond.n_observed == 0:
            return 0.0  # exactly: the unobserved variables integrate to one
        self._check_variance_accuracy("log evidence")
        self._settle_mean()  # the residual at the means: the same ones mean() gives
        logdet = self._factor.logdet() if self._factor is not None else 0.0
        with np.errstate(over="ignore", invalid="ignore"):
            e = self._fitted_residual()
            quad = float(e @ (e / s.d))
            log_d = float(np.sum(np.log(s.d)))
            if cond.leaf_data:  # families summed over their rows: their residuals at the mean
                quad += cond.leaf_residual(self._theta, self._x, self._mean_U)[0]
                log_d += cond.leaf_log_variances(self._theta, self._x)
            value = -0.5 * (cond.n_observed * LOG_2PI + log_d + logdet + quad)
        if not np.isfinite(value):
            raise ModelError(
                f"The log evidence of `{self._cm.name}` overflows double precision ({value}): the data lie "
                "too many sds from their means. Rescale the data or the sds."
            )
        return value

    def mean(self, node) -> np.ndarray | float:
        """Posterior mean of every entry of ``node`` (a float for a scalar node)."""
        node = self._node(node)
        if node.name in self._cond.leaf_data:
            return self._leaf_shaped(node, self._cond.leaf_data[node.name])
        self._check_mean_accuracy()
        return self._shaped(node, self._mean)

    def var(self, node) -> np.ndarray | float:
        """Posterior marginal variances, exact, by selected inversion of the factor."""
        node = self._node(node)
        if node.name in self._cond.leaf_data:
            return self._leaf_shaped(node, np.zeros(node.size))
        if self._var is None:
            self._var = self._full_variance()
        return self._shaped(node, self._var)

    def sd(self, node) -> np.ndarray | float:
        """Posterior marginal standard deviations."""
        return np.sqrt(self.var(node))

    def cov(self, a, b=None) -> np.ndarray:
        """Dense posterior covariance block between the entries of nodes ``a`` and ``b``.

        Costs one solve per entry of the smaller node: meant for small blocks.
        """
        a = self._node(a)
        b = a if b is None else self._node(b)
        known = a.name in self._cond.leaf_data or b.name in self._cond.leaf_data or self._factor is None  # observed
        check_block("cov", a.name, b.name, a.size, b.size, 0 if known else min(a.size, b.size), self._cond.n_unobserved)
        if known:
            return np.zeros((a.size, b.size))
        G = self._affine_map()
        Ga, Gb = G[self._cm.span(a.name)], G[self._cm.span(b.name)]
        self._check_variance_accuracy("covariances")
        small, other, flip = (Gb, Ga, False) if b.size <= a.size else (Ga, Gb, True)
        solved = self._factor.solve(small.T.toarray())
        block = np.asarray(other @ solved)
        if a.name == b.name:  # a covariance matrix: symmetric to the bit (the solves leave it so only to rounding)
            return (block + block.T) / 2
        return block.T if flip else block

    def sample(self, n: int, seed=None, nodes=None) -> dict[str, np.ndarray]:
        """``n`` exact joint draws: ``{name: array (n, size)}`` for ``nodes`` (default all; a family summed over
        its observed rows comes as a read-only view of its data in every draw)."""
        if nodes is None:
            names = list(self._cm.family_names) + list(self._cond.leaf_data)
        elif isinstance(nodes, (str, Node, _NodeView)):
            names = [self._node(nodes).name]
        elif isinstance(nodes, (list, tuple)):
            names = [self._node(v).name for v in nodes]
        else:
            raise DataError(f"sample(nodes=...) takes a node, a name or a list of them; got {type(nodes).__name__}.")
        n_U = self._cond.n_unobserved
        rng = start_draws(n, seed, n_U + sum(self._node(v).size for v in names if v not in self._cond.leaf_data))
        draws_U = np.zeros((n_U, n))
        if self._factor is not None:
            self._check_variance_accuracy("draws")
            self._check_mean_accuracy()
            draws_U = self._factor.sample(rng.standard_normal((n_U, n)))
        G = self._affine_map()
        out = {}
        for name in names:
            if name in self._cond.leaf_data:  # its data in every draw: a read-only view, no copy per draw
                out[name] = np.broadcast_to(self._cond.leaf_data[name], (n, self._cond.leaf_data[name].shape[0]))
                continue
            span = self._cm.span(name)
            out[name] = (self._mean[span][:, None] + G[span] @ draws_U).T.copy()
        return out

    def counterfactual(self, interventions) -> Counterfactual:
        """Given the data, the world had ``{node: value | gdag.shift(delta)}`` been made (gdag.counterfactual)."""
        return Counterfactual(self, interventions)
    def summary(self, node, max_rows: int = 10) -> str:
        """A small table of posterior means and sds of ``node``'s first entries."""
        return posterior_summary(self, self._node(node), max_rows)

    def to_frame(self, nodes=None, quantiles=(0.025, 0.975)):
        """Marginals of ``nodes`` (default all) as a DataFrame: ``node, entry, label, level`` (the entry's plate
        label, see ``m.plate_from``), ``mean``, ``sd``, a column per Gaussian quantile (``"2.5%"``); gdag.tables."""
        names = [*self._cm.family_names, *self._cond.leaf_data] if nodes is None else \
            [nodes] if isinstance(nodes, (str, Node)) else list(nodes)
        plates = {}
        for node in map(self._node, names):
            plate = None if node.is_scalar else self._cond.leaf_plates[node.name] if node.name in self._cond.leaf_data \
                else self._cm.family_plate[self._cm.family(node.name)]
            plates[node.name] = (plate, self._cm.plate_labels.get(plate))
        return posterior_frame(self, plates, quantiles)

    def __repr__(self) -> str:
        return (f"<gdag.Posterior of `{self._cm.name}`: {self._cond.n_observed} observed, "
                f"{self._cond.n_unobserved} unobserved, {self._cond.S.shape[0]} deterministic>")

    _repr_html_ = posterior_html  # a table of the nodes for notebooks (gdag.tables)

    # ------------------------------------------------------------ internals

    def _node(self, node) -> Node:
        if isinstance(node, (_NodeView, _LeafView)):
            return node
        name = node.name if isinstance(node, (Node, Param)) else node
        if isinstance(node, Node):
            own(node, self._nodes, self._cm.name, "This posterior's query")
        if isinstance(name, str) and name in self._cond.leaf_data:
            return node if isinstance(node, Node) else _LeafView(name, self._cond.leaf_data[name], self._cond)
        if isinstance(node, Param) or (isinstance(name, str) and name in self._cm.param_names
                                       and name not in self._cm._index):
            raise DataError(f"`{name}` is a parameter, not a random node; see Posterior.params for its value.")
        if not isinstance(name, str) or name not in self._cm._index:
            known = ", ".join(f"`{f}`" for f in self._cm.family_names[:10])
            raise DataError(f"This posterior has no node `{name}`; its nodes are {known}.")
        if isinstance(node, Node):
            return node
        return _NodeView(name, self._cm)

    def _shaped(self, node, values: np.ndarray):
        node = self._node(node)
        out = values[self._cm.span(node.name)].copy()
        return float(out[0]) if node.is_scalar else out

    def _leaf_shaped(self, node, values: np.ndarray):
        return float(values[0]) if node.is_scalar else values.copy()

    def _fitted_residual(self, mean_U: np.ndarray | None = None) -> np.ndarray:
        """``e = r - A_U m_U`` over the stochastic variables (``A = I - B'``, see conditioning)."""
        s = self._system
        if self._factor is None:
            return s.r
        m = self._mean_U if mean_U is None else mean_U
        return s.r - self._cond.gram.times(self._entries_of_A_U(), m)

    def _entries_of_A_U(self) -> np.ndarray:
        """Values of ``A_U``'s entries, in the order of ``gram.entry_row`` / ``gram.entry_col``."""
        if self._A_U_values is None and getattr(self._system, "A_U_values", None) is not None:
            self._A_U_values = self._system.A_U_values  # the assembly formed them for this theta
        elif self._A_U_values is None:
            coef, _, _ = self._cond.reduced_values(self._theta)
            self._A_U_values = self._cond.gram.entry_values(coef)
        return self._A_U_values

    @timed("solve")
    def _refined_mean(self) -> np.ndarray:
        """``m_U``, refined against the unformed problem (:func:`gdag.accuracy.refined_mean`)."""
        m, self._mean_error = refined_mean(self._factor.solve, self._cond.gram, self._entries_of_A_U(), self._system)
        return m

    def _full_mean(self) -> np.ndarray:
        cond, s = self._cond, self._system
        mean = self._x.copy()
        mean[cond.U] = self._mean_U
        if cond.S.size:
            mean[cond.S] = s.g + s.M @ mean[cond.R]
        return mean

    def _full_variance(self) -> np.ndarray:
        cond = self._cond
        var = np.zeros(self._cm.n)
        if self._factor is None:
            return var
        var[cond.U] = self._variances_U()
        self._check_variance_accuracy()
        with np.errstate(over="ignore", invalid="ignore"):
            if cond.S.size:
                var[cond.S] = self._deterministic_variance()
        require_finite(var, "posterior variance", self._cm)
        return var

    def variance_error_bound(self) -> float:
        """The stated bound on the relative error of the posterior variances: ``4 eps kappa_1(S)``.

        ``S`` is ``Q_UU`` scaled to a unit diagonal; rounding it by about ``eps`` entrywise moves every
        variance by about ``eps kappa(S)`` relatively.  A first-order bound, not a proof (measured against
        exact arithmetic: docs/accuracy.md), with ``kappa_1(S)`` exact up to 256 unobserved variables and,
        beyond, Hager's lower estimate of ``||S^{-1}||_1``: then an estimate of this bound.
        """
        if self._factor is None:
            return 0.0
        return 4 * np.finfo(float).eps * self._scaled_condition()[0]

    def _scaled_condition(self) -> tuple[float, int]:
        """``(kappa_1(S), j)`` of the scaled precision (see :func:`gdag.accuracy.scaled_condition`), cached."""
        if self._kappa is None:
            self._kappa = scaled_condition(self._system.Q, self._factor.solve)
        return self._kappa

    def _check_mean_accuracy(self) -> None:
        """Warn about or refuse means whose refinement left a doubt (:func:`gdag.accuracy.check_mean_accuracy`)."""
        self._settle_mean()
        check_mean_accuracy(self._cm.name, self._mean_error, self.variance_error_bound,
                            lambda j: self._cond.label_unobserved(np.array([j]))[0],
                            lambda: None if self._hopeless < 0 else self._hopeless)

    def _settle_mean(self) -> None:
        """Once: the refined means stand unless the refinement left a doubt or the factor has no digit (variance
        bound >= 0.1: the bound from the variances, else the estimator); then :func:`~gdag.accuracy.qr_mean`
        replaces them where small, or ``_hopeless`` keeps where to refuse.  Every reader of the means settles."""
        if self._hopeless is not None:
            return
        self._hopeless = -1
        if self._factor is None:
            return
        if self._mean_error is None:
            size = self._cond.factor_size()  # variances first where selected inversion costs less than the estimator
            if self._kappa is None and (self._var_U is not None or size.flops <= INVERSION_PER_SOLVES * size.nnz_L):
                if self._bound_from_variances() < VARIANCE_HOPELESS:
                    return
            if self.variance_error_bound() < VARIANCE_HOPELESS:
                return
            self._hopeless = self._scaled_condition()[1]
        m = qr_mean(self._cond.gram, self._entries_of_A_U(), self._system)
        if m is not None:
            self._mean_U, self._mean_error, self._hopeless = m, None, -1
            with np.errstate(over="ignore", invalid="ignore"):
                self._mean = self._full_mean()
            require_finite(self._mean, "posterior mean", self._cm)

    def _bound_from_variances(self) -> float:
        """``4 eps`` times :func:`~gdag.accuracy.condition_upper_bound` from the exact variances (computed once)."""
        if self._cheap_bound is None:
            self._cheap_bound = 4 * np.finfo(float).eps * condition_upper_bound(self._system.Q, self._variances_U())
        return self._cheap_bound

    def _variances_U(self) -> np.ndarray:
        """``diag(Q_UU^{-1})`` by selected inversion, unchecked (computed once)."""
        if self._var_U is None:
            with np.errstate(over="ignore", invalid="ignore"):
                self._var_U = self._factor.inverse_diagonal()
        return self._var_U

    @timed("accuracy check")
    def _check_variance_accuracy(self, what: str = "variances") -> None:
        """Warn when variances (or the evidence's log-determinant) may have lost digits, refuse when none is
        left; once the variances exist, the rigorous :func:`~gdag.accuracy.condition_upper_bound` goes first."""
        if self._var_U is not None and self._kappa is None and self._bound_from_variances() <= VARIANCE_TOLERANCE:
            return
        bound = self.variance_error_bound()
        if bound > VARIANCE_TOLERANCE:
            kappa, j = self._scaled_condition()
            check_variance_bound(self._cm.name, what, bound, kappa, self._cond.label_unobserved(np.array([j]))[0])

    def _deterministic_variance(self, chunk: int = 256) -> np.ndarray:
        """``diag(M_U Q^{-1} M_U^T)``: squared norms of ``L^{-1} P M_U^T``, in column chunks."""
        M_U = self._system.M[:, self._cond.pos_R[self._cond.U]].tocsr()
        covariances = getattr(self._factor, "covariances", None)  # the selected inverse, where the pairs allow
        found = None if covariances is None else diagonal_on_pattern(M_U, self._system.Q, covariances)
        if found is not None:
            return found
        out = np.zeros(M_U.shape[0])
        rows = np.flatnonzero(np.diff(M_U.indptr))  # deterministic entries of constants have variance 0
        for start in range(0, rows.shape[0], chunk):
            block = rows[start : start + chunk]
            half = self._factor.half_solve(M_U[block].T.toarray())
            out[block] = np.einsum("ij,ij->j", half, half)
        return out

    def _affine_map(self) -> sp.csr_matrix:
        """``G`` (n x |U|) with ``x - E[x] = G (x_U - m_U)`` for every variable."""
        if self._G is None:
            cond, n_U = self._cond, self._cond.n_unobserved
            rows = [cond.U]
            cols = [np.arange(n_U, dtype=np.int64)]
            vals = [np.ones(n_U)]
            if cond.S.size:
                M_U = self._system.M[:, cond.pos_R[cond.U]].tocoo()
                rows.append(cond.S[M_U.row])
                cols.append(M_U.col.astype(np.int64))
                vals.append(M_U.data)
            self._G = sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(self._cm.n, n_U)
            )
        return self._G


class _NodeView:
    """Name, size and scalar flag of a family, for queries by name."""

    def __init__(self, name: str, cm: CompiledModel):
        i = cm.family(name)
        self.name = name
        self.size = int(cm.family_size[i])
        self.is_scalar = cm.family_plate[i] is None


class _LeafView:
    """Name, size and scalar flag of a family summed over its rows (see :mod:`gdag.observations`)."""

    def __init__(self, name: str, values: np.ndarray, cond):
        self.name = name
        self.size = int(values.shape[0])
        self.is_scalar = cond.leaf_plates[name] is None
