"""What a model declares: plates, Gaussian nodes, parameters, and the frozen snapshot of them.

These are records.  :class:`gdag.Model` (``gdag.model``) creates them and
checks each declaration; the later stages (graph, compiler, serialize,
render) read a :class:`ModelSpec`, the frozen snapshot of one model's
declarations, and never change it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np
import pandas as pd

from . import expr
from .errors import ModelSpecError, ParamError
from .expr import Expr, Leaf, Operand, Term
from .frame import codes_of, is_labels

# Largest plate or parameter size accepted: far beyond any model that fits in
# memory, and small enough that sums of sizes never overflow int64.
MAX_SIZE = 2**40


@dataclass(frozen=True, eq=False)
class Plate:
    """An index set: the entries of every family declared on it.

    ``within`` and ``index`` record nesting (a classroom within a school):
    ``index[k]`` is the parent-plate entry that contains entry ``k``.
    ``labels`` (a ``pandas.Index`` of ``size`` distinct values, or None)
    names the entries: the levels of a group column (``m.plate_from``),
    which tables show and which gathers accept in place of codes.
    """

    name: str
    size: int
    within: "Plate | None" = None
    index: np.ndarray | None = None
    labels: pd.Index | None = None

    def __repr__(self) -> str:
        parent = f" within `{self.within.name}`" if self.within is not None else ""
        return f"<gdag.Plate `{self.name}` ({self.size}){parent}>"

    def __len__(self) -> int:
        return self.size


@dataclass(frozen=True)
class SdSpec:
    """Standard deviations of a family: ``base`` times an optional parameter entry.

    ``sd_k = base_k`` when ``param`` is None, else ``base_k * param[param_index_k]``.
    """

    base: np.ndarray
    param: "Param | None" = None
    param_index: np.ndarray | None = None


class Node(Leaf):
    """A family of Gaussian scalar variables (one per plate entry, or one).

    Use it in other nodes' means directly (same plate or a scalar node; on
    another plate of its size, entry by entry, unless the plates nest, which
    needs an index), gathered (``node[index]``), or through :func:`gdag.dot`.
    """

    def __init__(self, model, name: str, plate: Plate | None, site: str):
        self.model = model
        self.name = name
        self.plate = plate
        self.size = plate.size if plate is not None else 1
        self.site = site
        self.mean: Expr | None = None
        self.sd: SdSpec | None = None

    @property
    def is_scalar(self) -> bool:
        """True for a node declared without a plate."""
        return self.plate is None

    def take(self, index, where=None) -> Expr:
        """``node[index]`` where ``where`` is True and nothing (0) elsewhere.

        This is how a family refers to other entries of itself: a tree of
        entries (``parent`` index, ``where=has_parent``) or any recursion
        whose scalar graph is acyclic.
        """
        return expr.gather(self, self._codes(index), where=where)

    def __getitem__(self, index) -> Expr:
        return expr.gather(self, self._codes(index))

    def _codes(self, index):
        """Labels of a labelled plate (``u[df["Subject"]]``) as codes; anything else unchanged."""
        if isinstance(index, (list, tuple)) and index and all(isinstance(v, str) for v in index):
            index = np.asarray(index, dtype=object)
        if not is_labels(index):
            return index
        if self.plate is None or self.plate.labels is None:
            raise ModelSpecError(
                f"The index into `{self.name}` holds labels (dtype {index.dtype}), and its plate has none. Declare "
                "the plate with `plate, codes = m.plate_from(column)`: gather with `codes`, or with the labels."
            )
        return codes_of(self.plate.labels, index, f"index into `{self.name}`", ModelSpecError)

    def lag(self, k: int = 1) -> Expr:
        """Entry ``t - k`` for ``t >= k`` and 0 for the first ``k`` entries.

        Inside a self-referencing mean this gives an AR chain:
        ``m.normal("x", mean=lambda x: phi * x.lag(1), sd=s, plate=time)``.
        """
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ModelSpecError(f"`{self.name}.lag(k)` needs an integer k >= 1; got {k!r}.")
        # what gather(index = max(t - k, 0), where = t >= k) gives, made directly: valid by construction
        k = min(int(k), self.size)  # a lag beyond the plate leaves every entry without a term
        rows = np.arange(k, self.size, dtype=np.int64)
        return Expr(self.size, (Term(self, rows, rows - k, np.ones(self.size - k)),), expr.zeros(self.size))

    def __repr__(self) -> str:
        where = f" on plate `{self.plate.name}` ({self.size})" if self.plate is not None else ""
        return f"<gdag.Node `{self.name}`{where}>"

    def __bool__(self):
        raise ModelSpecError(f"Node `{self.name}` has no truth value; it is a random variable.")


class Param(Leaf):
    """An unknown parameter: a fixed effect in a mean, a variance component as an sd,
    or a coefficient when it multiplies a node term (``rho * u0``)."""

    def __init__(self, model, name: str, size: int, scalar: bool, positive: bool, value, site: str):
        self.model = model
        self.name = name
        self.size = size
        self.is_scalar = scalar
        self.positive = positive
        self.site = site
        self.value = None if value is None else check_param_value(self, value)

    is_param = True

    def __repr__(self) -> str:
        kind = "positive parameter" if self.positive else "parameter"
        return f"<gdag.Param `{self.name}` ({kind}, size {self.size})>"

    def __bool__(self):
        raise ModelSpecError(f"Parameter `{self.name}` has no truth value; it is symbolic.")


def check_param_value(param: Param, value) -> np.ndarray:
    """Validate one parameter's value and return it as a float array of its size."""
    if isinstance(value, (str, bytes)) or isinstance(value, Operand):
        raise ParamError(f"The value of parameter `{param.name}` must be numeric; got {type(value).__name__}.")
    if expr.is_complex(value):
        raise ParamError(f"The value of parameter `{param.name}` must be real; got a complex value.")
    if expr.is_boolean(value):
        raise ParamError(f"The value of parameter `{param.name}` must be numeric; got True/False values.")
    arr = expr.as_float_array(value, ParamError, lambda: f"The value of parameter `{param.name}` must be numeric; got {value!r:.60}.")
    arr = np.array(arr.reshape(-1) if arr.ndim <= 1 else arr)  # a copy: the caller may change theirs later
    if arr.ndim != 1 or arr.shape[0] != param.size:
        raise ParamError(
            f"Parameter `{param.name}` has size {param.size}; its value has shape {np.shape(value)}."
        )
    if not np.all(np.isfinite(arr)):
        raise ParamError(f"The value of parameter `{param.name}` has NaN or infinite entries.")
    if param.positive and np.any(arr <= 0):
        raise ParamError(f"Parameter `{param.name}` is positive; got {value!r}.")
    return arr


