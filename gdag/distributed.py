"""Observations on a Dask cluster: leaf families reduced per partition, the latent system solved on the client.

A model is split in two (docs/larger-than-memory.md):

* the **latent part**, declared once on the client as an ordinary
  :class:`~gdag.Model`: plates (sized by the data's global group levels,
  :func:`levels`), the random effects, the parameters;
* the **rows**: the observed leaf families (ratings, scores, installs),
  declared per partition by a function ``rows(m, part)`` that receives a copy
  of the latent model and one partition (a pandas DataFrame) and declares the
  partition's rows in gdag's own language, exactly as in memory::

      def rows(m, part):
          obs = m.plate("obs", len(part))
          m.normal("y", m.params["mu"] + m.nodes["u"][part["g"]], m.params["sigma"], plate=obs)

  The data of each family declared there is the partition's column of the
  same name (or what ``rows`` returns: ``{name: values}``).

Each partition is reduced where it lives to additive sums over its rows
(:class:`RowSums`: ``Z^T W Z`` over the latent variables, ``Z^T W r``,
``r^T W r``, ``sum log d`` and the count, issue 11's statistics at one
theta); the partial sums are added by a fixed fan-in tree of
``dask.delayed`` additions over the partitions in order (:func:`tree_sum`),
so a given partitioning gives the same bits whichever worker finishes first,
and only the sums reach the client, which factors the latent system.  Rows
with a missing response are left out (an unobserved leaf entry does not
change the posterior of the rest).  Whatever ``distributed.Client`` is
active runs the tasks; without one, Dask's default scheduler does.  gdag has
no scheduling, transport or spilling code of its own.

What the distributed path cannot do is refused before the reduction is
scheduled, naming the family (:func:`check_rows`): a family declared per
partition that another one depends on (an observed non-leaf family), a
parameter multiplying an observed family's term, a family that reads a node
through more than one entry per row, a deterministic (``sd=0``) row, new
plates' nodes that are not observed.
"""

from __future__ import annotations

import pickle
import uuid
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .compiler import CompiledModel
from .data import data_vector, node_values, parameter_vector
from .errors import DataError, ModelError, ModelSpecError
from .frame import levels as frame_levels
from .graph import build_graph
from .linalg import factor as factors
from .model import Model
from .observations import LeafRows
from .pattern import Conditioning, LinearSystem
from .posterior import Posterior
from .resources import check_memory, factor_size

__all__ = ["is_dask", "levels", "levels_of", "check_rows", "RowSums", "row_sums", "tree_sum", "posterior", "fit", "fitted",
           "DaskPosterior", "DaskModel", "FAN_IN"]

# Partial sums added per node of the reduction tree.
FAN_IN = 8
# Running sums over the partitions (each folds every LANES-th partition in order): the parallelism of the pass.
LANES = 16


# ------------------------------------------------------------------ dask, imported on use


def _dask():
    try:
        import dask
        import dask.dataframe as dd
    except ImportError:  # pragma: no cover - the extra is in the test environment
        raise ImportError("gdag's Dask path needs dask and distributed: pip install 'gdag[dask]'.") from None
    return dask, dd


def is_dask(data: Any) -> bool:
    """True for a ``dask.dataframe.DataFrame`` (without importing dask when it is not loaded)."""
    import sys

    if "dask.dataframe" not in sys.modules:
        return False
    import dask.dataframe as dd

    return isinstance(data, dd.DataFrame)


def _check_frame(ddf, what: str = "data") -> None:
    if not is_dask(ddf):
        raise DataError(f"`{what}` must be a dask.dataframe.DataFrame here; got {type(ddf).__name__}.")


# ------------------------------------------------------------------ first pass: global levels


def levels(column, name: str | None = None, drop_unused: bool = False) -> pd.Index:
    """The global levels of a dask group column (one pass over the data), as :func:`gdag.frame.levels` orders them.

    A categorical column keeps its categories' order (all of them, or only
    those some row uses with ``drop_unused=True``); anything else is sorted.
    Give these to ``m.plate(name, len(lv), labels=lv)`` and gather by the
    labels in ``rows`` (``u[part["g"]]``): every partition then uses the same
    codes.  Missing labels are a :class:`~gdag.DataError`.
    """
    return levels_of({name or column.name: column}, drop_unused)[name or column.name]


