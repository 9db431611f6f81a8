"""Fits with observed leaf families summed over their rows (gdag.fitting.reduced), against dense numpy.

The sums are used on their own only for large families (observations.MIN_ROWS); here every eligible
family is summed, so small random models exercise them: the objective, GLS fixed effects and natural
parameters equal the dense oracle's (tests/test_fit.py's), the gradient equals the joint system's, and
fits reach the joint system's optimum.
"""

import numpy as np
import pandas as pd
import pytest
from test_fit import dense_objective, random_case, spec_roles
from test_observations import leaves_of, observed_leaves_and_some

import gdag
from gdag import observations
from gdag.data import data_vector
from gdag.fitting.objective import Objective
from gdag.fitting.reduced import ReducedObjective, reduced_setup
from gdag.fitting.roles import infer_roles

from reference import dense_joint


def reduced_case(seed, sds_are_params, profile, drop=0.0):
    """A random model with its leaves observed (but a fraction ``drop`` of their entries): ``(rng, spec, m,
    data, x, setup)``, or None."""
    rng, spec, m, _, _ = random_case(seed, sds_are_params)
    data, x = observed_leaves_and_some(spec, rng, 0.5)
    if not data:
        return None
    if drop:  # a leaf's unobserved rows integrate out: the fit sums the observed ones
        offsets = dense_joint(spec)[2]
        for fam in spec.families:
            start = offsets[fam.name]
            if fam.name in data and not fam.scalar and fam.name in {f.name for f in leaves_of(spec)}:
                gone = rng.random(fam.size) < drop
                gone[np.flatnonzero(~gone)[:1]] = False  # keep at least one
                data[fam.name] = np.where(gone, np.nan, data[fam.name])
                x[start:start + fam.size][gone] = np.nan
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(observations, "MIN_ROWS", 0)
        try:
            setup = reduced_setup(m.spec(), m._queries, data, profile)
        except gdag.NotIdentifiedError:
            return None  # a parameter the random model does not use (the general path says so too)
    return None if setup is None else (rng, spec, m, data, x, setup)


def joint_objective(m, data, roles_profile, reml):
    """The general path's objective on the same model and data (every row in the joint system)."""
    cm = m._queries.compiled(m.spec())
    x, observed = data_vector(m.spec(), cm, data)
    cond = m._queries.conditioning_for(cm, observed)
    return Objective(cm, cond, x, infer_roles(cm, cond, profile=roles_profile), reml)


@pytest.mark.parametrize("sds_are_params, drop", [(False, 0.0), (True, 0.0), (True, 0.3)])
def test_reduced_objective_equals_dense_formula_on_random_models(sds_are_params, drop):
    checked = profiled = optimized_leaf = curved = exact = 0
    for seed in range(1500):
        profile = bool(seed % 2)
        case = reduced_case(seed, sds_are_params, profile, drop)
        if case is None:
            continue
        rng, spec, m, data, x, (cm, cond, x_gdag, _, roles, stats, _, _) = case
        own = spec_roles(spec, ~np.isnan(x), profile)
        assert (list(roles.fixed), list(roles.optimized), roles.profiled) == (own.fixed, own.optimized, own.profiled)
        for reml in (False, True):
            v = rng.uniform(0.5, 1.5, size=len(own.optimized))
            expected = dense_objective(spec, own, v, x, reml)
            if expected is None:
                with pytest.raises(gdag.NotIdentifiedError):
                    ReducedObjective(cm, cond, x_gdag, roles, reml, stats).evaluate(v)
                continue
            dense, beta, theta = expected
            try:
                ev = ReducedObjective(cm, cond, x_gdag, roles, reml, stats).evaluate(v, gradient=True, curvature=True)
            except gdag.NotIdentifiedError as err:  # a residual below the sums' rounding: refused, not guessed
                assert "fitted exactly" in str(err)
                exact += 1
                continue
            assert ev.objective == pytest.approx(dense, rel=1e-8, abs=1e-8), seed
            np.testing.assert_allclose(ev.beta, beta, rtol=1e-6, atol=1e-6 * (1 + np.abs(beta).max(initial=0)))
            np.testing.assert_allclose(ev.theta, theta, rtol=1e-6, atol=1e-6 * (1 + np.abs(theta).max()))
            joint = joint_objective(m, data, profile, reml)
            if joint.exact_gradient:
                there = joint.evaluate(v, gradient=True, curvature=True)
                g = there.gradient
                np.testing.assert_allclose(ev.gradient, g, rtol=1e-6, atol=1e-7 * (1 + np.abs(g).max(initial=0)))
                if joint.has_curvature:  # the average information, rows summed or not
                    H = there.curvature
                    np.testing.assert_allclose(ev.curvature, H, rtol=1e-6, atol=1e-7 * (1 + np.abs(H).max(initial=0)))
                    curved += 1
            checked += 1
            profiled += own.profiled >= 0
            optimized_leaf += any(e in set(roles.optimized.tolist()) for e in (c.entry for c in stats.classes))
        if checked >= 30 and profiled >= 10 * sds_are_params and optimized_leaf >= 10 * sds_are_params:
            break
    assert checked >= 30 and profiled >= 10 * sds_are_params and optimized_leaf >= 10 * sds_are_params and curved >= 20
    assert exact <= checked // 10


