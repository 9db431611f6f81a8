"""Observed leaf families as sums over their rows, never as rows of the joint system.

A family that is observed everywhere, whose sds are positive, and that no
other variable depends on (a leaf: ratings, test scores, installs) enters the
posterior of the rest only through its likelihood rows.  With ``Z`` the
coefficients of those rows on the unobserved variables, ``W`` their inverse
variances and ``r = c - x + B_O x_O`` their residual at the observed parents,

    Q_UU += Z^T W Z,      b += -Z^T W r,

and the log evidence gains their count, ``sum log d`` and ``e^T W e`` with
``e = r + Z m``.  These are additive over any split of the rows, added in row
order: a given chunking always gives the same bits.

:func:`reducible_families` picks the families; a :class:`LeafRows` reads one
of them straight from its declaration (its mean's terms, its sds and the data:
no per-row index structure of the joint system); a :class:`ReducedConditioning`
wraps the conditioning of the remaining (latent) model, adds the leaves' sums
to its system, and answers the posterior's questions about the leaves.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from types import MappingProxyType

import numpy as np
import scipy.sparse as sp

from .accuracy import SD_RANGE
from .compiler import CompiledModel
from .errors import ModelError, ModelSpecError, ParamError
from .graph import ModelGraph
from .linalg import factor as factors
from .linalg import gram as assembly
from .linalg import rows as rows_kernels
from .pattern import Conditioning, LinearSystem
from .resources import factor_size
from .spec import ModelSpec, Node, label
from .timing import timed

# Rows per chunk of the reduction when the caller sets none: bounds the temporaries.
CHUNK_ROWS = 1 << 20
# Families with fewer rows keep the general path: there the joint system costs little, and its
# rounding (the same for every size) is what the accuracy checks were calibrated on.
MIN_ROWS = 4096


def reducible_families(graph: ModelGraph, full: dict[str, np.ndarray]) -> tuple[str, ...]:
    """Names of the families that can be summed over their rows, given fully observed ``full`` data.

    A family qualifies when every entry is observed (``full``), every sd is
    positive, nothing else depends on it, it does not refer to itself, each
    of its node terms gives a row at most one entry (gathers, broadcasts,
    ``take``/``lag`` of another node) and the nodes it reads have no
    deterministic entries.  Anything else keeps the general path.
    """
    spec = graph.spec
    parents = {e.source for e in graph.edges if e.role == "mean" and e.source != e.target}
    names = []
    for name in full:
        node = spec.nodes[name]
        if node.size < MIN_ROWS or name in parents or graph.kinds[name] != "random" or np.any(node.sd.base <= 0):
            continue
        if all(_term_ok(t, node, graph) for t in node.mean.terms):
            names.append(name)
    return tuple(names)


def _term_ok(term, node: Node, graph: ModelGraph) -> bool:
    if term.source.is_param:
        return term.scale is None
    if term.source is node or graph.kinds[term.source.name] != "random":
        return False
    rows = term.rows
    return rows.shape[0] <= 1 or bool(np.all(rows[1:] > rows[:-1]))  # one entry per row at most


def latent_spec(spec: ModelSpec, leaves: tuple[str, ...]) -> ModelSpec:
    """``spec`` without the leaf families (every parameter kept, so theta is laid out as before)."""
    nodes = {k: v for k, v in spec.nodes.items() if k not in leaves}
    return ModelSpec.of(spec.name, spec.plates, nodes, spec.params, spec.version)


class LeafRows:
    """One leaf family's likelihood rows, read from its declaration and data.

    Node terms become row-aligned arrays: for term ``a``, ``parent[a][i]`` is
    the latent variable row ``i`` reads (-1 for none) and ``coef[a][i]`` its
    coefficient (before a scale parameter).  Parameter terms and the offset
    make the constant part of the mean.
    """

    def __init__(self, node: Node, cm: CompiledModel):
        self.name, self.size, self.is_scalar = node.name, node.size, node.plate is None
        self.plate = None if node.plate is None else node.plate.name
        self.offset = node.mean.offset
        self.coef, self.scale = [], []
        self.cols, self.starts = [], []  # per term: the declared column of each row (-1 for none) and its family's start
        self.fixed = []  # (rows, theta index, vals) of parameter terms
        for t in node.mean.terms:
            if t.source.is_param:
                self.fixed.append((t.rows, _shifted(t.cols, _param_start(cm, t.source.name)), t.vals))
                continue
            self.starts.append(int(cm.family_offset[cm.family(t.source.name)]))
            if t.rows.shape[0] == self.size:  # every row has the term (rows increase, so they are 0..size-1)
                cols, coef = t.cols, t.vals
            else:
                cols = np.full(self.size, -1, dtype=np.int64)
                coef = np.zeros(self.size)
                cols[t.rows] = t.cols
                coef[t.rows] = t.vals
            self.cols.append(cols if cols.dtype == np.int64 else cols.astype(np.int64))  # as declared: no copy
            self.coef.append(coef if coef.strides == (0,) else np.ascontiguousarray(coef, dtype=float))
            self.scale.append(-1 if t.scale is None else _param_start(cm, t.scale.name))
        self.sd_base = node.sd.base
        self.sd_theta = None if node.sd.param is None else _shifted(node.sd.param_index, _param_start(cm, node.sd.param.name))
        # parameter terms whose rows increase: a chunk's part is a slice (found by binary search)
        self._fixed_sorted = [bool(np.all(rows[1:] >= rows[:-1])) for rows, _, _ in self.fixed]
        # one coefficient for every row of every term (gathers: 1): the kernels read it, not a column of ones
        vals = [t.vals for t in node.mean.terms if not t.source.is_param]
        same = all(v.size and (v.strides == (0,) or np.all(v == v[0])) for v in vals)
        self._one_coef = np.array([v[0] for v in vals], dtype=float).reshape(-1, 1) if same else None

    @property
    def parent(self) -> list[np.ndarray]:
        """Per node term, the latent variable each row reads (-1 for none); built on request (O(rows) each)."""
        if getattr(self, "_parent", None) is None:
            self._parent = [c + s if c.min(initial=0) >= 0 else np.where(c >= 0, c + s, -1)
                            for c, s in zip(self.cols, self.starts)]
        return self._parent

    def values(self, theta: np.ndarray, x: np.ndarray, y: np.ndarray, rows: slice, parents_seen=None):
        """``(coefs, r, d)`` over ``rows`` for data ``y``: coefficients per term, residual ``c - y + B_O x_O``
        (observed parents from the latent ``x``, NaN elsewhere) and variances.

        ``parents_seen[a]`` False says term ``a`` reads no observed parent (skips its gathers from ``x``).
        """
        d = self.sd_base[rows] if self.sd_theta is None else self.sd_base[rows] * theta[self.sd_theta[rows]]
        r = np.array(np.broadcast_to(self.offset, (self.size,))[rows], dtype=float)
        r -= y[rows]
        start = rows.start
        for t_rows, t_theta, t_vals in self.fixed:
            keep = (t_rows >= start) & (t_rows < rows.stop)
            r += np.bincount(t_rows[keep] - start, weights=t_vals[keep] * theta[t_theta[keep]], minlength=r.shape[0])
        coefs = []
        for a, (parent, coef, scale) in enumerate(zip(self.parent, self.coef, self.scale)):
            c = coef[rows] if scale < 0 else coef[rows] * theta[scale]
            if parents_seen is not None and not parents_seen[a]:
                coefs.append(c)
                continue
            seen = x[np.maximum(parent[rows], 0)]
            known = (parent[rows] >= 0) & ~np.isnan(seen)
            r[known] += c[known] * seen[known]
            coefs.append(np.where(known, 0.0, c))
        d = d * d
        with np.errstate(divide="ignore", over="ignore"):
            bad = np.flatnonzero(~(np.isfinite(d) & (d > 0) & np.isfinite(1.0 / d)))
        if bad.size:
            entry = label(self.name, self.plate, rows.start + int(bad[0]))
            error = ModelSpecError if self.sd_theta is None else ParamError  # as for the joint system
            raise error(f"`{entry}` has variance {d[bad[0]]:.3g} in double precision; gdag needs sds between "
                        f"{SD_RANGE}. Rescale the variable's units or the sd parameter's value.")
        overflow = np.flatnonzero(~np.isfinite(r))
        if overflow.size:
            entry = label(self.name, self.plate, rows.start + int(overflow[0]))
            raise ModelError(f"The mean or data of `{entry}` overflow double precision; rescale the model's units.")
        return _stacked(coefs, r.shape[0], float), r, d

    def kernel_arguments(self, theta: np.ndarray, rows: slice, sd_only: bool = False) -> tuple:
        """What :mod:`gdag.linalg.rows` reads of ``rows``: ``(cols, vals, starts, scales, offset, sd, sd_theta, extra)``.

        Views of the declaration where they can be (one node term); ``extra``
        is the parameter terms' part of the mean (length 0 when there are none).
        """
        sd = _row_values(self.sd_base, rows)
        sd_theta = _NO_INDEX if self.sd_theta is None else np.ascontiguousarray(self.sd_theta[rows], dtype=np.int64)
        if sd_only:
            return sd, sd_theta
        n = rows.stop - rows.start
        cols = _stacked([c[rows] for c in self.cols], n, np.int64)
        vals = self._one_coef if self._one_coef is not None else _stacked([c[rows] for c in self.coef], n, float)
        scales = np.array([1.0 if k < 0 else theta[k] for k in self.scale], dtype=float)
        extra = _NO_EXTRA
        if self.fixed:
            extra = np.zeros(n)
            for (t_rows, t_theta, t_vals), ordered in zip(self.fixed, self._fixed_sorted):
                if ordered:
                    keep = slice(*np.searchsorted(t_rows, [rows.start, rows.stop]))
                else:
                    keep = (t_rows >= rows.start) & (t_rows < rows.stop)
                extra += np.bincount(t_rows[keep] - rows.start, weights=t_vals[keep] * theta[t_theta[keep]],
                                     minlength=n)
        return cols, vals, np.array(self.starts, dtype=np.int64), scales, _row_values(self.offset, rows), sd, sd_theta, extra

    def Z(self, theta: np.ndarray, n: int) -> sp.csr_matrix:
        """``Z`` (rows x ``n`` latent variables): the rows' coefficients on the latent variables they read."""
        rows, cols, vals = [], [], []
        for parent, coef, scale in zip(self.parent, self.coef, self.scale):
            has = np.flatnonzero(parent >= 0)
            rows.append(has)
            cols.append(parent[has])
            vals.append(coef[has] * (theta[scale] if scale >= 0 else 1.0))
        if not rows:
            return sp.csr_matrix((self.size, n))
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(self.size, n))


