"""Interventions: ``m.do({node: value})`` and ``gdag.shift(delta)``.

A *set* intervention cuts the named entries from their parents and fixes
them at the value: in ``x = c + B x + e`` their rows of ``B`` become 0, their
``c`` the value and their noise variance ``d`` 0 (deterministic).  A *shift*
(``gdag.shift(delta)``) keeps the parents and the noise and adds ``delta`` to
``c``.  :func:`intervened_model` builds the intervened model as a new
:class:`gdag.Model` (the original is never changed): every query, fit and
drawing then works on it as on any model.  :func:`parse_interventions` is
shared with counterfactuals (:mod:`gdag.counterfactual`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from .data import own
from .errors import DataError, ModelSpecError
from .expr import Expr, Term, as_float_array, is_boolean, is_complex
from .frame import numeric
from .spec import Node, Param, SdSpec


class Shift:
    """A shift intervention: the node keeps its parents and noise, its mean moves by ``delta``."""

    __slots__ = ("delta",)

    def __init__(self, delta):
        self.delta = delta

    def __repr__(self) -> str:
        return f"gdag.shift({self.delta!r:.40})"


def shift(delta) -> Shift:
    """A shift intervention for :meth:`gdag.Model.do` and :meth:`gdag.Posterior.counterfactual`.

    ``m.do({"A": gdag.shift(0.5)})`` keeps ``A``'s parents and noise and adds
    0.5 to its mean (``c_A + 0.5``); everything downstream follows.  ``delta``
    is a number or an array of the node's length (NaN entries left alone).

    Examples
    --------
    >>> import gdag
    >>> m = gdag.Model()
    >>> a = m.normal("a", mean=1.0, sd=1.0)
    >>> b = m.normal("b", mean=2 * a, sd=1.0)
    >>> float(m.do({"a": gdag.shift(0.5)}).posterior().mean("b"))
    3.0
    """
    return Shift(delta)


@dataclass(frozen=True)
class Intervention:
    """One node's intervention: ``kind`` "set" (``values`` at ``entries``) or "shift" (``values`` added)."""

    name: str
    kind: str
    entries: np.ndarray  # int64 positions within the node
    values: np.ndarray  # value (set) or delta (shift) per entry
    size: int  # the node's number of entries
    cut: tuple[str, ...] = ()  # sources whose every edge into the node this intervention removed (for drawings)

    @property
    def whole(self) -> bool:
        """True when every entry of the node is intervened on."""
        return self.entries.shape[0] == self.size


def parse_interventions(interventions, sizes: Mapping[str, int], params, model_name: str) -> tuple[Intervention, ...]:
    """Check ``{node: value | gdag.shift(delta)}`` against ``sizes`` (node name -> entries).

    Raises :class:`~gdag.ModelSpecError` for anything but a mapping of known
    nodes (a parameter, an unknown name) and :class:`~gdag.DataError` for
    values that are not real numbers of the node's length.
    """
    if not isinstance(interventions, Mapping) or not interventions:
        raise ModelSpecError(
            "do() and counterfactual() take a non-empty mapping {node: value}, a value being a number, an array "
            f"or gdag.shift(delta); got {interventions!r:.60}."
        )
    out = []
    for key, value in interventions.items():
        name = key.name if isinstance(key, (Node, Param)) else key
        if isinstance(key, Param) or (isinstance(name, str) and name in params and name not in sizes):
            raise ModelSpecError(
                f"`{name}` is a parameter of model `{model_name}`, not a node: an intervention sets a random "
                "node. Give the parameter a value with params={...} instead."
            )
        if not isinstance(name, str) or name not in sizes:
            known = ", ".join(f"`{n}`" for n in list(sizes)[:10])
            raise ModelSpecError(f"Cannot intervene on `{name}`: model `{model_name}` has no such node (its nodes: {known}).")
        if any(iv.name == name for iv in out):  # a node and its name both given: which value is meant?
            raise ModelSpecError(f"The interventions name `{name}` twice (as a node and as a name); give it once.")
        kind, raw = ("shift", value.delta) if isinstance(value, Shift) else ("set", value)
        values = _values(name, sizes[name], raw, kind)
        entries = np.flatnonzero(~np.isnan(values))
        if entries.size == 0:
            raise DataError(f"The intervention on `{name}` is NaN at every entry, so it intervenes on nothing.")
        out.append(Intervention(name, kind, entries, values[entries], sizes[name]))
    return tuple(out)


