"""The rows' side of :mod:`gdag.distributed`: global levels, a partition's declaration, its sums, the reduction."""

from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..compiler import CompiledModel
from ..data import node_values
from ..errors import DataError, ModelError, ModelSpecError
from ..frame import levels as frame_levels
from ..observations import LeafRows

# Partial sums added per node of the reduction tree.
FAN_IN = 8
# Running sums over the partitions (each folds every LANES-th partition in order): the parallelism of the pass.
LANES = 16


# ------------------------------------------------------------------ dask, imported on use


def _dask():
    """``(dask, dask.dataframe)``, imported on first use: the optional extra, which ``import gdag`` does not load."""
    try:
        import dask
        import dask.dataframe

        return dask, dask.dataframe
    except ImportError:  # pragma: no cover - the extra is in the test environment
        raise ImportError("gdag's Dask path needs dask and distributed: pip install 'gdag[dask]'.") from None


def is_dask(data: Any) -> bool:
    """True for a ``dask.dataframe.DataFrame`` (without importing dask when it is not loaded)."""
    dd = sys.modules.get("dask.dataframe")
    return dd is not None and isinstance(data, dd.DataFrame)


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
        graph = part.__dask_graph__()  # every partition's graph holds them all: keep what this key needs
        self.graph, self.key = dict(graph.cull({part.key}) if hasattr(graph, "cull") else graph), part.key

    def read(self) -> pd.DataFrame:
        return _dask()[0].get(self.graph, self.key)  # the synchronous scheduler, inside the worker's task


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