def levels_of(columns: Mapping[str, Any], drop_unused: bool = False) -> dict[str, pd.Index]:
    """:func:`levels` of several dask columns in one pass (one ``dask.compute``)."""
    dask, _ = _dask()
    dtypes, tasks = {}, {}
    for name, col in columns.items():
        if isinstance(col.dtype, pd.CategoricalDtype):
            col = col if col.cat.known else col.cat.as_known()
            dtypes[name] = col.dtype
            tasks[name] = (col.cat.codes.unique(split_every=FAN_IN, split_out=1) if drop_unused else None, col.isna().sum())
        else:
            tasks[name] = (col.dropna().unique(split_every=FAN_IN, split_out=1), col.isna().sum())  # a tree, no shuffle
    computed = dask.compute(tasks)[0]
    out = {}
    for name, (uniques, missing) in computed.items():
        if missing:
            raise DataError(f"The group `{name}` has {int(missing)} missing label{'s' if missing > 1 else ''}; "
                            "every row needs a level. Drop those rows or give them a level.")
        if name in dtypes:
            categories = pd.Index(dtypes[name].categories)
            out[name] = categories if uniques is None else categories[np.sort(np.asarray(uniques, dtype=np.int64))]
        else:
            out[name] = frame_levels(pd.Series(np.asarray(uniques)), name)[0]
    return out


# ------------------------------------------------------------------ the rows of a partition


class _Layout:
    """What :class:`~gdag.observations.LeafRows` reads of a compiled model: offsets of families and parameters."""

    def __init__(self, cm: CompiledModel):
        self.family_offset = np.asarray(cm.family_offset)
        self._families = {name: i for i, name in enumerate(cm.family_names)}
        self.param_offset = np.asarray(cm.param_offset)
        self.param_names = list(cm.param_names)

    def family(self, name: str) -> int:
        return self._families[name]


def _declare(blob: bytes, rows: Callable, part: pd.DataFrame):
    """The latent model (a fresh copy) with ``part``'s rows declared: ``(model, {leaf: data values})``."""
    m = pickle.loads(blob)
    before = set(m.nodes)
    returned = rows(m, part)
    leaves = [name for name in m.nodes if name not in before]
    if returned is not None and not isinstance(returned, Mapping):
        raise ModelSpecError(f"rows(m, part) returns None or a mapping {{name: values}}; got {type(returned).__name__}.")
    data, m.row_index = {}, {}  # row_index: the partition's rows each family has (rows() may leave some out)
    for name in leaves:
        if returned is not None and name in returned:
            value = returned[name]
            m.row_index[name] = value.index if isinstance(value, pd.Series) else part.index
        elif name in part.columns:
            value = part[name]
            m.row_index[name] = part.index
        else:
            raise DataError(f"The family `{name}` declared by rows() has no data: the partition has no column "
                            f"`{name}` and rows() returned none for it.")
        data[name] = node_values(m.nodes[name], value)
    return m, data


def check_rows(m, leaves: Mapping[str, np.ndarray], spec) -> None:
    """Refuse what the distributed path cannot reduce, naming the family (see the module's docstring).

    ``m`` is the latent model ``spec`` with one partition's rows declared, ``leaves`` their data.
    """
    latent_names = set(spec.nodes)
    if not leaves:
        raise ModelSpecError("rows(m, part) declared no family: it must declare the observed families of the rows.")
    new_params = sorted(set(m.params) - set(spec.params))
    if new_params:
        raise ModelSpecError(f"rows() declared the parameter `{new_params[0]}`: declare parameters on the model, "
                             "once, not per partition.")
    for name in leaves:
        node = m.nodes[name]
        if np.any(node.sd.base <= 0):
            raise ModelSpecError(f"The family `{name}` has sd 0 (deterministic) rows; the distributed path sums "
                                 "observed rows with positive sds only.")
        for t in node.mean.terms:
            if t.source.is_param:
                if t.scale is not None:
                    raise ModelSpecError(f"The family `{name}` has a parameter multiplying a parameter term.")
                continue
            source = t.source.name
            if source in leaves:
                what = "itself" if source == name else f"the observed family `{source}`"
                raise ModelSpecError(
                    f"The family `{source}` is observed on the cluster and `{name}` depends on {what}: the "
                    "distributed path sums observed leaf families only (nothing may depend on them). Declare "
                    f"`{source}` on the model as a latent node, or fit in memory.")
            if source not in latent_names:
                raise ModelSpecError(f"The family `{name}` reads `{source}`, which rows() declared without data: "
                                     "nodes read by the rows belong on the model.")
            if t.scale is not None:
                raise ModelSpecError(
                    f"The family `{name}` has the parameter `{t.scale.name}` multiplying its term in "
                    f"`{source}`: the distributed path needs the rows' coefficients free of parameters. "
                    f"Move the coefficient into `{source}` (its sd or mean), or fit in memory.")
            _check_one_entry(name, source, t.rows)
    for name, node in m.nodes.items():
        if name not in latent_names and name not in leaves:  # pragma: no cover - leaves are the new nodes
            raise ModelSpecError(f"rows() declared `{name}` without data.")


