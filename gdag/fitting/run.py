"""A fit's options checked and its optimizer run with a monitor: shared by the in-memory fit
(:func:`gdag.fitting.fit.fit`) and the fit from rows on a Dask cluster (:mod:`gdag.distributed.fit`)."""

from __future__ import annotations

import math

import numpy as np

from ..compiler import CompiledModel
from ..errors import ConvergenceWarning, FitError, warn
from ..spec import ModelSpec
from .monitor import STOPPED, Monitor
from .objective import Objective
from .optimize import FitLog, optimize

METHODS = ("reml", "ml", "em")


def fit_options(method, criterion, optimizer, tol, max_iter) -> tuple[str, str, float, int | None]:
    """``(method, criterion, tol, max_iter)`` checked and defaulted (FitError otherwise), for every fit."""
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise FitError(f"Unknown fitting method {method!r}; use one of " + ", ".join(f"'{m}'" for m in METHODS) + ".")
    method = method.lower()
    if criterion is not None and method != "em":
        raise FitError("`criterion` applies to method='em' only; method='ml' or 'reml' names the criterion itself.")
    criterion = (criterion or "ml").lower() if method == "em" else method
    if criterion not in ("ml", "reml"):
        raise FitError(f"EM criterion must be 'ml' or 'reml'; got {criterion!r}.")
    if optimizer not in ("auto", "scoring", "lbfgs"):
        raise FitError(f"`optimizer` must be 'auto', 'scoring' or 'lbfgs'; got {optimizer!r}.")
    tol, max_iter = _positive("tol", tol, float), _positive("max_iter", max_iter, int)
    return method, criterion, (1e-10 if method == "em" else 1e-12) if tol is None else tol, max_iter


def run_optimizer(spec: ModelSpec, cm: CompiledModel, obj: Objective, v0, method: str, optimizer: str, tol: float,
                  max_iter: int | None, progress, callback) -> tuple[FitLog, bool, int, str]:
    """Optimize ``obj`` from ``v0`` with a monitor: ``(log, converged, n_iter, message)``; warns when not converged."""
    spans = [cm.param_span(name) for name in cm.param_names]
    log = FitLog(Monitor(cm.param_names, spans, cm.param_scalar, progress, callback, spec.name))
    converged, n_iter, message = optimize(obj, v0, method, optimizer, tol, max_iter, log)
    if not converged:
        warn(
            f"The fit of model `{spec.name}` did not converge ({message}) after {n_iter} iterations and "
            f"{obj.n_evaluations} evaluations; kept the best point (objective {log.best.objective:.10g}, "
            f"parameters {log.best_text(obj.roles.labels)})." + ("" if message == STOPPED else
                                                               " Try other `init` values or a larger `max_iter`."),
            ConvergenceWarning,
        )
    return log, converged, n_iter, message


def _positive(option: str, value, kind: type):
    """``tol`` (a positive finite number) or ``max_iter`` (a positive integer) as ``kind``, or None; else a FitError."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if value is None or number and math.isfinite(value) and value > 0 and (kind is float or float(value).is_integer()):
        return None if value is None else kind(value)
    raise FitError(f"`{option}` must be {'a positive number' if kind is float else 'a positive whole number'}; got {value!r}.")


def fit_timings(t_start: float, t_setup: float, t_opt: float, phases: dict) -> dict:
    """A Fit's ``timings``: setup and optimize (wall clock) and the phases of :mod:`gdag.timing` (0 when absent)."""
    return {"setup": t_setup - t_start, "optimize": t_opt - t_setup, "assemble": 0.0, "factor": 0.0, "fixed": 0.0,
            "gradient": 0.0, **phases}
