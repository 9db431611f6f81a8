"""Models as plain, JSON-safe dicts: :func:`model_to_dict` and :func:`model_from_dict`.

The dict holds only dicts, lists, strings, ints, floats, booleans and None,
so ``json.dumps`` / ``json.loads`` round-trip it exactly (Python writes
floats with ``repr``, which reads back bit for bit).  Nothing is pickled or
evaluated: loading validates every field and declares the model through the
same checks as the DSL, so a malformed or hostile dict raises
:class:`~gdag.ModelSpecError` (or :class:`~gdag.CycleError` for a cycle),
never a ``KeyError``, ``TypeError`` or ``IndexError``.

Layout (``format`` and ``version`` are checked on load)::

    {"format": "gdag.model", "version": 1, "name": "romcom",
     "plates": [{"name": "friend", "size": 30, "within": None, "index": None}, ...],
                (a plate with labels has a "labels" list too)
     "params": [{"name": "beta", "size": 2, "scalar": False, "positive": False,
                 "value": [0.1, 0.2]}, ...],
     "nodes":  [{"name": "R_i", "plate": "friend",
                 "mean": {"offset": [...],
                          "terms": [{"source": "R", "rows": [...], "cols": [...],
                                     "vals": [...], "scale": None}, ...]},
                 "sd": {"base": [...], "param": None, "param_index": None}}, ...]}

A mean term is ``scale * M @ source`` with ``M`` sparse in COO form (``rows``
index the node's entries, ``cols`` the source's); see :mod:`gdag.expr`.  A
term may name its own node (an AR chain); it may not name a node listed
after it.  Plates, parameters and nodes are listed in declaration order, which
fixes the order of the compiled scalar vector.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .errors import CycleError, ModelError, ModelSpecError, ParamError
from .expr import Expr, Term
from .graph import ModelGraph, cycle_message, find_cycle, graph_of
from .spec import ModelSpec, check_param_value

FORMAT = "gdag.model"
VERSION = 1


# ------------------------------------------------------------------- writing


def model_to_dict(model: ModelSpec | ModelGraph, params: Mapping[str, Any] | None = None) -> dict:
    """The declarations of ``model`` as a JSON-safe dict (see the module docstring).

    ``params`` (name -> value, such as ``fit.params``) replaces the named
    parameters' ``value``: the model loaded from the dict queries at them by default.
    """
    graph = graph_of(model)
    spec = graph.spec
    values = _param_values(spec, params)
    plates = [
        {
            "name": p.name,
            "size": int(p.size),
            "within": None if p.within is None else p.within.name,
            "index": None if p.index is None else _ints(p.index),
            **({} if p.labels is None else {"labels": _labels(p.labels)}),
        }
        for p in spec.plates.values()
    ]
    params = [
        {
            "name": p.name,
            "size": int(p.size),
            "scalar": bool(p.is_scalar),
            "positive": bool(p.positive),
            "value": None if values.get(p.name, p.value) is None else _floats(values.get(p.name, p.value)),
        }
        for p in spec.params.values()
    ]
    nodes = []
    for nd in spec.nodes.values():
        mean_terms = [
            {
                "source": t.source.name,
                "rows": _ints(t.rows),
                "cols": _ints(t.cols),
                "vals": _floats(t.vals),
                "scale": None if t.scale is None else t.scale.name,
            }
            for t in graph.mean_terms(nd.name)
        ]
        sd = nd.sd
        nodes.append(
            {
                "name": nd.name,
                "plate": None if nd.plate is None else nd.plate.name,
                "mean": {"offset": _floats(nd.mean.offset), "terms": mean_terms},
                "sd": {
                    "base": _floats(sd.base),
                    "param": None if sd.param is None else sd.param.name,
                    "param_index": None if sd.param is None else _ints(sd.param_index),
                },
            }
        )
    return {"format": FORMAT, "version": VERSION, "name": spec.name, "plates": plates, "params": params, "nodes": nodes}


def _param_values(spec: ModelSpec, params) -> dict:
    """``params`` (name -> value) checked against ``spec``'s parameters (:func:`gdag.spec.check_param_value`)."""
    unknown = [name for name in params if name not in spec.params] if isinstance(params, Mapping) else [params]
    if params is not None and unknown:
        raise ParamError(f"to_dict(params=...) takes a mapping from parameter names of `{spec.name}` to values; "
                         f"got {unknown[0]!r:.60}.")
    return {name: check_param_value(spec.params[name], value) for name, value in (params or {}).items()}


