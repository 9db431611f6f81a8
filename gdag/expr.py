"""Affine mean expressions: sums of sparse linear maps of nodes and parameters.

An :class:`Expr` of length ``n`` stands for

    mean = offset + sum_t  scale_t * M_t @ source_t

where each ``M_t`` is a sparse ``n x source.size`` matrix kept in COO form
(``rows``, ``cols``, ``vals``), ``source_t`` is a node or a parameter and
``scale_t`` is an optional scalar parameter (``rho * u0``).  Everything is
stored as index arrays so that a model with millions of scalar variables is
assembled without a Python loop per variable.

An expression of length 1 broadcasts against any length, as in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from .arrays import all_finite, compact_values, identity_rows, is_identity
from .errors import ModelSpecError
from .inputs import _asarray, as_float_array, is_boolean, is_complex  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class Term:
    """One sparse linear map ``scale * M @ source`` inside an expression."""

    source: Any  # Node or Param
    rows: np.ndarray  # int64, rows of M (entries of the expression)
    cols: np.ndarray  # int64, columns of M (entries of the source)
    vals: np.ndarray  # float64 coefficients
    scale: Any = None  # scalar Param multiplying the term, or None


class Operand:
    """Arithmetic shared by nodes, parameters and expressions.

    ``__array_ufunc__ = None`` makes numpy hand ``array + node`` back to our
    reflected operators instead of building an object array.
    """

    __array_ufunc__ = None
    __pandas_priority__ = 5000  # above DataFrame's 4000: pandas hands ``series * node`` back to us too

    def _expr(self) -> Expr:  # pragma: no cover - overridden
        raise NotImplementedError

    def __add__(self, other):
        return _add(self._expr(), as_expr(other))

    def __radd__(self, other):
        return _add(as_expr(other), self._expr())

    def __sub__(self, other):
        return _add(self._expr(), _negate(as_expr(other)))

    def __rsub__(self, other):
        return _add(as_expr(other), _negate(self._expr()))

    def __neg__(self):
        return _negate(self._expr())

    def __pos__(self):
        return self._expr()

    def __mul__(self, other):
        return _multiply(self._expr(), other)

    def __rmul__(self, other):
        return _multiply(self._expr(), other)

    def __truediv__(self, other):
        if isinstance(other, Operand):
            raise ModelSpecError(
                f"Dividing by {_describe(other)} is not linear; means must be affine in nodes and parameters."
            )
        divisor = _constant_array(other, "divisor")
        if np.any(divisor == 0):
            raise ModelSpecError("Division by zero in a mean expression.")
        with np.errstate(over="ignore"):
            inverse = 1.0 / divisor
        if not np.all(np.isfinite(inverse)):
            raise ModelSpecError("Dividing by a number this small overflows double precision; rescale the model's units.")
        return _multiply(self._expr(), inverse)


@dataclass(frozen=True, eq=False)
class Expr(Operand):
    """An affine expression of fixed ``length`` (1 broadcasts)."""

    length: int
    terms: tuple[Term, ...]
    offset: np.ndarray  # float64, shape (length,)

    def _expr(self) -> Expr:
        return self

    def __repr__(self) -> str:
        sources = ", ".join(sorted({t.source.name for t in self.terms}))
        return f"<gdag.Expr length={self.length} of [{sources}]>"

    def __bool__(self):
        raise ModelSpecError("A gdag expression has no truth value; it is a symbolic mean.")


class Leaf(Operand):
    """A named family of scalar entries that expressions are built from: a node or a parameter.

    Subclassed by :class:`gdag.spec.Node` and :class:`gdag.spec.Param`;
    ``is_param`` tells them apart without this module importing those.
    """

    is_param = False
    name: str
    size: int

    def _expr(self) -> Expr:
        return Expr(self.size, (identity_term(self, self.size),), zeros(self.size))

    def __getitem__(self, index) -> Expr:
        return gather(self, index)

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        # without this, iteration would call __getitem__(0, 1, ...) until an index error about an index never given
        raise ModelSpecError(f"`{self.name}` is a family of {self.size} entries, not a sequence to iterate over; "
                             f"use `{self.name}[idx]` with an integer array, or `len({self.name})`.")


def constant(values, length: int | None = None) -> Expr:
    """An expression with no terms, only an offset."""
    arr = _constant_array(values, "constant")
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if length is not None and arr.shape[0] == 1 and length != 1:
        arr = np.broadcast_to(arr, (length,))
    return Expr(arr.shape[0], (), np.array(arr, dtype=float))


def as_expr(value) -> Expr:
    """Turn a node, parameter, expression, number or 1-d array into an :class:`Expr`."""
    if isinstance(value, Operand):
        return value._expr()
    return constant(value)


def identity_term(source, size: int) -> Term:
    """The term selecting every entry of ``source`` in order (rows and columns: one read-only array; unit values)."""
    idx = identity_rows(size)
    return Term(source, idx, idx, np.broadcast_to(np.float64(1.0), (size,)))


def compact(expr: Expr) -> Expr:
    """``expr`` with rows ``0..n-1`` shared by every term that has them, equal column or coefficient arrays
    of different terms stored once (``u0[g] + x * u1[g]``: one ``g``; ``b1 * x + x * u1[g]``: one ``x``),
    and values repeated over every row as read-only broadcasts (:mod:`gdag.arrays`)."""
    shared, seen, out = None, [], []
    for t in expr.terms:
        rows = t.rows
        if is_identity(rows, expr.length):
            shared = rows if shared is None else shared
            rows = shared
        cols, vals = (_stored_once(compact_values(a), seen) for a in (t.cols, t.vals))
        out.append(replace(t, rows=rows, cols=cols, vals=vals))
    return Expr(expr.length, tuple(out), expr.offset)


def _stored_once(a: np.ndarray, seen: list) -> np.ndarray:
    """``a``, or an equal array (dtype and values) already kept in ``seen`` (shared: terms' arrays are never written)."""
    if a.strides == (0,) or a.shape[0] < 2:
        return a
    for b in seen:
        if b.shape == a.shape and b.dtype == a.dtype and np.array_equal(a, b):
            return b
    seen.append(a)
    return a


def zeros(n: int) -> np.ndarray:
    """An offset of ``n`` zeros that takes no memory (a read-only broadcast 0.0): most means have none."""
    return np.broadcast_to(np.float64(0.0), (n,))


def is_zeros(a: np.ndarray) -> bool:
    """True for an offset made by :func:`zeros` (no need to read it)."""
    return a.strides == (0,) and a.shape[0] > 0 and a[0] == 0.0


def gather(source, index, *, where=None) -> Expr:
    """``source[index]`` as an expression; entries where ``where`` is False get no term.

    ``index`` is a single integer (a length-1 expression that broadcasts) or a
    1-d integer array; negative, non-integer and out-of-range entries are errors.
    """
    index = _asarray(index, f"index into `{source.name}`")
    scalar_index = index.ndim == 0
    idx = check_index(index, source.size, f"index into `{source.name}`")
    rows = identity_rows(idx.shape[0])
    vals = np.broadcast_to(np.float64(1.0), idx.shape)  # unit coefficients take no memory
    if where is not None:
        mask = _asarray(where, f"`where` for `{source.name}`")
        if mask.dtype != bool or mask.shape != idx.shape:
            raise ModelSpecError(f"`where` for `{source.name}` must be a boolean array of length {idx.shape[0]}.")
        rows, idx, vals = rows[mask], idx[mask], vals[mask]
    length = 1 if scalar_index else int(index.shape[0])
    return Expr(length, (Term(source, rows, idx, vals),), zeros(length))


def check_index(index, size: int, what: str) -> np.ndarray:
    """Validate an integer index array into a family of ``size`` entries."""
    arr = _asarray(index, f"{what}")
    if arr.ndim > 1:
        raise ModelSpecError(f"The {what} must be a 1-d integer array; got shape {arr.shape}.")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        integral = np.issubdtype(arr.dtype, np.floating) and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))
        hint = " Convert it with `.astype(int)` if these floats are meant as indices." if integral else ""
        raise ModelSpecError(f"The {what} must hold integers; got dtype {arr.dtype}.{hint}")
    arr = np.array(np.atleast_1d(arr), dtype=np.int64)  # a copy: the caller may change theirs later
    bad = np.flatnonzero((arr < 0) | (arr >= size))
    if bad.size:
        first = bad[0]
        raise ModelSpecError(
            f"The {what} has {bad.size} entr{'y' if bad.size == 1 else 'ies'} outside 0..{size - 1} "
            f"(first at position {first}: {arr[first]}). Negative indices do not wrap around in gdag."
        )
    return arr


