"""Compile a model into index arrays for ``x = c + B x + e``, ``e ~ N(0, diag(d))``.

Notation (used throughout gdag):

========  ==============================================================
``n``      number of scalar variables (all families concatenated)
``B``      sparse n x n; ``B[k, j]`` is the coefficient of x_j in E[x_k]
``c``      length n; ``c = c0 + F @ theta`` (constants plus parameter terms)
``d``      length n; variances ``d_k = (sd_base_k * theta[sd_param_k])^2``
``A``      ``I - B``, unit triangular in a topological order
``Q``      ``A^T D^{-1} A``, the joint precision
``theta``  every parameter entry, concatenated in declaration order
========  ==============================================================

The compiled arrays depend only on the declarations; values that depend on
parameters are produced by :meth:`CompiledModel.values` for any ``theta``.
Assembly loops over families, never over scalar variables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from .errors import ParamError
from .expr import is_zeros
from .spec import ModelSpec, label


@dataclass(frozen=True)
class CompiledModel:
    """Index arrays of one model version; see the module docstring for the notation."""

    name: str
    family_names: tuple[str, ...]
    family_offset: np.ndarray  # start of each family in the scalar vector
    family_size: np.ndarray
    family_plate: tuple[str | None, ...]
    B_rows: np.ndarray
    B_cols: np.ndarray
    B_base: np.ndarray  # coefficient before scaling
    scaled_entries: np.ndarray  # positions in B_rows/B_cols whose coefficient a parameter scales
    scaled_param: np.ndarray  # index into theta of that parameter, per scaled entry
    F: sp.csr_matrix  # n x p: parameter entries entering c linearly
    c0: np.ndarray
    sd_base: np.ndarray
    sd_param: np.ndarray  # index into theta, -1 for none
    param_names: tuple[str, ...]
    param_offset: np.ndarray
    param_size: np.ndarray
    param_positive: np.ndarray
    param_scalar: np.ndarray
    param_default: tuple  # declared values (or None)
    plate_labels: dict = field(default_factory=dict)  # plate name -> its labels (pandas Index), for labelled plates

    @property
    def n(self) -> int:
        """Number of scalar variables."""
        return int(self.c0.shape[0])

    @property
    def n_theta(self) -> int:
        """Number of parameter entries."""
        return int(self.F.shape[1])

    # Derived values are cached_property: computed on first use, never changed after
    # (the dataclass stays frozen; functools stores them in the instance dict).
    @cached_property
    def deterministic(self) -> np.ndarray:
        """Boolean mask of variables with sd 0 (eliminated exactly); computed once, read-only.

        A zero base is 0 whatever its parameter (``m.do()`` zeroes the base of the entries it sets).
        """
        return _read_only(self.sd_base == 0)

    @cached_property
    def _index(self) -> dict[str, int]:
        """Family name -> position."""
        return {name: i for i, name in enumerate(self.family_names)}

    @cached_property
    def _sd_entries(self) -> np.ndarray:
        """Variables whose sd carries a parameter entry."""
        return np.flatnonzero(self.sd_param >= 0)

    def family(self, name: str) -> int:
        """Position of family ``name``."""
        return self._index[name]

    def span(self, name: str) -> slice:
        """Slice of family ``name`` in the scalar vector."""
        i = self._index[name]
        start = int(self.family_offset[i])
        return slice(start, start + int(self.family_size[i]))

    def param_span(self, name: str) -> slice:
        """Slice of parameter ``name`` in ``theta``."""
        i = self.param_names.index(name)
        start = int(self.param_offset[i])
        return slice(start, start + int(self.param_size[i]))

    def labels(self, positions: np.ndarray) -> list[str]:
        """Labels such as ``R_i[friend=3]`` for scalar positions (for messages)."""
        positions = np.asarray(positions, dtype=np.int64)
        fam = np.searchsorted(self.family_offset, positions, side="right") - 1
        out = []
        for k, f in zip(positions.tolist(), fam.tolist()):
            name, plate = self.family_names[f], self.family_plate[f]
            local = k - int(self.family_offset[f])
            out.append(label(name, plate, local))
        return out

    def param_values(self, theta: np.ndarray) -> dict:
        """``theta`` as ``{name: value}``: a float for a scalar parameter, a new array for a vector one."""
        out = {}
        for i, name in enumerate(self.param_names):
            value = theta[self.param_span(name)].copy()
            out[name] = float(value[0]) if self.param_scalar[i] else value
        return out

    def theta(self, values: dict) -> np.ndarray:
        """The parameter vector from ``values`` (name -> value), defaults filled in."""
        theta = np.empty(self.n_theta)
        missing = []
        for i, name in enumerate(self.param_names):
            value = values.get(name, self.param_default[i])
            if value is None:
                missing.append(name)
                continue
            start = int(self.param_offset[i])
            theta[start : start + int(self.param_size[i])] = value
        if missing:
            listed = ", ".join(f"`{m}`" for m in missing)
            raise ParamError(
                f"No value for parameter{'s' if len(missing) > 1 else ''} {listed}. "
                "Pass params={...} to posterior(), give value= to m.param(), or estimate it with m.fit()."
            )
        return theta

    def values(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(coef, c, d)`` for parameter vector ``theta``.

        ``coef`` are the values of ``B`` at ``(B_rows, B_cols)`` (repeated
        positions add up); see :meth:`B_matrix`.
        ``coef`` and ``c`` are the compiled arrays themselves (read-only) when
        no parameter touches them; ``d`` is always a new array.
        """
        coef = self.B_base
        if self.scaled_entries.size:
            coef = coef.copy()
            coef[self.scaled_entries] *= theta[self.scaled_param]
        c = self.c0
        if self.F.nnz:
            c = self.F @ theta
            c += self.c0
        sd_entries = self._sd_entries
        d = np.square(self.sd_base)
        d[sd_entries] = np.square(self.sd_base[sd_entries] * theta[self.sd_param[sd_entries]])
        return coef, c, d

    @cached_property
    def B_scale(self) -> np.ndarray:
        """Per coefficient of ``B``: the index into theta of its scale parameter, -1 for none.

        Built on first use (fits and graphs need it; posteriors use the compact
        ``scaled_entries``/``scaled_param``), since it is as long as ``B``.
        """
        scale = np.full(self.B_rows.shape[0], -1, dtype=np.int64)
        scale[self.scaled_entries] = self.scaled_param
        return _read_only(scale)

    def B_matrix(self, coef: np.ndarray) -> sp.csr_matrix:
        """``B`` as a sparse matrix from coefficient values (see :meth:`values`)."""
        return sp.csr_matrix((coef, (self.B_rows, self.B_cols)), shape=(self.n, self.n))

    def describe(self) -> str:
        """A table of family sizes and the nonzeros of ``B``."""
        lines = [f"Model `{self.name}`: {self.n} scalar variables, {self.n_theta} parameter entries, "
                 f"{self.B_rows.shape[0]} coefficients in B"]
        lines.append(f"  {'family':<20}{'plate':<16}{'size':>10}{'deterministic':>15}")
        det = self.deterministic
        for i, name in enumerate(self.family_names):
            s = self.span(name)
            lines.append(
                f"  {name:<20}{self.family_plate[i] or '-':<16}{int(self.family_size[i]):>10}{int(det[s].sum()):>15}"
            )
        return "\n".join(lines)


