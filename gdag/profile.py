"""Profile-likelihood intervals of a formula fit: lme4's ``confint(fit, method = "profile")``.

As lme4 does, gdag profiles the ML deviance (a REML fit is refitted by ML
first) over lme4's parameters: each block's SDs and correlations, the
residual ``sigma`` and the fixed effects.  For a parameter ``p`` the
profile is

    zeta(v) = sign(v - v_hat) sqrt(dev(v) - dev(v_hat)),

``dev(v)`` the ML deviance with ``p`` held at ``v`` and every other
parameter refitted, and the interval's ends solve ``zeta(v) = -+z`` with
``z`` the normal quantile of the level (1.96 for 95%).  gdag solves them by
secant steps on a scale where ``zeta`` is nearly straight (log for SDs and
``sigma``, atanh for correlations), each step one fit of a model declared
with ``p`` held:

* a fixed effect ``beta_j = v``: its column leaves ``X`` and ``v X_j``
  leaves the response;
* ``sigma = v``: the residual sd is the number ``v``;
* an SD of a block's term ``= v``: the term goes first in the block's chain,
  ``u_i ~ N(0, v^2)``, the others regressed on it;
* a correlation ``= r`` of terms ``i, j``: they go first, standardized,
  ``z_i ~ N(0, 1)``, ``z_j ~ N(r z_i, 1 - r^2)``, and enter the response
  as ``a_i z_i``, ``a_j z_j`` with free coefficients ``a`` (their SDs).

Each reordering spans the same covariance matrices (docs/formulas.md), so
the constrained optimum is the profile.  An SD whose profile does not reach
``z`` before 0 gets the bound 0, a correlation +-1, as lme4 reports them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.special import ndtri

from .errors import FitError
from .expr import dot
from .model import Model
from .tables import block_covariance

__all__ = ["profile_confint"]

TOL_ZETA = 1e-6  # |zeta - target| at which an end is accepted
MAX_STEPS = 40


def profile_confint(fit, level: float = 0.95) -> pd.DataFrame:
    """Profile intervals of every parameter of a formula fit, named as lme4's ``confint(..., oldNames = FALSE)``."""
    design = fit.design
    if design is None:
        raise FitError("confint(method='profile') needs a fit of a model from gdag.from_formula.")
    if fit.criterion != "ml":
        fit = design.build(fit.model_name).fit(design.data, method="ml")
    if fit.singular:
        raise FitError(f"The fit is singular ({', '.join(fit.boundary)} at 0): profile intervals are not available; "
                       "use method='wald' for the fixed effects.")
    z = float(ndtri(0.5 + level / 2))
    base = -2.0 * fit.loglik
    rows = {}
    for target in _targets(fit):
        ends = [_end(fit, target, base, side * z) for side in (-1.0, 1.0)]
        rows[target["name"]] = ends
    low, high = f"{100 * (1 - level) / 2:.3g} %", f"{100 * (1 + level) / 2:.3g} %"
    return pd.DataFrame.from_dict(rows, orient="index", columns=[low, high])


# ------------------------------------------------------------ the parameters


def _targets(fit) -> list[dict]:
    """lme4's profiled parameters in its order: per block sd, cor... (column-major), sigma, fixed effects."""
    out, design = [], fit.design
    for b, block in enumerate(design.blocks):
        S = block_covariance(fit, block)
        sd = np.sqrt(np.diag(S))
        for i, term in enumerate(block.terms):
            out.append({"kind": "sd", "block": b, "i": i, "estimate": sd[i], "scale": "log",
                        "name": f"sd_{term}|{block.group}"})
            for j in range(i + 1, len(block.terms)):
                out.append({"kind": "cor", "block": b, "i": i, "j": j, "estimate": S[i, j] / (sd[i] * sd[j]),
                            "scale": "atanh", "name": f"cor_{block.terms[j]}.{term}|{block.group}"})
    out.append({"kind": "sigma", "estimate": fit.params[design.sigma], "scale": "log", "name": "sigma"})
    if design.beta is not None:
        beta, se = np.atleast_1d(fit.params[design.beta]), np.atleast_1d(fit.stderr[design.beta])
        for j, name in enumerate(design.fixed_names):
            out.append({"kind": "beta", "j": j, "estimate": beta[j], "se": se[j], "scale": "identity", "name": name})
    return out


_TO = {"log": math.log, "atanh": math.atanh, "identity": float}
_FROM = {"log": math.exp, "atanh": math.tanh, "identity": float}
_FIRST_STEP = {"log": 0.2, "atanh": 0.3}


