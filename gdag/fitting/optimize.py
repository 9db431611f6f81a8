"""Optimizers of the profiled objective: Fisher scoring, L-BFGS-B and EM, and the fit log.

Each runner takes an :class:`~gdag.fitting.objective.Objective`, a starting
point of its optimizer variables (:func:`starting_point`), a tolerance, an
iteration limit and a :class:`FitLog`, which records every evaluation and
keeps the best; it returns ``(converged, iterations, message)``.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

from ..compiler import CompiledModel
from ..data import declared
from ..errors import FitError, NotIdentifiedError
from ..pattern import Conditioning
from ..spec import ModelSpec, check_param_value
from .boundary import Held, HeldLog, at_optimum, boundary_sds, off_saddle, scaling_nothing
from .monitor import STOPPED, FitStopped
from .objective import EXACT_FIT, MAX_DEPTH, Evaluation, Objective
from .roles import SD_FLOOR, Roles, exact_fit_error

# An sd below this, relative to its scale, is at its boundary 0 (lme4's isSingular tolerance on theta).
SINGULAR_TOL = 1e-4
# Scoring corrects its curvature by the secant of the last step when that step moved no variable by more than this (relative).
SECANT_STEP = 0.1
# Scoring stops when STALL iterations brought no progress with an sd at 0 (then held there: optimize()).
STALL = 5
STALLED = "no progress with an sd at 0"


class FitLog:
    """Every evaluation's ``(theta, objective)`` and the best point so far."""

    def __init__(self, monitor: Callable | None = None):
        self.entries: list = []
        self.best: Evaluation | None = None
        self.v_best: np.ndarray | None = None
        self.curved = None
        self.monitor = monitor  # called with (theta, objective) after each record (gdag.fitting.monitor)

    def record(self, v, ev: Evaluation) -> Evaluation:
        self.entries.append((ev.theta.copy(), ev.objective))
        if ev.curvature is not None:  # the last point with curvature, for check_identified
            self.curved = (np.array(v, dtype=float), ev.curvature, ev.gradient)
        if self.best is None or ev.objective < self.best.objective:
            self.best, self.v_best = ev, np.array(v, dtype=float)
        if self.monitor is not None:
            self.monitor(ev.theta, ev.objective)
        return ev

    def best_text(self, labels, shown: int = 8) -> str:
        """The best point's parameters, the first ``shown`` of them, for messages."""
        pairs = list(zip(labels, self.best.theta))[:shown]
        return "{" + ", ".join(f"{k}: {v:.6g}" for k, v in pairs) + ("..." if len(labels) > shown else "") + "}"


