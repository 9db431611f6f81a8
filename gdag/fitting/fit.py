"""Estimate unknown parameters: maximum likelihood, REML and EM.

``m.fit(data, method=...)`` classifies the parameters (fixed effects,
variance components, coefficients; :mod:`gdag.objective`), profiles the
fixed effects (and a common scale) out of the ML or REML objective, and
optimizes the rest:

* variance-component models (every optimized parameter is an sd): Fisher
  scoring with the average-information matrix and exact gradients, damped
  and projected onto the bounds (typically 5-10 evaluations);
* anything else (coefficients such as ``rho * u0``): L-BFGS-B on exact
  gradients;
* ``method="em"``: expectation-maximization for variance components, exact
  moments from the selected inverse, stopped when the relative change of the
  log-likelihood falls below ``tol``.

The maths is in :mod:`gdag.objective` and ``docs/fitting.md``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..cache import QueryCache
from ..compiler import CompiledModel
from ..data import data_vector
from ..errors import ConvergenceWarning, FitError, NotIdentifiedError, ParamError, warn
from ..posterior import Posterior
from ..spec import ModelSpec, check_param_value
from .objective import Evaluation, Objective, infer_roles

__all__ = ["Fit", "fit"]

METHODS = ("reml", "ml", "em")
# A variance component whose sd, relative to its scale, ends below this is at
# its boundary (lme4's isSingular tolerance on theta).
SINGULAR_TOL = 1e-4


# ---------------------------------------------------------------- the result


@dataclass(frozen=True)
class Fit:
    """Estimates of a model's unknown parameters, with the posterior at them.

    Attributes
    ----------
    method : ``"reml"``, ``"ml"`` or ``"em"``.
    params : dict name -> float (scalar parameters) or array (vectors).
    loglik : float
        The maximized log-likelihood: restricted (REML) for ``"reml"``, as
        lme4's ``logLik()`` reports it.
    stderr : dict name -> standard error(s) of the fixed effects.
    cov_fixed : array (p, p), covariance of the fixed effects, in the order of :attr:`fixed_labels`.
    posterior : :class:`~gdag.Posterior` at the estimates (fixed effects at their
        estimates): conditional means and sds of the random effects, as lme4's
        ``ranef(condVar=TRUE)``.  Built on first access.
    converged, n_iter, n_eval : optimizer outcome.
    fitlog : list of ``(theta, objective)``, one per evaluation; ``theta`` in
        the model's parameter order (:attr:`labels`), ``objective`` = -2 log L.
    singular : bool, some variance component is at its boundary 0 (:attr:`boundary` names it).
    """

    method: str
    criterion: str  # "ml" or "reml": the likelihood maximized
    params: dict
    loglik: float
    stderr: dict
    cov_fixed: np.ndarray
    fixed_labels: tuple
    _posterior: Any = field(repr=False)
    converged: bool
    n_iter: int
    n_eval: int
    fitlog: list
    singular: bool
    boundary: tuple
    nobs: int
    n_params: int
    model_name: str
    roles: dict = field(repr=False)
    timings: dict = field(default_factory=dict, repr=False)

    @property
    def posterior(self) -> Posterior:
        """The posterior at the estimates (built once, on first access)."""
        if callable(self._posterior):
            object.__setattr__(self, "_posterior", self._posterior())
        return self._posterior

    @property
    def aic(self) -> float:
        """``-2 loglik + 2 k`` with ``k`` estimated parameter entries (as lme4's ``AIC()``)."""
        return -2.0 * self.loglik + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        """``-2 loglik + k log(n_obs)`` (as lme4's ``BIC()``)."""
        return -2.0 * self.loglik + self.n_params * math.log(self.nobs)

    @property
    def objective(self) -> float:
        """``-2 loglik``: the deviance (ML) or the REML criterion."""
        return -2.0 * self.loglik

    def summary(self) -> str:
        """A table in the style of lme4's ``summary()``."""
        kind = {"reml": "REML", "ml": "maximum likelihood", "em": f"EM ({self.criterion.upper()})"}[self.method]
        crit = "REML criterion" if self.criterion == "reml" else "deviance"
        lines = [
            f"Linear-Gaussian model `{self.model_name}` fit by {kind} (gdag)",
            f"{'AIC':>12}{'BIC':>12}{'logLik':>12}{crit:>16}",
            f"{self.aic:>12.2f}{self.bic:>12.2f}{self.loglik:>12.2f}{self.objective:>16.2f}",
            f"Observations: {self.nobs}   evaluations: {self.n_eval}   "
            f"converged: {'yes' if self.converged else 'NO'}",
        ]
        comps = self.roles["variance"]
        if comps:
            lines += ["", "Variance components (as standard deviations):",
                      f"  {'parameter':<16}{'sd of (given parents)':<34}{'entries':>9}{'Std.Dev.':>12}"]
            for label, value, what, levels in comps:
                mark = "  (boundary)" if label in self.boundary else ""
                lines.append(f"  {label:<16}{what:<34}{levels:>9}{value:>12.5g}{mark}")
        coefs = self.roles["coefficient"]
        if coefs:
            lines += ["", "Coefficients of node terms and other parameters:",
                      f"  {'parameter':<16}{'role':<43}{'Estimate':>12}"]
            for label, value, what in coefs:
                lines.append(f"  {label:<16}{what:<43}{value:>12.5g}")
        if self.fixed_labels:
            lines += ["", "Fixed effects:", f"  {'':<16}{'Estimate':>14}{'Std. Error':>14}{'t value':>10}"]
            se = np.sqrt(np.diag(self.cov_fixed))
            est = self.roles["fixed_values"]
            for label, b, s in zip(self.fixed_labels, est, se):
                lines.append(f"  {label:<16}{b:>14.5g}{s:>14.5g}{b / s:>10.3f}")
        if self.singular:
            lines += ["", "Boundary (singular) fit: " + ", ".join(f"`{b}`" for b in self.boundary) + " estimated at 0."]
        if not self.converged:
            lines += ["", "WARNING: the optimizer did not converge; these are its best values."]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# ------------------------------------------------------------------- fit()


def fit(spec: ModelSpec, queries: QueryCache, data: Mapping[str, Any], method: str = "reml", *, init: Mapping[str, Any] | None = None,
        tol: float | None = None, max_iter: int | None = None, criterion: str | None = None,
        optimizer: str = "auto", factorization: str = "auto") -> Fit:
    """Estimate the unknown parameters of the model ``spec`` from ``data`` (``m.fit`` calls this).

    Parameters
    ----------
    spec : ModelSpec
        The model's declarations.
    queries : QueryCache
        The model's cache: the compiled model and the observed pattern's
        analysis are shared with its queries.
    data : mapping name -> values (NaN = unobserved), as for :meth:`Model.posterior`.
    method : ``"reml"`` (default), ``"ml"`` or ``"em"``
        ``"reml"`` maximizes the restricted likelihood (fixed effects
        integrated out under a flat prior), ``"ml"`` the likelihood; in both
        the fixed effects are profiled out by GLS (and a common residual scale
        when every sd carries a parameter).  ``"em"`` runs
        expectation-maximization on the variance components (see ``criterion``).
    init : mapping name -> value, optional
        Starting values for the optimized parameters; default the values given
        to :meth:`Model.param`, else relative sds ``1/sqrt(k)`` (``k``
        variance components), sds equal to the data's spread when nothing is
        profiled, coefficients 0.  Changes speed, rarely results.
    tol : float, optional
        Convergence tolerance, relative to the objective: the predicted
        decrease of a scoring step, L-BFGS-B's relative reduction (times
        1e-3), or EM's relative change of the log-likelihood.  Default 1e-12
        (1e-10 for EM).  Smaller is slower and more exact.
    max_iter : int, optional
        Iteration limit (default 200 scoring / 1000 L-BFGS-B iterations, 10000 for EM).
    criterion : ``"ml"`` or ``"reml"``, EM only
        The likelihood EM maximizes (default ``"ml"``).
    optimizer : ``"auto"``, ``"scoring"`` or ``"lbfgs"``
        ``"scoring"`` (average-information Fisher scoring) needs every
        optimized parameter to be an sd; ``"auto"`` uses it then and L-BFGS-B
        otherwise.  Changes speed, never results beyond the tolerance.
    factorization : ``"auto"``, ``"sparse"`` or ``"blocked"``
        CHOLMOD, or the head/dense-tail factor of :mod:`gdag.blocked` for
        crossed designs.  Changes speed, never results.

    Returns
    -------
    Fit

    Raises
    ------
    FitError
        Unknown method, nothing observed, or EM asked of a model it cannot fit.
    NotIdentifiedError
        Fixed effects that the data do not identify (named).
    """
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise FitError(f"Unknown fitting method {method!r}; use one of " + ", ".join(f"'{m}'" for m in METHODS) + ".")
    method = method.lower()
    if criterion is not None and method != "em":
        raise FitError("`criterion` applies to method='em' only; method='ml' or 'reml' names the criterion itself.")
    criterion = (criterion or "ml").lower() if method == "em" else method
    if criterion not in ("ml", "reml"):
        raise FitError(f"EM criterion must be 'ml' or 'reml'; got {criterion!r}.")
    if tol is None:
        tol = 1e-10 if method == "em" else 1e-12
    t_start = time.perf_counter()
    cm = queries.compiled(spec)
    model = spec
    if cm.n_theta == 0:
        raise FitError(f"Model `{model.name}` has no parameters to estimate; use m.posterior(data) instead.")
    x, observed = data_vector(spec, cm, data)
    if not np.any(observed):
        raise FitError(f"No entry of any node is observed, so there is nothing to fit model `{model.name}` to.")
    cond = queries.conditioning_for(cm, observed)
    roles = infer_roles(cm, cond, profile=(method != "em"))
    if optimizer not in ("auto", "scoring", "lbfgs"):
        raise FitError(f"`optimizer` must be 'auto', 'scoring' or 'lbfgs'; got {optimizer!r}.")
    obj = Objective(cm, cond, x, roles, reml=(criterion == "reml"), factorization=factorization)
    v0 = _initial_values(model, cm, obj, init)
    t_setup = time.perf_counter()
    log = _Log()
    if method == "em":
        converged, n_iter, message = _run_em(obj, v0, tol, max_iter or 10000, log)
    elif obj.free.size == 0:
        log.record(v0, obj.evaluate(v0))
        converged, n_iter, message = True, 0, "nothing to optimize"
    else:
        use_scoring = optimizer == "scoring" or (optimizer == "auto" and obj.pure_variance and obj.exact_gradient)
        if optimizer == "scoring" and not (obj.pure_variance and obj.exact_gradient):
            raise FitError("optimizer='scoring' needs every optimized parameter to be a variance component; "
                           "use optimizer='lbfgs'.")
        if use_scoring:
            converged, n_iter, message = _run_scoring(obj, v0, tol, max_iter or 200, log)
            if not converged and message == "line search failed":  # hand the best point to L-BFGS-B
                more = _run_optimizer(obj, log.v_best, tol, max_iter or 1000, log)
                converged, n_iter, message = more[0], n_iter + more[1], more[2]
        else:
            converged, n_iter, message = _run_optimizer(obj, v0, tol, max_iter or 1000, log)
    best, v_best, fitlog = log.best, log.v_best, log.entries
    if not converged:
        warn(
            f"The fit of model `{model.name}` did not converge ({message}) after {n_iter} iterations and "
            f"{obj.n_evaluations} evaluations; kept the best point (objective {best.objective:.10g}, "
            f"parameters {_short(best.theta, obj.roles.labels)}). Try other `init` values or a larger `max_iter`.",
            ConvergenceWarning,
        )
    t_opt = time.perf_counter()
    theta = best.theta
    posterior = lambda: Posterior(cm, cond, theta, x)  # noqa: E731 - built on first access
    timings = {"setup": t_setup - t_start, "optimize": t_opt - t_setup,
               "posterior": time.perf_counter() - t_opt, **obj.times}
    return _make_fit(model, cm, obj, best, v_best, method, criterion, converged, n_iter, fitlog, posterior, timings)


def _initial_values(model: ModelSpec, cm: CompiledModel, obj: Objective, init) -> np.ndarray:
    """Optimizer starting point and variable scales (``obj.var_scale``)."""
    roles = obj.roles
    given = np.full(cm.n_theta, np.nan)
    for i, name in enumerate(cm.param_names):
        if cm.param_default[i] is not None:
            given[cm.param_span(name)] = cm.param_default[i]
    if init is not None:
        if not isinstance(init, Mapping):
            raise FitError(f"`init` must be a mapping from parameter names to values; got {type(init).__name__}.")
        for name, value in init.items():
            if name not in model.params:
                raise ParamError(f"`init` names `{name}`, which is not a parameter of model `{model.name}`.")
            given[cm.param_span(name)] = check_param_value(model.params[name], value)
    observed = obj.x_R[np.isfinite(obj.x_R)] if obj.n_U else obj.x_R
    spread = float(np.std(observed)) if observed.size > 1 else 1.0
    spread = spread if spread > 0 else 1.0
    prof = roles.profiled
    sigma0 = given[prof] if prof >= 0 and np.isfinite(given[prof]) else None
    # k variance components relative to the profiled one start at 1/sqrt(k): together
    # as much variance as the residual (lme4 starts each at 1; this is fewer steps on our cases)
    ratio0 = 1.0 / math.sqrt(max(1, int(np.count_nonzero(obj.is_sd))))
    v0 = np.zeros(obj.free.shape[0])
    for i, entry in enumerate(obj.free):
        g = given[entry]
        if obj.is_sd[i]:
            if prof >= 0:  # ratio to the profiled sd (lme4's theta)
                obj.var_scale[i] = 1.0
                v0[i] = g / sigma0 if (sigma0 is not None and np.isfinite(g)) else ratio0
            else:  # sd over the data's spread
                obj.var_scale[i] = g if np.isfinite(g) else spread
                v0[i] = 1.0
        elif roles.positive[entry]:
            obj.var_scale[i] = g if np.isfinite(g) else 1.0
            v0[i] = 1.0
        else:
            obj.var_scale[i] = 1.0
            v0[i] = g if np.isfinite(g) else 0.0
    return v0


class _Log:
    """Every evaluation's ``(theta, objective)`` and the best point so far."""

    def __init__(self):
        self.entries: list = []
        self.best: Evaluation | None = None
        self.v_best: np.ndarray | None = None

    def record(self, v, ev: Evaluation) -> Evaluation:
        self.entries.append((ev.theta.copy(), ev.objective))
        if self.best is None or ev.objective < self.best.objective:
            self.best, self.v_best = ev, np.array(v, dtype=float)
        return ev


def _run_optimizer(obj: Objective, v0: np.ndarray, tol: float, max_iter: int, log: _Log):
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


def _run_scoring(obj: Objective, v0: np.ndarray, tol: float, max_iter: int, log: _Log):
    """Projected, damped Fisher scoring with the average-information matrix.

    The variables are the (relative) sds ``v >= 0``.  Each iteration solves
    ``H d = -g`` over the variables not held at 0 (held: at 0 with a gradient
    pushing outwards), caps the step at 10 times the variables' size, and
    halves it until the objective falls (Armijo).  Converged when the
    predicted decrease ``g^T H^{-1} g / 2`` is below ``tol * max(1, |objective|)``;
    when it is already below ``1000 tol`` the last step is checked by the
    objective alone (no gradient).
    """
    v = np.maximum(np.asarray(v0, dtype=float), 0.0)
    ev = log.record(v, obj.evaluate(v, gradient=True, curvature=True))
    for it in range(1, max_iter + 1):
        g, H = ev.gradient, ev.curvature
        held = (v <= 0) & (g > 0)
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
        decrease = -0.5 * float(g @ d)
        size = max(1.0, abs(ev.objective))
        if decrease <= tol * size:
            return True, it - 1, "predicted decrease below tolerance"
        if decrease <= 1e3 * tol * size and np.all(v + d >= 0):
            # Close enough that one more full step leaves an error far below tol:
            # take it, checking only that the objective falls as predicted.
            ev_new = log.record(v + d, obj.evaluate(v + d))
            if ev.objective - ev_new.objective >= 0.5 * decrease:
                return True, it, "final Newton step"
        cap = 10.0 * np.maximum(v, 1.0)
        alpha = min(1.0, float(np.min(cap / np.maximum(np.abs(d), 1e-300))))
        for _ in range(40):
            v_new = np.maximum(v + alpha * d, 0.0)
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
        v, ev = v_new, ev_new
    return False, max_iter, "iteration limit reached"


def _short(theta, labels) -> str:
    return "{" + ", ".join(f"{k}: {v:.6g}" for k, v in list(zip(labels, theta))[:8]) + ("..." if len(labels) > 8 else "") + "}"


def _run_em(obj: Objective, v0: np.ndarray, tol: float, max_iter: int, log: _Log):
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
    counts = np.bincount(obj.sd_R[obj.sd_R >= 0], minlength=cm.n_theta)
    v = np.asarray(v0, dtype=float)
    previous = None
    for it in range(1, max_iter + 1):
        ev = log.record(v, obj.evaluate(v, moments=True))
        loglik = -0.5 * ev.objective
        if previous is not None and abs(loglik - previous) <= tol * max(1.0, abs(loglik)):
            return True, it - 1, "relative change of the log-likelihood below tolerance"
        previous = loglik
        rows = obj.sd_R >= 0
        second = np.bincount(obj.sd_R[rows], weights=(ev.e[rows] ** 2 + ev.h[rows]) / base2[rows],
                             minlength=cm.n_theta)
        theta2 = second[obj.free] / counts[obj.free]
        v = np.sqrt(theta2) / obj.var_scale
    return False, max_iter, "iteration limit reached"


def _make_fit(model, cm, obj, best, v_best, method, criterion, converged, n_iter, fitlog, posterior, timings) -> Fit:
    roles = obj.roles
    theta = best.theta
    params = {}
    for i, name in enumerate(cm.param_names):
        val = theta[cm.param_span(name)].copy()
        params[name] = float(val[0]) if cm.param_scalar[i] else val
    # standard errors of the fixed effects, by parameter
    se = np.sqrt(np.diag(best.cov_beta))
    se_full = np.full(cm.n_theta, np.nan)
    se_full[roles.fixed] = se
    stderr = {}
    for i, name in enumerate(cm.param_names):
        span = cm.param_span(name)
        if np.any(np.isin(np.arange(span.start, span.stop), roles.fixed)):
            stderr[name] = float(se_full[span][0]) if cm.param_scalar[i] else se_full[span].copy()
    # boundary: variance components whose (relative) sd ended below SINGULAR_TOL
    boundary = []
    for i, entry in enumerate(obj.free):
        if obj.is_sd[i] and max(v_best[i], 0.0) < SINGULAR_TOL:
            boundary.append(roles.labels[entry])
    # descriptions for the summary
    # descriptions for the summary: what each variance component and coefficient belongs to
    fam_of = lambda idx: np.searchsorted(cm.family_offset, idx, side="right") - 1  # noqa: E731
    row_fam, col_fam = fam_of(cm.B_rows), fam_of(cm.B_cols)
    names = cm.family_names

    def family_text(f: int) -> str:
        parents = [names[g] for g in np.unique(col_fam[row_fam == f]) if g != f]
        return names[f] + (" | " + ", ".join(parents) if parents else "")

    sd_fam = fam_of(np.arange(cm.n))
    variance, coefficient = [], []
    free = set(roles.free.tolist())
    for entry in range(cm.n_theta):
        if roles.pure_variance[entry]:
            fams = np.unique(sd_fam[cm.sd_param == entry])
            what = "; ".join(family_text(int(f)) for f in fams)
            levels = int(np.count_nonzero(cm.sd_param == entry))
            variance.append((roles.labels[entry], float(theta[entry]), what, levels))
        elif entry in free:
            if roles.scale[entry]:
                k = np.flatnonzero(cm.B_scale == entry)[0]
                what = f"coefficient of {names[col_fam[k]]} in {names[row_fam[k]]}"
            else:
                what = "in means and sds" if roles.sd[entry] else "positive, in means"
            coefficient.append((roles.labels[entry], float(theta[entry]), what))
    n_params = int(roles.fixed.size + roles.free.size)
    return Fit(
        method=method,
        criterion=criterion,
        params=params,
        loglik=-0.5 * best.objective,
        stderr=stderr,
        cov_fixed=best.cov_beta.copy(),
        fixed_labels=tuple(roles.labels[k] for k in roles.fixed),
        _posterior=posterior,
        converged=converged,
        n_iter=n_iter,
        n_eval=obj.n_evaluations,
        fitlog=fitlog,
        singular=bool(boundary),
        boundary=tuple(boundary),
        nobs=obj.n_obs,
        n_params=n_params,
        model_name=model.name,
        roles={"variance": variance, "coefficient": coefficient, "fixed_values": best.beta.copy()},
        timings=timings,
    )