def _values(name: str, size: int, value, kind: str) -> np.ndarray:
    what = f"The {'shift' if kind == 'shift' else 'value'} given to do() for node `{name}`"
    value = numeric(value)
    if isinstance(value, (str, bytes, Mapping)) or value is None or isinstance(value, (Node, Param, Expr)):
        raise DataError(f"{what} must be a number or a 1-d array of {size}; got {value!r:.60}.")
    if is_complex(value):
        raise DataError(f"{what} must be real; got complex values.")
    if is_boolean(value):
        raise DataError(f"{what} must be numeric; got True/False values.")
    arr = as_float_array(value, DataError, lambda: f"{what} must be numeric; got {value!r:.60}.")
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] not in (1, size)):
        raise DataError(f"{what} has shape {arr.shape}; it needs {size} value{'s' if size > 1 else ''} or one.")
    arr = np.array(np.broadcast_to(arr.reshape(-1), (size,)), dtype=float)
    bad = np.flatnonzero(np.isinf(arr))
    if bad.size:
        raise DataError(f"{what} is infinite at entries {bad[:5].tolist()}; use NaN for entries left alone.")
    return arr


def intervened_model(model, interventions: Mapping[Any, Any]):
    """A new model of ``type(model)`` with ``interventions`` applied; ``model`` is not changed."""
    spec = model.spec()
    parsed = parse_interventions(
        interventions, {k: v.size for k, v in spec.nodes.items()}, spec.params, spec.name
    )
    for key in interventions:  # node objects must belong to this model
        own(key, spec.nodes, spec.name, "do()", ModelSpecError)
    new = type(model)(spec.name)
    new.plates = dict(spec.plates)  # plates are frozen records without a model: shared
    params = {p.name: Param(new, p.name, p.size, p.is_scalar, p.positive, p.value, p.site)
              for p in spec.params.values()}
    nodes: dict[str, Node] = {}
    for old in spec.nodes.values():
        nodes[old.name] = Node(new, old.name, old.plate, old.site)
    by_name = {**nodes, **params}
    changes = {iv.name: [] for iv in parsed}
    for iv in parsed:
        changes[iv.name].append(iv)
    done = []
    for old in spec.nodes.values():
        node = nodes[old.name]
        mean, sd = old.mean, old.sd
        for iv in changes.get(old.name, ()):
            mean, sd = _apply(mean, sd, iv)
            kept = {t.source.name for t in mean.terms}
            done.append(replace(iv, cut=tuple(dict.fromkeys(t.source.name for t in old.mean.terms
                                                           if t.source.name not in kept))))
        node.mean = _rebind(mean, by_name)
        node.sd = SdSpec(sd.base, None if sd.param is None else params[sd.param.name], sd.param_index)
    new.params, new.nodes = params, nodes
    new.design = model.design
    new.interventions = tuple(getattr(model, "interventions", ())) + tuple(done)
    new._touch()
    return new


def _apply(mean: Expr, sd: SdSpec, iv: Intervention) -> tuple[Expr, SdSpec]:
    offset = np.array(mean.offset, dtype=float)  # a writable copy (offsets may be read-only broadcasts)
    if iv.kind == "shift":
        offset[iv.entries] += iv.values
        return Expr(mean.length, mean.terms, offset), sd
    offset[iv.entries] = iv.values
    cut = np.zeros(mean.length, dtype=bool)
    cut[iv.entries] = True
    terms = []
    for t in mean.terms:
        keep = ~cut[t.rows]
        if keep.any():
            terms.append(t if keep.all() else Term(t.source, t.rows[keep], t.cols[keep], t.vals[keep], t.scale))
    base = np.array(sd.base, dtype=float)
    base[iv.entries] = 0.0
    return Expr(mean.length, tuple(terms), offset), SdSpec(base, sd.param, sd.param_index)


def _rebind(mean: Expr, by_name: dict) -> Expr:
    """``mean`` with its sources and scales replaced by the new model's nodes and parameters."""
    terms = tuple(Term(by_name[t.source.name], t.rows, t.cols, t.vals,
                       None if t.scale is None else by_name[t.scale.name]) for t in mean.terms)
    return Expr(mean.length, terms, mean.offset)
