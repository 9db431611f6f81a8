"""Result tables and prediction: against lme4 (tests/data/*_reference.json) and dense numpy conditioning."""

import re
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtri

import gdag

from lme4data import CASES, FORMULAS, frame, reference

RTOL = 1e-4
Z95 = float(ndtri(0.975))


@pytest.fixture(scope="module")
def lmer_fits():
    cache = {}

    def get(formula, data, method="reml"):
        if (formula, method) not in cache:
            cache[formula, method] = gdag.lmer(FORMULAS[formula], frame(data), method=method)
        return cache[formula, method]

    return get


@pytest.mark.parametrize("data, formula, ref_file, key", [c for c in CASES if c[0] != "cake"])
def test_varcorr_reports_lme4s_sds_and_correlations(lmer_fits, data, formula, ref_file, key):
    ref = reference(ref_file)[key]
    vc = lmer_fits(formula, data, "reml" if ref["reml"] else "ml").varcorr()
    assert list(vc.columns) == ["grp", "var1", "var2", "vcov", "sdcor"]
    sds = vc[vc.var2.isna() & (vc.grp != "Residual")]
    got = {(g.split(".")[0].lower(), t): s for g, t, s in zip(sds.grp, sds.var1, sds.sdcor)}
    want = {(g, t): s for g, terms in ref["sd"].items() if g != "residual" for t, s in terms.items()}
    assert got.keys() == want.keys()  # lme4's group names: Subject, cask:batch, ...
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=RTOL), k
    residual = vc[vc.grp == "Residual"].iloc[0]
    assert residual.sdcor == pytest.approx(ref["sd"]["residual"], rel=RTOL)
    assert residual.vcov == pytest.approx(residual.sdcor**2, rel=1e-14)
    cors = vc[vc.var2.notna()]
    want_cor = {(g, pair): r for g, pairs in ref["cor"].items() for pair, r in pairs.items()}
    got_cor = {(g.lower(), f"{a},{b}"): r for g, a, b, r in zip(cors.grp, cors.var1, cors.var2, cors.sdcor)}
    assert got_cor.keys() == want_cor.keys()
    for k in want_cor:  # sleepstudy's correlation is small and flat: test_fit uses 5e-4 too
        assert got_cor[k] == pytest.approx(want_cor[k], rel=5e-4), k


def test_uncorrelated_blocks_are_named_as_lme4_names_them(lmer_fits):
    vc = lmer_fits("sleepstudy_uncorrelated", "sleepstudy", "ml").varcorr()
    assert vc.grp.tolist() == ["Subject", "Subject.1", "Residual"]
    assert vc.var1.tolist()[:2] == ["(Intercept)", "Days"]


def test_block_covariance_is_the_ldl_of_the_chain():
    """Three correlated terms: Sigma = (I - C)^-1 D (I - C)^-T, checked against the chain's own simulation."""
    rng = np.random.default_rng(4)
    g = np.repeat(np.arange(30), 8)
    x, z = rng.normal(size=g.size), rng.normal(size=g.size)
    df = pd.DataFrame({"y": rng.normal(size=g.size), "x": x, "z": z, "g": g})
    m = gdag.from_formula("y ~ x + (1 + x + z | g)", df)
    block = m.design.blocks[0]
    assert [c[:2] for c in block.coefs] == [(1, 0), (2, 0), (2, 1)]
    params = {"sd_g_Intercept": 1.5, "sd_g_x": 0.7, "sd_g_z": 0.3, "c_g_x_Intercept": 0.4,
              "c_g_z_Intercept": -0.2, "c_g_z_x": 0.9, "sigma": 1.0, "beta": [0.0, 0.0]}
    fake = type("F", (), {"params": params})()
    S = gdag.tables.block_covariance(fake, block)
    draws = m.posterior({}, params=params).sample(4000, seed=1, nodes=list(block.nodes))
    u = np.stack([draws[n].ravel() for n in block.nodes])
    np.testing.assert_allclose(np.cov(u), S, atol=0.05)
    C = np.array([[0, 0, 0], [0.4, 0, 0], [-0.2, 0.9, 0]])
    L = np.linalg.inv(np.eye(3) - C)
    np.testing.assert_allclose(S, L @ np.diag([1.5**2, 0.7**2, 0.3**2]) @ L.T, rtol=1e-14)


