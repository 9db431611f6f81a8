"""``Model``: the builder of declarations and the one facade over the stages.

A :class:`Model` records declarations (:mod:`gdag.spec`) and answers queries
by handing a frozen :class:`~gdag.spec.ModelSpec` snapshot down the stages:
graph, compiler, pattern, posterior, fitting, render, serialize
(docs/concepts.md has the map).  This is the only module that imports them
all; the stages never change the model.  The one thing it keeps between
queries is its :class:`~gdag.cache.QueryCache`, replaced by each declaration.
"""

from __future__ import annotations

import inspect
import keyword
from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from . import expr as terms
from .arrays import all_finite
from .cache import QueryCache
from .errors import FitError, ModelSpecError, declaration_site
from .expr import Expr, Operand
from .fitting.fit import fit as fit_model
from .frame import frame_data, is_frame, plate_labels
from .frame import levels as level_codes
from .graph import check_self_reference, expanded_graph, family_graph
from .intervene import intervened_model
from .query import conditioned
from .render import render as render_model
from .resources import BYTES_PER_DECLARED_ENTRY, check_entries, check_model_size
from .serialize import model_from_dict, model_to_dict
from .spec import MAX_SIZE, ModelSpec, Node, Param, Plate, SdSpec, check_parent


class Model:
    """A linear-Gaussian directed acyclic model under construction.

    Parameters
    ----------
    name : str
        Used in drawings and messages.

    Examples
    --------
    >>> import numpy as np, gdag
    >>> m = gdag.Model("romcom")
    >>> friend = m.plate("friend", 3)
    >>> R = m.normal("R", mean=3.0, sd=1.0)
    >>> R_i = m.normal("R_i", mean=R, sd=0.5, plate=friend)
    >>> post = m.posterior({"R_i": [3.5, np.nan, 2.0]})
    >>> round(float(post.mean("R_i")[1]), 6) == round(float(post.mean("R")), 6)
    True
    """

    def __init__(self, name: str = "model"):
        if not isinstance(name, str) or not name:
            raise ModelSpecError("A model name must be a non-empty string.")
        self.name = name
        self.plates: dict[str, Plate] = {}
        self.nodes: dict[str, Node] = {}
        self.params: dict[str, Param] = {}
        self.design = None  # what gdag.from_formula built the model from (gdag.design.Design)
        self.interventions = ()  # what m.do() set or shifted to make this model (gdag.intervene)
        self._version = 0  # bumped by each declaration
        self._queries = QueryCache()  # replaced by each declaration, so never stale

    def __repr__(self) -> str:
        return (f"<gdag.Model `{self.name}`: {len(self.plates)} plates, {len(self.nodes)} nodes, "
                f"{len(self.params)} parameters>")

    # ------------------------------------------------------------ declarations

    def plate(self, name: str, size: int, *, within: Plate | None = None, index=None, labels=None) -> Plate:
        """Declare an index set of ``size`` entries.

        Parameters
        ----------
        name : str
        size : int
            Number of entries; at least 1.
        within : Plate, optional
            The plate this one nests in (classrooms within schools).  Drawings
            show nested plates as nested boxes.
        index : array of int, optional
            With ``within``: ``index[k]`` is the entry of ``within`` holding
            entry ``k``.  Given, gdag checks it; it is what you gather with.
        labels : sequence of ``size`` distinct values, optional
            Names of the entries (a group column's levels): tables show them,
            and nodes on the plate gather by them (``u[df["Subject"]]``).
            :meth:`plate_from` makes them from a column.
        """
        self._check_new_name(name, self.plates, "plate")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise ModelSpecError(f"Plate `{name}` needs an integer size; got {size!r}.")
        if size < 1:
            raise ModelSpecError(f"Plate `{name}` has size {size}; a plate needs at least one entry.")
        if size > MAX_SIZE:
            raise ModelSpecError(f"Plate `{name}` has size {size}; gdag accepts at most 2**40 entries.")
        if within is not None and not isinstance(within, Plate):
            raise ModelSpecError(f"`within` for plate `{name}` must be a Plate; got {type(within).__name__}.")
        if within is not None and self.plates.get(within.name) is not within:
            raise ModelSpecError(f"Plate `{name}` is within `{within.name}`, which belongs to another model.")
        idx = None
        if index is not None:
            if within is None:
                raise ModelSpecError(f"Plate `{name}` has an `index` but no `within` plate for it to point into.")
            idx = terms.check_index(index, within.size, f"index of plate `{name}` into `{within.name}`")
            if idx.shape[0] != size:
                raise ModelSpecError(
                    f"The index of plate `{name}` has length {idx.shape[0]}; the plate has {size} entries."
                )
        plate = Plate(name, int(size), within, idx, None if labels is None else plate_labels(name, size, labels))
        self.plates[name] = plate
        self._touch()
        return plate

    def plate_from(self, column, name: str | None = None, *, within: Plate | None = None, index=None):
        """A plate with one entry per level of a group column, and each row's entry: ``(plate, codes)``.

        Parameters
        ----------
        column : pandas Series, Categorical, array or list
            Group labels, one per row: categorical, strings, objects or
            numbers.  The levels are a categorical's categories in their order
            (all of them, used or not), else the sorted distinct values, as
            R's ``factor()`` makes them.  Missing labels are an error.
        name : str, optional
            The plate's name; default the Series' name.
        within, index : as for :meth:`plate`.

        Returns
        -------
        plate : Plate
            ``plate.labels`` holds the levels.
        codes : ndarray of int64
            ``codes[i]`` is row ``i``'s entry: gather with it (``u[codes]``),
            or with the labels themselves (``u[df["Subject"]]``).

        Examples
        --------
        >>> import pandas as pd, gdag
        >>> m = gdag.Model()
        >>> subject, codes = m.plate_from(pd.Series(["b", "a", "b"], name="subject"))
        >>> list(subject.labels), codes.tolist()
        (['a', 'b'], [1, 0, 1])
        """
        name = getattr(column, "name", None) if name is None else name
        if not isinstance(name, str):
            raise ModelSpecError("m.plate_from(column) needs `name=` for a column without a string name.")
        labels, codes = level_codes(column, name)
        return self.plate(name, len(labels), within=within, index=index, labels=labels), codes

    def normal(self, name: str, mean=0.0, sd=1.0, plate: Plate | None = None) -> Node:
        """Declare a Gaussian family ``name ~ N(mean, sd^2)``, one variable per plate entry.

        Parameters
        ----------
        name : str
            Unique among nodes and parameters.
        mean : number, array, expression, or callable
            Affine in nodes and parameters.  A callable receives the new node
            and returns its mean, so that a family can depend on its own
            earlier entries (``lambda x: phi * x.lag(1)``).
        sd : number, array, positive Param or expression in one positive Param
            Standard deviation.  0 makes the variable deterministic (equal to
            its mean), which gdag eliminates exactly.
        plate : Plate, optional
            Without a plate the node is a single scalar.
        """
        self._check_new_name(name, self.nodes, "node")
        if plate is not None and (not isinstance(plate, Plate) or self.plates.get(plate.name) is not plate):
            raise ModelSpecError(f"Node `{name}`: `plate` must be a plate declared on this model with m.plate().")
        size = 1 if plate is None else plate.size
        check_entries(float(size) * BYTES_PER_DECLARED_ENTRY, f"The {size} scalar entries of node `{name}`")
        node = Node(self, name, plate, declaration_site())
        if callable(mean) and not isinstance(mean, Operand):
            mean = mean(node)
        node.mean = self._check_mean(node, mean)
        node.sd = self._check_sd(node, sd)
        check_self_reference(node)
        self.nodes[name] = node
        self._touch()
        return node

    def param(self, name: str, size: int | None = None, positive: bool = False, value=None) -> Param:
        """Declare an unknown parameter.

        Parameters
        ----------
        name : str
        size : int, optional
            None for a scalar; an integer for a vector gathered like a node
            (``alpha[unit]``: one fixed effect per unit).
        positive : bool
            Required for parameters used as an ``sd``.
        value : number or array, optional
            Default value for :meth:`posterior`; ``params=`` overrides it.
        """
        self._check_new_name(name, self.params, "parameter")
        scalar = size is None
        if not scalar and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1):
            raise ModelSpecError(f"Parameter `{name}` needs a positive integer size; got {size!r}.")
        if not scalar and size > MAX_SIZE:
            raise ModelSpecError(f"Parameter `{name}` has size {size}; gdag accepts at most 2**40 entries.")
        if not isinstance(positive, (bool, np.bool_)):
            raise ModelSpecError(f"Parameter `{name}`: `positive` must be True or False; got {positive!r}.")
        param = Param(self, name, 1 if scalar else int(size), scalar, bool(positive), value, declaration_site())
        self.params[name] = param
        self._touch()
        return param

    # ----------------------------------------------------------------- queries

    def posterior(self, data: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None):
        """Exact posterior of every unobserved variable given ``data``.

        Parameters
        ----------
        data : mapping name -> number or array, or a pandas DataFrame
            Observed values; NaN entries are unobserved.  Nodes not named are
            unobserved.  A DataFrame's columns that name nodes are data; its
            other columns (predictors, group labels) are ignored.
        params : mapping name -> value, optional
            Values of parameters; defaults to the ``value`` given to :meth:`param`.

        Returns
        -------
        Posterior
        """
        spec = self.spec()
        check_model_size(spec, self.name)
        data = {} if data is None else frame_data(data, spec.nodes) if is_frame(data) else data
        return conditioned(spec, self._queries, data, params)

    def fit(self, data, method: str = "reml", **options):
        """Estimate unknown parameters by ``"reml"``, ``"ml"`` or ``"em"``; see :func:`gdag.fitting.fit.fit`.

        ``data`` is as for :meth:`posterior`: a mapping or a DataFrame.
        """
        known = set(inspect.signature(fit_model).parameters) - {"spec", "queries", "data", "method"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise FitError(
                f"m.fit() has no option {', '.join(f'`{u}`' for u in unknown)}; its options are "
                + ", ".join(f"`{k}`" for k in sorted(known)) + "."
            )
        spec = self.spec()
        check_model_size(spec, self.name)
        data = frame_data(data, spec.nodes) if is_frame(data) else data
        result = fit_model(spec, self._queries, data, method=method, **options)
        return result if self.design is None else replace(result, design=self.design)

    def do(self, interventions: Mapping[Any, Any]) -> "Model":
        """A new model in which ``{node: value}`` entries are cut from their parents and fixed (NaN: left alone),
        or moved by ``gdag.shift(delta)``; this model is not changed.  See :mod:`gdag.intervene`."""
        return intervened_model(self, interventions)

    def graph(self, expanded: bool = False):
        """The model as a ``networkx.DiGraph``: families (default) or scalar variables."""
        if not isinstance(expanded, (bool, np.bool_)):
            raise ModelSpecError(f"graph(expanded=...) takes True or False; got {expanded!r}.")
        spec = self.spec()
        return expanded_graph(spec, self._queries.compiled(spec)) if expanded else family_graph(self._queries.graph(spec))

    def render(self, path=None, **options):
        """Draw the model with graphviz; see :func:`gdag.render.render`."""
        spec = self.spec()
        if options.get("expanded") is True and "compiled" not in options:
            options["compiled"] = self._queries.compiled(spec)
        options.setdefault("interventions", self.interventions)  # what m.do() set, drawn marked
        return render_model(self._queries.graph(spec), path, **options)

    def describe(self) -> str:
        """Family sizes, and the sizes of the sparse system gdag factors.

        The last section gives the nonzeros of ``Q_UU`` and of its Cholesky
        factor and the estimated peak memory of a posterior, for the observed
        pattern of the last :meth:`posterior` call (or, before any, with
        nothing observed).  They come from the symbolic analysis alone.
        """
        cm = self._queries.compiled(self.spec())
        cond = self._queries.last_conditioning
        which = "last queried pattern"
        if cond is None:
            cond = self._queries.shared_conditioning(cm)
            which = "nothing observed"
        size = cond.factor_size()
        return cm.describe() + f"\n  posterior ({which}): {size.describe()}"

    def to_dict(self, params: Mapping[str, Any] | None = None) -> dict:
        """The declarations as a JSON-safe dict, ``params`` (e.g. ``fit.params``) as parameter values; :meth:`from_dict` rebuilds it.

        Examples
        --------
        >>> import json, gdag
        >>> m = gdag.Model("tiny")
        >>> a = m.normal("a", mean=1.0, sd=2.0)
        >>> m2 = gdag.Model.from_dict(json.loads(json.dumps(m.to_dict())))
        >>> m2.to_dict() == m.to_dict()
        True
        """
        return model_to_dict(self._queries.graph(self.spec()), params)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Model":
        """Rebuild a model from :meth:`to_dict`'s output.

        Nothing is evaluated or unpickled; every field is checked, and a
        malformed dict raises :class:`~gdag.ModelSpecError` (a cycle,
        :class:`~gdag.CycleError`).  See :mod:`gdag.serialize` for the layout.
        """
        return model_from_dict(d, cls)

    # ------------------------------------------------------------- internals

    def spec(self) -> ModelSpec:
        """A frozen snapshot of the declarations so far (what every stage reads)."""
        return ModelSpec.of(self.name, self.plates, self.nodes, self.params, self._version)

    def _touch(self) -> None:
        self._version += 1
        self._queries = QueryCache()

    def _check_new_name(self, name, namespace, what: str) -> None:
        if not isinstance(name, str) or not name:
            raise ModelSpecError(f"A {what} name must be a non-empty string; got {name!r}.")
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ModelSpecError(f"{what.capitalize()} name {name!r} must be a Python identifier (letters, digits, _).")
        if namespace is self.plates:
            taken = name in self.plates
        else:
            taken = name in self.nodes or name in self.params
        if taken:
            raise ModelSpecError(f"The name `{name}` is already declared in model `{self.name}`; names must be unique.")

    def _check_mean(self, node: Node, mean) -> Expr:
        try:
            expr = terms.as_expr(mean)
        except ModelSpecError as err:
            raise ModelSpecError(f"Node `{node.name}` ({node.site}): mean: {err}") from None
        for t in expr.terms:
            owner = t.source.model
            if owner is not self:
                raise ModelSpecError(f"Node `{node.name}`: its mean uses `{t.source.name}` from another model.")
            check_parent(node, t, self.params if t.source.is_param else self.nodes)
            for p in (t.scale,) if t.scale is not None else ():
                if p.model is not self:
                    raise ModelSpecError(f"Node `{node.name}`: its mean uses `{p.name}` from another model.")
        if expr.length not in (1, node.size):
            hint = ("Did you forget `plate=`? A node without a plate is a single scalar."
                    if node.plate is None else f"Gather parents with an index array of length {node.size}.")
            raise ModelSpecError(
                f"Node `{node.name}` has {node.size} entr{'y' if node.size == 1 else 'ies'} but its mean has length "
                f"{expr.length}. {hint}"
            )
        return terms.compact(terms.broadcast_to(expr, node.size))

    def _check_sd(self, node: Node, sd) -> SdSpec:
        where = f"Node `{node.name}`"
        if isinstance(sd, Node) or (isinstance(sd, Expr) and any(isinstance(t.source, Node) for t in sd.terms)):
            raise ModelSpecError(f"{where}: an sd cannot depend on a node; gdag models are linear-Gaussian.")
        if isinstance(sd, Operand):
            return self._param_sd(node, terms.as_expr(sd))
        if terms.is_complex(sd):
            raise ModelSpecError(f"{where}: sd must be real; got a complex value.")
        if terms.is_boolean(sd):
            raise ModelSpecError(f"{where}: sd must be a number, an array or a positive parameter; got True/False values.")
        arr = terms.as_float_array(
            sd, ModelSpecError, lambda: f"{where}: sd must be a number, an array or a positive parameter; got {sd!r:.60}."
        )
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] not in (1, node.size)):
            raise ModelSpecError(f"{where}: sd has shape {arr.shape}; it needs length {node.size} or a single value.")
        every = np.atleast_1d(arr)
        bad = [] if all_finite(every) and (every.size == 0 or every.min() >= 0) else \
            np.flatnonzero(~np.isfinite(every) | (every < 0))
        if len(bad):
            raise ModelSpecError(
                f"{where}: sd must be finite and >= 0; entry {bad[0]} is {np.atleast_1d(arr)[bad[0]]}."
            )
        return SdSpec(terms.compact_values(np.array(np.broadcast_to(arr, (node.size,)), dtype=float)))

    def _param_sd(self, node: Node, expr: Expr) -> SdSpec:
        where = f"Node `{node.name}`"
        if len(expr.terms) != 1 or np.any(expr.offset != 0) or expr.terms[0].scale is not None:
            raise ModelSpecError(f"{where}: an sd expression must be one positive parameter times positive numbers.")
        term = expr.terms[0]
        param = term.source
        if not param.positive:
            raise ModelSpecError(
                f"{where}: parameter `{param.name}` is used as an sd, so declare it with positive=True."
            )
        if param.model is not self:
            raise ModelSpecError(f"{where}: sd uses `{param.name}` from another model.")
        expr = terms.broadcast_to(expr, node.size) if expr.length == 1 else expr
        term = expr.terms[0]
        if expr.length != node.size or term.rows.shape[0] != node.size or np.any(term.rows != np.arange(node.size)):
            raise ModelSpecError(f"{where}: the sd in `{param.name}` must give one value per entry ({node.size}).")
        if np.any(term.vals < 0):  # 0 makes the entry deterministic (as m.do() leaves the entries it sets)
            raise ModelSpecError(f"{where}: the sd in `{param.name}` must be multiplied by non-negative numbers.")
        return SdSpec(terms.compact_values(term.vals.copy()), param, terms.compact_values(term.cols.copy()))
