"""Validate what a query is given: data and parameter values, into the vectors the stages use.

``data`` maps node names (or nodes) to values, NaN for unobserved entries;
``params`` maps parameter names (or parameters) to values.  Both are checked
against a :class:`~gdag.spec.ModelSpec` and its compiled form, with errors
that name the node or parameter at fault.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from .compiler import CompiledModel
from .errors import DataError, ParamError
from .expr import as_float_array, is_boolean
from .frame import numeric
from .spec import ModelSpec, Node, Param, check_param_value
from .timing import timed


def own(key, declared: Mapping | None, model: str, where: str, error=DataError):
    """The name behind ``key``; a node or parameter must be the very one ``declared`` holds under its name.

    ``declared`` maps names to the records of the model ``model`` (None: not
    known, nothing to check); ``where`` starts the message (e.g. "`data`",
    "do()").  The one check that a node of another model is not taken for one
    of this model's by its name (data, params, interventions, queries).
    """
    if not isinstance(key, (Node, Param)):
        return key
    if declared is not None and declared.get(key.name) is not key:
        same = getattr(getattr(key, "model", None), "name", None) == model  # do() and from_dict make new models
        raise error(f"{where} uses `{key.name}` from another model than `{model}`"
                    f"{' (one of the same name: a model made by do() or from_dict has nodes of its own)' if same else ''}"
                    f". Use that model's own {'parameter' if key.is_param else 'node'} or the name '{key.name}'.")
    return key.name


def _key_name(model: ModelSpec, key, error, where: str):
    """The name behind a ``data``/``params`` key: a name, or a node or parameter of ``model``."""
    declared = (model.params if key.is_param else model.nodes) if isinstance(key, (Node, Param)) else None
    return own(key, declared, model.name, f"`{where}`", error)


def declared(model: ModelSpec, key, params: bool, where: str | None = None):
    """``(name, record)`` of a ``params`` (``params=True``, also ``init``) or ``data`` key, refused when it is not one."""
    error, where = (ParamError, where or "params") if params else (DataError, where or "data")
    name = _key_name(model, key, error, where)
    found = (model.params if params else model.nodes).get(name) if isinstance(name, str) else None
    if found is None:
        other = model.nodes if params else model.params
        hint = ((" It is a node; observe it through `data`." if params else
                 " It is a parameter; pass its value in `params`.") if name in other else "")
        what = "a parameter" if params else "a node"
        raise error(f"`{where}` names `{name}`, which is not {what} of model `{model.name}`.{hint}")
    return name, found


def parameter_vector(model: ModelSpec, cm: CompiledModel, params: Mapping[str, Any]) -> np.ndarray:
    """Validate ``params`` (name -> value) and return ``theta``."""
    if not isinstance(params, Mapping):
        raise ParamError(f"`params` must be a mapping from parameter names to values; got {type(params).__name__}.")
    checked = {}
    for key, value in params.items():
        name, param = declared(model, key, params=True)
        checked[name] = check_param_value(param, value)
    return cm.theta(checked)


class Data(dict):
    """``data`` validated once (:func:`checked`): node name -> a new float array of the node's length, NaN unobserved."""


def checked(model: ModelSpec, data: Mapping[str, Any]) -> Data:
    """Validate ``data`` (keys and values) once; a :class:`Data` is returned as it is.

    :func:`fully_observed`, :func:`without` and :func:`data_vector` take either;
    given a :class:`Data` they validate nothing again.
    """
    if isinstance(data, Data):
        return data
    if not isinstance(data, Mapping):
        if type(data).__module__.split(".")[0] == "dask":  # rows on a cluster: their own road, named
            raise DataError(
                f"`data` is a dask {type(data).__name__}. A model declared in the DSL takes rows on a cluster through "
                "gdag.distributed.posterior(m, ddf, rows) and gdag.distributed.fit(m, ddf, rows), where rows(m, part) "
                "declares one partition's observed families; gdag.lmer and gdag.from_formula take a dask DataFrame "
                "directly (docs/larger-than-memory.md).")
        raise DataError(f"`data` must be a mapping from node names to values, or a DataFrame; got {type(data).__name__}.")
    out = Data()
    for key, value in data.items():
        name, node = declared(model, key, params=False)
        if name in out:  # a node and its name both given: which values are meant?
            raise DataError(f"`data` names `{name}` twice (as a node and as a name); give it once.")
        out[name] = node_values(node, value)
    return out


