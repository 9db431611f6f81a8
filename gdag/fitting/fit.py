"""Estimate unknown parameters: maximum likelihood, REML and EM.

``m.fit(data, method=...)`` classifies the parameters (fixed effects,
variance components, coefficients; :mod:`gdag.fitting.roles`), profiles the
fixed effects (and a common scale) out of the ML or REML objective, and
optimizes the rest:

* models with exact gradients (variance components, coefficients such as
  ``rho * u0`` whose parents have few generations of ancestors): Fisher
  scoring with the average-information matrix, damped and projected onto
  the bounds (typically 5-10 evaluations);
* anything else (a coefficient touching a deterministic node, or a chain
  such as ``rho * x.lag(1)``): L-BFGS-B;
* ``method="em"``: expectation-maximization for variance components, exact
  moments from the selected inverse, stopped when the relative change of the
  log-likelihood falls below ``tol``.

The maths is in :mod:`gdag.fitting.objective`, :mod:`gdag.fitting.derivatives`
and ``docs/fitting.md``; the optimizers in :mod:`gdag.fitting.optimize`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from .. import tables, timing
from ..cache import QueryCache
from ..compiler import CompiledModel
from ..data import checked, data_vector
from ..errors import FitError
from ..linalg.blas import one_blas_thread
from ..posterior import Posterior
from ..query import conditioned
from ..spec import ModelSpec
from .boundary import objective_at_zero
from .objective import Objective
from .optimize import SINGULAR_TOL, FitLog, starting_point
from .reduced import ReducedObjective, own_data, reduced_setup
from .roles import infer_roles
from .run import fit_options, fit_timings, run_optimizer

__all__ = ["Fit", "fit"]



# ---------------------------------------------------------------- the result


class Deferred:
    """A value built on first use by the function given (so a frozen result can hold it)."""

    __slots__ = ("_build", "_value")

    def __init__(self, build: Callable[..., Any], *args):  # build(*args): picklable when they are
        self._build, self._value = (build, args), None

    def get(self):
        if self._build is not None:
            self._value, self._build = self._build[0](*self._build[1]), None
        return self._value


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
    converged, n_iter, n_eval, message : optimizer outcome; ``message`` says why it ended
        (``"stopped by the callback"`` when the ``callback`` of ``m.fit`` stopped it).
    fitlog : list of ``(theta, objective)``, one per evaluation; ``theta`` in
        the model's parameter order (:attr:`labels`), ``objective`` = -2 log L.
    singular : bool, some variance component is at its boundary 0 (:attr:`boundary` names it).
    timings : dict phase -> seconds: ``setup`` and ``optimize`` (wall time of
        the two stages) and the :mod:`gdag.timing` phases run inside the fit
        (``analyze``, ``assemble``, ``factor``, ``fixed`` (GLS and the
        objective), ``gradient`` (variances, gradient, curvature), and
        ``compile`` and ``pattern`` when they ran), each second counted once.
    """

    method: str
    criterion: str  # "ml" or "reml": the likelihood maximized
    params: dict
    loglik: float
    stderr: dict
    cov_fixed: np.ndarray
    fixed_labels: tuple
    _posterior: Deferred = field(repr=False, compare=False)
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
    spec: ModelSpec | None = field(default=None, repr=False, compare=False)  # the declarations fitted
    observed: tuple = field(default=(), repr=False)  # families with observed entries
    design: Any = field(default=None, repr=False, compare=False)  # gdag.design.Design of a formula model
    message: str = field(default="", repr=False)

    @property
    def posterior(self) -> Posterior:
        """The posterior at the estimates (built once, on first access)."""
        return self._posterior.get()

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

    # tables (gdag.tables): pandas DataFrames, lme4's names and parameterization for formula fits

    def fixef(self, level: float = 0.95):
        """Fixed effects: ``estimate``, ``std_error``, ``t_value`` and the Wald interval ``lower``, ``upper``."""
        return tables.fixef(self, level)

    def ranef(self):
        """Conditional modes and sds per level: ``group, level, term, condval, condsd`` (lme4's ``ranef(condVar=TRUE)``)."""
        return tables.ranef(self)

    def varcorr(self):
        """SDs and correlations of the random effects, as lme4's ``as.data.frame(VarCorr(fit))``."""
        return tables.varcorr(self)

    def confint(self, method: str = "wald", level: float = 0.95):
        """Wald intervals of the fixed effects, or ``method="profile"`` ones of every parameter (formula fits)."""
        return tables.confint(self, method, level)

    def fitted(self, node=None):
        """Fitted means of the observed entries (lme4's ``fitted()``), indexed by the data's rows."""
        return tables.fitted(self, node)

    def residuals(self, node=None):
        """Observed minus fitted (lme4's ``residuals()``), indexed by the data's rows."""
        return tables.residuals(self, node)

    def predict(self, newdata=None, new_levels: str = "population"):
        """Mean, ``sd`` and ``sd_obs`` of new rows of a formula fit; see :func:`gdag.tables.predict`."""
        if newdata is None:
            raise FitError("predict() takes the new rows as a DataFrame: fit.predict(newdata). For the data's own "
                           "rows, fit.fitted() gives lme4's predict(fit) (the fitted means).")
        if self.design is not None and self.design.train is not None and isinstance(newdata, pd.DataFrame) \
                and len(newdata) == 0 and new_levels in ("population", "error"):  # as lme4: nothing to predict
            return pd.DataFrame({"mean": [], "sd": [], "sd_obs": []}, index=newdata.index, dtype=float)
        return tables.predict(self, newdata, new_levels)

    def simulate(self, n: int = 1, seed=None):
        """``n`` new responses from the fitted model (formula fits; lme4's ``simulate()``): columns ``sim_1``, ..."""
        return tables.simulate(self, n, seed)

    def __repr__(self) -> str:
        what = self.design.formula.text if self.design is not None else self.model_name
        state = "converged" if self.converged else "NOT converged"
        return (f"<gdag.Fit {self.method.upper()} of `{what}`: logLik {self.loglik:.6g}, {self.nobs} observations, "
                f"{state}{', singular' if self.singular else ''}>")

    def _repr_html_(self) -> str:
        return tables.fit_html(self)

    def summary(self) -> str:
        """A table in the style of lme4's ``summary()``."""
        if self.design is not None:
            return tables.formula_summary(self)
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
        return "\n".join(lines + tables.summary_notes(self))

    def __str__(self) -> str:
        return self.summary()