def _end(fit, target: dict, base: float, goal: float) -> float:
    """The value where zeta reaches ``goal``, by secant steps in the target's scale."""
    to, back = _TO[target["scale"]], _FROM[target["scale"]]
    t_hat = to(target["estimate"])
    step = target["se"] * abs(goal) if target["kind"] == "beta" else _FIRST_STEP[target["scale"]] * abs(goal)
    bound = _bound(target, t_hat, goal)
    zeta = lambda t: _zeta(fit, target, back(t), base, t > t_hat) - goal  # noqa: E731
    t0, f0 = t_hat, -goal
    t1 = t_hat + math.copysign(step, goal)
    if bound is not None and (t1 - bound[0]) * goal > 0:
        t1 = 0.5 * (t_hat + bound[0])
    f1 = zeta(t1)
    for _ in range(MAX_STEPS):
        if abs(f1) < TOL_ZETA:
            return back(t1)
        t2 = t1 - f1 * (t1 - t0) / (f1 - f0) if f1 != f0 else t1 + (t1 - t0)
        t2 = min(max(t2, t1 - 4 * step), t1 + 4 * step)  # a flat stretch must not fling the secant away
        if (t2 - t_hat) * goal <= 0:  # never cross back over the estimate
            t2 = 0.5 * (t1 + t_hat)
        if bound is not None and (t2 - bound[0]) * goal >= 0:  # past the bound: is the profile flat up to it?
            if abs(zeta(bound[0]) + goal) < abs(goal):
                return bound[1]
            t2 = 0.5 * (t1 + bound[0])
        t0, f0, t1, f1 = t1, f1, t2, zeta(t2)
    raise FitError(f"The profile of `{target['name']}` did not reach zeta = {goal:.3g} in {MAX_STEPS} steps.")


def _bound(target: dict, t_hat: float, goal: float):
    """(where the search stops in the target's scale, the value reported there): SDs 0, correlations +-1."""
    if target["kind"] in ("sd", "sigma") and goal < 0:
        return (t_hat - 14.0, 0.0)
    if target["kind"] == "cor":
        return (math.copysign(7.0, goal), math.copysign(1.0, goal))
    return None


def _zeta(fit, target: dict, value: float, base: float, above: bool) -> float:
    deviance = _constrained_deviance(fit, target, value)
    return math.copysign(math.sqrt(max(deviance - base, 0.0)), 1.0 if above else -1.0)


# -------------------------------------------------------- constrained models


def _constrained_deviance(fit, target: dict, value: float) -> float:
    """The ML deviance with the target held at ``value``, all else refitted (a model declared for it)."""
    design = fit.design
    X, codes, Z = design.train
    y = np.asarray(design.data[design.response], dtype=float)
    m, init = Model("profile"), {}
    keep = list(range(X.shape[1]))
    if target["kind"] == "beta":
        keep.remove(target["j"])
        y = y - value * X[:, target["j"]]
    beta = np.atleast_1d(fit.params[design.beta]) if design.beta is not None else np.zeros(0)
    mean = np.zeros(len(y))
    if keep:
        mean = dot(X[:, keep], m.param("beta", size=len(keep))) + mean
        init["beta"] = beta[keep]
    plates = {g.name: m.plate(g.plate, len(g.labels)) for g in design.groups}
    for b, block in enumerate(design.blocks):
        held = target if target.get("block") == b else None
        mean = mean + _declare_block(m, fit, b, block, held, value, plates[block.group], codes[block.group], Z[b], init)
    sigma = value if target["kind"] == "sigma" else m.param("sigma", positive=True)
    if target["kind"] != "sigma":
        init["sigma"] = fit.params[design.sigma]
    m.normal("y", mean, sigma, plate=m.plate("obs", len(y)))
    return -2.0 * m.fit({"y": y}, method="ml", init=init).loglik


def _declare_block(m: Model, fit, b: int, block, held, value: float, plate, codes, z, init: dict):
    """One block's nodes, in an order that puts the held term(s) first; returns its part of the response mean."""
    k = len(block.terms)
    first = [] if held is None else [held["i"]] + ([held["j"]] if held["kind"] == "cor" else [])
    order = first + [t for t in range(k) if t not in first]
    S = block_covariance(fit, block)[np.ix_(order, order)]
    L = np.linalg.cholesky(S)
    d = np.diag(L) ** 2
    C = np.eye(k) - np.linalg.solve(L / np.sqrt(d), np.eye(k))  # S = (I - C)^-1 diag(d) (I - C)^-T
    nodes, mean = [], 0.0
    for p, t in enumerate(order):
        name = f"u{b}_{p}"
        if held is not None and held["kind"] == "cor" and p < 2:  # standardized pair with correlation `value`
            node = m.normal(name, value * nodes[0] if p == 1 else 0.0, math.sqrt(1 - value**2) if p == 1 else 1.0,
                            plate=plate)
            scale = m.param(f"a{b}_{p}")
            init[scale.name] = math.sqrt(S[p, p])
        else:
            parents = 0.0
            for q in range(p):
                if held is not None and held["kind"] == "cor" and q < 2:  # regress on the standardized pair
                    coef = C[p, q] * math.sqrt(S[q, q])
                else:
                    coef = C[p, q]
                c = m.param(f"c{b}_{p}_{q}")
                init[c.name] = coef
                parents = c * nodes[q] + parents
            if p == 0 and held is not None and held["kind"] == "sd":
                sd = value
            else:
                sd = m.param(f"s{b}_{p}", positive=True)
                init[sd.name] = math.sqrt(d[p])
            node = m.normal(name, parents, sd, plate=plate)
            scale = None
        nodes.append(node)
        col = z[:, t]
        term = node[codes] if np.all(col == 1.0) else node.take(codes, where=col != 0) * col
        mean = (scale * term if scale is not None else term) + mean
    return mean
