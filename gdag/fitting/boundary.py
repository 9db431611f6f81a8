"""Finishing a fit at a boundary: variance components held at 0 while the rest is re-optimized.

When a (relative) sd goes to 0 the precision form evaluates it at its floor
``SD_FLOOR``, where ``Q`` has entries of order ``1 / SD_FLOOR^2``: the
objective and its gradient then carry round-off of about ``1e-6`` (relative to
the objective's own size times the condition number), and an optimizer asked
for ``tol = 1e-12`` chases that noise along the variables that still move.  A
correlated random slope with no slope variance (``u1 ~ N(c * u0, s1^2)``,
``s1 -> 0``; lme4's correlation +-1) is the typical case: the coefficient
``c`` stays identified (it is the slope's sd over the intercept's), but
L-BFGS-B ends ABNORMAL in the noise.

:func:`boundary_sds` finds the sds at 0 where moving them up to
``SINGULAR_TOL`` does not lower the objective (a true boundary);
:class:`Held` is the objective over the other variables with those held at
their floor, and :class:`HeldLog` records its points in the full variables, so
the fit's log, best point and boundary report are those of the whole model.
"""

from __future__ import annotations

import numpy as np

from ..errors import NotIdentifiedError
from .objective import Evaluation, Objective
from .roles import SD_FLOOR


def boundary_sds(obj: Objective, v: np.ndarray, best: float, singular_tol: float) -> np.ndarray:
    """Mask of the sd variables below ``singular_tol`` at ``v`` that are at a true boundary: raising each one to
    ``singular_tol`` does not lower the objective ``best`` by more than its rounding.  (A random slope's ``v`` is
    in units of its covariate, :func:`~gdag.fitting.optimize.starting_point`: ``x * 1e4`` moves no sd here.)"""
    held = np.zeros(v.shape[0], bool)
    tol = max(1e-8, 1e-12 * abs(best))
    for i in np.flatnonzero(obj.is_sd & (v < singular_tol)):
        moved = v.copy()
        moved[i] = singular_tol
        held[i] = obj.evaluate(moved).objective >= best - tol
    return held


# A held sd's relative value: the objective there differs from the sd 0's by O(HOLD^2) (a bias of 1e-9 in the
# others' optimum), and its round-off is about 1e-7 relative, where at SD_FLOOR it was 1e-4 in the gradient
# (line searches failed in it); below SINGULAR_TOL (1e-4), so the sd is reported at the boundary.
HOLD = 3e-5


class Held:
    """``obj`` over the variables not ``held``; the held ones stay at ``HOLD`` (their boundary 0, see above).

    The fit's log-likelihood is then that of the sds exactly 0 (:func:`objective_at_zero`).
    """

    def __init__(self, obj: Objective, held: np.ndarray):
        self.obj, self.held, self.keep = obj, held, ~held
        self.free, self.is_sd, self.lower = obj.free[self.keep], obj.is_sd[self.keep], obj.lower[self.keep]
        self.roles, self.reml, self.n_obs = obj.roles, obj.reml, obj.n_obs
        self.exact_gradient, self.has_curvature, self.pure_variance = (
            obj.exact_gradient, obj.has_curvature, obj.pure_variance)

    @property
    def n_evaluations(self) -> int:
        return self.obj.n_evaluations

    @n_evaluations.setter
    def n_evaluations(self, value: int) -> None:
        self.obj.n_evaluations = value

    def full(self, v: np.ndarray) -> np.ndarray:
        out = np.full(self.held.shape[0], HOLD)
        out[self.keep] = v
        return out

    def evaluate(self, v: np.ndarray, gradient: bool = False, curvature: bool = False,
                 moments: bool = False) -> Evaluation:
        ev = self.obj.evaluate(self.full(v), gradient=gradient, curvature=curvature, moments=moments)
        k = self.keep
        return Evaluation(ev.objective, ev.theta, ev.beta, ev.cov_beta, ev.sigma2,
                          None if ev.gradient is None else ev.gradient[k],
                          None if ev.curvature is None else ev.curvature[np.ix_(k, k)], ev.e, ev.W, ev.h)


class HeldLog:
    """A :class:`~gdag.fitting.optimize.FitLog` seen in a :class:`Held` objective's variables."""

    def __init__(self, log, held: Held):
        self.log, self.held = log, held
        self.curved = None
        # the best point so far was judged at the sd's floor, whose round-off (1e-4 relative in the gradient, more
        # than the likelihood's changes along a flat ridge) can rank it above better points: the held run's replace it
        log.best = log.v_best = None

    def record(self, v, ev: Evaluation) -> Evaluation:
        self.log.record(self.held.full(np.asarray(v, dtype=float)), ev)
        if ev.curvature is not None:
            self.curved = (np.array(v, dtype=float), ev.curvature, ev.gradient)
        return ev

    @property
    def best(self):
        return self.log.best

    @property
    def v_best(self):
        return self.log.v_best[self.held.keep]

    @property
    def monitor(self):
        return self.log.monitor