def _ints(arr) -> list:
    return [int(v) for v in np.asarray(arr).tolist()]


def _floats(arr) -> list:
    return [float(v) for v in np.asarray(arr, dtype=float).tolist()]


def _labels(labels) -> list:
    """A plate's labels as JSON values: strings, ints, finite floats and booleans stay, others become strings."""
    out = [v.item() if isinstance(v, np.generic) else v for v in labels.tolist()]
    return [v if type(v) in (str, int, bool) or (type(v) is float and math.isfinite(v)) else str(v) for v in out]


# ------------------------------------------------------------------- reading


def model_from_dict(d, model_class) -> Any:
    """Rebuild a model from :func:`model_to_dict`'s output, declaring it through ``model_class`` (:class:`gdag.Model`).

    Raises
    ------
    ModelSpecError
        For anything malformed: a missing key, a wrong type, a non-finite
        number, an index out of range, a reference to an undeclared plate,
        node or parameter, or a format/version mismatch.
    CycleError
        When nodes refer to each other in a cycle.
    """
    try:
        return _model_from_dict(d, model_class)
    except RecursionError:  # lists nested thousands deep: their repr and numpy's conversion recurse
        raise ModelSpecError(
            "The model dict is nested too deeply to read (Python's recursion limit was reached): "
            "Model.to_dict() writes numbers and flat lists only."
        ) from None


def _model_from_dict(d, model_class) -> Any:
    where = "The model dict"
    _check_type(d, dict, where)
    fmt, version = d.get("format"), d.get("version")
    if fmt != FORMAT or type(version) is not int or version != VERSION:
        raise ModelSpecError(
            f"{where} has format {fmt!r} version {version!r}; gdag reads format {FORMAT!r} version {VERSION}. "
            "Write it with Model.to_dict()."
        )
    name = _field(d, "name", str, where)
    plates_in = _field(d, "plates", list, where)
    params_in = _field(d, "params", list, where)
    nodes_in = _field(d, "nodes", list, where)
    try:
        model = model_class(name)
    except ModelSpecError as err:
        raise ModelSpecError(f"{where}: {err}") from None
    for k, entry in enumerate(plates_in):
        _load_plate(model, entry, f"{where}: plates[{k}]")
    for k, entry in enumerate(params_in):
        _load_param(model, entry, f"{where}: params[{k}]")
    node_names = _node_names(nodes_in, where)
    _check_family_cycles(nodes_in, node_names)
    for k, entry in enumerate(nodes_in):
        _load_node(model, entry, f"{where}: node `{node_names[k]}` (nodes[{k}])", node_names)
    return model


def _load_plate(model, entry, where: str) -> None:
    _check_type(entry, dict, where)
    name = _field(entry, "name", str, where)
    size = _field(entry, "size", int, where)
    within_name = _field(entry, "within", (str, type(None)), where)
    index = _field(entry, "index", (list, type(None)), where)
    labels = _field(entry, "labels", (list, type(None)), where) if "labels" in entry else None
    if labels is not None and any(type(v) not in (str, int, float, bool) for v in labels):
        raise ModelSpecError(f"{where}: plate `{name}` has labels that are not strings or numbers.")
    within = None
    if within_name is not None:
        within = model.plates.get(within_name)
        if within is None:
            raise ModelSpecError(
                f"{where}: plate `{name}` is within `{within_name}`, which is not a plate listed before it."
            )
    if index is not None:
        if size != len(index):
            raise ModelSpecError(f"{where}: plate `{name}` has size {size} but its index has {len(index)} entries.")
        index = _int_array(index, f"{where}: index")
    _declare(lambda: model.plate(name, size, within=within, index=index, labels=labels), where)