def dot(matrix, source) -> Expr:
    """``matrix @ source`` for a dense or scipy.sparse design matrix.

    Parameters
    ----------
    matrix : array_like or scipy.sparse matrix, shape (n, source.size)
        Design matrix; its rows are entries of the expression.
    source : Node or Param
        The family multiplied.

    Examples
    --------
    >>> import numpy as np, gdag
    >>> m = gdag.Model()
    >>> beta = m.param("beta", size=2)
    >>> gdag.dot(np.ones((5, 2)), beta).length
    5
    """
    if not isinstance(source, Leaf):
        raise ModelSpecError(f"gdag.dot multiplies a design matrix by a node or parameter; got {type(source).__name__}.")
    if sp.issparse(matrix) and matrix.ndim == 2:
        coo = sp.coo_matrix(matrix)
        if coo.dtype.kind not in "iuf":  # as for dense ones: complex parts would be dropped, booleans read as 1.0
            raise ModelSpecError(f"The design matrix for `{source.name}` must be a real 2-d array; got a scipy.sparse "
                                 f"{type(matrix).__name__} of {coo.dtype}.")
    else:
        matrix = matrix.toarray() if sp.issparse(matrix) else matrix  # a 1-d sparse array: a column, as a 1-d array
        dense = _asarray(matrix, f"design matrix for `{source.name}`")
        if dense.ndim == 1:
            dense = dense.reshape(-1, 1)
        if dense.ndim != 2 or not np.issubdtype(dense.dtype, np.number) or np.iscomplexobj(dense):
            raise ModelSpecError(
                f"The design matrix for `{source.name}` must be a real 2-d array; got {dense.dtype} of shape {dense.shape}."
            )
        coo = sp.coo_matrix(dense.astype(float))
    if coo.shape[1] != source.size:
        raise ModelSpecError(f"The design matrix for `{source.name}` has {coo.shape[1]} columns but `{source.name}` "
                             f"has {source.size} entries.")
    vals = np.asarray(coo.data, dtype=float)
    if not np.all(np.isfinite(vals)):
        raise ModelSpecError(f"The design matrix for `{source.name}` has NaN or infinite entries.")
    keep = vals != 0
    term = Term(source, coo.row.astype(np.int64)[keep], coo.col.astype(np.int64)[keep], vals[keep])
    return Expr(coo.shape[0], (term,), zeros(coo.shape[0]))


