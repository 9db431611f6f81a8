"""The client's side of :mod:`gdag.distributed`: the plan, the posterior from the row sums, fitted values."""

from __future__ import annotations

import pickle
import uuid
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..compiler import CompiledModel
from ..data import data_vector, parameter_vector
from ..errors import DataError, ModelError, ModelSpecError
from ..graph import build_graph
from ..observations import LeafRows, SummedPattern
from ..pattern import Conditioning, LinearSystem
from ..posterior import Posterior
from ..resources import check_memory
from .rows import FAN_IN, LANES, RowSums, _check_frame, _dask, _declare, _Layout, check_rows, reduce_partitions, row_sums

# ------------------------------------------------------------------ the client side


@dataclass
class _Plan:
    """What every partition needs, built once on the client; the first rows and their declaration."""

    spec: Any
    cm: CompiledModel
    conditioning: Conditioning
    theta: np.ndarray | None  # None for a fit
    x: np.ndarray
    observed: np.ndarray
    shared: dict
    probe: pd.DataFrame
    probe_model: Any
    probe_data: dict


def _plan(m, ddf, rows: Callable, params, data, probe_rows: int = 5, for_fit: bool = False) -> _Plan:
    """Check the model and the rows (on the first rows of the first partition), before any reduction is scheduled."""
    _check_frame(ddf)
    if not callable(rows):
        raise ModelSpecError("`rows` must be a function rows(m, part) declaring the observed families of a partition.")
    spec = m.spec()
    cm = _compiled(m, spec)
    theta = None if for_fit else parameter_vector(spec, cm, {} if params is None else params)
    x, observed = data_vector(spec, cm, {} if data is None else data)
    conditioning = Conditioning(cm, observed)
    design, m.design = m.design, None  # a formula model's design holds the dask frame: the workers need neither
    try:
        blob = pickle.dumps(m)
    finally:
        m.design = design
    probe = _probe(ddf, probe_rows)
    probe_model, probe_data = _declare(blob, rows, probe)
    check_rows(probe_model, probe_data, spec)
    shared = {"blob": blob, "rows": rows, "theta": theta, "x": x, "pos_U": np.asarray(conditioning.pos_U),
              "n_U": conditioning.n_unobserved, "layout": _Layout(cm), "leaves": tuple(sorted(probe_data))}
    _check_latent_kinds(spec, probe_model, probe_data)
    return _Plan(spec, cm, conditioning, theta, x, observed, shared, probe, probe_model, probe_data)


def _compiled(m, spec) -> CompiledModel:
    return m._queries.compiled(spec)  # the model's own cache: compiled once per version of its declarations


def _check_latent_kinds(spec, probe_model, probe_data) -> None:
    kinds = build_graph(spec).kinds
    for name in probe_data:
        for t in probe_model.nodes[name].mean.terms:
            if not t.source.is_param and kinds.get(t.source.name) != "random":
                raise ModelSpecError(f"The family `{name}` reads `{t.source.name}`, which is {kinds.get(t.source.name)} "
                                     "(deterministic entries): the distributed path reads random nodes only.")


def _probe(ddf, n: int = 5) -> pd.DataFrame:
    """The first rows of the first non-empty partition: what ``rows`` is checked on before the reduction."""
    dask, _ = _dask()
    parts = ddf.to_delayed()
    head = dask.compute(dask.delayed(_head)(parts[0], n))[0]
    k = 1
    while len(head) == 0 and k < len(parts):
        head = dask.compute(dask.delayed(_head)(parts[k], n))[0]
        k += 1
    if len(head) == 0:
        raise DataError("The dask DataFrame has no rows.")
    return head


def _head(part, n):
    return part.head(n)


def _shared_delayed(shared: dict):
    """``shared`` in the graph once: scattered to the workers by an active distributed Client, else embedded."""
    dask, _ = _dask()
    try:
        import distributed  # the optional extra: imported on first use

        client = distributed.default_client()
    except (ImportError, ValueError):
        client = None
    if client is not None and dask.base.get_scheduler() == client.get:  # the client runs what dask.compute runs
        return client.scatter([shared], broadcast=True, hash=False)[0]
    return dask.delayed(shared, name=f"gdag-shared-{uuid.uuid4().hex}")  # a name: hashing the model's bytes costs seconds


def reduce_rows(m, ddf, rows: Callable, params=None, data=None, fan_in: int = FAN_IN,
                lanes: int = LANES) -> tuple[_Plan, RowSums]:
    """The plan and the :class:`RowSums` of all partitions of ``ddf`` (one pass, one ``dask.compute``)."""
    dask, _ = _dask()
    plan = _plan(m, ddf, rows, params, data)
    shared = _shared_delayed(plan.shared)
    total = dask.compute(reduce_partitions(row_sums, ddf, shared, lanes, fan_in))[0]
    return plan, RowSums.zero(plan.shared["n_U"]) if total is None else total