def starting_point(spec: ModelSpec, cm: CompiledModel, cond: Conditioning, x: np.ndarray, roles: Roles,
                   init: Mapping | None, leaves=None) -> tuple[np.ndarray, np.ndarray]:
    """The optimizer's starting variables and their scales (one each per entry of ``roles.optimized``).

    Default starting values are the values given to ``m.param``, else relative
    sds ``1/sqrt(k)`` for ``k`` variance components (together as much variance
    as the residual; lme4 starts each at 1, which took more steps on our
    cases), sds equal to the data's spread when nothing is profiled, and
    coefficients 0.  An sd whose variables enter the observed ones through covariates (a random slope
    ``age * u1[g]``) is optimized times their root mean square (scale ``1 / rms``): it starts with the same
    share of the variance (Orthodont's ``(age | Subject)`` in 9 evaluations instead of 26), and its floor,
    hold and singular tolerance do not depend on the covariate's units (``x * 1e6`` had been 7.5 low)."""
    given = np.full(cm.n_theta, np.nan)
    for i, name in enumerate(cm.param_names):
        if cm.param_default[i] is not None:
            given[cm.param_span(name)] = cm.param_default[i]
    if init is not None:
        if not isinstance(init, Mapping):
            raise FitError(f"`init` must be a mapping from parameter names to values; got {type(init).__name__}.")
        for key, value in init.items():
            name, param = declared(spec, key, params=True, where="init")
            given[cm.param_span(name)] = check_param_value(param, value)
    x_R = x[cond.R]
    observed = x_R[np.isfinite(x_R)] if cond.n_unobserved else x_R
    spread = float(np.std(observed)) if leaves is None and observed.size > 1 else 1.0 if leaves is None else leaves.spread
    spread = spread if spread > 0 else 1.0
    prof = roles.profiled
    sigma0 = given[prof] if prof >= 0 and np.isfinite(given[prof]) else None
    free = roles.optimized
    ratio0 = 1.0 / math.sqrt(max(1, int(np.count_nonzero(roles.sd[free]))))
    rms = _design_rms(cm, np.isfinite(x), None if leaves is None else leaves.coefficients)
    v0, scales = np.zeros(free.shape[0]), np.ones(free.shape[0])
    for i, entry in enumerate(free):
        g = given[entry]
        if roles.sd[entry]:
            if prof >= 0:  # ratio to the profiled sd (lme4's theta), times the covariate's rms
                scales[i], v0[i] = 1.0 / rms[entry], g / (sigma0 or spread) * rms[entry] if np.isfinite(g) else ratio0
            else:  # sd over the data's spread
                scales[i] = g if np.isfinite(g) else spread / rms[entry]
                v0[i] = 1.0
        elif roles.positive[entry]:
            scales[i] = g if np.isfinite(g) else 1.0
            v0[i] = 1.0
        else:
            v0[i] = g if np.isfinite(g) else 0.0
    return v0, scales


def _design_rms(cm: CompiledModel, observed: np.ndarray, leaves=None) -> np.ndarray:
    """Per parameter entry: the root mean square of the constant coefficients with which the variables whose sd
    it sets enter observed variables (1 where there are none); ``leaves``: (count, square) of rows summed apart."""
    k = (cm.B_scale < 0) & observed[cm.B_rows] & (cm.sd_param[cm.B_cols] >= 0)
    entry = cm.sd_param[cm.B_cols[k]]
    count = np.bincount(entry, minlength=cm.n_theta) + (0 if leaves is None else leaves[0])
    square = np.bincount(entry, weights=cm.B_base[k] ** 2, minlength=cm.n_theta) + (0 if leaves is None else leaves[1])
    rms = np.sqrt(square / np.maximum(count, 1))
    return np.where((count > 0) & (rms > 0) & np.isfinite(rms), rms, 1.0)


def run_lbfgs(obj: Objective, v0: np.ndarray, tol: float, max_iter: int, log: FitLog):
    """L-BFGS-B on the profiled objective (exact gradients, or finite differences where they are not)."""

    memo: dict = {}

    def fun(v):
        key = np.asarray(v, dtype=float).tobytes()
        if key not in memo:
            memo.clear()
            memo[key] = log.record(v, obj.evaluate(v, gradient=obj.exact_gradient))
        ev = memo[key]
        return (ev.objective, ev.gradient) if obj.exact_gradient else ev.objective

    bounds = [(lo if np.isfinite(lo) else None, None) for lo in obj.lower]
    v0 = np.maximum(np.asarray(v0, dtype=float), obj.lower)
    fun(v0)
    scale = max(1.0, abs(log.best.objective))
    options = {"maxiter": max_iter, "maxfun": 4 * max_iter, "ftol": tol * 1e-3, "gtol": 1e-7 * scale, "maxcor": 20}
    import scipy.optimize as so  # here, not at import: it is most of `import gdag`'s time otherwise

    res = so.minimize(fun, v0, jac=obj.exact_gradient, method="L-BFGS-B", bounds=bounds, options=options)
    return bool(res.success), int(res.nit), str(res.message)