def _load_param(model, entry, where: str) -> None:
    _check_type(entry, dict, where)
    name = _field(entry, "name", str, where)
    size = _field(entry, "size", int, where)
    scalar = _field(entry, "scalar", bool, where)
    positive = _field(entry, "positive", bool, where)
    value = _field(entry, "value", (list, type(None)), where)
    if scalar and size != 1:
        raise ModelSpecError(f"{where}: parameter `{name}` is scalar but has size {size}.")
    if value is not None:
        if len(value) != size:
            raise ModelSpecError(f"{where}: parameter `{name}` has size {size} but its value has {len(value)} entries.")
        value = _float_array(value, f"{where}: value")
    _declare(lambda: model.param(name, size=None if scalar else size, positive=positive, value=value), where)


def _load_node(model, entry, where: str, node_names: list) -> None:
    name = entry["name"]  # checked by _node_names
    plate_name = _field(entry, "plate", (str, type(None)), where)
    mean = _field(entry, "mean", dict, where)
    sd = _field(entry, "sd", dict, where)
    plate = None
    if plate_name is not None:
        plate = model.plates.get(plate_name)
        if plate is None:
            raise ModelSpecError(f"{where}: plate `{plate_name}` is not listed in `plates`.")
    size = 1 if plate is None else plate.size

    offset = _field(mean, "offset", list, f"{where}: mean")
    if len(offset) != size:
        raise ModelSpecError(f"{where}: the mean offset has {len(offset)} entries; the node has {size}.")
    offset = _float_array(offset, f"{where}: mean offset")
    term_specs = []
    for k, t in enumerate(_field(mean, "terms", list, f"{where}: mean")):
        twhere = f"{where}: mean term {k}"
        _check_type(t, dict, twhere)
        source = _field(t, "source", str, twhere)
        rows = _field(t, "rows", list, twhere)
        cols = _field(t, "cols", list, twhere)
        vals = _field(t, "vals", list, twhere)
        scale = _field(t, "scale", (str, type(None)), twhere)
        if not len(rows) == len(cols) == len(vals):
            raise ModelSpecError(
                f"{twhere}: rows, cols and vals must have one entry each per coefficient; "
                f"got {len(rows)}, {len(cols)} and {len(vals)}."
            )
        if source == name:
            source_size = size
        elif source in model.nodes:
            source_size = model.nodes[source].size
        elif source in model.params:
            source_size = model.params[source].size
        elif source in node_names:
            raise ModelSpecError(f"{twhere}: it refers to node `{source}`, which is listed after it. "
                                 "List nodes in declaration order (parents first).")
        else:
            raise ModelSpecError(f"{twhere}: it refers to `{source}`, which is neither a node nor a parameter.")
        rows = _index_array(rows, size, f"{twhere}: rows (entries of `{name}`)")
        cols = _index_array(cols, source_size, f"{twhere}: cols (entries of `{source}`)")
        vals = _float_array(vals, f"{twhere}: vals")
        scale_param = None
        if scale is not None:
            scale_param = model.params.get(scale)
            if scale_param is None:
                raise ModelSpecError(f"{twhere}: its scale `{scale}` is not a parameter.")
            if scale_param.size != 1:
                raise ModelSpecError(f"{twhere}: its scale `{scale}` must be a scalar parameter; it has size {scale_param.size}.")
            if source in model.params:
                raise ModelSpecError(f"{twhere}: parameter `{source}` scaled by parameter `{scale}` is not linear.")
        term_specs.append((source, rows, cols, vals, scale_param))

    sd_value = _load_sd(model, sd, size, f"{where}: sd")

    def build_mean(node):
        built = []
        for source, rows, cols, vals, scale_param in term_specs:
            if source == name:
                obj = node
            else:
                obj = model.nodes[source] if source in model.nodes else model.params[source]
            built.append(Term(obj, rows, cols, vals, scale_param))
        return Expr(size, tuple(built), offset)

    _declare(lambda: model.normal(name, mean=build_mean, sd=sd_value(), plate=plate), where)


