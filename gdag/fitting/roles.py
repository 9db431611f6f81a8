"""What each parameter entry does in a model, and the labels of the entries.

* **fixed effect** ``beta``: enters means only linearly (a column of ``F``)
  and is not declared positive; profiled out by GLS.
* **variance component**: a positive parameter used as an ``sd``.
* **coefficient**: a parameter scaling a node term (``rho * u0``).
* anything else that is used (a positive parameter in a mean, a parameter
  with several roles) is optimized numerically like a coefficient.

When every stochastic variable's sd carries an entry used only as an sd, the
common scale (the entry of most observed variables) is profiled out as in
lme4 and the other sds are optimized as ratios to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..compiler import CompiledModel
from ..errors import NotIdentifiedError
from ..pattern import Conditioning

# Variance components are evaluated at no less than this sd (relative to their
# scale): the precision form needs d > 0, and below it the objective is flat.
SD_FLOOR = 1e-6


@dataclass(frozen=True)
class Roles:
    """What each entry of ``theta`` does (boolean masks over ``theta``).

    ``fixed`` entries are profiled by GLS, ``free`` ones optimized; ``profiled``
    is the sd entry whose scale is profiled out (-1 for none).
    """

    fixed: np.ndarray  # indices
    free: np.ndarray  # indices
    sd: np.ndarray
    scale: np.ndarray
    linear: np.ndarray
    positive: np.ndarray
    profiled: int
    labels: tuple[str, ...]

    @property
    def pure_variance(self) -> np.ndarray:
        """Entries used only as an sd."""
        return self.sd & ~self.scale & ~self.linear

    @property
    def optimized(self) -> np.ndarray:
        """The free entries the optimizer moves: all but the profiled scale (indices, one per optimizer variable)."""
        return self.free[self.free != self.profiled]


def entry_labels(cm: CompiledModel) -> tuple[str, ...]:
    """``name`` for scalar parameters, ``name[i]`` for entries of vectors."""
    out: list[str] = []
    for i, name in enumerate(cm.param_names):
        out.extend([name] if cm.param_scalar[i] else [f"{name}[{k}]" for k in range(int(cm.param_size[i]))])
    return tuple(out)


def infer_roles(cm: CompiledModel, cond: Conditioning, profile: bool = True, leaf_rows: np.ndarray | None = None,
                leaf_linear: np.ndarray | None = None) -> Roles:
    """Classify every parameter entry; see the module docstring.

    Rows summed apart (:mod:`gdag.fitting.reduced`) count too: ``leaf_rows[k]`` of them have
    their sd set by entry ``k`` (the last, ``leaf_rows[n_theta]``, a constant sd), and
    ``leaf_linear`` marks the entries in their means.
    """
    n = cm.n_theta
    owner = np.repeat(np.arange(len(cm.param_names)), cm.param_size)
    positive = cm.param_positive[owner] if n else np.zeros(0, bool)
    sd = np.zeros(n, bool)
    sd_R = cm.sd_param[cond.R]
    sd[sd_R[sd_R >= 0]] = True
    leaf_rows = np.zeros(n + 1, np.int64) if leaf_rows is None else leaf_rows
    sd[:n] |= leaf_rows[:n] > 0
    scale = np.zeros(n, bool)
    scale[cm.B_scale[cm.B_scale >= 0]] = True
    linear = np.zeros(n, bool)
    if n:
        linear[np.unique(sp.coo_matrix(cm.F).col)] = True
        linear |= False if leaf_linear is None else leaf_linear
    fixed = linear & ~sd & ~scale & ~positive
    free = (sd | scale | linear) & ~fixed
    labels = entry_labels(cm)
    unused = np.flatnonzero(~(sd | scale | linear))
    if unused.size:
        one = unused.size == 1
        names = ", ".join(f"`{labels[k]}`" for k in unused[:10]) + (" ..." if unused.size > 10 else "")
        raise NotIdentifiedError(
            f"Parameter entr{'y' if one else 'ies'} {names} appear{'s' if one else ''} in no mean and no sd of a "
            f"stochastic node, so the data say nothing about {'it' if one else 'them'}. "
            f"Remove {'it' if one else 'them'} from the model or use {'it' if one else 'them'} in a mean or sd."
        )
    # Profile a common scale when every stochastic variable's sd carries an entry used
    # only as an sd: then d = sigma^2 d(t), sigma the entry of most observed variables.
    profiled = -1
    if profile and (sd_R.size or leaf_rows.any()) and np.all(sd_R >= 0) and leaf_rows[n] == 0 \
            and cond.O.size + leaf_rows.sum():
        pure = sd & ~scale & ~linear
        if np.all(pure[np.unique(np.concatenate([sd_R, np.flatnonzero(leaf_rows)]))]):
            profiled = int(np.argmax(np.bincount(cm.sd_param[cond.O], minlength=n) + leaf_rows[:n]))
    return Roles(np.flatnonzero(fixed), np.flatnonzero(free), sd, scale, linear, positive, profiled, labels)


def not_identified_message(labels) -> str:
    """The NotIdentifiedError message for fixed effects the data leave unidentified."""
    names = ", ".join(f"`{x}`" for x in labels[:12]) + (" ..." if len(labels) > 12 else "")
    return (
        f"The fixed effects {names} are not identified by the data: in the means of the observed "
        "nodes their columns are zero or linearly dependent (a parameter with no data, or collinear "
        "predictors), or nearly so in double precision (a covariate far from 0, as x + 1000 in a random slope: "
        "center it). Remove or merge them, or make them random effects."
    )


def exact_fit_error(model: str, names: list[str], quad: float) -> NotIdentifiedError:
    """The error for data the fixed effects fit exactly: the sds ``names`` go to 0, the likelihood to infinity."""
    sds = ", ".join(f"`{n}`" for n in names)
    return NotIdentifiedError(
        f"The data of `{model}` are fitted exactly (residual sum of squares {quad:.3g}, at the rounding of the "
        f"data), so the likelihood grows without bound as {sds} {'goes' if len(names) == 1 else 'go'} to 0 and "
        f"{'has' if len(names) == 1 else 'have'} no estimate. Check for a constant response, a response equal to "
        "a predictor, or as many fixed effects as observations."
    )