def run_scoring(obj: Objective, v0: np.ndarray, tol: float, max_iter: int, log: FitLog):
    """Projected, damped Fisher scoring with the average-information matrix, corrected by secants.

    The variables are (relative) sds ``v >= 0`` and coefficients (with exact
    gradients and an average-information matrix:
    :func:`gdag.fitting.derivatives.curvature`).  Each iteration solves
    ``H d = -g`` over the variables not held at their bound (held: at 0 with a
    gradient pushing outwards), caps the step at 10 times the variables'
    size, and halves it until the objective falls (Armijo).  ``H`` is the
    average-information matrix, corrected after a step of at most
    ``SECANT_STEP`` (relative) so that it reproduces the change of the
    gradient along that step (a symmetric rank-one secant update): where the likelihood is flat the average information can
    be twice the true curvature (the Nile local level), and scoring then only
    halves the distance to the optimum per step.

    Stopping: once the predicted decrease ``g^T d / 2`` is below
    ``1000 tol * max(1, |objective|)``, the full step is taken, checked by the
    objective alone (no gradient), and ends the fit when the decrease it
    brought agrees with the prediction closely enough that the distance left
    to the optimum, about ``|actual / predicted - 1|`` times the step, is
    below ``sqrt(tol)`` relative to the variables (or when the step itself is
    that small).  A predicted decrease below ``tol * max(1, |objective|)``
    with no such step ends it too.
    """
    lower = obj.lower
    v = np.maximum(np.asarray(v0, dtype=float), lower)
    ev = log.record(v, obj.evaluate(v, gradient=True, curvature=True))
    xtol = math.sqrt(tol)
    secant = None  # (step, change of the gradient) of the last step, when small
    history = [ev.objective]
    for it in range(1, max_iter + 1):
        g = ev.gradient
        H = _secant_update(ev.curvature, *secant) if secant is not None else ev.curvature
        d = _scoring_step(v, g, H, lower)
        decrease = -0.5 * float(g @ d)
        size = max(1.0, abs(ev.objective))
        moves = _relative_step(v, d)
        if decrease <= tol * size and moves <= xtol:
            return True, it - 1, "predicted decrease and step below tolerance"
        if decrease <= 1e3 * tol * size and np.all(v + d >= lower):
            # Close: take the full step, checking only that the objective falls as predicted.
            ev_new = log.record(v + d, obj.evaluate(v + d))
            actual = ev.objective - ev_new.objective
            if actual >= 0.5 * decrease and abs(actual - decrease) * moves <= xtol * decrease:
                return True, it, "final Newton step"
            if decrease <= tol * size and actual >= -tol * size:
                return True, it, "predicted decrease below tolerance"
        cap = 10.0 * np.maximum(np.abs(v), 1.0)
        alpha = min(1.0, float(np.min(cap / np.maximum(np.abs(d), 1e-300))))
        for _ in range(40):
            v_new = np.maximum(v + alpha * d, lower)
            try:
                ev_new = log.record(v_new, obj.evaluate(v_new, gradient=True, curvature=True))
            except NotIdentifiedError:  # a trial point too extreme to factor: shorten the step
                alpha *= 0.5
                continue
            if ev_new.objective <= ev.objective + 1e-4 * float(g @ (v_new - v)):
                break
            alpha *= 0.5
        else:
            return False, it, "line search failed"
        history.append(ev_new.objective)
        if len(history) > STALL and history[-STALL - 1] - history[-1] <= tol * size and (isinstance(obj, Held) or np.any(
                obj.is_sd & (v_new < SINGULAR_TOL))):  # no progress, an sd at 0: in its round-off (gdag.fitting.boundary)
            return False, it, STALLED
        near = alpha * moves <= SECANT_STEP  # a step small enough for a quadratic model
        secant = (v_new - v, ev_new.gradient - g) if near else None
        v, ev = v_new, ev_new
    return False, max_iter, "iteration limit reached"


