"""One road from a declaration and data to a :class:`~gdag.posterior.Posterior`, for queries and fits.

Observed leaf families of many rows (:mod:`gdag.observations`) are summed over
their rows and the rest is conditioned as the latent model; everything else
goes through the joint system of the observed pattern.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .cache import QueryCache
from .data import checked, data_vector, fully_observed, parameter_vector, without
from .observations import reducible_families
from .posterior import Posterior
from .resources import check_memory
from .spec import ModelSpec


def conditioned(spec: ModelSpec, queries: QueryCache, data: Mapping[str, Any], params: Mapping[str, Any] | None = None,
                theta: np.ndarray | None = None) -> Posterior:
    """The posterior of ``spec`` given ``data`` (validated here, once), at ``params`` or at the parameter vector ``theta``."""
    data = checked(spec, data)
    full = fully_observed(spec, data)
    leaves = reducible_families(queries.graph(spec), full) if full else ()
    if leaves:  # observed leaf families enter as sums over their rows (gdag.observations)
        latent_queries, spec_used = queries.latent(spec, leaves)
        data = without(spec, data, leaves)
    else:
        latent_queries, spec_used = queries, spec
    cm = latent_queries.compiled(spec_used)
    if theta is None:
        theta = parameter_vector(spec, cm, {} if params is None else params)
    x, observed = data_vector(spec_used, cm, data)
    if leaves:
        conditioning = latent_queries.reduced_conditioning(spec, cm, observed, leaves).with_data(full)
    else:
        conditioning = latent_queries.query_conditioning(cm, observed)
    queries.last_conditioning = conditioning
    check_memory(conditioning.factor_size(), spec.name)
    return Posterior(cm, conditioning, theta, x, spec.nodes)