# ---------------------------------------------------------------- arithmetic


def broadcast_to(expr: Expr, length: int) -> Expr:
    """Repeat a length-1 expression ``length`` times (numpy broadcasting)."""
    if expr.length == length:
        return expr
    if expr.length != 1:
        raise ModelSpecError(f"Cannot broadcast an expression of length {expr.length} to length {length}.")
    terms = tuple(
        replace(
            t,
            rows=np.repeat(np.arange(length, dtype=np.int64), t.rows.shape[0]) if t.rows.shape[0] != 1 else identity_rows(length),
            cols=np.tile(t.cols, length) if t.rows.shape[0] != 1 else np.broadcast_to(t.cols[:1].copy()[0], (length,)),
            vals=np.tile(t.vals, length) if t.rows.shape[0] != 1 else np.broadcast_to(t.vals[:1].copy()[0], (length,)),
        )
        for t in expr.terms
    )
    return Expr(length, terms, zeros(length) if is_zeros(expr.offset) else np.repeat(expr.offset, length))


def _common_length(a: int, b: int) -> int:
    if a == b or b == 1:
        return a
    if a == 1:
        return b
    raise ModelSpecError(f"Cannot combine expressions of lengths {a} and {b}; lengths must match or be 1.")


def _add(a: Expr, b: Expr) -> Expr:
    n = _common_length(a.length, b.length)
    a, b = broadcast_to(a, n), broadcast_to(b, n)
    with np.errstate(over="ignore", invalid="ignore"):
        offset = zeros(n) if is_zeros(a.offset) and is_zeros(b.offset) else a.offset + b.offset
    _check_finite(offset, "sum")
    return Expr(n, a.terms + b.terms, offset)


def _negate(a: Expr) -> Expr:
    return _multiply(a, -1.0)