def _shifted(index: np.ndarray, start: int) -> np.ndarray:  # index + start; a broadcast stays one
    return np.broadcast_to(index[:1] + start, index.shape) if index.strides == (0,) and index.size else index + start


def _param_start(cm: CompiledModel, name: str) -> int:
    return int(cm.param_offset[cm.param_names.index(name)])


class SummedPattern:
    """A conditioning with rows summed in factors its own ``pattern`` (set with ``_analysis = _size = None``)."""

    def factor_size(self):
        if self._size is None:
            self._size = factor_size(self)
        return self._size

    def analysis(self, factorization: str = "sparse"):  # CHOLMOD's, once, whatever factorization is asked
        if self._analysis is None:
            self._analysis = factors.analyze(self.pattern)
        return self._analysis

    def factor(self, Q: sp.csc_matrix, factorization: str = "sparse"):
        return self.analysis().factor(Q, self.label_unobserved)

    def factorize(self, system: LinearSystem):
        return self.factor(system.Q)


class ReducedConditioning(SummedPattern):
    """The conditioning of the latent model plus the sums of the leaf families' rows.

    Answers what :class:`~gdag.posterior.Posterior` asks of a conditioning
    (index sets, ``system``, ``factorize``, ``gram``); ``Q_UU`` lives on the
    union of the latent pattern and the pairs of unobserved variables that
    share a leaf row, analysed once.
    """

    def __init__(self, latent: Conditioning, leaves: list[LeafRows], chunk_rows: int = CHUNK_ROWS):
        self.latent = latent
        self.leaves = tuple(leaves)
        self.leaf_data = MappingProxyType({})  # name -> observed values, set by with_data()
        self.leaf_plates = MappingProxyType({leaf.name: leaf.plate for leaf in leaves})
        self.chunk_rows = int(chunk_rows)
        self.cm, self.S, self.R, self.U, self.O = latent.cm, latent.S, latent.R, latent.U, latent.O
        self.pos_R, self.pos_U, self.n_unobserved = latent.pos_R, latent.pos_U, latent.n_unobserved
        self._leaf_y = {}  # name -> the observed values as float64, set by with_data()
        self._union_pattern()
        self._analysis = self._size = None
        self.gram = _ReducedGram(self)

    def __getstate__(self) -> dict:
        """Pickled without the analysis (CHOLMOD's does not pickle; :meth:`analysis` redoes it)."""
        frozen = {"leaf_data": dict(self.leaf_data), "leaf_plates": dict(self.leaf_plates)}
        return {**self.__dict__, **frozen, "_analysis": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.leaf_data, self.leaf_plates = MappingProxyType(self.leaf_data), MappingProxyType(self.leaf_plates)

    def with_data(self, full: dict[str, np.ndarray]) -> "ReducedConditioning":
        """This structure with the leaves' observed values (a shallow copy: pattern and analysis shared)."""
        other = copy.copy(self)
        other._leaf_y = {leaf.name: np.array(full[leaf.name], dtype=float) for leaf in self.leaves}  # its own copy:
        other.leaf_data = MappingProxyType(other._leaf_y)  # the caller may change theirs later
        other.gram = _ReducedGram(other)
        return other

    @property
    def n_observed(self) -> int:
        """Observed stochastic variables, the leaves' rows included (the log evidence's count)."""
        return int(self.O.shape[0]) + sum(leaf.size for leaf in self.leaves)

    def label_unobserved(self, positions):
        return self.latent.label_unobserved(positions)

    def reduced_values(self, theta):
        return self.latent.reduced_values(theta)

    @timed("pattern")
    def _union_pattern(self) -> None:
        """Pattern of ``Q_UU``: the latent one plus each pair of U variables one leaf row reads."""
        base = self.latent.gram.pattern
        n = base.shape[0]
        pairs_r, pairs_c = [], []
        for leaf in self.leaves:
            for a in range(len(leaf.cols)):
                for t in range(a + 1, len(leaf.cols)):
                    u, v = self._column_in_U(leaf, a), self._column_in_U(leaf, t)
                    both = (u >= 0) & (v >= 0) & (u != v)
                    pairs_r.append(np.maximum(u[both], v[both]))
                    pairs_c.append(np.minimum(u[both], v[both]))
        if not pairs_r:
            self.pattern, self._base_position, self._keys = base, None, _NO_KEYS
            return
        coo = base.tocoo()
        rows = np.concatenate([coo.row.astype(np.int64)] + [p.astype(np.int64) for p in pairs_r])
        cols = np.concatenate([coo.col.astype(np.int64)] + [p.astype(np.int64) for p in pairs_c])
        union = sp.csc_matrix((np.ones(rows.shape[0]), (rows, cols)), shape=(n, n))
        union.sum_duplicates()
        union.sort_indices()
        union.data[:] = 1.0
        self.pattern, self._keys = union, _keys(union)
        self._base_position = np.searchsorted(self._keys, _keys(base))

    def _column_in_U(self, leaf: LeafRows, a: int) -> np.ndarray:
        """The U column each row reads through term ``a``: -1 for none or an observed parent."""
        cols = leaf.cols[a]
        if cols.min(initial=0) >= 0:  # every row has the term
            return self.pos_U[cols + leaf.starts[a]]
        return np.where(cols >= 0, self.pos_U[np.maximum(cols, 0) + leaf.starts[a]], -1)

    @timed("assemble")
    def system(self, theta: np.ndarray, x: np.ndarray) -> LinearSystem:
        """The latent system plus the leaves' sums, chunk by chunk in row order."""
        s = self.latent.system(theta, x)
        self.gram.theta, self.gram.x = theta, x  # the mean refinement re-reads the leaves' rows
        n_U = self.n_unobserved
        diag = np.zeros(n_U)
        if self._base_position is None:
            data = s.Q.data  # the latent system's own new array: the leaves' pairs need no room
        else:
            data = np.zeros(self.pattern.nnz)
            data[self._base_position] = s.Q.data
        b = s.b  # new as well
        for leaf in self.leaves:  # chunks in row order: a given chunking, the same bits
            y = self._leaf_y[leaf.name]
            for rows in _chunks(leaf.size, self.chunk_rows):
                cols, vals, starts, scales, offset, sd, sd_theta, extra = leaf.kernel_arguments(theta, rows)
                bad_d, bad_r = rows_kernels.leaf_sums(cols, vals, starts, scales, self.pos_U, x, offset, y[rows], sd,
                                                      sd_theta, theta, extra, self._keys, n_U, diag, b, data)
                if bad_d >= 0 or bad_r >= 0:
                    leaf.values(theta, x, y, rows)  # raises, naming the entry
                    raise ModelError(f"The rows of `{leaf.name}` do not fit double precision; rescale the model's units.")
        data[self.pattern.indptr[:-1]] += diag  # each column's diagonal comes first
        Q = sp.csc_matrix((data, self.pattern.indices, self.pattern.indptr), shape=self.pattern.shape)
        return replace(s, Q=Q, b=b)

    def leaf_residual(self, theta: np.ndarray, x: np.ndarray, m: np.ndarray) -> tuple[float, np.ndarray]:
        """``(e^T W e, A_U^T W e)`` of the leaves' rows at ``m``, with ``e = r + Z m`` (``A_U = -Z`` there)."""
        f, gradient = 0.0, np.zeros(self.n_unobserved)
        for leaf in self.leaves:
            y = self._leaf_y[leaf.name]
            for rows in _chunks(leaf.size, self.chunk_rows):
                cols, vals, starts, scales, offset, sd, sd_theta, extra = leaf.kernel_arguments(theta, rows)
                f += rows_kernels.leaf_residual(cols, vals, starts, scales, self.pos_U, x, offset, y[rows], sd,
                                                sd_theta, theta, extra, m, gradient)
        return f, gradient

    def leaf_log_variances(self, theta: np.ndarray, x: np.ndarray) -> float:
        """``sum log d`` over the leaves' rows."""
        return float(sum(rows_kernels.leaf_log_variances(*leaf.kernel_arguments(theta, rows, sd_only=True), theta,
                                                         rows.stop - rows.start)
                         for leaf in self.leaves for rows in _chunks(leaf.size, self.chunk_rows)))


class _ReducedGram:
    """The latent gram's products, with the leaves' rows added (for the mean refinement)."""

    def __init__(self, cond: ReducedConditioning):
        self._cond = cond
        self._latent = cond.latent.gram
        self.pattern = cond.pattern
        self.theta = self.x = None  # set by the posterior before use

    def entry_values(self, coef):
        return self._latent.entry_values(coef)

    def times(self, values, m):
        return self._latent.times(values, m)

    def weighted_residual(self, values, m, r, d):
        """As the latent gram's, plus the leaves' rows: ``w`` carries their ``A_U^T W e`` along (``e`` is None)."""
        structure = getattr(self._latent, "structure", None)  # the refinement reads w and f only: e is not formed
        e, w, f = self._latent.weighted_residual(values, m, r, d) if structure is None else \
            assembly.weighted_residual(structure, values, m, r, d, keep_e=False)
        f_leaves, leaf_part = self._cond.leaf_residual(self.theta, self.x, m)
        return e, (w, leaf_part), f + f_leaves

    def transpose_times(self, values, w):
        w_latent, leaf_part = w
        return self._latent.transpose_times(values, w_latent) + leaf_part


_NO_KEYS = _NO_INDEX = np.zeros(0, dtype=np.int64)
_NO_EXTRA = np.zeros(0)


def _row_values(a: np.ndarray, rows: slice) -> np.ndarray:
    """``a`` over ``rows`` as contiguous float64 (a view where it already is), or its one entry when it broadcasts."""
    if a.shape[0] == 1 or a.strides[0] == 0:
        return np.ascontiguousarray(a[:1], dtype=float)
    return np.ascontiguousarray(a[rows], dtype=float)


def _keys(pattern: sp.csc_matrix) -> np.ndarray:
    """``col * n + row`` of each stored entry, ascending for a canonical CSC lower triangle."""
    n = pattern.shape[0]
    cols = np.repeat(np.arange(n, dtype=np.int64), np.diff(pattern.indptr))
    return cols * n + pattern.indices.astype(np.int64)


def _chunks(n: int, size: int):
    return [slice(start, min(start + size, n)) for start in range(0, n, max(size, 1))]


def _stacked(arrays: list, n: int, dtype) -> np.ndarray:
    """Row-aligned term arrays as one ``(terms, n)`` array (``(0, n)`` for a family with no node term)."""
    if len(arrays) == 1:
        return np.asarray(arrays[0], dtype=dtype)[None, :]  # a view where the type already fits
    return np.array(arrays, dtype=dtype) if arrays else np.zeros((0, n), dtype=dtype)