def _check_one_entry(name: str, source: str, rows: np.ndarray) -> None:
    if rows.shape[0] > 1 and not bool(np.all(rows[1:] > rows[:-1])):
        raise ModelSpecError(f"The family `{name}` reads `{source}` through more than one entry per row (a "
                             f"design matrix): write it as a sum of gathers, one term per column.")


@dataclass
class RowSums:
    """Additive sums of observed leaf rows at one theta: ``Z^T W Z``, ``Z^T W r``, ``r^T W r``, ``sum log d``, count.

    ``G`` is the full symmetric ``Z^T W Z`` over the latent model's
    unobserved variables (CSR, canonical), ``zwr`` the vector ``Z^T W r``
    with ``r = c - y + B_O x_O`` the rows' residual at the observed latent
    values.  ``a + b`` adds them; the tree of :func:`tree_sum` fixes the order.
    """

    G: sp.csr_matrix
    zwr: np.ndarray
    rwr: float
    log_d: float
    count: int
    by_family: dict = field(default_factory=dict)  # name -> row count

    def __add__(self, other: "RowSums") -> "RowSums":
        counts = dict(self.by_family)
        for k, v in other.by_family.items():
            counts[k] = counts.get(k, 0) + v
        G = self.G + other.G
        G.sum_duplicates()
        G.sort_indices()
        return RowSums(G, self.zwr + other.zwr, self.rwr + other.rwr, self.log_d + other.log_d,
                       self.count + other.count, counts)

    @classmethod
    def zero(cls, n_U: int) -> "RowSums":
        return cls(sp.csr_matrix((n_U, n_U)), np.zeros(n_U), 0.0, 0.0, 0, {})


def _add_all(*parts):
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def tree_sum(parts: list, fan_in: int = FAN_IN, add: Callable = _add_all):
    """The sum of ``parts`` (``dask.delayed`` objects, in order) by a fixed tree of ``fan_in``-ary additions.

    The tree depends only on the number of parts, and each addition adds its
    inputs left to right: the same parts give the same bits, whatever order
    the workers finish in.
    """
    dask, _ = _dask()
    if not parts:
        raise ModelError("There are no partitions to sum.")
    level = list(parts)
    while len(level) > 1:
        level = [dask.delayed(add, pure=True)(*level[i:i + fan_in]) for i in range(0, len(level), fan_in)]
    return level[0]


class _Partition:
    """How to read one partition, read inside the task that reduces it: no partition is read ahead of its turn.

    (Passed as the partition's own small graph; as a task of its own, every
    partition would be read as soon as a worker is free and wait in memory
    for its lane.)
    """

    def __init__(self, part):
        self.graph, self.key = dict(part.__dask_graph__()), part.key

    def read(self) -> pd.DataFrame:
        import dask

        return dask.get(self.graph, self.key)  # the synchronous scheduler, inside the worker's task


def _fold(total, reduce: Callable, part, shared):
    """``total + reduce(part, shared)`` (None: nothing yet / a partition without rows)."""
    found = reduce(part.read() if isinstance(part, _Partition) else part, shared)
    if total is None or found is None:
        return found if total is None else total
    return total + found


def reduce_partitions(reduce: Callable, ddf, shared, lanes: int = LANES, fan_in: int = FAN_IN):
    """The sum of ``reduce(part, shared)`` over the partitions of ``ddf``, as one ``dask.delayed`` value.

    Lane ``j`` folds partitions ``j, j + lanes, j + 2 lanes, ...`` in order,
    each task reducing one partition and adding it to the lane's running
    sum, so a worker holds one running sum per lane it runs (the sums are the
    size of the latent system, not of the rows); the lanes' sums are then added
    by :func:`tree_sum`.  The structure depends only on the number of
    partitions, ``lanes`` and ``fan_in``: the same partitioning gives the same
    bits, whichever worker finishes first.
    """
    dask, _ = _dask()
    parts = ddf.to_delayed()
    totals = []
    for j in range(min(lanes, len(parts))):
        total = None
        for part in parts[j::lanes]:
            total = dask.delayed(_fold, pure=True)(total, reduce, _Partition(part), shared)
        totals.append(total)
    return tree_sum(totals, fan_in, _add_present)