def slopes_frame(seed=0, n=3000, groups=60, mean=100.0):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    x = rng.normal(size=n)
    u0, u1 = rng.normal(size=groups), 0.4 * rng.normal(size=groups)
    y = mean + 0.5 * x + u0[g] + u1[g] * x + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_correlated_slopes_reach_the_joint_systems_optimum(monkeypatch, method):
    """``y ~ 1 + x + (1 + x | g)`` with a large mean (100 residual sds): the same fit either way."""
    df = slopes_frame()
    monkeypatch.setattr(observations, "MIN_ROWS", 10**9)
    joint = gdag.lmer("y ~ 1 + x + (1 + x | g)", df, method=method)
    monkeypatch.setattr(observations, "MIN_ROWS", 0)
    reduced = gdag.lmer("y ~ 1 + x + (1 + x | g)", df, method=method)
    assert reduced.converged and reduced.nobs == joint.nobs == len(df)
    assert reduced.loglik == pytest.approx(joint.loglik, rel=1e-11, abs=1e-8)
    for name, value in joint.params.items():
        np.testing.assert_allclose(reduced.params[name], value, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(reduced.stderr["beta"], joint.stderr["beta"], rtol=1e-7)
    ours, theirs = reduced.ranef(), joint.ranef()
    np.testing.assert_allclose(ours.iloc[:, -2:].to_numpy(float), theirs.iloc[:, -2:].to_numpy(float), rtol=1e-4, atol=1e-6)


def test_em_with_summed_rows_reaches_the_joint_systems_optimum(monkeypatch):
    """EM needs the leaves' residual second moments ``sum w (e^2 + h)``: from the sums and the selected inverse."""
    df = slopes_frame(seed=3, n=1500, groups=40)
    m = gdag.from_formula("y ~ 1 + x + (1 | g)", df)
    monkeypatch.setattr(observations, "MIN_ROWS", 10**9)
    joint = m.fit(df, method="em")
    monkeypatch.setattr(observations, "MIN_ROWS", 0)
    reduced = m.fit(df, method="em")
    assert reduced.loglik == pytest.approx(joint.loglik, rel=1e-12)
    for name, value in joint.params.items():
        np.testing.assert_allclose(reduced.params[name], value, rtol=1e-8)


def slopes_model(df, groups):
    m = gdag.Model("slopes")
    G, obs = m.plate("g", groups), m.plate("obs", len(df))
    g, x = df["g"].astype(int).to_numpy(), df["x"].to_numpy()
    u0 = m.normal("u0", 0.0, m.param("s0", positive=True), plate=G)
    u1 = m.normal("u1", m.param("rho") * u0, m.param("s1", positive=True), plate=G)
    m.normal("y", m.param("b0") + m.param("b1") * x + u0[g] + x * u1[g], m.param("sigma", positive=True), plate=obs)
    return m


def test_the_summary_counts_the_summed_rows(monkeypatch):
    df = slopes_frame(seed=2, n=800, groups=20)
    m = slopes_model(df, 20)
    monkeypatch.setattr(observations, "MIN_ROWS", 0)
    fit = m.fit({"y": df["y"].to_numpy()}, method="ml")
    assert [(name, what, n) for name, _, what, n in fit.roles["variance"]] == [
        ("s0", "u0", 20), ("s1", "u1 | u0", 20), ("sigma", "y", 800)]
    assert fit.observed == ("y",) and fit.nobs == 800


def test_a_coefficient_near_zero_is_not_taken_for_a_flat_direction():
    """20M rows of ``(1 + x | g)`` with independent slopes put ``rho`` at about 1e-4, and the identification
    check moved it by half of itself, saw no change and refused the fit.  Coefficients now move by at least 1."""
    from gdag.fitting.optimize import FitLog, check_identified

    df = slopes_frame(seed=5, n=600, groups=30)
    m = slopes_model(df, 30)
    fit = m.fit({"y": df["y"].to_numpy()}, method="ml")
    cm = m._queries.compiled(m.spec())
    xv, observed = data_vector(m.spec(), cm, {"y": df["y"].to_numpy()})
    cond = m._queries.conditioning_for(cm, observed)
    roles = infer_roles(cm, cond)
    obj = Objective(cm, cond, xv, roles, reml=False)
    v = np.array([fit.params[roles.labels[k]] / fit.params["sigma"] if roles.sd[k] else fit.params[roles.labels[k]]
                  for k in roles.optimized])
    v[[roles.labels[k] for k in roles.optimized].index("rho")] = 1e-9  # an identified coefficient at about 0
    log = FitLog()
    log.record(v, obj.evaluate(v, gradient=True, curvature=True))
    assert check_identified(obj, log) is None


@pytest.mark.parametrize("chunk_rows", [7, 1000, 2999])
def test_any_chunking_gives_the_same_objective(monkeypatch, chunk_rows):
    """The sums over chunks added pairwise: any chunking gives the one-chunk objective, gradient and GLS to 1e-12."""
    from gdag.fitting.reduced import leaf_statistics
    from gdag.observations import LeafRows

    df = slopes_frame(seed=4, n=3000, groups=40)
    m = slopes_model(df, 40)
    monkeypatch.setattr(observations, "MIN_ROWS", 0)
    data = {"y": df["y"].to_numpy()}
    cm, cond, x, _, roles, stats, _, _ = reduced_setup(m.spec(), m._queries, data, True)
    rows = [LeafRows(m.spec().nodes["y"], cm)]
    other = leaf_statistics(rows, data, x, cond.pos_U, cond.n_unobserved, roles.fixed, chunk_rows=chunk_rows,
                            beta0=stats.beta0)
    v = np.array([0.9, 0.1, 0.4])
    a = ReducedObjective(cm, cond, x, roles, True, stats).evaluate(v, gradient=True)
    b = ReducedObjective(cm, cond, x, roles, True, other).evaluate(v, gradient=True)
    assert b.objective == pytest.approx(a.objective, rel=1e-12)
    np.testing.assert_allclose(b.gradient, a.gradient, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-12)


def test_the_fits_posterior_keeps_its_own_copy_of_the_data(monkeypatch):
    df = slopes_frame(seed=6, n=500, groups=10)
    m = slopes_model(df, 10)
    monkeypatch.setattr(observations, "MIN_ROWS", 0)
    y = df["y"].to_numpy().copy()
    fit = m.fit({"y": y}, method="ml")
    expected = m.posterior({"y": y.copy()}, params=fit.params).mean("u0")
    y[:] = 0.0  # the caller reuses the array
    np.testing.assert_array_equal(fit.posterior.mean("u0"), expected)


@pytest.mark.parametrize("mean", [1e8, 0.0])
def test_a_large_mean_is_fitted_and_an_exact_fit_refused_as_in_the_joint_system(monkeypatch, mean):
    """The sums' exact-fit check is relative to the residual square about beta0, not to the data's square:
    y = 1e8 + noise (R^2 1 - 1e-16) is fitted as the joint system fits it; y exactly linear in x is refused."""
    df = slopes_frame(seed=7, n=600, groups=20, mean=mean)
    if mean == 0.0:
        df["y"] = 3.0 + 2.0 * df["x"]
    fits = []
    for rows in (10**9, 0):
        monkeypatch.setattr(observations, "MIN_ROWS", rows)
        if mean == 0.0:
            with pytest.raises(gdag.NotIdentifiedError, match="fitted exactly"):
                gdag.lmer("y ~ 1 + x + (1 | g)", df, method="ml")
        else:
            fits.append(gdag.lmer("y ~ 1 + x + (1 | g)", df, method="ml"))
    if fits:  # values near 1e8 carry 1.5e-8 of rounding each: the two roads agree to that, not to the last bit
        assert fits[1].loglik == pytest.approx(fits[0].loglik, rel=1e-9)
        np.testing.assert_allclose(fits[1].params["sigma"], fits[0].params["sigma"], rtol=1e-6)


@pytest.mark.parametrize("rows", [10**9, 0])
def test_a_fits_posterior_is_the_querys_bit_for_bit(monkeypatch, rows):
    """Joint system or summed rows: fit.posterior is m.posterior(data, params=fit.params), the same bits and draws."""
    df = slopes_frame(seed=8, n=400, groups=20)
    m = slopes_model(df, 20)
    monkeypatch.setattr(observations, "MIN_ROWS", rows)
    data = {"y": df["y"].to_numpy()}
    fit = m.fit(data, method="reml")
    post = m.posterior(data, params=fit.params)
    for name in ("u0", "u1"):
        assert np.array_equal(fit.posterior.mean(name), post.mean(name))
        assert np.array_equal(fit.posterior.sd(name), post.sd(name))
    assert np.array_equal(fit.posterior.sample(3, seed=1)["u0"], post.sample(3, seed=1)["u0"])


@pytest.mark.parametrize("rows", [10**9, 0])
def test_a_loading_is_moved_off_its_saddle_at_zero(monkeypatch, rows):
    """``mu + a * u[g]`` with ``u ~ N(0, 1)`` (user trial): the likelihood is symmetric in ``a``, its gradient at
    the start ``a = 0`` vanishes, and the fit stayed there, "converged".  It is the model ``u ~ N(0, s)``: |a| = s.
    With the rows summed, a parameter scaling a leaf's term keeps the joint system (NotIdentifiedError before)."""
    rng = np.random.default_rng(0)
    n, groups = 600, 40
    g = rng.integers(0, groups, n)
    y = 1 + 0.8 * rng.normal(size=groups)[g] + rng.normal(size=n)
    monkeypatch.setattr(observations, "MIN_ROWS", rows)
    loading, scaled = gdag.Model("loading"), gdag.Model("scaled")
    u = loading.normal("u", 0.0, 1.0, plate=loading.plate("g", groups))
    loading.normal("y", loading.param("mu") + loading.param("a") * u[g], loading.param("sigma", positive=True),
                   plate=loading.plate("obs", n))
    v = scaled.normal("v", 0.0, scaled.param("s", positive=True), plate=scaled.plate("g", groups))
    scaled.normal("y", scaled.param("mu") + v[g], scaled.param("sigma", positive=True), plate=scaled.plate("obs", n))
    fit, reference = loading.fit({"y": y}, method="ml"), scaled.fit({"y": y}, method="ml")
    assert fit.converged and abs(fit.params["a"]) == pytest.approx(reference.params["s"], rel=1e-5)
    assert fit.loglik == pytest.approx(reference.loglik, rel=1e-10)


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_pure_noise_with_correlated_slopes_is_a_singular_fit_at_the_regression(method):
    """(1 + x | g) on data with neither group effect (user trial): both sds at 0 leave the correlation's
    coefficient scaling a zero variable; that is a singular fit (lme4: isSingular, correlation NaN), not a
    NotIdentifiedError, and its logLik is the linear regression's."""
    rng = np.random.default_rng(11)
    for n in (3000, 20000):  # the user trial's draws; the second set is fitted
        g, x = rng.integers(0, n // 20, n), rng.normal(size=n)
        df = pd.DataFrame({"y": 1 + x + rng.normal(size=n), "x": x, "g": g})
    fit = gdag.lmer("y ~ x + (1 + x | g)", df, method=method)
    assert fit.converged and fit.singular and set(fit.boundary) == {"sd_g_Intercept", "sd_g_x"}
    X = np.column_stack([np.ones(n), x])
    rss = float(np.sum((df["y"] - X @ np.linalg.lstsq(X, df["y"], rcond=None)[0]) ** 2))
    dof = n - (2 if method == "reml" else 0)
    expected = -0.5 * (dof * (1 + np.log(2 * np.pi * rss / dof)) + (np.linalg.slogdet(X.T @ X)[1] if method == "reml" else 0))
    assert fit.loglik == pytest.approx(expected, abs=1e-8)



def test_a_rank_one_boundary_on_a_flat_ridge_reaches_lme4s_optimum_from_every_start():
    """(1 + x | g) whose slope sd is 0 and whose intercept sd (0.04) and coefficient trade off along a flat
    ridge: at the slope sd's floor the objective's round-off outranked better points, and the default fit
    stopped 2.4e-5 below the optimum; held at HOLD, every start and optimizer reaches lme4 1.1.31's
    logLik, -4307.06636682091 (REML = FALSE, Rscript on the same data; isSingular, correlation -1)."""
    rng = np.random.default_rng(11)
    n = 3000
    g, x = rng.integers(0, n // 20, n), rng.normal(size=n)
    df = pd.DataFrame({"y": 1 + x + rng.normal(size=n), "x": x, "g": g})
    for options in ({}, {"optimizer": "lbfgs"}, {"init": {"sd_g_Intercept": 0.5, "c_g_x_Intercept": 0.3, "sd_g_x": 0.5}}):
        fit = gdag.lmer("y ~ x + (1 + x | g)", df, method="ml", **options)
        assert fit.converged and fit.boundary == ("sd_g_x",)
        assert fit.loglik == pytest.approx(-4307.06636682091, abs=1e-8)
        assert fit.params["sd_g_Intercept"] == pytest.approx(0.039852, rel=1e-4)


def test_a_partly_observed_response_is_summed_over_its_observed_rows(monkeypatch):
    """y with 10% NaN (user trial: 20 times slower than dropping the rows): the unobserved rows integrate out,
    so the fit sums the observed ones and reaches the joint system's optimum; fit.posterior still predicts them."""
    df = slopes_frame(seed=9, n=2000, groups=40)
    y = df["y"].to_numpy().copy()
    y[np.random.default_rng(1).random(y.size) < 0.1] = np.nan
    m = slopes_model(df, 40)
    monkeypatch.setattr(observations, "MIN_ROWS", 10**9)
    joint = m.fit({"y": y}, method="reml")
    monkeypatch.setattr(observations, "MIN_ROWS", 0)
    summed = m.fit({"y": y}, method="reml")
    assert summed.nobs == joint.nobs == int(np.isfinite(y).sum())
    assert summed.loglik == pytest.approx(joint.loglik, rel=1e-11)
    for name, value in joint.params.items():
        np.testing.assert_allclose(summed.params[name], value, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(summed.posterior.mean("y"), joint.posterior.mean("y"), rtol=1e-6)


def test_the_many_rows_example_runs_and_sums_the_rows(monkeypatch, capsys):
    """examples/many_rows.py (1M rows by default; 20,000 here): its fit is the joint system's."""
    import runpy
    from pathlib import Path

    example = runpy.run_path(str(Path(__file__).parent.parent / "examples" / "many_rows.py"))
    fit = example["main"](20_000)
    assert "20,000 rows fitted" in capsys.readouterr().out
    monkeypatch.setattr(observations, "MIN_ROWS", 10**9)
    joint = gdag.lmer("y ~ 1 + x + (1 + x | g)", example["simulate"](20_000), method="ml")
    assert fit.loglik == pytest.approx(joint.loglik, rel=1e-11)


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_a_model_with_no_fixed_effect_fits_from_its_sums(monkeypatch, method):
    """No parameter in any mean (p = 0): the summed fit had crashed reshaping its empty fixed-effect products."""
    rng = np.random.default_rng(0)
    who, x = rng.integers(0, 50, 600), rng.normal(3.0, 1.0, 600)
    x[::7] = np.nan
    m = gdag.Model("romcom")
    R = m.normal("R", 3.0, 1.0)
    R_i = m.normal("R_i", R, m.param("tau", positive=True), plate=m.plate("friend", 50))
    m.normal("X", R_i[who], m.param("sig", positive=True), plate=m.plate("rating", 600))
    monkeypatch.setattr(observations, "MIN_ROWS", 10**9)
    joint = m.fit({"X": x}, method=method)
    monkeypatch.setattr(observations, "MIN_ROWS", 0)
    summed = m.fit({"X": x}, method=method)
    assert summed.loglik == pytest.approx(joint.loglik, abs=1e-8)
    assert summed.params["tau"] == pytest.approx(joint.params["tau"], rel=1e-5)