# ------------------------------------------------------------------- fit()


def fit(spec: ModelSpec, queries: QueryCache, data: Mapping[str, Any], method: str = "reml", *, init: Mapping[str, Any] | None = None,
        tol: float | None = None, max_iter: int | None = None, criterion: str | None = None,
        optimizer: str = "auto", factorization: str = "auto", progress: bool | None = None, callback: Callable | None = None) -> Fit:
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
        decrease of a scoring step (which also ends only once the variables
        are within about ``sqrt(tol)``, relative, of the optimum its step
        predicts), L-BFGS-B's relative reduction (times 1e-3), or EM's
        relative change of the log-likelihood.  Default 1e-12 (1e-10 for
        EM).  Smaller is slower and more exact.
    max_iter : int, optional
        Iteration limit (default 200 scoring / 1000 L-BFGS-B iterations, 10000 for EM).
    criterion : ``"ml"`` or ``"reml"``, EM only
        The likelihood EM maximizes (default ``"ml"``).
    optimizer : ``"auto"``, ``"scoring"`` or ``"lbfgs"``
        ``"scoring"`` (average-information Fisher scoring) needs exact
        gradients and coefficients whose parents have at most 32 generations
        of ancestors; ``"auto"`` uses it then and L-BFGS-B otherwise.
        Changes speed, never results beyond the tolerance.
    factorization : ``"auto"``, ``"sparse"`` or ``"blocked"``
        CHOLMOD, or the head/dense-tail factor of :mod:`gdag.linalg.blocked` for
        crossed designs.  Changes speed, never results.
    progress : bool or None
        A progress display (tqdm, the ``gdag[progress]`` extra) on stderr for fits that run longer
        than 2 seconds; default None: shown when stderr is a terminal and tqdm is installed.
    callback : function ``(theta, objective)``, optional
        Called after each evaluation with a dict parameter name -> value and -2 log L (ML) or the REML
        criterion there.  Returning True stops the fit: the Fit keeps the best point seen, with
        ``converged`` False and ``message`` ``"stopped by the callback"`` (and a ConvergenceWarning).

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
    method, criterion, tol, max_iter = fit_options(method, criterion, optimizer, tol, max_iter)
    # One BLAS thread for the whole fit, the optimizer's own work included (OneBlasThread)
    with one_blas_thread(), timing.record() as phases:
        t_start = time.perf_counter()
        data = checked(spec, data)  # validated once; every stage below takes it as it is
        reduced = reduced_setup(spec, queries, data, profile=(method != "em"))
        if reduced is None:
            cm = queries.compiled(spec)
            if cm.n_theta == 0:
                raise FitError(f"Model `{spec.name}` has no parameters to estimate; use m.posterior(data) instead.")
            x, observed = data_vector(spec, cm, data)
            if not np.any(observed):
                raise FitError(f"No entry of any node is observed, so there is nothing to fit model `{spec.name}` to.")
            cond = queries.conditioning_for(cm, observed)
            roles = infer_roles(cm, cond, profile=(method != "em"))
        else:
            cm, cond, x, observed, roles, stats, start, full = reduced
        v0, scales = starting_point(spec, cm, cond, x, roles, init, None if reduced is None else start)
        if reduced is None:
            obj = Objective(cm, cond, x, roles, reml=(criterion == "reml"), factorization=factorization, scales=scales)
        else:
            obj = ReducedObjective(cm, cond, x, roles, criterion == "reml", stats, factorization, scales)
        t_setup = time.perf_counter()
        log, converged, n_iter, message = run_optimizer(spec, cm, obj, v0, method, optimizer, tol, max_iter,
                                                        progress, callback)
        t_opt = time.perf_counter()
    best = log.best
    theta = best.theta
    # the posterior m.posterior(data, params=fit.params) gives, bit for bit (the query's own road)
    posterior = Deferred(conditioned, spec, queries, own_data(spec, data, full if reduced else {}), None, theta)
    timings = fit_timings(t_start, t_setup, t_opt, phases)
    fit = make_fit(spec, cm, obj, log, method, criterion, converged, n_iter, posterior, timings)
    seen = tuple(name for name in cm.family_names if observed[cm.span(name)].any()) + tuple(obj.stats.names if reduced else ())
    return replace(fit, spec=spec, observed=seen, message=message)