def _add_present(*parts):
    """The sum of the parts that are not None (None if none is)."""
    present = [p for p in parts if p is not None]
    return None if not present else _add_all(*present)


def row_sums(part: pd.DataFrame, shared: dict) -> RowSums:
    """One partition's :class:`RowSums` (runs on a worker): declare its rows, read them, add them up."""
    n_U = shared["n_U"]
    if len(part) == 0:
        return RowSums.zero(n_U)
    m, data = _declare(shared["blob"], shared["rows"], part)
    expected = shared["leaves"]
    if not data:  # rows() declared nothing here (every row incomplete, say)
        return RowSums.zero(n_U)
    if tuple(sorted(data)) != expected:
        raise ModelSpecError(f"rows() declared {sorted(data)} on one partition and {list(expected)} on the first: "
                             "it must declare the same families on every partition.")
    theta, x, pos_U, layout = shared["theta"], shared["x"], shared["pos_U"], shared["layout"]
    total = RowSums.zero(n_U)
    for name in expected:
        node, y = m.nodes[name], data[name]
        for t in node.mean.terms:
            if not t.source.is_param:
                _check_one_entry(name, t.source.name, t.rows)
        keep = ~np.isnan(y)
        leaf = LeafRows(node, layout)
        coefs, r, d = leaf.values(theta, x, np.where(keep, y, 0.0), slice(0, node.size))
        if not keep.all():
            coefs, r, d = coefs[:, keep], r[keep], d[keep]
        n = r.shape[0]
        w = 1.0 / d
        rows_idx, cols, vals = [], [], []
        for a, parent in enumerate(leaf.parent):
            parent = parent[keep] if not keep.all() else parent
            col = np.where(parent >= 0, pos_U[np.maximum(parent, 0)], -1)
            has = (col >= 0) & (coefs[a] != 0)
            rows_idx.append(np.flatnonzero(has))
            cols.append(col[has])
            vals.append(coefs[a][has])
        if rows_idx:
            Z = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows_idx), np.concatenate(cols))), shape=(n, n_U))
        else:
            Z = sp.csr_matrix((n, n_U))
        Zt = Z.T.tocsr()
        WZ = sp.csr_matrix((Z.data * np.repeat(w, np.diff(Z.indptr)), Z.indices, Z.indptr), shape=Z.shape)
        G = (Zt @ WZ).tocsr()
        G.sum_duplicates()
        G.sort_indices()
        wr = w * r
        part_sums = RowSums(G, Zt @ wr, float(np.sum(wr * r)), float(np.sum(np.log(d))), n, {name: n})
        total = total + part_sums
    return total


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
        from distributed import default_client

        client = default_client()
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


class SummedConditioning:
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

    def factor_size(self):
        if self._size is None:
            self._size = factor_size(self)
        return self._size

    def analysis(self, factorization: str = "sparse"):
        if self._analysis is None:
            self._analysis = factors.analyze(self.pattern)
        return self._analysis

    def factor(self, Q: sp.csc_matrix, factorization: str = "sparse"):
        return self.analysis().factor(Q, self.label_unobserved)

    def factorize(self, system: LinearSystem):
        return self.factor(system.Q)

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


def fit(m, ddf, rows: Callable, method: str = "reml", **options):
    """ML, REML or EM from the rows of ``ddf`` declared by ``rows``; see :func:`gdag.distributed_fit.fit`."""
    from .distributed_fit import fit as fit_rows

    return fit_rows(m, ddf, rows, method, **options)


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


# ------------------------------------------------------------------ formula models


class DaskModel(Model):
    """The latent part of a formula model whose rows are a dask DataFrame (``gdag.from_formula(formula, ddf)``).

    ``m.posterior(ddf)`` and ``m.fit(ddf)`` take a dask DataFrame (its
    ``design.data`` is the one it was built from); any other data go to
    :class:`~gdag.Model`'s methods.  ``m.design.partition_rows`` declares
    one partition's response (:mod:`gdag.distributed_formula`).
    """

    def posterior(self, data=None, params=None):
        if is_dask(data):
            return posterior(self, data, self.design.partition_rows, params=params)
        return super().posterior(data, params)

    def fit(self, data, method: str = "reml", **options):
        """ML, REML or EM from a dask DataFrame (:func:`gdag.distributed_fit.fit`); other data as :meth:`Model.fit`."""
        if is_dask(data):
            return fit(self, data, self.design.partition_rows, method, **options)
        return super().fit(data, method, **options)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + ", rows on a dask DataFrame>"
