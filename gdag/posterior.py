"""Exact posteriors: means, variances, covariance blocks, draws and the log evidence.

A :class:`Posterior` owns everything it needs (its own numeric factor and
copies of the data), so later queries, later declarations on the model and
other posteriors never change it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from .compiler import CompiledModel, compiled
from .conditioning import Conditioning, LinearSystem
from .dsl import Model, Node, Param, check_param_value
from .errors import DataError, ModelError, ParamError

LOG_2PI = float(np.log(2 * np.pi))
# Dense covariance blocks beyond this many solved entries are refused.
COV_LIMIT = 50_000_000


def condition(model: Model, data: Mapping[str, Any], params: Mapping[str, Any]) -> "Posterior":
    """Build the posterior of ``model`` given ``data`` and parameter values."""
    cm = compiled(model)
    theta = parameter_vector(model, cm, params)
    x, observed = data_vector(model, cm, data)
    conditioning = conditioning_for(model, cm, observed)
    return Posterior(cm, conditioning, theta, x)


def conditioning_for(model: Model, cm: CompiledModel, observed: np.ndarray) -> Conditioning:
    """The (cached) index sets and symbolic analysis for an observed pattern."""
    key = ("conditioning", model._version, np.packbits(observed).tobytes())
    if key not in model._cache:
        model._cache[key] = Conditioning(cm, observed)
    return model._cache[key]


def parameter_vector(model: Model, cm: CompiledModel, params: Mapping[str, Any]) -> np.ndarray:
    """Validate ``params`` (name -> value) and return ``theta``."""
    if not isinstance(params, Mapping):
        raise ParamError(f"`params` must be a mapping from parameter names to values; got {type(params).__name__}.")
    checked = {}
    for name, value in params.items():
        param = model.params.get(name)
        if param is None:
            hint = " It is a node; observe it through `data`." if name in model.nodes else ""
            raise ParamError(f"`params` names `{name}`, which is not a parameter of model `{model.name}`.{hint}")
        checked[name] = check_param_value(param, value)
    return cm.theta(checked)


def data_vector(model: Model, cm: CompiledModel, data: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``data`` (name -> values, NaN = unobserved) into ``x`` and the observed mask."""
    if not isinstance(data, Mapping):
        raise DataError(f"`data` must be a mapping from node names to values; got {type(data).__name__}.")
    x = np.full(cm.n, np.nan)
    det = cm.deterministic
    for name, value in data.items():
        node = model.nodes.get(name) if isinstance(name, str) else None
        if node is None:
            hint = " It is a parameter; pass its value in `params`." if name in model.params else ""
            raise DataError(f"`data` names `{name}`, which is not a node of model `{model.name}`.{hint}")
        values = _node_values(node, value)
        span = cm.span(name)
        seen = ~np.isnan(values)
        clash = np.flatnonzero(seen & det[span])
        if clash.size:
            raise DataError(
                f"Node `{name}` has sd 0 at entries {clash[:5].tolist()}, so it is deterministic and cannot be "
                "observed. Give it a positive sd (measurement error) or observe its parents."
            )
        x[span] = values
    return x, ~np.isnan(x)


def _node_values(node: Node, value) -> np.ndarray:
    if isinstance(value, (str, bytes)) or value is None:
        raise DataError(f"Data for node `{node.name}` must be numeric; got {value!r}.")
    arr = np.asarray(value)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == object):
        raise DataError(f"Data for node `{node.name}` must be numeric; got dtype {arr.dtype}.")
    try:
        arr = arr.astype(float)
    except (TypeError, ValueError) as err:
        raise DataError(f"Data for node `{node.name}` has non-numeric entries.") from err
    if np.iscomplexobj(arr):
        raise DataError(f"Data for node `{node.name}` must be real.")
    arr = arr.reshape(-1) if arr.ndim == 0 else arr
    if arr.ndim != 1 or arr.shape[0] != node.size:
        raise DataError(
            f"Data for node `{node.name}` has shape {np.shape(value)}; it needs {node.size} "
            f"value{'s' if node.size > 1 else ''} (NaN for unobserved entries)."
        )
    bad = np.flatnonzero(np.isinf(arr))
    if bad.size:
        raise DataError(
            f"Data for node `{node.name}` has infinite values at entries {bad[:5].tolist()}; "
            "use NaN for unobserved entries."
        )
    return arr