def _multiply(expr: Expr, other) -> Expr:
    if isinstance(other, Leaf) and other.is_param:
        return _scale_by_param(expr, other)
    if isinstance(other, Operand):
        other_expr = other._expr()
        if _is_bare_param(other_expr):
            return _scale_by_param(expr, other_expr.terms[0].source)
        if _is_bare_param(expr):
            return _scale_by_param(other_expr, expr.terms[0].source)
        if not other_expr.terms:
            return _multiply(expr, other_expr.offset)
        if not expr.terms:
            return _multiply(other_expr, expr.offset)
        raise ModelSpecError(
            f"The product of {_describe(expr)} and {_describe(other_expr)} is not linear. "
            "Multiply nodes only by numbers, arrays or a scalar parameter."
        )
    factor = _constant_array(other, f"array multiplying {_describe(expr)}")
    if factor.ndim == 0:
        factor = factor.reshape(1)
    n = _common_length(expr.length, factor.shape[0])
    expr = broadcast_to(expr, n)
    with np.errstate(over="ignore", invalid="ignore"):
        number = factor[0] if factor.shape[0] == 1 else None  # a number multiplies without a gather by rows
        terms = tuple(replace(t, vals=t.vals * (number if number is not None else factor if is_identity(t.rows, n)
                                                else factor[t.rows])) for t in expr.terms)
        offset = zeros(n) if is_zeros(expr.offset) else expr.offset * (factor if number is None else number)
    for values in [offset] + [t.vals for t in terms]:
        _check_finite(values, "product")
    return Expr(n, terms, offset)


def _check_finite(values: np.ndarray, what: str) -> None:
    if not all_finite(values[:1] if values.strides == (0,) else values):  # a broadcast: one value
        raise ModelSpecError(
            f"A {what} in a mean expression overflows double precision (beyond 1.8e308); rescale the model's units."
        )


def _is_bare_param(expr: Expr) -> bool:
    """True for an expression that is just a scalar parameter (``rho``)."""
    return (
        expr.length == 1
        and len(expr.terms) == 1
        and expr.terms[0].source.is_param
        and expr.terms[0].source.size == 1
        and expr.terms[0].scale is None
        and expr.terms[0].vals.shape == (1,)
        and expr.terms[0].vals[0] == 1.0
        and expr.offset[0] == 0.0
    )


def _scale_by_param(expr: Expr, param: Leaf) -> Expr:
    """``param * expr``: node terms get the scale; a constant offset becomes a param term."""
    if param.size != 1:
        raise ModelSpecError(f"Only a scalar parameter can multiply a node term; `{param.name}` has size {param.size}.")
    terms = []
    for t in expr.terms:
        if t.source.is_param or t.scale is not None:
            other = t.scale.name if t.scale is not None else t.source.name
            raise ModelSpecError(
                f"The product of parameters `{param.name}` and `{other}` is not linear in the parameters."
            )
        terms.append(replace(t, scale=param))
    rows = np.flatnonzero(expr.offset)
    if rows.size:
        terms.append(Term(param, rows.astype(np.int64), np.zeros(rows.size, dtype=np.int64), expr.offset[rows]))
    return Expr(expr.length, tuple(terms), zeros(expr.length))


def _constant_array(value, what: str) -> np.ndarray:
    if isinstance(value, (str, bytes)):
        raise ModelSpecError(f"The {what} must be numeric; got the string {value!r}.")
    if sp.issparse(value):
        raise ModelSpecError(f"A sparse matrix as a {what} needs gdag.dot(matrix, node).")
    if is_complex(value):
        raise ModelSpecError(f"The {what} must be real; got a complex value.")
    arr = as_float_array(value, ModelSpecError, f"The {what} must be a number or a 1-d numeric array; got {type(value).__name__}.")
    if arr.ndim > 1:
        raise ModelSpecError(f"The {what} must be a number or a 1-d array; got shape {arr.shape}. Use gdag.dot for matrices.")
    bad = [] if all_finite(arr) else np.flatnonzero(~np.isfinite(arr))
    if len(bad):  # which entry, and that gdag has no missing covariates (lme4 drops such rows)
        raise ModelSpecError(f"The {what} has NaN or infinite entries ({bad.size}, the first at entry {bad[0]}); a "
                             "covariate must be known for every row: drop the rows where it is missing, or model it.")
    return arr


def _describe(obj) -> str:
    if isinstance(obj, Expr):
        names = sorted({t.source.name for t in obj.terms})
        return "an expression in " + ", ".join(f"`{n}`" for n in names) if names else "a constant"
    return f"`{getattr(obj, 'name', obj)}`"