@pytest.mark.parametrize("formula, data, ref_file, key", [
    ("sleepstudy", "sleepstudy", "sleepstudy", "reml"),
    ("pastes", "pastes", "pastes", "reml"),
    ("penicillin", "penicillin", "penicillin", "ml"),
])
def test_ranef_equals_lme4s_conditional_modes_by_level_label(lmer_fits, formula, data, ref_file, key):
    ref = reference(ref_file)[key]
    re_ = lmer_fits(formula, data, "reml" if ref["reml"] else "ml").ranef()
    assert list(re_.columns) == ["group", "level", "term", "condval", "condsd"]
    for group, want in ref["ranef"].items():
        for term in want["mode"]:
            rows = re_[(re_.group.str.lower() == group) & (re_.term == term)].set_index("level")
            rows.index = rows.index.map(str)
            assert list(rows.index) == want["levels"]  # lme4's labels, in lme4's order
            np.testing.assert_allclose(rows.condval, want["mode"][term], rtol=RTOL, atol=1e-4 * np.abs(want["mode"][term]).max())
            np.testing.assert_allclose(rows.condsd, want["sd"][term], rtol=RTOL)


def test_fixef_and_wald_confint_match_lme4(lmer_fits):
    ref = reference("cake")["interaction_reml"]
    fit = lmer_fits("cake_interaction", "cake")
    fe = fit.fixef()
    assert list(fe.index) == list(ref["fixef"])
    np.testing.assert_allclose(fe.estimate, list(ref["fixef"].values()), rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(fe.std_error, list(ref["fixef_se"].values()), rtol=RTOL)
    np.testing.assert_allclose(fe.t_value, fe.estimate / fe.std_error, rtol=1e-14)
    ci = fit.confint()
    assert list(ci.columns) == ["2.5 %", "97.5 %"]
    np.testing.assert_allclose(ci["2.5 %"], fe.estimate - Z95 * fe.std_error, rtol=1e-14)
    np.testing.assert_allclose(ci["97.5 %"], fe.upper, rtol=1e-14)
    wide = fit.confint(level=0.99)
    assert list(wide.columns) == ["0.5 %", "99.5 %"] and (wide["0.5 %"] < ci["2.5 %"]).all()
    with pytest.raises(gdag.FitError, match="confint\\(method='bootstrap'\\) is not available"):
        fit.confint(method="bootstrap")


@pytest.mark.parametrize("case, data, method", [
    ("dyestuff", "dyestuff", "reml"), ("sleepstudy", "sleepstudy", "reml"), ("sleepstudy_uncorrelated", "sleepstudy", "reml"),
    ("penicillin", "penicillin", "reml"), ("small_group", "small_group", "ml"),
])
def test_profile_intervals_match_lme4(lmer_fits, case, data, method):
    """lme4's confint(method = "profile"), from the ML deviance, to 1e-3 (lme4 interpolates its profile by splines).

    A REML fit is refitted by ML, as lme4 does; small_group's group SD has an interval reaching 0.
    """
    want = reference("profile")[case]["confint"]
    got = lmer_fits(case, data, method).confint(method="profile")
    assert list(got.index) == list(want) and list(got.columns) == ["2.5 %", "97.5 %"]
    np.testing.assert_allclose(got.to_numpy(), np.array(list(want.values())), rtol=1e-3)
    if case == "small_group":
        assert got.iloc[0, 0] == 0.0
    with pytest.raises(gdag.FitError, match="needs a fit of a model from gdag.from_formula"):
        gdag.tables.confint(type("HandWritten", (), {"design": None})(), method="profile")


def test_fitted_and_residuals_are_lme4s_from_its_own_estimates(lmer_fits):
    """fitted = X beta + Z b with lme4's fixef and conditional modes (sleepstudy REML)."""
    ref = reference("sleepstudy")["reml"]
    df = frame("sleepstudy")
    fit = lmer_fits("sleepstudy", "sleepstudy")
    modes = ref["ranef"]["subject"]["mode"]
    s = df.Subject.cat.codes.to_numpy()
    want = (ref["fixef"]["(Intercept)"] + np.asarray(modes["(Intercept)"])[s]
            + df.Days * (ref["fixef"]["Days"] + np.asarray(modes["Days"])[s]))
    np.testing.assert_allclose(fit.fitted(), want, rtol=1e-6)
    np.testing.assert_allclose(fit.residuals(), df.Reaction - fit.fitted(), rtol=1e-12)
    assert (fit.fitted().index == df.index).all()


def test_fitted_keeps_the_rows_of_the_data_used():
    df = frame("dyestuff")
    df.index = [f"r{k}" for k in range(len(df))]
    df.loc["r4", "Yield"] = np.nan
    fit = gdag.lmer(FORMULAS["dyestuff"], df)
    assert "r4" not in fit.fitted().index and len(fit.residuals()) == len(df) - 1


def test_predict_matches_lme4_for_seen_and_unseen_levels(lmer_fits):
    ref = reference("sleepstudy_predict")
    fit = lmer_fits("sleepstudy", "sleepstudy")
    new = pd.DataFrame(ref["newdata"], index=list("abcde"))
    pred = fit.predict(new)
    assert list(pred.index) == list("abcde") and list(pred.columns) == ["mean", "sd", "sd_obs"]
    np.testing.assert_allclose(pred["mean"], ref["predict"], rtol=1e-5)
    with pytest.raises(gdag.DataError, match=re.escape("`newdata` has levels of `Subject` the data did not have: '999'")):
        fit.predict(new, new_levels="error")
    np.testing.assert_allclose(fit.predict(new.iloc[:3], new_levels="error")["mean"], ref["predict"][:3], rtol=1e-5)


def dense_predictive(y, X, Z, prior_cov, sigma, beta, x_new, z_new):
    """Mean and sd of x_new beta + z_new u given y: u ~ N(0, prior_cov), y = X beta + Z u + N(0, sigma^2 I)."""
    V = Z @ prior_cov @ Z.T + sigma**2 * np.eye(len(y))
    K = z_new @ prior_cov @ Z.T
    mean = x_new @ beta + K @ np.linalg.solve(V, y - X @ beta)
    cov = z_new @ prior_cov @ z_new.T - K @ np.linalg.solve(V, K.T)
    return mean, np.sqrt(np.diag(cov))


def test_predictive_sd_is_the_dense_gaussian_conditional_sleepstudy(lmer_fits):
    fit = lmer_fits("sleepstudy", "sleepstudy")
    df = frame("sleepstudy")
    s, days, n_s = df.Subject.cat.codes.to_numpy(), df.Days.to_numpy(), 19  # one more subject: the unseen one
    Sigma = gdag.tables.block_covariance(fit, fit.design.blocks[0])
    prior = np.kron(Sigma, np.eye(n_s))  # u = (intercepts of 19 subjects, slopes of 19 subjects)

    def z_of(subject, d):
        z = np.zeros((len(subject), 2 * n_s))
        z[np.arange(len(subject)), subject] = 1.0
        z[np.arange(len(subject)), n_s + subject] = d
        return z

    new = pd.DataFrame({"Subject": ["308", "372", "999", "999"], "Days": [2.0, 7.5, 0.0, 3.0]})
    new_codes = np.array([0, 17, 18, 18])
    mean, sd = dense_predictive(df.Reaction.to_numpy(), np.c_[np.ones(len(df)), days], z_of(s, days), prior,
                                fit.params["sigma"], fit.params["beta"], np.c_[np.ones(4), new.Days], z_of(new_codes, new.Days))
    pred = fit.predict(new)
    np.testing.assert_allclose(pred["mean"], mean, rtol=1e-10)
    np.testing.assert_allclose(pred["sd"], sd, rtol=1e-8)
    np.testing.assert_allclose(pred["sd_obs"], np.sqrt(sd**2 + fit.params["sigma"] ** 2), rtol=1e-12)


def test_predictive_sd_of_a_crossed_design_includes_the_cross_covariance(lmer_fits):
    """Penicillin: a new (plate, sample) row's sd needs Cov(u_plate, u_sample | y), which dense conditioning has."""
    fit = lmer_fits("penicillin", "penicillin", "ml")
    df = frame("penicillin")
    p, s = df.plate.cat.codes.to_numpy(), df["sample"].cat.codes.to_numpy()
    n_p, n_s = 25, 6  # one unseen plate
    prior = np.diag(np.r_[np.full(n_p, fit.params["sd_plate_Intercept"] ** 2), np.full(n_s, fit.params["sd_sample_Intercept"] ** 2)])

    def z_of(plate, sample):
        z = np.zeros((len(plate), n_p + n_s))
        z[np.arange(len(plate)), plate] = 1.0
        z[np.arange(len(plate)), n_p + sample] = 1.0
        return z

    new = pd.DataFrame({"plate": ["a", "x", "zz"], "sample": ["B", "F", "A"]})
    mean, sd = dense_predictive(df.diameter.to_numpy(), np.ones((len(df), 1)), z_of(p, s), prior, fit.params["sigma"],
                                np.atleast_1d(fit.params["beta"]), np.ones((3, 1)), z_of(np.array([0, 23, 24]), np.array([1, 5, 0])))
    pred = fit.predict(new)
    np.testing.assert_allclose(pred["mean"], mean, rtol=1e-10)
    np.testing.assert_allclose(pred["sd"], sd, rtol=1e-8)


def test_predict_refuses_what_it_cannot_predict(lmer_fits):
    fit = lmer_fits("cake_interaction", "cake")
    with pytest.raises(gdag.DataError, match=re.escape("`newdata` has no column `temp`")):
        fit.predict(pd.DataFrame({"recipe": ["A"], "replicate": [1]}))
    with pytest.raises(gdag.DataError, match="The columns of newdata, fixed effects could not be built"):
        fit.predict(pd.DataFrame({"recipe": ["D"], "replicate": [1], "temp": [200.0]}))
    m = gdag.Model()
    mu = m.param("mu")
    m.normal("y", mu, m.param("s", positive=True), plate=m.plate("obs", 3))
    with pytest.raises(gdag.FitError, match="predict\\(\\) needs a fit of a model from gdag.from_formula"):
        m.fit({"y": [1.0, 2.0, 4.0]}).predict(pd.DataFrame({"x": [1.0]}))


def test_tables_of_a_hand_written_model_use_its_names_and_plate_labels():
    df = frame("dyestuff")
    m = gdag.Model("dyestuff")
    batch, codes = m.plate_from(df.Batch)
    u = m.normal("u", 0.0, m.param("sd_batch", positive=True), plate=batch)
    m.normal("y", m.param("mu") + u[codes], m.param("sigma", positive=True), plate=m.plate("obs", len(df)))
    fit = m.fit({"y": df.Yield})
    formula_fit = gdag.lmer(FORMULAS["dyestuff"], df)
    assert list(fit.fixef().index) == ["mu"]
    np.testing.assert_allclose(fit.fixef().to_numpy(), formula_fit.fixef().to_numpy(), rtol=1e-8)
    vc = fit.varcorr()
    assert vc.grp.tolist() == ["sd_batch", "sigma"] and vc.var1.tolist() == ["u", "y | u"]
    re_ = fit.ranef()
    assert re_.group.unique().tolist() == ["Batch"] and re_.level.tolist() == list("ABCDEF")
    np.testing.assert_allclose(re_.condval, formula_fit.ranef().condval, rtol=1e-6)
    np.testing.assert_allclose(fit.fitted(), formula_fit.fitted(), rtol=1e-10)
    np.testing.assert_allclose(fit.residuals(node="y"), formula_fit.residuals(), rtol=1e-6)


def test_posterior_to_frame_has_labels_levels_and_quantiles():
    df = frame("penicillin")
    m = gdag.Model()
    plate, codes = m.plate_from(df.plate)
    u = m.normal("u", 0.0, 0.8, plate=plate)
    m.normal("y", 23.0 + u[codes], 0.5, plate=m.plate("obs", len(df)))
    post = m.posterior({"y": df.diameter})
    table = post.to_frame(["u"], quantiles=(0.05, 0.5, 0.95))
    assert list(table.columns) == ["node", "entry", "label", "level", "mean", "sd", "5%", "50%", "95%"]
    assert table.label[3] == "u[plate=3]" and table.level[3] == "d" and len(table) == 24
    np.testing.assert_array_equal(table["mean"], post.mean("u"))
    np.testing.assert_allclose(table["95%"], post.mean("u") + float(ndtri(0.95)) * post.sd("u"), rtol=1e-14)
    everything = post.to_frame()
    assert set(everything.node) == {"u", "y"} and (everything[everything.node == "y"].sd == 0).all()
    with pytest.raises(gdag.DataError, match="strictly between 0 and 1"):
        post.to_frame("u", quantiles=(0.0, 0.5))
    with pytest.raises(gdag.DataError, match="strictly between 0 and 1"):  # a bare ValueError before
        post.to_frame("u", quantiles=("median",))


def test_a_fit_reads_well_in_a_terminal_and_a_notebook(lmer_fits):
    fit = lmer_fits("sleepstudy", "sleepstudy")
    assert repr(fit) == ("<gdag.Fit REML of `Reaction ~ 1 + Days + (1 + Days | Subject)`: logLik -871.814, "
                         "180 observations, converged>")
    text = str(fit)
    for piece in ("Random effects:", "Subject", "(Intercept)", "Days", "Residual", "0.07", "Fixed effects:",
                  "Number of obs: 180, groups:  Subject, 18", "REML criterion"):
        assert piece in text, piece
    page = fit._repr_html_()
    assert "<table" in page and "Variance components" in page and "(Intercept)" in page and "logLik -871.8141" in page


def test_formulas_example_runs(capsys):
    runpy.run_path(str(Path(__file__).parent.parent / "examples" / "formulas.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "Linear mixed model fit by REML" in out and "Subject.1" in out and "new subject" not in out.split("fit.predict")[0]


def test_anova_matches_lme4s_likelihood_ratio_table():
    """Three REML fits, refitted by ML and ordered by their parameters, as lme4's anova() does."""
    ref = reference("anova")
    df = frame("sleepstudy")
    full, diagonal, intercept = (gdag.lmer(f, df) for f in reversed(ref["formulas"]))
    table = gdag.anova(full, diagonal, intercept)
    assert list(table.index) == ref["formulas"]
    assert list(table.columns) == list(ref["table"])
    for column, want in ref["table"].items():
        want = np.array([np.nan if w is None else w for w in want], dtype=float)
        rtol = 1e-4 if column in ("Chisq", "Pr(>Chisq)") else 1e-7  # a small difference of log-likelihoods
        np.testing.assert_allclose(table[column].to_numpy(dtype=float), want, rtol=rtol)
    with pytest.raises(gdag.FitError, match="compares two or more fits"):
        gdag.anova(full)
    with pytest.raises(gdag.FitError, match="to the same observations; these have 180, 179"):
        gdag.anova(full, gdag.lmer(ref["formulas"][0], df.iloc[1:]))


def test_simulate_draws_new_responses_from_the_fitted_model(lmer_fits):
    fit = lmer_fits("sleepstudy", "sleepstudy")
    sims = fit.simulate(4000, seed=7)
    assert sims.shape == (180, 4000) and list(sims.columns[:2]) == ["sim_1", "sim_2"]
    pd.testing.assert_frame_equal(fit.simulate(3, seed=7), fit.simulate(3, seed=7))
    days = frame("sleepstudy").Days.to_numpy()
    S = gdag.tables.block_covariance(fit, fit.design.blocks[0])
    z = np.c_[np.ones(180), days]
    sd = np.sqrt(np.einsum("ij,jk,ik->i", z, S, z) + fit.params["sigma"] ** 2)
    mean = z @ fit.params["beta"]
    assert np.all(np.abs(sims.mean(axis=1) - mean) < 5 * sd / np.sqrt(4000))
    np.testing.assert_allclose(sims.std(axis=1), sd, rtol=0.08)
    with pytest.raises(gdag.FitError, match="simulate\\(\\) needs a fit of a model from gdag.from_formula"):
        gdag.tables.simulate(type("HandWritten", (), {"design": None})(), 2)