class Posterior:
    """The exact Gaussian posterior of a model's unobserved variables.

    Query by node object or name: :meth:`mean`, :meth:`var`, :meth:`sd`,
    :meth:`cov`, :meth:`sample`; :attr:`log_evidence` is the log density of
    the observed values.  Observed entries have their value as mean and
    variance 0.
    """

    def __init__(self, cm: CompiledModel, conditioning: Conditioning, theta: np.ndarray, x: np.ndarray):
        self._cm = cm
        self._cond = conditioning
        self._theta = theta.copy()
        self._x = x.copy()
        self._system: LinearSystem = conditioning.system(theta, x)
        self._factor = conditioning.factorize(self._system) if conditioning.n_unobserved else None
        self._mean_U = self._factor.solve(self._system.b) if self._factor is not None else np.zeros(0)
        self._mean = self._full_mean()
        self._var = None
        self._G = None

    # ------------------------------------------------------------------ API

    @property
    def params(self) -> dict[str, np.ndarray | float]:
        """The parameter values this posterior was computed at."""
        return {name: self._param_value(name) for name in self._cm.param_names}

    @property
    def log_evidence(self) -> float:
        """``log p(observed values)`` under the model (0 when nothing is observed)."""
        s, cond = self._system, self._cond
        logdet = self._factor.logdet() if self._factor is not None else 0.0
        quad = float(s.r @ (s.r / s.d)) - float(s.b @ self._mean_U)
        return -0.5 * (cond.O.shape[0] * LOG_2PI + float(np.sum(np.log(s.d))) + logdet + quad)

    def mean(self, node) -> np.ndarray | float:
        """Posterior mean of every entry of ``node`` (a float for a scalar node)."""
        return self._shaped(node, self._mean)

    def var(self, node) -> np.ndarray | float:
        """Posterior marginal variances, exact, by selected inversion of the factor."""
        node = self._node(node)
        if self._var is None:
            self._var = self._full_variance()
        return self._shaped(node, self._var)

    def sd(self, node) -> np.ndarray | float:
        """Posterior marginal standard deviations."""
        v = self.var(node)
        return np.sqrt(v)

    def cov(self, a, b=None) -> np.ndarray:
        """Dense posterior covariance block between the entries of nodes ``a`` and ``b``.

        Costs one solve per entry of the smaller node: meant for small blocks.
        """
        a = self._node(a)
        b = a if b is None else self._node(b)
        G = self._affine_map()
        Ga, Gb = G[self._cm.span(a.name)], G[self._cm.span(b.name)]
        if self._factor is None:
            return np.zeros((a.size, b.size))
        small, other, flip = (Gb, Ga, False) if b.size <= a.size else (Ga, Gb, True)
        if small.shape[0] * self._cond.n_unobserved > COV_LIMIT:
            raise ModelError(
                f"cov(`{a.name}`, `{b.name}`) would need {small.shape[0]} solves of size "
                f"{self._cond.n_unobserved}; ask for smaller blocks or use var() for marginal variances."
            )
        solved = self._factor.solve(small.T.toarray())
        block = np.asarray(other @ solved)
        return block.T if flip else block

    def sample(self, n: int, seed=None, nodes=None) -> dict[str, np.ndarray]:
        """``n`` exact joint draws: ``{name: array (n, size)}`` for ``nodes`` (default all)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ModelError(f"sample(n) needs a positive integer n; got {n!r}.")
        rng = np.random.default_rng(seed)
        names = [self._node(v).name for v in nodes] if nodes is not None else list(self._cm.family_names)
        n_U = self._cond.n_unobserved
        draws_U = np.zeros((n_U, n))
        if self._factor is not None:
            draws_U = self._factor.sample(rng.standard_normal((n_U, n)))
        G = self._affine_map()
        out = {}
        for name in names:
            span = self._cm.span(name)
            out[name] = (self._mean[span][:, None] + G[span] @ draws_U).T.copy()
        return out

    def summary(self, node, max_rows: int = 10) -> str:
        """A small table of posterior means and sds of ``node``'s first entries."""
        node = self._node(node)
        mean = np.atleast_1d(self.mean(node))
        sd = np.atleast_1d(self.sd(node))
        observed = ~np.isnan(self._x[self._cm.span(node.name)])
        lines = [f"{'entry':<16}{'mean':>12}{'sd':>12}"]
        for i in range(min(node.size, max_rows)):
            label = node.name if node.is_scalar else f"{node.name}[{i}]"
            note = "  (observed)" if observed[i] else ""
            lines.append(f"{label:<16}{mean[i]:>12.4f}{sd[i]:>12.4f}{note}")
        if node.size > max_rows:
            lines.append(f"... {node.size - max_rows} more")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<gdag.Posterior of `{self._cm.name}`: {self._cond.O.shape[0]} observed, "
                f"{self._cond.n_unobserved} unobserved, {self._cond.S.shape[0]} deterministic>")

    # ------------------------------------------------------------ internals

    def _node(self, node) -> Node:
        if isinstance(node, _NodeView):
            return node
        name = node.name if isinstance(node, (Node, Param)) else node
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

    def _param_value(self, name: str):
        value = self._theta[self._cm.param_span(name)].copy()
        i = self._cm.param_names.index(name)
        return float(value[0]) if self._cm.param_scalar[i] else value

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
        var[cond.U] = self._factor.inverse_diagonal()
        if cond.S.size:
            var[cond.S] = self._deterministic_variance()
        return var

    def _deterministic_variance(self, chunk: int = 256) -> np.ndarray:
        """``diag(M_U Q^{-1} M_U^T)``: squared norms of ``L^{-1} P M_U^T``, in column chunks."""
        M_U = self._system.M[:, self._cond.pos_R[self._cond.U]].tocsr()
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