def make_fit(spec: ModelSpec, cm: CompiledModel, obj: Objective, log: FitLog, method: str, criterion: str,
              converged: bool, n_iter: int, posterior: Deferred, timings: dict) -> Fit:
    roles, best, v_best = obj.roles, log.best, log.v_best
    theta = best.theta
    params = cm.param_values(theta)
    # standard errors of the fixed effects, by parameter
    se = np.sqrt(np.diag(best.cov_beta))
    se_full = np.full(cm.n_theta, np.nan)
    se_full[roles.fixed] = se
    stderr = {}
    for i, name in enumerate(cm.param_names):
        span = cm.param_span(name)
        if np.any(np.isin(np.arange(span.start, span.stop), roles.fixed)):
            stderr[name] = float(se_full[span][0]) if cm.param_scalar[i] else se_full[span].copy()
    # boundary: variance components whose (relative) sd ended below SINGULAR_TOL; logLik with them exactly 0
    held = obj.is_sd & (np.maximum(v_best, 0.0) < SINGULAR_TOL) if v_best is not None else np.zeros(0, bool)
    objective = objective_at_zero(obj, v_best, held) if held.any() else best.objective
    boundary = [roles.labels[entry] for entry in obj.free[held]]
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
            if entry in obj.leaf_classes:  # rows summed apart (gdag.fitting.reduced)
                what = "; ".join(w for w in (what, *obj.leaf_classes[entry][0]) if w)
                levels += obj.leaf_classes[entry][1]
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
        loglik=-0.5 * objective,
        stderr=stderr,
        cov_fixed=best.cov_beta.copy(),
        fixed_labels=tuple(roles.labels[k] for k in roles.fixed),
        _posterior=posterior,
        converged=converged,
        n_iter=n_iter,
        n_eval=obj.n_evaluations,
        fitlog=log.entries,
        singular=bool(boundary),
        boundary=tuple(boundary),
        nobs=obj.n_obs,
        n_params=n_params,
        model_name=spec.name,
        roles={"variance": variance, "coefficient": coefficient, "fixed_values": best.beta.copy()},
        timings=timings,
    )