def at_optimum(held: Held, v: np.ndarray, best: float, tol: float) -> bool:
    """Whether the Newton step over the variables not held (projected on their bounds) predicts a decrease of the
    objective below ``max(tol, 1e-9)`` relative: the optimum within the round-off of an sd at its floor (about
    ``1e-9`` relative; a likelihood ratio of ``1 + 1e-6`` on a thousand observations)."""
    if not held.has_curvature:
        return False
    if v.size == 0:
        return True
    ev = held.evaluate(v, gradient=True, curvature=True)
    g, H = ev.gradient, ev.curvature
    move = ~((v <= np.where(held.lower == 0, SD_FLOOR, held.lower)) & (g > 0))
    if not move.any():
        return True
    try:
        d = np.linalg.solve(H[np.ix_(move, move)], -g[move])
    except np.linalg.LinAlgError:
        return False
    decrease = -0.5 * float(g[move] @ d)
    return bool(np.isfinite(decrease) and 0 <= decrease <= max(tol, 1e-9) * max(1.0, abs(best)))


# Relative sds at which the objective is extrapolated to an sd of exactly 0 (objective_at_zero).
EXTRAPOLATION = 5e-4


def objective_at_zero(obj: Objective, v: np.ndarray, held: np.ndarray) -> float:
    """-2 log L with the sds ``held`` exactly 0 (the rank-reduced model lme4 reports at a boundary).

    At ``SD_FLOOR`` the precision form carries round-off of about 1e-6; the objective is smooth in the
    variances, so its values at relative sds ``h, 2h, 4h`` (``h = 5e-4``, where the round-off is about
    1e-11) extrapolated to 0 in the variance, ``(64 f(h) - 20 f(2h) + f(4h)) / 45`` (exact for a
    quadratic in ``h^2``), are the boundary's: to 1e-10 against a dense rank-one model (ML).
    The other variables stay at ``v``, their optimum at the boundary up to ``O(h^4)``.
    """
    n_evaluations, f = obj.n_evaluations, []
    for step in (1.0, 2.0, 4.0):
        moved = np.array(v, dtype=float)
        moved[held] = step * EXTRAPOLATION
        f.append(obj.evaluate(moved).objective)
    obj.n_evaluations = n_evaluations  # n_eval counts the optimizer's evaluations
    return (64.0 * f[0] - 20.0 * f[1] + f[2]) / 45.0


def off_saddle(obj: Objective, log) -> np.ndarray | None:
    """A point to go on from when a coefficient ended exactly at 0 and moving it lowers the objective.

    A loading ``a * u[g]`` whose ``u`` has a fixed scale makes the likelihood symmetric in ``a``: its
    gradient at ``a = 0`` vanishes, so a fit started there (coefficients start at 0) stays there,
    although ``a = 0`` is a saddle or a maximum.  A coefficient at exactly 0 is moved to 1, -1, 0.3
    and -0.3 (times its scale); the first move that lowers -2 log L by more than its rounding
    (``max(1e-5, 1e-11 |objective|)``, as :func:`~gdag.fitting.optimize.check_identified`) is returned.
    """
    v, best = log.v_best, log.best
    if v is None or obj.free.size == 0:
        return None
    tol, n_evaluations = max(1e-5, 1e-11 * abs(best.objective)), obj.n_evaluations
    for i in np.flatnonzero(obj.roles.scale[obj.free] & ~obj.is_sd & (v == 0.0)):
        for step in (1.0, -1.0, 0.3, -0.3):
            moved = np.array(v, dtype=float)
            moved[i] = step
            try:
                lower = obj.evaluate(moved).objective < best.objective - tol
            except NotIdentifiedError:
                continue
            if lower:
                obj.n_evaluations = n_evaluations
                return moved
    obj.n_evaluations = n_evaluations
    return None


def scaling_nothing(obj: Objective, v: np.ndarray, singular_tol: float) -> np.ndarray:
    """Mask of the coefficient variables whose every parent has its sd at 0 (below ``singular_tol``): they
    scale a variable that is 0, so nothing identifies them (lme4's correlation of a singular fit is NaN),
    and that is the boundary's doing, not an error."""
    cm, out = obj.cm, np.zeros(obj.free.shape[0], bool)
    at_zero = np.zeros(cm.n_theta + 1, bool)
    at_zero[obj.free[obj.is_sd & (np.maximum(v, 0.0) < singular_tol)]] = True
    for i in np.flatnonzero(obj.roles.scale[obj.free] & ~obj.is_sd):
        parents = cm.sd_param[cm.B_cols[cm.B_scale == obj.free[i]]]
        out[i] = parents.size > 0 and bool(np.all(at_zero[parents]))  # sd_param -1 (constant sd): the last, False
    return out
