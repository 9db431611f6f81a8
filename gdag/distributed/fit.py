"""ML, REML and EM fits from rows on a Dask cluster: one pass for the sufficient statistics, the rest on the client.

The observed leaf families' theta-free sums (:mod:`gdag.fitting.leaves`: per
variance class ``r^T W r``, ``Z^T W r``, ``X^T W r``, ``Z^T W Z``, ``Z^T W X``,
``X^T W X``, ``sum log s^2`` and the count, about one reference ``beta0``) are
computed per partition by :func:`gdag.fitting.reduced.leaf_statistics`, with
the data's count, mean and squared deviations for the starting values, and
added by the fixed tree of :func:`gdag.distributed.tree_sum`.  The client
then runs :class:`~gdag.fitting.reduced.ReducedObjective` and the optimizer
exactly as ``m.fit`` does for in-memory leaves: every evaluation reads the
sums, never the rows.  The fit's posterior is built from the same sums at the
estimates (no second pass); fitted values and residuals are the lazy second
pass of :func:`gdag.distributed.fitted`.

``beta0`` comes from the first rows of the first partition (as in memory,
from the first rows); the roles of the parameters from the declaration of
those rows, checked again against the counts of the whole pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import timing
from ..errors import DataError, FitError, ModelSpecError
from ..fitting.fit import Deferred, Fit, make_fit
from ..fitting.leaves import REFERENCE_ROWS, LeafStart, LeafStatistics, leaf_coefficients, moments_of, spread_of
from ..fitting.optimize import starting_point
from ..fitting.reduced import ReducedObjective, fit_ready, leaf_rows_of, leaf_statistics
from ..fitting.roles import infer_roles
from ..fitting.run import fit_options, fit_timings, run_optimizer
from ..linalg.blas import one_blas_thread
from ..model import Model
from ..observations import LeafRows
from ..resources import check_memory
from .posterior import DaskPosterior, SummedConditioning, _plan, _shared_delayed, fitted, posterior
from .rows import FAN_IN, LANES, RowSums, _check_one_entry, _dask, _declare, is_dask, reduce_partitions

__all__ = ["fit", "DaskFit", "DaskModel", "FitSums", "fit_sums", "row_sums_at", "posterior_from_statistics"]


@dataclass(frozen=True)
class DaskFit(Fit):
    """A :class:`~gdag.Fit` whose rows are on a Dask cluster: fitted values and residuals are lazy dask Series."""

    rows_data: Any = field(default=None, repr=False, compare=False)  # the dask DataFrame fitted
    rows_function: Any = field(default=None, repr=False, compare=False)  # rows(m, part)

    def _pass(self, node):
        leaves = self.posterior.leaves
        name = getattr(node, "name", node) if node is not None else (leaves[0] if len(leaves) == 1 else None)
        if name not in leaves:
            raise DataError(f"Name one of the observed families {', '.join(f'`{v}`' for v in leaves)}: fit.fitted(node=...).")
        return fitted(self, self.rows_data, self.rows_function), name

    def fitted(self, node=None):
        """Fitted means of the rows (lme4's ``fitted()``): a lazy dask Series, partitioned like the data."""
        out, name = self._pass(node)
        return out[f"{name}_fitted"].rename("fitted")

    def residuals(self, node=None):
        """Observed minus fitted (lme4's ``residuals()``): a lazy dask Series, partitioned like the data."""
        out, name = self._pass(node)
        return out[f"{name}_residual"].rename("residuals")

    def predict(self, newdata, new_levels: str = "error"):
        """Predictive means of new rows (lme4's ``predict()``; no sds on the cluster): a lazy dask Series for a
        dask DataFrame, a pandas Series for a pandas one (one partition, computed).  Their levels must be the fit's."""
        if new_levels != "error":
            raise FitError("A fit on a Dask cluster predicts rows of the fit's levels only (new_levels='error').")
        pandas = isinstance(newdata, pd.DataFrame)
        rows = _dask()[1].from_pandas(newdata, npartitions=1) if pandas else newdata
        name = self.posterior.leaves[0] if len(self.posterior.leaves) == 1 else None
        if name is None:
            raise FitError(f"predict() of a fit with several observed families ({', '.join(self.posterior.leaves)}): "
                           "use gdag.distributed.fitted, which gives each one's.")
        out = fitted(self, rows, self.rows_function)[f"{name}_fitted"].rename("mean")
        return out.compute() if pandas else out

    def simulate(self, n: int = 1, seed=None):
        raise FitError("simulate() of a fit on a Dask cluster would bring row-sized draws to the client; draw the "
                       "random effects with fit.posterior.sample(n) and the rows on the cluster.")


@dataclass
class FitSums:
    """A partition's :class:`~gdag.fitting.leaves.LeafStatistics` and, per leaf, ``(count, mean, M2)`` of its data."""

    stats: LeafStatistics
    moments: dict

    def __add__(self, other: "FitSums") -> "FitSums":
        moments = {}
        for name, (n_a, mean_a, m2_a) in self.moments.items():
            n_b, mean_b, m2_b = other.moments[name]
            n = n_a + n_b
            delta = mean_b - mean_a
            moments[name] = (n, mean_a + delta * (n_b / n) if n else 0.0, m2_a + m2_b + delta * delta * (n_a * n_b / n if n else 0.0))
        return FitSums(self.stats + other.stats, moments)


def _complete(m_data, part, shared):
    """The partition's model and data with rows of a missing response left out (one leaf family), else refused."""
    m, data = m_data
    missing = [name for name, y in data.items() if np.isnan(y).any()]
    if not missing:
        return m, data
    if len(data) == 1 and missing[0] in part.columns:
        part = part.loc[part[missing[0]].notna().to_numpy()]
        if len(part) == 0:
            return None, {}
        m, data = _declare(shared["blob"], shared["rows"], part)
        if not any(np.isnan(y).any() for y in data.values()):
            return m, data
    raise DataError(f"The data of `{missing[0]}` have missing values; a fit on the cluster needs them left out: "
                    "drop those rows in rows() (several families share them).")


def fit_sums(part, shared: dict):
    """One partition's :class:`FitSums` (runs on a worker); None for a partition without rows."""
    if len(part) == 0:
        return None
    m, data = _complete(_declare(shared["blob"], shared["rows"], part), part, shared)
    if not data:
        return None
    names = tuple(sorted(data))
    if names != shared["leaves"]:
        raise ModelSpecError(f"rows() declared {list(names)} on one partition and {list(shared['leaves'])} on the "
                             "first: it must declare the same families on every partition.")
    leaves = []
    for name in names:
        node = m.nodes[name]
        for t in node.mean.terms:
            if not t.source.is_param:
                _check_one_entry(name, t.source.name, t.rows)
        leaves.append(LeafRows(node, shared["layout"]))
    stats = leaf_statistics(leaves, data, shared["x"], shared["pos_U"], shared["n_U"], shared["fixed"],
                            beta0=shared["beta0"])
    return FitSums(stats, {name: moments_of(data[name]) for name in names})


def fit(m, ddf, rows: Callable, method: str = "reml", *, data: Mapping[str, Any] | None = None,
        init: Mapping[str, Any] | None = None, tol: float | None = None, max_iter: int | None = None,
        criterion: str | None = None, optimizer: str = "auto", factorization: str = "auto", progress: bool | None = None,
        callback: Callable | None = None, fan_in: int = FAN_IN, lanes: int = LANES):
    """Estimate ``m``'s parameters from the rows of the dask DataFrame ``ddf``, declared per partition by ``rows``.

    ``m`` is the latent part and ``rows(m, part)`` declares a partition's
    observed families (:mod:`gdag.distributed`); ``data`` are in-memory
    observations of latent nodes.  The options are :meth:`Model.fit`'s; the
    result is a :class:`~gdag.Fit` whose posterior (a
    :class:`~gdag.distributed.DaskPosterior`) comes from the same sums.
    """
    dask, _ = _dask()
    method, criterion, tol, max_iter = fit_options(method, criterion, optimizer, tol, max_iter)
    profile = method != "em"
    with one_blas_thread(), timing.record() as phases:
        t_start = time.perf_counter()
        plan = _plan(m, ddf, rows, None, data, probe_rows=REFERENCE_ROWS, for_fit=True)
        spec, cm, cond, x = plan.spec, plan.cm, plan.conditioning, plan.x
        if cm.n_theta == 0:
            raise FitError(f"Model `{spec.name}` has no parameters to estimate; use gdag.distributed.posterior instead.")
        probe_model, probe_data = _complete((plan.probe_model, plan.probe_data), plan.probe, plan.shared)
        probe_leaves = [LeafRows(probe_model.nodes[name], plan.shared["layout"]) for name in sorted(probe_data)]
        leaf_rows, leaf_linear = leaf_rows_of(probe_leaves, cm.n_theta)
        # the first rows may not see every entry of a parameter in the means (a column of zeros there: a later
        # level or period); all its entries are the leaves' fixed effects, and the whole pass says what data see
        owner = np.repeat(np.arange(len(cm.param_names)), cm.param_size)
        leaf_linear = np.isin(owner, owner[leaf_linear])
        roles = infer_roles(cm, cond, profile, leaf_rows, leaf_linear)
        if not fit_ready(probe_leaves, roles):
            raise FitError(f"The family `{probe_leaves[0].name}` cannot be summed for a fit: its sd parameter must be "
                           "a variance component alone and the parameters of its mean fixed effects.")
        beta0 = leaf_statistics(probe_leaves, probe_data, x, cond.pos_U, cond.n_unobserved, roles.fixed).beta0
        shared = _shared_delayed({**plan.shared, "fixed": roles.fixed, "beta0": beta0})
        total = dask.compute(reduce_partitions(fit_sums, ddf, shared, lanes, fan_in))[0]
        if total is None:
            raise FitError("No row of the data is complete: nothing to fit.")
        stats = total.stats
        leaf_rows = np.zeros(cm.n_theta + 1, np.int64)
        for c in stats.classes:
            leaf_rows[c.entry if c.entry >= 0 else cm.n_theta] += c.count
        roles = infer_roles(cm, cond, profile, leaf_rows, leaf_linear)
        start = LeafStart(_spread(x[cond.R], total.moments), leaf_coefficients(stats, cm.sd_param[cond.U], cm.n_theta))
        v0, scales = starting_point(spec, cm, cond, x, roles, init, start)
        obj = ReducedObjective(cm, cond, x, roles, criterion == "reml", stats, factorization, scales)
        t_setup = time.perf_counter()
        log, converged, n_iter, message = run_optimizer(spec, cm, obj, v0, method, optimizer, tol, max_iter,
                                                        progress, callback)
        t_opt = time.perf_counter()
    best = log.best
    theta = best.theta
    posterior = Deferred(posterior_from_statistics, m.name, cm, cond, theta, x, dict(spec.nodes), stats, roles.fixed,
                         plan.shared["blob"])
    timings = fit_timings(t_start, t_setup, t_opt, phases)
    result = make_fit(spec, cm, obj, log, method, criterion, converged, n_iter, posterior, timings)
    seen = tuple(name for name in cm.family_names if plan.observed[cm.span(name)].any()) + stats.names
    result = replace(result, spec=spec, observed=seen, message=message, design=getattr(m, "design", None))
    return DaskFit(**{f.name: getattr(result, f.name) for f in fields(Fit)}, rows_data=ddf, rows_function=rows)


def _spread(x_R: np.ndarray, moments: dict) -> float:
    """The sd of the observed latent values and the leaves' data together (as the in-memory fit computes it)."""
    return spread_of([moments_of(x_R[np.isfinite(x_R)])] + [moments[name] for name in sorted(moments)])


def row_sums_at(stats: LeafStatistics, theta: np.ndarray, fixed: np.ndarray) -> RowSums:
    """The :class:`~gdag.distributed.RowSums` of the rows at ``theta``, from their theta-free statistics."""
    delta = theta[fixed] - stats.beta0
    n_U = stats.classes[0].Zr.shape[0] if stats.classes else 0
    G, zwr, rwr, log_d, count = sp.csr_matrix((n_U, n_U)), np.zeros(n_U), 0.0, 0.0, 0
    for c in stats.classes:
        omega = 1.0 if c.entry < 0 else 1.0 / (theta[c.entry] * theta[c.entry])
        full = (c.ZZ + c.ZZ.T - sp.diags(c.ZZ.diagonal())).tocsr()
        G = G + omega * full
        zwr = zwr - omega * (c.Zr - c.ZX @ delta)
        rwr += omega * (c.rr - 2.0 * float(delta @ c.Xr) + float(delta @ c.XX @ delta))
        log_d += c.log_base + (0.0 if c.entry < 0 else c.count * np.log(theta[c.entry] * theta[c.entry]))
        count += c.count
    G = G.tocsr()
    G.sum_duplicates()
    G.sort_indices()
    return RowSums(G, zwr, rwr, log_d, count, {})


def posterior_from_statistics(name, cm, cond, theta, x, nodes, stats, fixed, blob) -> DaskPosterior:
    """The posterior at ``theta`` from the fit's statistics (no pass over the rows)."""
    sums = row_sums_at(stats, theta, fixed)
    summed = SummedConditioning(cond, sums, theta, x, stats.names)
    post = DaskPosterior(cm, summed, theta, x, nodes, stats.names, {"rows": sums.count})
    post._blob = blob
    check_memory(summed.factor_size(), name)
    return post


# ------------------------------------------------------------------ formula models


class DaskModel(Model):
    """The latent part of a formula model whose rows are a dask DataFrame (``gdag.from_formula(formula, ddf)``).

    ``m.posterior(ddf)`` and ``m.fit(ddf)`` take a dask DataFrame (its
    ``design.data`` is the one it was built from); any other data go to
    :class:`~gdag.Model`'s methods.  ``m.design.partition_rows`` declares
    one partition's response (:class:`gdag.design.FormulaRows`).
    """

    def posterior(self, data=None, params=None):
        if is_dask(data):
            return posterior(self, data, self.design.partition_rows, params=params)
        return super().posterior(data, params)

    def fit(self, data, method: str = "reml", **options):
        """ML, REML or EM from a dask DataFrame (:func:`gdag.distributed.fit.fit`); other data as :meth:`Model.fit`."""
        if is_dask(data):
            return fit(self, data, self.design.partition_rows, method, **options)
        return super().fit(data, method, **options)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + ", rows on a dask DataFrame>"
