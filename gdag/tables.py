"""Results as pandas tables: a Fit's fixed and random effects, variance components, intervals,
fitted values and predictions, and a posterior's marginals.

:class:`~gdag.Fit` and :class:`~gdag.Posterior` call these (``fit.fixef()``,
``post.to_frame()``); the functions read them through their public
attributes only.  A fit of a model from :func:`gdag.from_formula` carries its
:class:`~gdag.design.Design`, and its tables speak lme4: R's column names,
the grouping factors' level labels, and lme4's parameterization of each
block of correlated random effects.  gdag fits a block of ``k`` terms as
``u = C u + e`` (``C`` strictly lower triangular, ``e ~ N(0, diag(sd^2))``),
so that its covariance is

    Sigma = (I - C)^{-1} diag(sd^2) (I - C)^{-T},

from which :func:`varcorr` reports lme4's SDs ``sqrt(Sigma_jj)`` and
correlations ``Sigma_ij / (sd_i sd_j)``.  Fits of hand-written models get
the same tables in gdag's own names.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
from scipy.special import chdtrc, ndtri

from .errors import DataError, FitError, ModelError
from .spec import labels as entry_labels

__all__ = ["fixef", "ranef", "varcorr", "block_covariance", "confint", "fitted", "residuals", "predict", "anova", "simulate",
           "posterior_frame", "formula_summary", "summary_notes", "fit_html", "posterior_html"]


# ------------------------------------------------------------ fixed effects


def fixef(fit, level: float = 0.95) -> pd.DataFrame:
    """Estimates, standard errors, t values and Wald intervals of the fixed effects, one row each."""
    names, estimate, se = _fixed(fit)
    z = _z(level)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = estimate / se
    frame = pd.DataFrame({"estimate": estimate, "std_error": se, "t_value": t,
                          "lower": estimate - z * se, "upper": estimate + z * se}, index=pd.Index(names, name="term"))
    return frame


def confint(fit, method: str = "wald", level: float = 0.95) -> pd.DataFrame:
    """Intervals as lme4's ``confint(fit, method = "Wald" | "profile")`` prints them.

    ``"wald"``: the fixed effects, estimate +- z SE.  ``"profile"`` (formula
    fits): every parameter in lme4's parameterization, from the ML deviance
    (:mod:`gdag.profile`).
    """
    z = _z(level)
    if method == "profile":
        if fit.design is None:
            raise FitError("confint(method='profile') needs a fit of a model from gdag.from_formula.")
        return fit.design.profile_confint(fit, level)
    if method != "wald":
        raise FitError(f"confint(method={method!r}) is not available; use method='wald' or 'profile'.")
    names, estimate, se = _fixed(fit)
    low, high = f"{100 * (1 - level) / 2:.3g} %", f"{100 * (1 + level) / 2:.3g} %"
    return pd.DataFrame({low: estimate - z * se, high: estimate + z * se}, index=pd.Index(names, name="term"))


def _fixed(fit):
    design = fit.design
    if design is not None:
        if design.beta is None:
            return [], np.zeros(0), np.zeros(0)
        return list(design.fixed_names), np.atleast_1d(fit.params[design.beta]), np.atleast_1d(fit.stderr[design.beta])
    estimate = np.asarray(fit.roles["fixed_values"], dtype=float)
    return list(fit.fixed_labels), estimate, np.sqrt(np.diag(fit.cov_fixed))


def _z(level: float) -> float:
    if not (isinstance(level, float) and 0.0 < level < 1.0):
        raise FitError(f"`level` must be a probability between 0 and 1 (0.95 for 95% intervals); got {level!r}.")
    return float(ndtri(0.5 + level / 2))


# ----------------------------------------------------------- random effects


def ranef(fit) -> pd.DataFrame:
    """Conditional modes and sds of the random effects (lme4's ``as.data.frame(ranef(fit, condVar = TRUE))``).

    Columns ``group``, ``level`` (the level's label), ``term``, ``condval``,
    ``condsd``; for a hand-written model, every family with no data, its
    plate as ``group`` and its name as ``term``.
    """
    post, parts = fit.posterior, []
    if fit.design is not None:
        for block in fit.design.blocks:
            labels = fit.design.group(block.group).labels
            for term, node in zip(block.terms, block.nodes):
                parts.append(_ranef_part(block.group, labels, term, post.mean(node), post.sd(node)))
    else:
        for name, node in fit.spec.nodes.items():
            if name in fit.observed:
                continue
            plate = node.plate
            labels = plate.labels if plate is not None and plate.labels is not None else pd.RangeIndex(node.size)
            parts.append(_ranef_part(None if plate is None else plate.name, labels, name, post.mean(name), post.sd(name)))
    if not parts:
        return pd.DataFrame(columns=["group", "level", "term", "condval", "condsd"])
    return pd.concat(parts, ignore_index=True)


def _ranef_part(group, labels, term, mean, sd) -> pd.DataFrame:
    n = np.size(mean)
    return pd.DataFrame({"group": [group] * n, "level": np.asarray(labels, dtype=object), "term": [term] * n,
                         "condval": np.atleast_1d(mean), "condsd": np.atleast_1d(sd)})


def block_covariance(fit, block) -> np.ndarray:
    """``Sigma = (I - C)^{-1} diag(sd^2) (I - C)^{-T}`` of one block of a formula fit."""
    k = len(block.terms)
    C = np.zeros((k, k))
    for j, i, coef in block.coefs:
        C[j, i] = fit.params[coef]
    L = np.linalg.solve(np.eye(k) - C, np.eye(k))  # unit lower triangular
    sd = np.array([fit.params[s] for s in block.sds])
    return (L * sd**2) @ L.T


def varcorr(fit) -> pd.DataFrame:
    """Variance components as lme4's ``as.data.frame(VarCorr(fit))``: ``grp, var1, var2, vcov, sdcor``.

    Per block of a formula fit, one row per term (``vcov`` its variance,
    ``sdcor`` its SD), then one per pair of terms (covariance and
    correlation), then ``Residual``.  For a hand-written model, one row per
    variance component (``var1`` the family it is the sd of).
    """
    rows = []
    if fit.design is not None:
        for block in fit.design.blocks:
            S = block_covariance(fit, block)
            sd = np.sqrt(np.diag(S))
            rows += [(block.label, t, None, S[j, j], sd[j]) for j, t in enumerate(block.terms)]
            rows += [(block.label, block.terms[i], block.terms[j], S[i, j], S[i, j] / (sd[i] * sd[j]))
                     for i in range(len(sd)) for j in range(i + 1, len(sd))]
        sigma = fit.params[fit.design.sigma]
        rows.append(("Residual", None, None, sigma**2, sigma))
    else:
        rows = [(name, what, None, value**2, value) for name, value, what, _ in fit.roles["variance"]]
    return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])


# ------------------------------------------------------ fitted values, residuals


def fitted(fit, node=None) -> pd.Series:
    """Each observed entry's fitted mean ``E[mean of node | data]`` (lme4's ``fitted()``: ``X beta + Z u``)."""
    name, index = _response(fit, node)
    return pd.Series(_fitted_values(fit, name), index=index, name="fitted")


def residuals(fit, node=None) -> pd.Series:
    """Observed values minus fitted means (lme4's ``residuals()``); NaN where the entry is unobserved."""
    name, index = _response(fit, node)
    post = fit.posterior
    observed = np.atleast_1d(post.mean(name)).astype(float)
    if fit.design is None:
        observed[np.atleast_1d(post.var(name)) > 0] = np.nan
    return pd.Series(observed - _fitted_values(fit, name), index=index, name="residuals")


def _response(fit, node):
    if fit.design is not None and node is None:
        return fit.design.response, fit.design.rows
    if node is None:
        sinks = [n for n in fit.observed if not any(
            t.source.name == n for other in fit.spec.nodes.values() if other.name != n for t in other.mean.terms)]
        if len(sinks) != 1:
            raise DataError("This fit has several observed families; name one: fit.fitted(node=...).")
        node = sinks[0]
    name = getattr(node, "name", node)
    if name not in fit.spec.nodes:
        raise DataError(f"The fitted model has no node `{name}`.")
    return name, pd.RangeIndex(fit.spec.nodes[name].size)


def _fitted_values(fit, name: str) -> np.ndarray:
    """The node's mean expression evaluated at the posterior means and the estimates."""
    node, post = fit.spec.nodes[name], fit.posterior
    expr = node.mean
    out = np.array(expr.offset, dtype=float)
    for t in expr.terms:
        source = t.source.name
        values = np.atleast_1d(fit.params[source] if t.source.is_param else post.mean(source))
        weights = t.vals * values[t.cols] * (1.0 if t.scale is None else fit.params[t.scale.name])
        out += np.bincount(t.rows, weights=weights, minlength=expr.length)
    return out


# ------------------------------------------------------------------ predict


def predict(fit, newdata, new_levels: str = "population") -> pd.DataFrame:
    """Predictive mean and sds of new rows of a formula fit, seen and unseen levels alike.

    ``mean`` is ``X beta + Z u`` at the estimates and the conditional modes,
    with ``u = 0`` for a level the data did not have (lme4's
    ``predict(fit, newdata, allow.new.levels = TRUE)``); ``sd`` is the sd of
    that linear predictor given the data (random effects' conditional
    uncertainty, an unseen level's whole prior variance; fixed effects at
    their estimates); ``sd_obs`` adds the residual variance: the sd of a new
    observation.  All rows come from one posterior of the model extended by
    the new rows (``m.design.prediction_model``).
    """
    design = fit.design
    if design is None:
        raise FitError("predict() needs a fit of a model from gdag.from_formula. For a model declared by hand, add the "
                       "new rows as unobserved (NaN) entries and query m.posterior(data, params=fit.params).")
    model, node, index = design.prediction_model(newdata, new_levels)
    post = model.posterior(design.data, params=fit.params)
    mean, sd = np.atleast_1d(post.mean(node)), np.atleast_1d(post.sd(node))
    sigma = fit.params[design.sigma]
    return pd.DataFrame({"mean": mean, "sd": sd, "sd_obs": np.sqrt(sd**2 + sigma**2)}, index=index)


# ------------------------------------------------------------- comparisons


def anova(*fits, names=None) -> pd.DataFrame:
    """Likelihood-ratio table of nested fits, as lme4's ``anova(fit0, fit1, ...)``.

    Fits are sorted by their number of parameters; REML fits of formula
    models are refitted by ML first (as lme4 does), since restricted
    likelihoods of different fixed effects do not compare.  Columns
    ``npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq)``: ``Chisq`` is
    twice the gain in log-likelihood over the row before, referred to a
    chi-square with ``Df`` (the extra parameters) degrees of freedom.
    """
    if len(fits) < 2:
        raise FitError("anova() compares two or more fits: gdag.anova(fit0, fit1, ...).")
    names = list(names) if names is not None else [_fit_name(f) for f in fits]
    if len(names) != len(fits):
        raise FitError(f"anova(): {len(names)} names for {len(fits)} fits.")
    if len({f.nobs for f in fits}) > 1:
        raise FitError("anova() compares fits to the same observations; these have " +
                       ", ".join(str(f.nobs) for f in fits) + ".")
    fits = [_ml(f) for f in fits]
    order = sorted(range(len(fits)), key=lambda k: fits[k].n_params)
    fits, names = [fits[k] for k in order], [names[k] for k in order]
    loglik = np.array([f.loglik for f in fits])
    npar = np.array([f.n_params for f in fits], dtype=float)
    chisq = np.r_[np.nan, 2.0 * np.diff(loglik)]
    df = np.r_[np.nan, np.diff(npar)]
    with np.errstate(invalid="ignore"):
        p = np.where(df > 0, chdtrc(np.where(df > 0, df, 1.0), np.maximum(chisq, 0.0)), np.nan)
    return pd.DataFrame({"npar": npar.astype(int), "AIC": [f.aic for f in fits], "BIC": [f.bic for f in fits],
                         "logLik": loglik, "deviance": -2.0 * loglik, "Chisq": chisq, "Df": df, "Pr(>Chisq)": p},
                        index=pd.Index(names, name="model"))


def _fit_name(fit) -> str:
    return fit.design.formula.text if fit.design is not None else fit.model_name


def _ml(fit):
    if fit.criterion == "ml":
        return fit
    if fit.design is None:
        raise FitError(f"anova() compares ML fits; `{fit.model_name}` was fitted by {fit.method.upper()}: "
                       "refit it with m.fit(data, method='ml').")
    return fit.design.build(fit.model_name).fit(fit.design.data, method="ml")


def simulate(fit, n: int = 1, seed=None) -> pd.DataFrame:
    """``n`` new responses from the fitted model of a formula fit (random effects drawn afresh), as lme4's ``simulate()``.

    One column per simulation (``sim_1``, ...), one row per row of the data used.
    """
    if fit.design is None:
        raise FitError("simulate() needs a fit of a model from gdag.from_formula. For a model declared by hand, "
                       "draw from m.posterior({}, params=fit.params).sample(n).")
    design = fit.design
    draws = design.build(fit.model_name).posterior({}, params=fit.params).sample(n, seed=seed, nodes=[design.response])
    columns = [f"sim_{k + 1}" for k in range(draws[design.response].shape[0])]
    return pd.DataFrame(draws[design.response].T, index=design.rows, columns=columns)


# ------------------------------------------------------------------ posterior


def posterior_frame(post, plates: dict, quantiles=(0.025, 0.975)) -> pd.DataFrame:
    """Marginals as rows: ``node, entry, label, level, mean, sd`` and the normal quantiles asked for.

    ``plates`` maps each node's name to its plate's name and labels (None for none).
    """
    try:
        probs = [float(q) for q in np.atleast_1d(quantiles)]
    except (TypeError, ValueError):  # "0.5" or a node: not a probability
        probs = [np.nan]
    if any(not 0.0 < q < 1.0 for q in probs):
        raise DataError(f"to_frame(quantiles=...) takes probabilities strictly between 0 and 1; got {quantiles!r}.")
    parts = []
    for name, (plate, labels) in plates.items():
        mean, sd = np.atleast_1d(post.mean(name)), np.atleast_1d(post.sd(name))
        entries = np.arange(mean.shape[0])
        part = pd.DataFrame({
            "node": name, "entry": entries,
            "label": entry_labels(name, plate, entries),
            "level": np.asarray(labels, dtype=object) if labels is not None else entries,
            "mean": mean, "sd": sd})
        for q in probs:
            part[f"{100 * q:.3g}%"] = mean + ndtri(q) * sd
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


# -------------------------------------------------------------- summaries


def formula_summary(fit) -> str:
    """lme4's ``summary()`` of a formula fit: criterion, random effects (SDs, correlations), fixed effects."""
    kind = {"reml": "REML", "ml": "maximum likelihood", "em": f"EM ({fit.criterion.upper()})"}[fit.method]
    crit = "REML criterion" if fit.criterion == "reml" else "deviance"
    lines = [f"Linear mixed model fit by {kind} (gdag)", f"Formula: {fit.design.formula.text}",
             f"{'AIC':>12}{'BIC':>12}{'logLik':>12}{crit:>16}",
             f"{fit.aic:>12.2f}{fit.bic:>12.2f}{fit.loglik:>12.2f}{fit.objective:>16.2f}", "", "Random effects:",
             f" {'Groups':<14}{'Name':<16}{'Std.Dev.':>10}  Corr"]
    vc = varcorr(fit)
    for grp, block in vc.groupby("grp", sort=False):
        sds, cors = block[block.var2.isna()], block[block.var2.notna()]
        for k, (_, row) in enumerate(sds.iterrows()):
            corr = " ".join(f"{r:6.2f}" for r in cors[cors.var2 == row.var1].sdcor)
            name = row.var1 if isinstance(row.var1, str) else ""
            lines.append(f" {grp if k == 0 else '':<14}{name:<16}{row.sdcor:>10.4g}  {corr}")
    groups = ", ".join(f"{g.name}, {len(g.labels)}" for g in fit.design.groups)
    lines += [f"Number of obs: {fit.nobs}" + (f", groups:  {groups}" if groups else ""), "", "Fixed effects:"]
    table = fixef(fit)
    lines.append(f" {'':<16}{'Estimate':>12}{'Std. Error':>12}{'t value':>9}")
    for name, row in table.iterrows():
        lines.append(f" {name:<16}{row.estimate:>12.5g}{row.std_error:>12.5g}{row.t_value:>9.3f}")
    return "\n".join(lines + summary_notes(fit))


def summary_notes(fit) -> list[str]:
    """The lines that close a summary: a boundary (singular) fit, an optimizer that did not converge."""
    lines = []
    if fit.singular:
        lines += ["", "Boundary (singular) fit: " + ", ".join(f"`{b}`" for b in fit.boundary) + " estimated at 0."]
    if not fit.converged:
        lines += ["", "WARNING: the optimizer did not converge; these are its best values."]
    return lines


def fit_html(fit) -> str:
    """A Fit for a notebook: the criterion line, the variance components and the fixed effects as HTML tables."""
    head = (f"<p><b>gdag fit</b> of <code>{html.escape(fit.design.formula.text if fit.design else fit.model_name)}"
            f"</code> by {fit.method.upper()}: logLik {fit.loglik:.4f}, AIC {fit.aic:.2f}, BIC {fit.bic:.2f}, "
            f"{fit.nobs} observations, {'converged' if fit.converged else '<b>not converged</b>'}"
            f"{', singular' if fit.singular else ''}.</p>")
    parts = [head]
    vc = varcorr(fit)
    if len(vc):
        parts += ["<p>Variance components</p>", vc.to_html(index=False, na_rep="", float_format=_fmt)]
    fe = fixef(fit)
    if len(fe):
        parts += ["<p>Fixed effects</p>", fe.to_html(float_format=_fmt)]
    return "\n".join(parts)


def _fmt(x: float) -> str:
    return f"{x:.6g}" if math.isfinite(x) else str(x)


def posterior_summary(post, node, max_rows: int) -> str:
    """:meth:`gdag.Posterior.summary`: means and sds of ``node``'s first ``max_rows`` entries, observed ones marked."""
    if isinstance(max_rows, (bool, np.bool_)) or not isinstance(max_rows, (int, np.integer)) or max_rows < 0:
        raise ModelError(f"summary(max_rows=...) needs a non-negative integer; got {max_rows!r:.60}.")
    cm, cond = post._cm, post._cond
    mean, sd = np.atleast_1d(post.mean(node)), np.atleast_1d(post.sd(node))
    if node.name in cond.leaf_data:
        observed = np.ones(node.size, dtype=bool)
        plate = None if node.is_scalar else cond.leaf_plates[node.name]
        entries = entry_labels(node.name, plate, np.arange(min(node.size, max_rows)))
    else:
        span = cm.span(node.name)
        observed = ~np.isnan(post._x[span])
        entries = cm.labels(np.arange(span.start, span.start + min(node.size, max_rows)))  # u[subj=3]
    lines = [f"{'entry':<16}{'mean':>12}{'sd':>12}"] + [
        f"{entry:<16}{mean[i]:>12.4f}{sd[i]:>12.4f}{'  (observed)' if observed[i] else ''}" for i, entry in enumerate(entries)]
    if node.size > max_rows:
        lines.append(f"... {node.size - max_rows} more")
    return "\n".join(lines)


def posterior_html(post) -> str:
    """A Posterior for a notebook: one row per node with its size, observed count and mean/sd summary."""
    cm, cond = post._cm, post._cond
    rows = []
    for name in [*cm.family_names, *cond.leaf_data]:
        if name in cond.leaf_data:
            size = int(np.asarray(cond.leaf_data[name]).size)
            n_obs, plate = size, cond.leaf_plates[name]
        else:
            f = cm.family(name)
            size, plate = int(cm.family_size[f]), cm.family_plate[f]
            n_obs = int(np.count_nonzero(~np.isnan(post._x[cm.span(name)])))
        if n_obs == size:
            summary = "observed"
        else:
            mean, sd = np.atleast_1d(post.mean(name)), np.atleast_1d(post.sd(name))
            free = np.isnan(post._x[cm.span(name)])
            mean, sd = mean[free], sd[free]
            summary = (f"{mean[0]:.4g} ± {sd[0]:.4g}" if size == 1 else
                       f"mean {mean.min():.4g} … {mean.max():.4g}; sd {sd.min():.4g} … {sd.max():.4g}")
        cells = [name, plate or "", size, n_obs, summary]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("node", "plate", "size", "observed", "posterior (unobserved entries)"))
    return (f"<p><b>gdag posterior</b> of <code>{html.escape(cm.name)}</code>: {cond.n_observed} observed, "
            f"{cond.n_unobserved} unobserved, {cond.S.shape[0]} deterministic.</p>\n"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