class SummedConditioning(SummedPattern):
    """The latent model's conditioning plus the leaf rows' :class:`RowSums`: what a Posterior asks of a conditioning."""

    def __init__(self, latent: Conditioning, sums: RowSums, theta: np.ndarray, x: np.ndarray, leaves):
        self.latent, self.sums = latent, sums
        self.cm, self.S, self.R, self.U, self.O = latent.cm, latent.S, latent.R, latent.U, latent.O
        self.pos_R, self.pos_U = latent.pos_R, latent.pos_U
        self.n_unobserved = latent.n_unobserved
        self.leaf_data = MappingProxyType({name: None for name in leaves})  # on the cluster: never in memory
        self.leaf_plates = MappingProxyType({name: None for name in leaves})
        self._theta, self._x = theta, x
        self._analysis = None
        self._size = None
        self.gram = _SummedGram(self)

    def __getstate__(self) -> dict:
        """Pickled without the analysis (CHOLMOD's does not pickle; :meth:`analysis` redoes it)."""
        return {**self.__dict__, "_analysis": None, "leaf_data": dict(self.leaf_data), "leaf_plates": dict(self.leaf_plates)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.leaf_data, self.leaf_plates = MappingProxyType(self.leaf_data), MappingProxyType(self.leaf_plates)

    @property
    def n_observed(self) -> int:
        return int(self.O.shape[0]) + int(self.sums.count)

    def label_unobserved(self, positions):
        return self.latent.label_unobserved(positions)

    def reduced_values(self, theta):
        return self.latent.reduced_values(theta)

    def _same(self, theta, x) -> None:
        if not (np.array_equal(theta, self._theta) and np.array_equal(x, self._x, equal_nan=True)):
            raise ModelError("These row sums were computed at other parameter values or data; reduce the rows again.")

    def system(self, theta: np.ndarray, x: np.ndarray) -> LinearSystem:
        self._same(theta, x)
        s = self.latent.system(theta, x)
        Q = (s.Q + sp.tril(self.sums.G, format="csc")).tocsc()
        Q.sum_duplicates()
        Q.sort_indices()
        self.pattern = Q
        return LinearSystem(Q, s.b - self.sums.zwr, s.r, s.d, s.g, s.M, s.Q_padded)

    def leaf_residual(self, theta, x, m) -> tuple[float, np.ndarray]:
        """``(e^T W e, A_U^T W e)`` of the rows at ``m`` from the sums (``e = r + Z m``, ``A_U = -Z``)."""
        self._same(theta, x)
        Gm = self.sums.G @ m
        f = self.sums.rwr + 2.0 * float(m @ self.sums.zwr) + float(m @ Gm)
        return max(f, 0.0), -(self.sums.zwr + Gm)

    def leaf_log_variances(self, theta, x) -> float:
        self._same(theta, x)
        return self.sums.log_d


class _SummedGram:
    """The latent gram's products, plus the rows' part from their sums (for the mean's refinement)."""

    def __init__(self, cond: SummedConditioning):
        self._cond, self._latent = cond, cond.latent.gram

    @property
    def pattern(self):
        return self._cond.pattern

    def entry_values(self, coef):
        return self._latent.entry_values(coef)

    def times(self, values, m):
        return self._latent.times(values, m)

    def weighted_residual(self, values, m, r, d):
        e, w, f = self._latent.weighted_residual(values, m, r, d)
        f_rows, rows_part = self._cond.leaf_residual(self._cond._theta, self._cond._x, m)
        return e, (w, rows_part), f + f_rows

    def transpose_times(self, values, w):
        w_latent, rows_part = w
        return self._latent.transpose_times(values, w_latent) + rows_part


class DaskPosterior(Posterior):
    """The exact posterior of the latent model given rows that stay on the cluster.

    Queries of latent nodes are those of :class:`~gdag.Posterior`;
    :attr:`log_evidence` includes the rows.  The observed families declared
    by ``rows`` are data on the cluster: :func:`fitted` gives their fitted
    values and residuals as a dask collection.
    """

    def __init__(self, cm, conditioning, theta, x, nodes, leaves, rows_count):
        super().__init__(cm, conditioning, theta, x, nodes)
        self.leaves = tuple(leaves)
        self.rows_count = dict(rows_count)

    def _node(self, node):
        name = getattr(node, "name", node)
        if isinstance(name, str) and name in self.leaves:
            raise DataError(f"`{name}` is observed data on the Dask cluster; its rows stay there. Use "
                            f"gdag.distributed.fitted(post, ddf, rows) for its fitted values and residuals.")
        return super()._node(node)

    def sample(self, n: int, seed=None, nodes=None) -> dict[str, np.ndarray]:
        """Exact joint draws of the latent nodes (all of them by default); see :meth:`Posterior.sample`."""
        return super().sample(n, seed, list(self._cm.family_names) if nodes is None else nodes)

    def to_frame(self, nodes=None, quantiles=(0.025, 0.975)):
        """Marginals of the latent nodes (all by default) as a DataFrame; see :meth:`Posterior.to_frame`."""
        return super().to_frame(list(self._cm.family_names) if nodes is None else nodes, quantiles)

    def __repr__(self) -> str:
        return (f"<gdag.DaskPosterior of `{self._cm.name}`: {self._cond.n_observed} observed "
                f"({sum(self.rows_count.values())} rows on the cluster), {self._cond.n_unobserved} unobserved>")


def posterior(m, ddf, rows: Callable, params: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
              fan_in: int = FAN_IN, lanes: int = LANES) -> DaskPosterior:
    """The exact posterior of ``m``'s latent nodes given the rows of the dask DataFrame ``ddf``.

    Parameters
    ----------
    m : Model
        The latent part: plates, latent nodes, parameters.
    ddf : dask.dataframe.DataFrame
        The rows.
    rows : callable ``rows(m, part)``
        Declares the observed leaf families of one partition on a copy of
        ``m`` (see the module's docstring); their data are ``part``'s columns
        of the same names, or what it returns as ``{name: values}``.  Missing
        values leave their rows out.
    params : mapping, optional
        Parameter values, as for :meth:`Model.posterior`.
    data : mapping, optional
        In-memory observations of latent nodes.
    fan_in, lanes : int
        The reduction's shape (:func:`reduce_partitions`): the same shape and
        partitioning give the same bits.
    """
    plan, sums = reduce_rows(m, ddf, rows, params, data, fan_in, lanes)
    return posterior_from_sums(m, plan, sums)


def posterior_from_sums(m, plan: _Plan, sums: RowSums) -> DaskPosterior:
    leaves = plan.shared["leaves"]
    cond = SummedConditioning(plan.conditioning, sums, plan.theta, plan.x, leaves)
    post = DaskPosterior(plan.cm, cond, plan.theta, plan.x, plan.spec.nodes, leaves, sums.by_family)
    post._blob = plan.shared["blob"]
    check_memory(cond.factor_size(), m.name)
    return post



# ------------------------------------------------------------------ second pass: fitted values


def _fitted_part(part: pd.DataFrame, shared: dict, meta: pd.DataFrame) -> pd.DataFrame:
    if len(part) == 0:
        return meta
    m, data = _declare(shared["blob"], shared["rows"], part)
    if not data:
        return meta
    theta, layout, mean = shared["theta"], shared["layout"], shared["mean"]
    out = {}
    for name in shared["leaves"]:
        node, y = m.nodes[name], data[name]
        leaf = LeafRows(node, layout)
        # values() reads every latent parent from `mean` as if observed: r = c - y + Z m, so fitted = c + Z m = r + y
        _, r, _ = leaf.values(theta, mean, np.zeros(node.size), slice(0, node.size))
        out[f"{name}_fitted"] = pd.Series(r, index=m.row_index[name])
        out[f"{name}_residual"] = pd.Series(y - r, index=m.row_index[name])
    return pd.DataFrame(out)


def fitted(post, ddf, rows: Callable | None = None) -> Any:
    """Fitted values (``c + Z m``: the rows' means at the posterior means of the latent nodes) and residuals.

    A second, chunked pass: a dask DataFrame with columns ``{name}_fitted``
    and ``{name}_residual`` for each observed family, partitioned like
    ``ddf`` and indexed by its rows that the family has (a formula leaves out
    incomplete rows), computed lazily: nothing row-sized reaches the client.
    ``post`` is a :class:`DaskPosterior` or a fit on the cluster (its
    posterior at the estimates); ``rows`` defaults to a formula model's.
    ``ddf`` may be new rows (predictions: their means given the data).
    """
    _, dd = _dask()
    design = getattr(post, "design", None)
    if rows is None:
        rows = getattr(design, "partition_rows", None)
        if rows is None:
            raise DataError("fitted() needs the rows(m, part) function that declared the rows.")
    if hasattr(post, "posterior") and not isinstance(post, Posterior):
        post = post.posterior
    if not isinstance(post, DaskPosterior):
        raise DataError("fitted() takes the DaskPosterior of gdag.distributed.posterior (or a fit on the cluster).")
    _check_frame(ddf)
    post._check_mean_accuracy()
    plan_shared = {"blob": post._blob, "rows": rows, "theta": post._theta, "layout": _Layout(post._cm),
                   "leaves": post.leaves, "mean": post._mean}
    meta = pd.DataFrame({c: pd.Series(dtype=float) for name in post.leaves for c in (f"{name}_fitted", f"{name}_residual")})
    shared = _shared_delayed(plan_shared)
    return ddf.map_partitions(_fitted_part, shared, meta, meta=meta)