def compile_model(model: ModelSpec) -> CompiledModel:
    """Assemble ``B``, ``F``, ``c0`` and the sd arrays from the declarations."""
    nodes = list(model.nodes.values())
    params = list(model.params.values())
    sizes = np.array([nd.size for nd in nodes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if nodes else np.zeros(0, np.int64)
    node_off = {nd.name: int(o) for nd, o in zip(nodes, offsets)}
    psizes = np.array([p.size for p in params], dtype=np.int64)
    poffsets = np.concatenate([[0], np.cumsum(psizes)[:-1]]).astype(np.int64) if params else np.zeros(0, np.int64)
    param_off = {p.name: int(o) for p, o in zip(params, poffsets)}
    n, p_total = int(sizes.sum()), int(psizes.sum())

    # B's entries are written into place, family by family (no per-term copies to concatenate)
    n_coef = sum(t.rows.shape[0] for nd in nodes for t in nd.mean.terms if not t.source.is_param)
    B_rows, B_cols, B_vals = np.empty(n_coef, np.int64), np.empty(n_coef, np.int64), np.empty(n_coef)
    scaled_entries, scaled_param = [], []
    k = 0
    f_rows, f_cols, f_vals = [], [], []
    c0, offsets_given = np.zeros(n), False
    sd_base = np.empty(n)  # every entry is written below (the families cover 0..n-1)
    sd_param = None  # written only when some sd carries a parameter
    for nd in nodes:
        start = node_off[nd.name]
        if not is_zeros(nd.mean.offset):  # c0 starts as zeros (pages not touched until written)
            c0[start : start + nd.size] = nd.mean.offset
            offsets_given = True
        for t in nd.mean.terms:
            if t.source.is_param:
                f_rows.append(t.rows + start)
                f_cols.append(t.cols + param_off[t.source.name])
                f_vals.append(t.vals)
                continue
            m = t.rows.shape[0]
            np.add(t.rows, start, out=B_rows[k : k + m])
            np.add(t.cols, node_off[t.source.name], out=B_cols[k : k + m])
            B_vals[k : k + m] = t.vals
            if t.scale is not None:
                scaled_entries.append(np.arange(k, k + m, dtype=np.int64))
                scaled_param.append(np.full(m, param_off[t.scale.name], dtype=np.int64))
            k += m
        sd_base[start : start + nd.size] = nd.sd.base
        if nd.sd.param is not None:
            sd_param = np.full(n, -1, dtype=np.int64) if sd_param is None else sd_param
            sd_param[start : start + nd.size] = nd.sd.param_index + param_off[nd.sd.param.name]

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

    if f_rows:
        F = sp.csr_matrix((cat(f_vals, float), (cat(f_rows, np.int64), cat(f_cols, np.int64))), shape=(n, p_total))
        F.sum_duplicates()
    else:  # no parameter enters a mean: skip scipy's COO conversion over n rows
        F = sp.csr_matrix((np.zeros(0), np.zeros(0, np.int32), np.zeros(n + 1, np.int32)), shape=(n, p_total))
    result = CompiledModel(
        name=model.name,
        family_names=tuple(nd.name for nd in nodes),
        family_offset=offsets,
        family_size=sizes,
        family_plate=tuple(None if nd.plate is None else nd.plate.name for nd in nodes),
        B_rows=B_rows,
        B_cols=B_cols,
        B_base=_read_only(B_vals),
        scaled_entries=cat(scaled_entries, np.int64),
        scaled_param=cat(scaled_param, np.int64),
        F=F,
        c0=_read_only(c0) if offsets_given else np.broadcast_to(0.0, (n,)),  # all zero: read-only, no memory
        sd_base=_read_only(sd_base),
        sd_param=sd_param if sd_param is not None else np.broadcast_to(np.int64(-1), (n,)),  # read-only, no memory
        param_names=tuple(p.name for p in params),
        param_offset=poffsets,
        param_size=psizes,
        param_positive=np.array([p.positive for p in params], dtype=bool),
        param_scalar=np.array([p.is_scalar for p in params], dtype=bool),
        param_default=tuple(p.value for p in params),
        plate_labels={p.name: p.labels for p in model.plates.values() if p.labels is not None},
    )
    return result


def _read_only(a: np.ndarray) -> np.ndarray:
    """Mark a compiled array read-only: :meth:`CompiledModel.values` hands it out without a copy."""
    a.flags.writeable = False
    return a