def check_parent(node: Node, term, declared) -> None:
    """Refuse a term of ``node``'s mean whose source's declaration failed (it is not in ``declared``, the
    model's nodes or parameters), or that uses a node of a plate nested with ``node``'s without an index
    (its entries would be paired by position)."""
    source = term.source
    if source is not node and declared.get(source.name) is not source:
        raise ModelSpecError(f"Node `{node.name}`: its mean uses `{source.name}`, whose declaration failed.")
    a, b = getattr(source, "plate", None), node.plate
    if term.rows is term.cols and a is not None and b is not None and a is not b and (_within(a, b) or _within(b, a)):
        raise ModelSpecError(f"Node `{node.name}` uses `{source.name}` of plate `{a.name}`, which nests with "
                             f"`{b.name}`, without an index: gather it (`{source.name}[index]`).")


def _within(inner: Plate, outer: Plate) -> bool:
    while inner is not None and inner is not outer:
        inner = inner.within
    return inner is outer


def labels(family: str, plate: str | None, indices: np.ndarray) -> np.ndarray:
    """:func:`label` for many entries of one family at once (numpy string operations, no loop per entry)."""
    indices = np.asarray(indices)
    if plate is None:
        return np.full(indices.shape[0], family, dtype=object)
    return np.char.add(np.char.add(f"{family}[{plate}=", indices.astype(str)), "]").astype(object)


def label(family: str, plate: str | None, index: int) -> str:
    """The one label of a scalar variable or parameter entry: ``u[subj=3]``, or ``R`` for a scalar family."""
    return family if plate is None else f"{family}[{plate}={index}]"


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A frozen snapshot of a model's declarations, in declaration order.

    ``plates``, ``nodes`` and ``params`` are read-only mappings from name to
    record, shaped like :class:`gdag.Model`'s own, so that every stage reads
    a snapshot the way a user reads the model.  ``version`` counts the
    model's declarations when the snapshot was taken.
    """

    name: str
    plates: Mapping[str, Plate]
    nodes: Mapping[str, Node]
    params: Mapping[str, Param]
    version: int = 0

    @classmethod
    def of(cls, name: str, plates: dict, nodes: dict, params: dict, version: int = 0) -> "ModelSpec":
        """A snapshot of the given declarations (the dicts are copied, then frozen)."""
        return cls(name, MappingProxyType(dict(plates)), MappingProxyType(dict(nodes)),
                   MappingProxyType(dict(params)), version)

    def __reduce__(self):  # pickled as dicts (read-only mappings do not pickle), frozen again by `of`
        return type(self).of, (self.name, dict(self.plates), dict(self.nodes), dict(self.params), self.version)