@timed("pattern")
def data_vector(model: ModelSpec, cm: CompiledModel, data: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``data`` (validated by :func:`checked` unless it already was) into ``x`` and the observed mask.

    Entries with sd 0 (deterministic, or set by ``do()``) cannot be observed:
    the one refusal of both, worded for each.
    """
    x = np.full(cm.n, np.nan)
    det = cm.deterministic
    for name, values in checked(model, data).items():
        span = cm.span(name)
        clash = np.flatnonzero(~np.isnan(values) & det[span])
        if clash.size:
            raise _observed_deterministic(model.nodes[name], clash)
        x[span] = values
    return x, ~np.isnan(x)


def _observed_deterministic(node: Node, clash: np.ndarray) -> DataError:
    """The error for data at entries of ``node`` that have sd 0: set by ``do()``, or declared so."""
    fixed = [iv.entries for iv in getattr(node.model, "interventions", ()) if iv.name == node.name and iv.kind == "set"]
    if fixed and np.isin(clash, np.concatenate(fixed)).all():
        return DataError(
            f"Node `{node.name}` is set by do() at entries {clash[:5].tolist()}, so the intervened model does not "
            "observe it there. Leave those entries out of `data` (NaN); to condition on the factual values "
            "and then intervene, use m.posterior(data).counterfactual({...})."
        )
    return DataError(
        f"Node `{node.name}` has sd 0 at entries {clash[:5].tolist()}, so it is deterministic and cannot be "
        "observed. Give it a positive sd (measurement error) or observe its parents."
    )


@timed("pattern")
def fully_observed(model: ModelSpec, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The families ``data`` observes at every entry: name -> values (validated by :func:`checked`)."""
    if not isinstance(data, Mapping):
        return {}  # data_vector says what is wrong
    return {name: values for name, values in checked(model, data).items() if not np.isnan(values).any()}


def without(model: ModelSpec, data: Mapping[str, Any], names) -> dict:
    """``data`` less the entries that name (by name or node) one of ``names`` (a :class:`Data` stays one)."""
    if isinstance(data, Data):
        return Data((name, values) for name, values in data.items() if name not in names)
    out = {}
    for key, value in data.items():
        name = _key_name(model, key, DataError, "data")
        if name not in names:
            out[key] = value
    return out


def node_values(node: Node, value) -> np.ndarray:
    value = numeric(value)  # a pandas column: floats with NaN for missing entries
    if isinstance(value, np.ma.MaskedArray):  # masked entries are unobserved, as NaN entries are
        value = value.astype(float).filled(np.nan) if value.dtype.kind in "iuf" else value.filled()
    if isinstance(value, (str, bytes)) or value is None:
        raise DataError(f"Data for node `{node.name}` must be numeric; got {value!r:.60}.")
    if isinstance(value, Mapping) or sp.issparse(value):
        raise DataError(f"Data for node `{node.name}` must be a number or a 1-d array; got a {type(value).__name__}.")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as err:  # ragged nested lists
        raise DataError(
            f"Data for node `{node.name}` must be a number or a 1-d array of {node.size}; got a ragged or odd sequence."
        ) from err
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == object):
        raise DataError(f"Data for node `{node.name}` must be numeric; got dtype {arr.dtype}.")
    if np.iscomplexobj(arr) or (arr.dtype == object and any(isinstance(v, complex) for v in arr.reshape(-1))):
        raise DataError(f"Data for node `{node.name}` must be real; got complex values.")
    if arr.dtype == object and is_boolean(arr) or isinstance(value, (list, tuple)) and is_boolean(value):
        raise DataError(f"Data for node `{node.name}` must be numeric; it has True/False entries.")
    arr = as_float_array(arr, DataError, f"Data for node `{node.name}` has non-numeric entries.")
    arr = arr.reshape(-1) if arr.ndim == 0 else arr
    if arr.ndim != 1 or arr.shape[0] != node.size:
        raise DataError(
            f"Data for node `{node.name}` has shape {np.shape(value)}; it needs {node.size} "
            f"value{'s' if node.size > 1 else ''} (NaN for unobserved entries)."
        )
    bad = np.flatnonzero(np.isinf(arr))
    if bad.size:
        raise DataError(
            f"Data for node `{node.name}` has infinite values at entries {bad[:5].tolist()}; "
            "use NaN for unobserved entries."
        )
    return arr