def _scoring_step(v: np.ndarray, g: np.ndarray, H: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """``-H^{-1} g`` over the variables not held at their bound (scaled steepest descent where that is no descent).

    A variable bounded at 0 is held from ``SD_FLOOR`` down, where the objective no longer depends on it.
    """
    held = (v <= np.where(lower == 0, SD_FLOOR, lower)) & (g > 0)
    free = ~held
    d = np.zeros_like(v)
    if free.any():
        Hf, gf = H[np.ix_(free, free)], g[free]
        ridge = 1e-12 * max(1e-300, float(np.max(np.abs(np.diag(Hf)))))
        try:
            df = np.linalg.solve(Hf + ridge * np.eye(Hf.shape[0]), -gf)
        except np.linalg.LinAlgError:
            df = None
        if df is None or not np.all(np.isfinite(df)) or gf @ df >= 0:  # scaled steepest descent
            df = -gf / np.maximum(np.abs(np.diag(Hf)), ridge)
        d[free] = df
    return d


def _relative_step(v: np.ndarray, d: np.ndarray) -> float:
    """The largest step relative to its variable (at least SINGULAR_TOL, the size below which an sd is at 0)."""
    return float(np.max(np.abs(d) / np.maximum(np.abs(v), SINGULAR_TOL), initial=0.0))


def _secant_update(H: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``H`` plus the symmetric rank-one term that makes ``H s = y``, if that keeps it positive definite."""
    r = y - H @ s
    denom = float(r @ s)
    if not (float(s @ y) > 0 and abs(denom) > 1e-8 * np.linalg.norm(r) * np.linalg.norm(s)):
        return H
    H_new = H + np.outer(r, r) / denom
    try:
        np.linalg.cholesky(H_new)
    except np.linalg.LinAlgError:
        return H
    return H_new


def run_em(obj: Objective, v0: np.ndarray, tol: float, max_iter: int, log: FitLog):
    """Expectation-maximization for variance components (nothing profiled).

    E-step: at the current sds (fixed effects at their GLS values), the
    posterior mean residual ``e_k`` and variance ``h_k`` of every stochastic
    variable's noise (REML: under the posterior that includes the fixed
    effects).  M-step, closed form: ``theta_j^2 = mean_{k governed by j}
    (e_k^2 + h_k) / base_k^2``.  Each iteration cannot lower the likelihood;
    stops when its relative change is below ``tol``.
    """
    if not (obj.pure_variance and obj.exact_gradient):
        others = [obj.roles.labels[k] for k in obj.free if not obj.roles.pure_variance[k]]
        raise FitError(
            "EM estimates variance components only, and "
            + ", ".join(f"`{x}`" for x in others[:6])
            + (" is not one" if len(others) == 1 else " are not")
            + " (a fixed effect in a mean, or a coefficient scaling a node term). Use method='ml' or method='reml'."
        )
    cm = obj.cm
    base2 = cm.sd_base[obj.cond.R] ** 2
    rows = obj.sd_R >= 0
    v, previous = np.asarray(v0, dtype=float), None
    observed = np.ones(obj.x_R.shape[0], dtype=bool)
    observed[obj.u_in_R] = False
    for it in range(1, max_iter + 1):
        ev = log.record(v, obj.evaluate(v, moments=True))
        loglik = -0.5 * ev.objective
        leaf_second, leaf_counts = obj.leaf_moments(ev)
        if it == 1 and not obj.leaf_classes and np.sum(ev.e[observed] ** 2) <= EXACT_FIT**2 * np.sum(obj.x_R[observed] ** 2):
            raise exact_fit_error(cm.name, [obj.roles.labels[k] for k in obj.free], float(np.sum(ev.e[observed] ** 2)))
        if previous is not None and abs(loglik - previous) <= tol * max(1.0, abs(loglik)):
            return True, it - 1, "relative change of the log-likelihood below tolerance"
        previous = loglik
        second = leaf_second + np.bincount(obj.sd_R[rows], weights=(ev.e[rows] ** 2 + ev.h[rows]) / base2[rows],
                                           minlength=cm.n_theta)
        counts = leaf_counts + np.bincount(obj.sd_R[rows], minlength=cm.n_theta)
        theta2 = second[obj.free] / counts[obj.free]
        v = np.sqrt(theta2) / obj.scales
    return False, max_iter, "iteration limit reached"


def check_identified(obj: Objective, log: FitLog) -> np.ndarray | None:
    """NotIdentifiedError when the objective is flat at the optimum along some variance component;
    a point to go on from when an sd stopped at 0 where moving it to 1 lowers the objective.

    A candidate direction is the null vector of the information scaled to relative changes,
    ``diag(s) I diag(s)`` (``s = v`` for sds, ``max(|v|, 1)`` for coefficients; ``I``: the AI without the
    boundary term; its eigenvalues are of the order of the number of observations
    when identified, round-off when not: one observation per group, one group under
    REML).  The variables are then moved by half of themselves along it (sds in their
    squares), and an sd
    at 0 (where that scaling vanishes) to 1 (relative; also to 0.3, 0.1 and 0.03, and a move that
    lowers the objective is returned: L-BFGS-B can stop at such a false boundary): -2 log L changing by no more than
    1e-5 (a likelihood ratio of 1.000005; more only where its own rounding is more) is flat,
    statistically and numerically (one group under REML drifts to ratios of 1e4, where
    the objective's rounding is 1e-6); a boundary fit or a component of any size changes it.
    The curvature is the last the optimizer computed (within its tolerance of the
    optimum), else one more evaluation; n_eval counts the optimizer's evaluations only.
    """
    v, best, n_evaluations = log.v_best, log.best, obj.n_evaluations
    if not obj.has_curvature or obj.free.size == 0 or v is None:
        return None
    if log.curved is not None and np.allclose(log.curved[0], v, rtol=1e-3, atol=SINGULAR_TOL):
        H, g = log.curved[1], log.curved[2]
    else:
        ev = obj.evaluate(v, gradient=True, curvature=True)
        H, g = ev.curvature, ev.gradient
    H = H - np.diag(np.where(obj.is_sd, np.maximum(0.0, g / np.maximum(v, SD_FLOOR)), 0.0))
    labels = [obj.roles.labels[k] for k in obj.free]

    tol = max(1e-5, 1e-11 * abs(best.objective))

    def change(moved) -> float:
        try:
            return obj.evaluate(moved).objective - best.objective
        except NotIdentifiedError:  # too extreme a point to factor: no evidence either way
            return np.inf

    unchanged = lambda moved: abs(change(moved)) <= tol  # noqa: E731

    inside = np.flatnonzero((~obj.is_sd | (v >= SINGULAR_TOL)) & ~scaling_nothing(obj, v, SINGULAR_TOL))
    size = np.where(obj.is_sd, v, np.maximum(np.abs(v), 1.0))  # a coefficient near 0 (rho) moves by 1, not by itself
    flat = []
    if inside.size:
        w, V = np.linalg.eigh(size[inside, None] * H[np.ix_(inside, inside)] * size[None, inside])
        u = V[:, 0] / np.max(np.abs(V[:, 0]))
        if w[0] < 1e-6 * max(1, obj.n_obs) and any(unchanged(_moved(obj, v, size, inside, step * u)) for step in (0.5, -0.5)):
            flat = [labels[inside[i]] for i in np.flatnonzero(np.abs(u) > 0.1)]
    for i in np.flatnonzero(obj.is_sd & (v < SINGULAR_TOL)):
        for to in (1.0, 0.3, 0.1, 0.03) if not flat else ():
            moved = v.copy()
            moved[i] = to
            delta = change(moved)
            if delta < -tol:  # better off 0: the optimizer stopped at a boundary that is not the optimum
                obj.n_evaluations = n_evaluations
                return moved
            if to == 1.0 and abs(delta) <= tol:
                flat = [labels[i]]
    obj.n_evaluations = n_evaluations
    if flat:
        names = ", ".join(f"`{n}`" for n in flat)
        raise NotIdentifiedError(
            f"The data do not identify {names}: the {'REML ' if obj.reml else ''}likelihood is flat along "
            f"{'it' if len(flat) == 1 else 'a combination of them'} at the optimum (logLik {-0.5 * best.objective:.10g}), "
            "so another start would give another estimate with the same fit. Typical causes: one observation per "
            "group (the group's effect and the noise are confounded), one group (under REML its effect is the "
            "intercept's). Drop the variance component or give it more groups or replicates."
        )
    return None


def _moved(obj: Objective, v: np.ndarray, size: np.ndarray, inside: np.ndarray, step: np.ndarray) -> np.ndarray:
    """``v`` moved by ``step`` times ``size`` on ``inside``: sds relative to themselves in their squares (``V``
    is linear in the variances, so a set of them that leaves it unchanged is a line there), others directly."""
    moved = v.copy()
    moved[inside] = np.where(obj.is_sd[inside], v[inside] * np.sqrt(1.0 + step), v[inside] + step * size[inside])
    return moved


def optimize(obj: Objective, v0: np.ndarray, method: str, optimizer: str, tol: float, max_iter: int | None, log: FitLog):
    """Run the optimizer the method asks for, going on from false boundaries (:func:`check_identified`) and saddles
    at 0 (``off_saddle``): ``(converged, iterations, message)``; a stop asked by the monitor is ``(False, ..., STOPPED)``."""
    n_iter = 0
    try:
        converged, n_iter, message = _optimize(obj, v0, method, optimizer, tol, max_iter, log)
        while (restart := check_identified(obj, log)) is not None or (restart := off_saddle(obj, log)) is not None:
            converged, n_iter, message = _optimize(obj, restart, method, optimizer, tol, max_iter, log)
        if method != "em" and (held := boundary_sds(obj, log.v_best, log.best.objective, SINGULAR_TOL)).any():
            # an sd at 0, whose floor's round-off stalls or stops the others early: hold it, finish them (boundary.py)
            at_boundary, before = Held(obj, held), (converged, message)
            more = _optimize(at_boundary, log.v_best[~held], method, optimizer, tol, max_iter, HeldLog(log, at_boundary))
            converged, n_iter, message = more[0], n_iter + more[1], more[2]
            if not converged and at_optimum(at_boundary, log.v_best[~held], log.best.objective, tol):
                converged, message = True, "at the boundary: an sd held at 0, the others at their optimum"
            converged, message = (converged, message) if converged or not before[0] else before
    except FitStopped:
        return False, n_iter, STOPPED
    finally:
        if log.monitor is not None:
            log.monitor.close()
    return converged, n_iter, message


def _optimize(obj: Objective, v0: np.ndarray, method: str, optimizer: str, tol: float, max_iter: int | None,
              log: FitLog):
    """One run of the optimizer the method and options ask for: ``(converged, iterations, message)``."""
    if method == "em":
        return run_em(obj, v0, tol, max_iter or 10000, log)
    if obj.free.size == 0:
        log.record(v0, obj.evaluate(v0))
        return True, 0, "nothing to optimize"
    scoring_applies = obj.has_curvature
    if optimizer == "scoring" and not scoring_applies:
        raise FitError("optimizer='scoring' needs exact gradients and coefficients whose parents have at most "
                       f"{MAX_DEPTH} generations of ancestors (no chain such as `rho * x.lag(1)`); use optimizer='lbfgs'.")
    if optimizer == "lbfgs" or not scoring_applies:
        return run_lbfgs(obj, v0, tol, max_iter or 1000, log)
    converged, n_iter, message = run_scoring(obj, v0, tol, max_iter or 200, log)
    stalled_at_0 = message in ("line search failed", STALLED) and (isinstance(obj, Held) or boundary_sds(
        obj, log.v_best, log.best.objective, SINGULAR_TOL).any())  # in an sd's round-off at 0: optimize() holds it
    if not converged and not stalled_at_0 and (message == "line search failed" or max_iter is None):
        # hand the best point to L-BFGS-B
        more = run_lbfgs(obj, log.v_best, tol, max_iter or 1000, log)
        converged, n_iter, message = more[0], n_iter + more[1], more[2]
    return converged, n_iter, message