def _load_sd(model, sd: dict, size: int, where: str):
    """Validate an sd spec; returns a callable giving the DSL ``sd=`` argument."""
    base = _field(sd, "base", list, where)
    param_name = _field(sd, "param", (str, type(None)), where)
    param_index = _field(sd, "param_index", (list, type(None)), where)
    if len(base) != size:
        raise ModelSpecError(f"{where}: base has {len(base)} entries; the node has {size}.")
    base = _float_array(base, f"{where}: base")
    if param_name is None:
        if param_index is not None:
            raise ModelSpecError(f"{where}: it has a `param_index` but no `param`.")
        return lambda: base
    param = model.params.get(param_name)
    if param is None:
        raise ModelSpecError(f"{where}: `{param_name}` is not a parameter.")
    if param_index is None or len(param_index) != size:
        got = "none" if param_index is None else f"{len(param_index)} entries"
        raise ModelSpecError(f"{where}: `param_index` needs {size} entries into `{param_name}`; got {got}.")
    idx = _index_array(param_index, param.size, f"{where}: param_index")
    rows = np.arange(size, dtype=np.int64)
    # base * param[idx]: the DSL's own check of a parameter sd (positive param, positive base) applies.
    return lambda: Expr(size, (Term(param, rows, idx, base),), np.zeros(size))


def _node_names(nodes_in: list, where: str) -> list:
    names = []
    for k, entry in enumerate(nodes_in):
        _check_type(entry, dict, f"{where}: nodes[{k}]")
        names.append(_field(entry, "name", str, f"{where}: nodes[{k}]"))
    return names


def _check_family_cycles(nodes_in: list, names: list) -> None:
    """Name a cycle among the listed nodes before complaining about their order."""
    known = set(names)
    pairs = []
    for entry, name in zip(nodes_in, names):
        mean = entry.get("mean")
        term_list = mean.get("terms") if isinstance(mean, dict) else None
        if not isinstance(term_list, list):
            continue
        for t in term_list:
            source = t.get("source") if isinstance(t, dict) else None
            if isinstance(source, str) and source in known and source != name:
                pairs.append((source, name))
    cycle = find_cycle(names, pairs)
    if cycle is not None:
        raise CycleError(cycle_message(cycle, "The model dict"))


# ---------------------------------------------------------------- validation


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "a dict",
               type(None): "null", float: "a number"}


def _check_type(value, types, where: str) -> None:
    types = types if isinstance(types, tuple) else (types,)
    ok = any(_is(value, t) for t in types)
    if not ok:
        wanted = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise ModelSpecError(f"{where} must be {wanted}; got {_show(value)}.")


def _is(value, t) -> bool:
    if t is int:
        return type(value) is int  # not bool, not float
    if t is bool:
        return type(value) is bool
    return isinstance(value, t)


def _field(d: dict, key: str, types, where: str):
    if key not in d:
        raise ModelSpecError(f"{where} has no `{key}` entry.")
    value = d[key]
    _check_type(value, types, f"{where}: `{key}`")
    return value


def _show(value) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _int_array(values: list, where: str) -> np.ndarray:
    bad = [k for k, v in enumerate(values) if type(v) is not int]
    if bad:
        raise ModelSpecError(f"{where} must hold integers; entry {bad[0]} is {_show(values[bad[0]])}.")
    try:
        return np.array(values, dtype=np.int64).reshape(-1)
    except OverflowError:
        raise ModelSpecError(f"{where} has an integer too large for an index.") from None


def _index_array(values: list, size: int, where: str) -> np.ndarray:
    arr = _int_array(values, where)
    bad = np.flatnonzero((arr < 0) | (arr >= size))
    if bad.size:
        raise ModelSpecError(f"{where}: entry {bad[0]} is {arr[bad[0]]}, outside 0..{size - 1}.")
    return arr


def _float_array(values: list, where: str) -> np.ndarray:
    for k, v in enumerate(values):
        if type(v) not in (int, float):
            raise ModelSpecError(f"{where} must hold numbers; entry {k} is {_show(v)}.")
        if type(v) is float and not math.isfinite(v):
            raise ModelSpecError(f"{where} must hold finite numbers; entry {k} is {v}.")
    try:
        arr = np.array(values, dtype=float).reshape(-1)
    except OverflowError:
        raise ModelSpecError(f"{where} has a number too large for a float.") from None
    if not np.all(np.isfinite(arr)):
        raise ModelSpecError(f"{where} has a number too large for a float.")
    return arr


def _declare(action, where: str):
    """Run a DSL declaration; prefix its error with where the entry sits in the dict."""
    try:
        return action()
    except CycleError as err:
        raise CycleError(f"{where}: {err}") from None
    except ModelError as err:
        raise ModelSpecError(f"{where}: {err}") from None
