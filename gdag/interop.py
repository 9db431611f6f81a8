"""Exports to other tools: ArviZ InferenceData (:func:`to_arviz`).

ArviZ is an optional extra (``pip install "gdag[arviz]"``); it is imported
only when :func:`to_arviz` is called.
"""

from __future__ import annotations

import warnings

import numpy as np

from .errors import ModelError
from .fitting.fit import Fit
from .posterior import Posterior

__all__ = ["to_arviz"]


def to_arviz(post_or_fit, draws: int = 1000, seed=0):
    """An ArviZ ``InferenceData`` of exact posterior draws of a :class:`~gdag.Posterior` or :class:`~gdag.Fit`.

    Parameters
    ----------
    post_or_fit : Posterior or Fit
        For a Fit, its posterior at the estimates (:attr:`Fit.posterior`);
        the estimates themselves go to the ``constant_data`` group and the
        fit's method and log-likelihood to the attributes.
    draws : int
        Number of exact joint draws (:meth:`Posterior.sample`), one chain.
    seed : None, int or numpy Generator
        As for :meth:`Posterior.sample`.

    Returns
    -------
    arviz.InferenceData
        ``posterior``: every node with an unobserved entry, shaped
        ``(chain=1, draw, entry)`` (scalars ``(chain, draw)``).  The entry
        dimension is named after the node's plate, with the plate's labels
        as coordinates where it has them (``m.plate_from``, ``labels=``),
        else integers 0, 1, ...; nodes on the same plate share it.
        ``observed_data``: every node with an observed entry, its data
        (NaN where unobserved).  Draws are exact, independent and
        identically distributed: no warm-up, no autocorrelation.

    Raises
    ------
    ImportError
        ArviZ is not installed.
    """
    fit = post_or_fit if isinstance(post_or_fit, Fit) else None
    post = fit.posterior if fit is not None else post_or_fit
    if not isinstance(post, Posterior):
        raise ModelError(f"gdag.to_arviz takes a gdag.Posterior or a gdag.Fit; got {type(post_or_fit).__name__}.")
    try:
        with warnings.catch_warnings():  # arviz 0.2x announces its refactor with a FutureWarning on import
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
            import xarray
    except ImportError as exc:
        raise ImportError('gdag.to_arviz needs ArviZ, an optional extra: pip install "gdag[arviz]" '
                          '(or pip install arviz).') from exc
    cm, cond = post._cm, post._cond
    coords: dict = {}
    dims: dict = {}
    observed: dict = {}
    latent = []
    for name in [*cm.family_names, *cond.leaf_data]:
        if name in cond.leaf_data:
            plate, values = cond.leaf_plates[name], np.asarray(cond.leaf_data[name], dtype=float)
        else:
            f = cm.family(name)
            plate, values = cm.family_plate[f], post._x[cm.span(name)]
            if np.isnan(values).any():
                latent.append(name)
        dims[name] = _entry_dim(name, plate, values.size, cm.plate_labels, coords)
        if not np.isnan(values).all():
            observed[name] = values
    sample = post.sample(draws, seed=seed, nodes=latent) if latent else {}

    def dataset(arrays: dict, lead: tuple) -> xarray.Dataset:
        variables = {}
        for name, values in arrays.items():
            entry = dims[name]
            shape = tuple(np.shape(values)[:len(lead)]) + (() if entry is None else (-1,))
            variables[name] = (lead + (() if entry is None else (entry,)), np.reshape(values, shape))
        used = {dims[name] for name in arrays if dims[name] is not None}
        return xarray.Dataset(variables, coords={d: coords[d] for d in used})

    draws_ds = dataset({k: v[None] for k, v in sample.items()}, ("chain", "draw"))
    draws_ds = draws_ds.assign_coords(chain=[0], draw=np.arange(int(draws)))
    attrs = {"inference_library": "gdag", "model": cm.name, "exact_draws": 1}
    if fit is not None:
        attrs.update(method=fit.method, loglik=fit.loglik, converged=int(fit.converged))
    draws_ds.attrs.update(attrs)
    groups = {"posterior": draws_ds, "observed_data": dataset(observed, ())}
    if fit is not None:
        groups["constant_data"] = xarray.Dataset(
            {k: ((f"{k}_dim_0",) if np.ndim(v) else (), np.asarray(v)) for k, v in fit.params.items()})
    if hasattr(arviz, "InferenceData"):
        return arviz.InferenceData(**groups)
    return xarray.DataTree.from_dict(groups)  # ArviZ 1.x works on xarray DataTrees


def _entry_dim(name: str, plate, size: int, plate_labels: dict, coords: dict) -> str | None:
    """The dimension of ``name``'s entries: its plate's (labels as coordinates), else ``{name}_dim_0``; None for scalars."""
    if plate is None and size == 1:
        return None
    labels = plate_labels.get(plate)
    if plate is not None and (labels is None or len(labels) == size):
        dim, values = plate, (np.arange(size) if labels is None else labels.to_numpy())
    else:
        dim, values = f"{name}_dim_0", np.arange(size)
    if dim in coords and len(coords[dim]) != size:  # a plate whose nodes differ in size: one dim per node
        dim, values = f"{name}_dim_0", np.arange(size)
    coords.setdefault(dim, values)
    return dim
