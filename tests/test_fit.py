"""Fitting: ML, REML and EM against lme4 reference fits and a dense oracle.

Reference values come from tests/data/*.json (written by make_reference.R
with lme4); the dense oracle conditions the joint covariance of
tests/reference.py with numpy.  Nothing here needs R.
"""

import gzip
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg as sla

import gdag
from gdag.data import data_vector
from gdag.fitting.objective import Objective
from gdag.fitting.roles import infer_roles

from reference import build_gdag, gls_deviance, joint_moments, observe_some, random_spec, spec_matrices

DATA = Path(__file__).parent / "data"
RTOL_LOGLIK = 1e-6
RTOL_EST = 1e-4


def load_csv(name):
    opener = gzip.open if name.endswith(".gz") else open
    with opener(DATA / name, "rt") as fh:
        names = fh.readline().strip().split(",")
        values = np.loadtxt(fh, delimiter=",", ndmin=2)
    return {n: values[:, i] for i, n in enumerate(names)}


def reference(name):
    return json.loads((DATA / f"{name}_reference.json").read_text())


def close(actual, expected, rtol=RTOL_EST):
    np.testing.assert_allclose(actual, expected, rtol=rtol)


# ------------------------------------------------------------------ models


def dyestuff():
    d = load_csv("dyestuff.csv")
    batch = d["batch"].astype(int)
    m = gdag.Model("dyestuff")
    b, obs = m.plate("batch", 6), m.plate("obs", batch.size)
    mu, sd_batch, sigma = m.param("mu"), m.param("sd_batch", positive=True), m.param("sigma", positive=True)
    u = m.normal("u", 0.0, sd_batch, plate=b)
    m.normal("y", mean=mu + u[batch], sd=sigma, plate=obs)
    return m, {"y": d["yield"]}


def penicillin():
    d = load_csv("penicillin.csv")
    plate, sample = d["plate"].astype(int), d["sample"].astype(int)
    m = gdag.Model("penicillin")
    P, S, obs = m.plate("plate", 24), m.plate("sample", 6), m.plate("obs", plate.size)
    mu = m.param("mu")
    sd_plate, sd_sample, sigma = (m.param(n, positive=True) for n in ("sd_plate", "sd_sample", "sigma"))
    u_plate = m.normal("u_plate", 0.0, sd_plate, plate=P)
    u_sample = m.normal("u_sample", 0.0, sd_sample, plate=S)
    m.normal("y", mean=mu + u_plate[plate] + u_sample[sample], sd=sigma, plate=obs)
    return m, {"y": d["diameter"]}


def sleepstudy(correlated=True):
    """lme4's Reaction ~ 1 + Days + (1 + Days | Subject): u1 | u0 ~ N(rho u0, s1^2)."""
    d = load_csv("sleepstudy.csv")
    subj, days = d["subject"].astype(int), d["days"]
    m = gdag.Model("sleepstudy")
    S, obs = m.plate("subject", 18), m.plate("obs", subj.size)
    b0, b1 = m.param("b0"), m.param("b1")
    s0, s1, sigma = (m.param(n, positive=True) for n in ("s0", "s1", "sigma"))
    u0 = m.normal("u0", 0.0, s0, plate=S)
    u1 = m.normal("u1", m.param("rho") * u0 if correlated else 0.0, s1, plate=S)
    m.normal("y", mean=b0 + b1 * days + u0[subj] + days * u1[subj], sd=sigma, plate=obs)
    return m, {"y": d["reaction"]}


def insteval():
    d = load_csv("insteval.csv.gz")
    s, dd, dept = (d[k].astype(int) for k in ("s", "d", "dept"))
    m = gdag.Model("insteval")
    obs = m.plate("obs", s.size)
    mu = m.param("mu")
    sds = {k: m.param(f"sd_{k}", positive=True) for k in ("s", "d", "dept")}
    u = {k: m.normal(f"u_{k}", 0.0, sds[k], plate=m.plate(k, int(idx.max()) + 1))
         for k, idx in (("s", s), ("d", dd), ("dept", dept))}
    m.normal("y", mean=mu + u["s"][s] + u["d"][dd] + u["dept"][dept], sd=m.param("sigma", positive=True), plate=obs)
    return m, {"y": d["y"]}


@pytest.fixture(scope="session")
def fits():
    """Fitted models, shared by the tests (MixedModels' modelcache)."""
    cache = {}

    def get(name, method):
        if (name, method) not in cache:
            m, data = {"dyestuff": dyestuff, "penicillin": penicillin, "sleepstudy": sleepstudy,
                       "sleepstudy_unc": lambda: sleepstudy(False), "insteval": insteval}[name]()
            cache[name, method] = m.fit(data, method=method)
        return cache[name, method]

    return get


def check_common(fit, ref):
    assert fit.converged
    assert fit.loglik == pytest.approx(ref["loglik"], rel=RTOL_LOGLIK)
    assert fit.nobs == ref["nobs"]
    assert fit.n_params == ref["df"]
    assert fit.aic == pytest.approx(ref["aic"], rel=RTOL_LOGLIK)
    assert fit.bic == pytest.approx(ref["bic"], rel=RTOL_LOGLIK)


# ------------------------------------------------------------------ lme4


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_dyestuff_matches_lme4(fits, method):
    fit, ref = fits("dyestuff", method), reference("dyestuff")[method]
    check_common(fit, ref)
    close(fit.params["mu"], ref["fixef"]["(Intercept)"])
    close(fit.params["sd_batch"], ref["sd"]["batch"]["(Intercept)"])
    close(fit.params["sigma"], ref["sd"]["residual"])
    close(fit.stderr["mu"], ref["fixef_se"]["(Intercept)"])
    assert isinstance(fit.params["mu"], float) and isinstance(fit.stderr["mu"], float)
    re_ = ref["ranef"]["batch"]
    np.testing.assert_allclose(fit.posterior.mean("u"), re_["mode"]["(Intercept)"], rtol=RTOL_EST, atol=1e-3)
    close(fit.posterior.sd("u"), re_["sd"]["(Intercept)"])
    assert not fit.singular


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_penicillin_crossed_matches_lme4(fits, method):
    fit, ref = fits("penicillin", method), reference("penicillin")[method]
    check_common(fit, ref)
    close(fit.params["mu"], ref["fixef"]["(Intercept)"])
    close(fit.params["sd_plate"], ref["sd"]["plate"]["(Intercept)"])
    close(fit.params["sd_sample"], ref["sd"]["sample"]["(Intercept)"])
    close(fit.params["sigma"], ref["sd"]["residual"])
    close(fit.stderr["mu"], ref["fixef_se"]["(Intercept)"])
    for node, group in (("u_plate", "plate"), ("u_sample", "sample")):
        re_ = ref["ranef"][group]
        np.testing.assert_allclose(fit.posterior.mean(node), re_["mode"]["(Intercept)"], rtol=RTOL_EST, atol=1e-4)
        close(fit.posterior.sd(node), re_["sd"]["(Intercept)"])


def lme4_scale(params):
    """gdag's (s0, s1, rho) as lme4's SDs of intercept and slope and their correlation."""
    s0, s1, rho = params["s0"], params["s1"], params.get("rho", 0.0)
    sd_slope = math.sqrt(rho**2 * s0**2 + s1**2)
    return s0, sd_slope, rho * s0 / sd_slope


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_sleepstudy_correlated_slopes_match_lme4(fits, method):
    fit, ref = fits("sleepstudy", method), reference("sleepstudy")[method]
    check_common(fit, ref)
    sd0, sd1, corr = lme4_scale(fit.params)
    close(sd0, ref["sd"]["subject"]["(Intercept)"])
    close(sd1, ref["sd"]["subject"]["Days"])
    close(corr, ref["cor"]["subject"]["(Intercept),Days"], rtol=5e-4)  # a small, flat correlation
    close(fit.params["sigma"], ref["sd"]["residual"])
    close([fit.params["b0"], fit.params["b1"]], [ref["fixef"]["(Intercept)"], ref["fixef"]["Days"]])
    close([fit.stderr["b0"], fit.stderr["b1"]], [ref["fixef_se"]["(Intercept)"], ref["fixef_se"]["Days"]])
    re_ = ref["ranef"]["subject"]
    for node, term in (("u0", "(Intercept)"), ("u1", "Days")):
        np.testing.assert_allclose(fit.posterior.mean(node), re_["mode"][term], rtol=RTOL_EST, atol=1e-3)
        close(fit.posterior.sd(node), re_["sd"][term])
    close(np.diag(fit.posterior.cov("u0", "u1")), re_["cond_cov"]["(Intercept),Days"], rtol=1e-3)


def test_sleepstudy_uncorrelated_ml_matches_lme4(fits):
    fit, ref = fits("sleepstudy_unc", "ml"), reference("sleepstudy")["ml_uncorrelated"]
    check_common(fit, ref)
    close(fit.params["s0"], ref["sd"]["subject"]["(Intercept)"])
    close(fit.params["s1"], ref["sd"]["subject"]["Days"])
    close(fit.params["sigma"], ref["sd"]["residual"])
    close([fit.stderr["b0"], fit.stderr["b1"]], [ref["fixef_se"]["(Intercept)"], ref["fixef_se"]["Days"]])


def test_insteval_ml_matches_lme4(fits):
    """73,421 ratings, three crossed random intercepts (the classic crossed benchmark)."""
    fit, ref = fits("insteval", "ml"), reference("insteval")["ml"]
    check_common(fit, ref)
    assert fit.n_eval <= 12
    close(fit.params["mu"], ref["fixef"]["(Intercept)"])
    close(fit.params["sd_s"], ref["sd"]["s"]["(Intercept)"])
    close(fit.params["sd_d"], ref["sd"]["d"]["(Intercept)"])
    close(fit.params["sigma"], ref["sd"]["residual"])
    # Only 14 departments: the likelihood is so flat in sd_dept that lme4 stops
    # 2.3e-4 (relative) from the optimum, 9e-7 below gdag's log-likelihood; the
    # intercept's SE, dominated by the department variance, follows it.
    close(fit.params["sd_dept"], ref["sd"]["dept"]["(Intercept)"], rtol=1e-3)
    close(fit.stderr["mu"], ref["fixef_se"]["(Intercept)"], rtol=1e-3)
    assert fit.loglik >= ref["loglik"] - 1e-8
    for group in ("s", "d", "dept"):
        re_ = ref["ranef"][group]
        k = len(re_["mode"]["(Intercept)"])
        np.testing.assert_allclose(fit.posterior.mean(f"u_{group}")[:k], re_["mode"]["(Intercept)"],
                                   rtol=1e-3, atol=2e-4)
        np.testing.assert_allclose(fit.posterior.sd(f"u_{group}")[:k], re_["sd"]["(Intercept)"], rtol=1e-3)


def test_objective_at_lme4_theta_reproduces_lme4():
    """At lme4's own estimates (relative sds theta) gdag's profiled objective gives lme4's numbers."""
    ref = reference("insteval")["ml"]
    m, data = insteval()
    cm = m._queries.compiled(m.spec())
    x, observed = data_vector(m.spec(), cm, data)
    cond = m._queries.conditioning_for(cm, observed)
    obj = Objective(cm, cond, x, infer_roles(cm, cond), reml=False)
    theta = ref["theta"]
    ev = obj.evaluate(np.array([theta[f"{k}.(Intercept)"] for k in ("s", "d", "dept")]))
    assert -0.5 * ev.objective == pytest.approx(ref["loglik"], rel=1e-12)
    assert math.sqrt(ev.sigma2) == pytest.approx(ref["sd"]["residual"], rel=1e-10)
    assert ev.beta[0] == pytest.approx(ref["fixef"]["(Intercept)"], rel=1e-10)
    assert math.sqrt(ev.cov_beta[0, 0]) == pytest.approx(ref["fixef_se"]["(Intercept)"], rel=1e-10)


def test_summary_reads_like_a_mixed_model_table(fits):
    fit = fits("sleepstudy", "reml")
    text = str(fit)
    assert text == fit.summary()
    for piece in ("REML", "logLik", "AIC", "BIC", "Observations: 180", "Fixed effects", "Std. Error",
                  "Variance components", "s0", "sigma", "rho", "b1"):
        assert piece in text, piece
    assert f"{fit.loglik:.2f}" in text


def test_fitlog_keeps_every_evaluation(fits):
    fit = fits("dyestuff", "ml")
    assert len(fit.fitlog) == fit.n_eval >= 2
    objectives = [obj for _, obj in fit.fitlog]
    assert min(objectives) == pytest.approx(-2 * fit.loglik, rel=1e-15)
    theta, _ = fit.fitlog[0]
    assert theta.shape == (3,)


# --------------------------------------------------------------- factorizations and optimizers


@pytest.mark.parametrize("options", [{"factorization": "sparse"}, {"factorization": "blocked"},
                                     {"optimizer": "lbfgs"}])
def test_other_factorizations_and_optimizers_agree(fits, options):
    m, data = penicillin()
    fit = m.fit(data, method="reml", **options)
    ref = fits("penicillin", "reml")
    assert fit.loglik == pytest.approx(ref.loglik, rel=1e-10)
    for name in ref.params:
        assert fit.params[name] == pytest.approx(ref.params[name], rel=1e-4)


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_coefficients_are_fit_by_scoring(fits, method):
    """``u1 ~ N(rho u0, s1)``: scoring (with the coefficient's average information) and L-BFGS-B agree, scoring in few steps."""
    fit = fits("sleepstudy", method)
    m, data = sleepstudy()
    other = m.fit(data, method=method, optimizer="lbfgs")
    assert fit.loglik == pytest.approx(other.loglik, rel=1e-10)
    for name in fit.params:
        assert fit.params[name] == pytest.approx(other.params[name], rel=1e-5)
    assert fit.n_eval <= 10 < other.n_eval


@pytest.mark.parametrize("reml", [False, True])
def test_average_information_is_the_hessian_at_the_optimum(fits, reml):
    """On sleepstudy's (Days | Subject) the curvature scoring uses (sds and rho) equals the Hessian at the optimum.

    Internal: reads the objective's curvature at the fit's estimates.
    """
    fit = fits("sleepstudy", "reml" if reml else "ml")
    m, data = sleepstudy()
    cm = m._queries.compiled(m.spec())
    x, observed = data_vector(m.spec(), cm, data)
    cond = m._queries.conditioning_for(cm, observed)
    obj = Objective(cm, cond, x, infer_roles(cm, cond), reml=reml)
    ratio = {"s0": fit.params["s0"] / fit.params["sigma"], "s1": fit.params["s1"] / fit.params["sigma"], "rho": fit.params["rho"]}
    v = np.array([ratio[obj.roles.labels[k]] for k in obj.free])
    H = obj.evaluate(v, gradient=True, curvature=True).curvature
    fd = np.zeros_like(H)
    for i in range(v.size):
        step = np.zeros_like(v)
        step[i] = 1e-5 * max(abs(v[i]), 0.01)
        fd[:, i] = (obj.evaluate(v + step, gradient=True).gradient - obj.evaluate(v - step, gradient=True).gradient) / (2 * step[i])
    np.testing.assert_allclose(H, 0.5 * (fd + fd.T), rtol=1e-4, atol=1e-6 * np.abs(fd).max())


def test_a_long_chain_of_coefficients_is_left_to_lbfgs():
    """``x_t = rho x_{t-1} + e``: A^-1 over 40 generations of ancestors is too deep for the curvature; L-BFGS-B fits it."""
    rng = np.random.default_rng(3)
    y = np.cumsum(rng.normal(size=40)) * 0.5 + rng.normal(size=40)
    m = gdag.Model("ar1")
    time = m.plate("time", 40)
    state = m.normal("x", mean=lambda x: m.param("rho") * x.lag(1), sd=m.param("q", positive=True), plate=time)
    m.normal("y", mean=state, sd=m.param("r", positive=True), plate=time)
    with pytest.raises(gdag.FitError, match="generations of ancestors"):
        m.fit({"y": y}, method="ml", optimizer="scoring")
    assert m.fit({"y": y}, method="ml").converged


# ----------------------------------------------------------------- OLS


def ols_model(X, weights=None):
    m = gdag.Model("ols")
    obs = m.plate("obs", X.shape[0])
    beta = m.param("beta", size=X.shape[1])
    m.normal("y", mean=gdag.dot(X, beta), sd=m.param("sigma", positive=True), plate=obs)
    return m


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_fixed_effects_only_is_ordinary_least_squares(method):
    rng = np.random.default_rng(1)
    n, p = 40, 3
    X = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])
    y = X @ [1.0, -2.0, 0.5] + rng.normal(size=n)
    fit = ols_model(X).fit({"y": y}, method=method)
    b, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
    sigma2 = rss[0] / (n if method == "ml" else n - p)
    np.testing.assert_allclose(fit.params["beta"], b, rtol=1e-10)
    np.testing.assert_allclose(fit.stderr["beta"], np.sqrt(sigma2 * np.diag(np.linalg.inv(X.T @ X))), rtol=1e-10)
    np.testing.assert_allclose(fit.cov_fixed, sigma2 * np.linalg.inv(X.T @ X), rtol=1e-9)
    assert fit.params["sigma"] == pytest.approx(math.sqrt(sigma2), rel=1e-10)
    loglik = -0.5 * n * (math.log(2 * math.pi * rss[0] / n) + 1)
    if method == "reml":
        loglik = (-0.5 * (n - p) * (math.log(2 * math.pi * sigma2) + 1)
                  - 0.5 * np.linalg.slogdet(X.T @ X)[1])
    assert fit.loglik == pytest.approx(loglik, rel=1e-10)
    assert fit.fixed_labels == ("beta[0]", "beta[1]", "beta[2]")


# ------------------------------------------------------------ dense oracle


@dataclass(frozen=True)
class SpecRoles:
    """What each parameter entry of a random spec does, read from the spec (see :func:`spec_roles`).

    Entries are numbered as in gdag's ``theta``: the spec's parameters in
    declaration order, each one's entries in turn.
    """

    n: int
    fixed: list  # entries profiled by GLS
    optimized: list  # one per optimizer variable, in order
    sd: list  # entries used as an sd
    profiled: int  # the sd entry whose scale is profiled out, -1 for none


def spec_roles(spec, observed, profile):
    """The roles of ``spec``'s parameter entries as gdag's docs define them, or None when one is used nowhere.

    A fixed effect is an entry in a mean (a ``param`` term) that is not
    positive and not also an sd or a scale; the other used entries are
    optimized.  When every stochastic entry's sd is a parameter entry used only
    as an sd (and ``profile``), the scale of the sd entry of most observed
    entries (the first on ties) is profiled out: it is not optimized and is 1
    in working units.
    """
    where, n = {}, 0
    for name, (size, _, _) in spec.params.items():
        for e in range(size):
            where[name, e] = n
            n += 1
    positive = {where[name, e] for name, (size, pos, _) in spec.params.items() if pos for e in range(size)}
    mean, scale, sd = set(), set(), set()
    counts = np.zeros(n)
    o = 0
    for fam in spec.families:
        for kind, source, index, coef, scale_param in fam.terms:
            if kind == "param":
                mean.update(where[source, int(i)] for i in index)
            if scale_param is not None and np.any((index if kind in ("dense", "sparse") else coef) != 0):
                scale.add(where[scale_param, 0])
        if fam.sd_param is not None:
            pname, _, pidx = fam.sd_param
            sd.update(where[pname, int(i)] for i in pidx)
            for i in range(fam.size):
                counts[where[pname, int(pidx[i])]] += observed[o + i]
        o += fam.size
    if len(mean | scale | sd) < n:
        return None
    fixed = sorted(mean - sd - scale - positive)
    free = sorted((mean | scale | sd) - set(fixed))
    every_sd_a_param = all(fam.sd_param is not None or not np.any(fam.sd > 0) for fam in spec.families)
    profiled = -1
    if profile and every_sd_a_param and sd and not sd & (mean | scale) and observed.any():
        profiled = int(np.argmax(counts))
    return SpecRoles(n, fixed, [k for k in free if k != profiled], sorted(sd), profiled)


def with_values(spec, theta):
    """A copy of ``spec`` with its parameter entries set to ``theta`` (numbered as in :class:`SpecRoles`)."""
    params, k = {}, 0
    for name, (size, pos, _) in spec.params.items():
        params[name] = (size, pos, np.array(theta[k : k + size], dtype=float))
        k += size
    return replace(spec, params=params)


def dense_objective(spec, roles, v, x, reml):
    """``(objective, beta, theta)`` at optimizer variables ``v`` by dense numpy; None when ``beta`` is not identified.

    ``objective`` is -2 log L (ML) or -2 log L_R (REML) of the observed
    entries of ``x`` (NaN: unobserved) at the GLS ``beta`` and, when
    ``roles.profiled`` names one, at the optimal common scale of the sds;
    ``theta`` the natural parameters there.  The mean of the observed values is
    ``mu0 + X beta``, ``X`` the mean's columns for the fixed effects (the joint
    mean is linear in them).
    """
    O = ~np.isnan(x)
    theta = np.zeros(roles.n)
    theta[roles.optimized] = v
    if roles.profiled >= 0:
        theta[roles.profiled] = 1.0

    def joint(th):
        """``B``, ``c`` and the observed entries' mean and covariance at parameters ``th``."""
        B, c, d, _ = spec_matrices(with_values(spec, th))
        mu, Sigma = joint_moments(B, c, d)
        return B, c, mu[O], Sigma[np.ix_(O, O)]

    B, c0, mu0, V = joint(theta)
    # x = (I - B)^{-1} c and beta enters c only: X's columns are (I - B)^{-1} dc/dbeta, by triangular
    # solves (families and lags refer back only), so a column the data do not see is exactly 0
    p = len(roles.fixed)
    dc = np.zeros((len(c0), p))
    for j, k in enumerate(roles.fixed):
        dc[:, j] = joint(theta + np.eye(roles.n)[k])[1] - c0
    X = sla.solve_triangular(np.eye(len(c0)) - B, dc, lower=True)[O]
    dof = O.sum() - (p if reml else 0)
    if dof <= 0 or (p and not identified(X.T @ np.linalg.solve(V, X))):
        return None
    r = x[O] - mu0
    out, beta = gls_deviance(V, X, r, reml)
    if roles.profiled >= 0:  # sigma^2 = quad / dof; every sd scales by sigma
        res = r - X @ beta
        theta[roles.sd] *= math.sqrt(res @ np.linalg.solve(V, res) / dof)
        V = joint(theta)[3]
        out, beta = gls_deviance(V, X, r, reml)
    theta[roles.fixed] = beta
    return out, beta, theta


def identified(S):
    """Whether the information ``S`` of the fixed effects is nonsingular (relative to its diagonal, as gdag judges it).

    The random cases have a wide gap: a smallest ratio of eigenvalues of at least 0.08 or an exactly zero diagonal entry.
    """
    diag = np.diag(S)
    if not np.all(diag > 0):
        return False
    w = np.linalg.eigvalsh(S / np.sqrt(np.outer(diag, diag)))
    return w[0] > 1e-11 * w[-1]


def random_case(seed, sds_are_params=False):
    """A random small model (gathers, design matrices, rho, deterministic nodes) with data: ``(rng, spec, m, data, x)``.

    ``x`` holds the data over all of ``spec``'s entries (NaN: unobserved) in
    :func:`reference.dense_joint`'s order.  With ``sds_are_params`` every sd
    is a multiple of a ``sigma`` entry (no deterministic nodes), so that a fit
    can profile out their common scale.
    """
    rng = np.random.default_rng(seed)
    spec = random_spec(rng, allow_deterministic=not sds_are_params)
    if sds_are_params:
        for fam in spec.families:
            if fam.sd_param is None:
                fam.sd_param, fam.sd = ("sigma", fam.sd, rng.integers(0, 2, size=fam.size)), None
    data, x, *_ = observe_some(spec, rng, 0.7)
    return rng, spec, build_gdag(spec), data, x


def conditioned_case(seed, sds_are_params=False):
    """A random case compiled and conditioned on its data, or None when it observes nothing.

    ``(rng, spec, cm, x_gdag, cond, x)``: ``x_gdag`` is gdag's data vector; the oracle reads ``x``.
    """
    rng, spec, m, data, x = random_case(seed, sds_are_params)
    if not data:
        return None
    cm = m._queries.compiled(m.spec())
    x_gdag, observed = data_vector(m.spec(), cm, data)
    return rng, spec, cm, x_gdag, m._queries.conditioning_for(cm, observed), x


def roles_of_case(spec, cm, cond, x, profile):
    """gdag's roles and the spec's (:func:`spec_roles`), checked to agree; ``(None, None)`` when gdag rightly refuses."""
    own = spec_roles(spec, ~np.isnan(x), profile)
    if own is None:
        with pytest.raises(gdag.NotIdentifiedError, match="appears? in no mean and no sd"):
            infer_roles(cm, cond, profile=profile)
        return None, None
    roles = infer_roles(cm, cond, profile=profile)
    assert (list(roles.fixed), list(roles.optimized), roles.profiled) == (own.fixed, own.optimized, own.profiled)
    return roles, own


@pytest.mark.parametrize("sds_are_params", [False, True])
def test_objective_equals_dense_formula_on_random_models(sds_are_params):
    """gdag's objective, GLS fixed effects and natural parameters at random points equal the dense oracle's.

    With every sd a parameter entry, odd seeds profile out the sds' common scale.
    """
    checked = profiled = 0
    for seed in range(1000):
        case = conditioned_case(seed, sds_are_params)
        if case is None:
            continue
        rng, spec, cm, x_gdag, cond, x = case
        roles, own = roles_of_case(spec, cm, cond, x, profile=bool(seed % 2))
        if roles is None:
            continue  # a parameter the random model does not use
        for reml in (False, True):
            v = rng.uniform(0.5, 1.5, size=len(own.optimized))
            expected = dense_objective(spec, own, v, x, reml)
            if expected is None:  # the fixed effects are not identified by the data
                with pytest.raises(gdag.NotIdentifiedError):
                    Objective(cm, cond, x_gdag, roles, reml).evaluate(v)
                continue
            dense, beta, theta = expected
            ev = Objective(cm, cond, x_gdag, roles, reml).evaluate(v)
            assert ev.objective == pytest.approx(dense, rel=1e-8, abs=1e-8), seed
            np.testing.assert_allclose(ev.beta, beta, rtol=1e-6, atol=1e-6 * (1 + np.abs(beta).max(initial=0)))
            np.testing.assert_allclose(ev.theta, theta, rtol=1e-6, atol=1e-6 * (1 + np.abs(theta).max()))
            checked += 1
            profiled += own.profiled >= 0
        if checked >= 60 and profiled >= 20 * sds_are_params:
            break
    assert checked >= 60 and profiled >= 20 * sds_are_params


@pytest.mark.parametrize("seed, reml", [(38, False), (932, False)])
def test_a_fixed_effect_without_data_is_refused_at_every_point(seed, reml):
    """Random cases whose unseen fixed effect has round-off information S_kk (~1e-17, not 0): refused by
    comparing S_kk with the fixed effect's information before the latent variables take theirs away."""
    rng, spec, cm, x_gdag, cond, x = conditioned_case(seed, sds_are_params=True)
    roles, own = roles_of_case(spec, cm, cond, x, profile=bool(seed % 2))
    for _ in range(1 + reml):  # the point the random test draws for this criterion
        v = rng.uniform(0.5, 1.5, size=len(own.optimized))
    assert dense_objective(spec, own, v, x, reml) is None
    with pytest.raises(gdag.NotIdentifiedError, match="are not identified by the data: in the means of the observed"):
        Objective(cm, cond, x_gdag, roles, reml).evaluate(v)


def test_gradient_matches_finite_differences_on_random_models():
    checked = 0
    for seed in range(1000, 2200):
        case = conditioned_case(seed)
        if case is None:
            continue
        rng, spec, cm, x_gdag, cond, x = case
        roles, own = roles_of_case(spec, cm, cond, x, profile=bool(seed % 2))
        if roles is None:
            continue
        reml = bool(seed % 3 == 0)
        v = rng.uniform(0.5, 1.5, size=len(own.optimized))
        if dense_objective(spec, own, v, x, reml) is None:  # the fixed effects are not identified by the data
            with pytest.raises(gdag.NotIdentifiedError):
                Objective(cm, cond, x_gdag, roles, reml).evaluate(v)
            continue
        obj = Objective(cm, cond, x_gdag, roles, reml=reml, factorization=("sparse", "blocked")[seed % 2])
        if not obj.exact_gradient or obj.free.size == 0:
            continue
        grad = obj.evaluate(v, gradient=True).gradient
        fd = np.zeros_like(v)
        for i in range(v.size):
            step = np.zeros_like(v)
            step[i] = 1e-6
            fd[i] = (obj.evaluate(v + step).objective - obj.evaluate(v - step).objective) / 2e-6
        np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-5 * (1 + np.abs(fd).max()))
        checked += 1
        if checked >= 30:
            break
    assert checked >= 30


def test_fit_reaches_the_dense_optimum():
    """A small crossed model with a vector fixed effect: the fit's point is stationary for the dense formula."""
    rng = np.random.default_rng(5)
    n, n_a, n_b = 60, 5, 4
    a, b = rng.integers(0, n_a, n), rng.integers(0, n_b, n)
    group = rng.integers(0, 2, n)
    y = np.array([1.0, 3.0])[group] + rng.normal(size=n_a)[a] * 0.8 + rng.normal(size=n_b)[b] * 1.5 + rng.normal(size=n)
    m = gdag.Model("small")
    obs = m.plate("obs", n)
    alpha = m.param("alpha", size=2)
    ua = m.normal("ua", 0.0, m.param("sa", positive=True), plate=m.plate("a", n_a))
    ub = m.normal("ub", 0.0, m.param("sb", positive=True), plate=m.plate("b", n_b))
    m.normal("y", mean=alpha[group] + ua[a] + ub[b], sd=m.param("se", positive=True), plate=obs)
    for method in ("ml", "reml"):
        fit = m.fit({"y": y}, method=method)
        p = fit.params

        def dense(sa, sb, se):
            Za, Zb = np.eye(n_a)[a], np.eye(n_b)[b]
            V = sa**2 * Za @ Za.T + sb**2 * Zb @ Zb.T + se**2 * np.eye(n)
            return gls_deviance(V, np.eye(2)[group], y, reml=method == "reml")

        best, beta = dense(p["sa"], p["sb"], p["se"])
        assert -2 * fit.loglik == pytest.approx(best, rel=1e-10)
        np.testing.assert_allclose(p["alpha"], beta, rtol=1e-8)
        for k in range(3):  # no nearby point is better
            for h in (1e-3, -1e-3):
                x = [p["sa"], p["sb"], p["se"]]
                x[k] *= 1 + h
                assert dense(*x)[0] >= best - 1e-9


# ------------------------------------------------------------------ EM


@pytest.mark.parametrize("criterion", ["ml", "reml"])
def test_em_reaches_the_same_optimum_monotonically(fits, criterion):
    m, data = penicillin()
    em = m.fit(data, method="em", criterion=criterion)
    direct = fits("penicillin", criterion)
    assert em.converged and em.method == "em" and em.criterion == criterion
    assert em.loglik == pytest.approx(direct.loglik, rel=1e-9)
    for name in direct.params:
        assert em.params[name] == pytest.approx(direct.params[name], rel=1e-4)
    objectives = np.array([obj for _, obj in em.fitlog])
    assert np.all(np.diff(objectives) <= 1e-9 * abs(objectives[0]))
    assert "EM" in str(em)


def test_em_refuses_coefficients():
    m, data = sleepstudy()
    with pytest.raises(gdag.FitError, match=re.escape("`rho`")):
        m.fit(data, method="em")


# ------------------------------------------------------------- boundary


def test_zero_variance_component_is_a_singular_fit():
    rng = np.random.default_rng(11)
    n, k = 60, 6
    g = rng.integers(0, k, n)
    y = 2.0 + rng.normal(size=n)  # no group effect at all
    y -= np.bincount(g, weights=y, minlength=k)[g] / np.bincount(g, minlength=k)[g]  # group means equal
    y += 2.0
    m = gdag.Model("flat")
    obs = m.plate("obs", n)
    u = m.normal("u", 0.0, m.param("sd_g", positive=True), plate=m.plate("g", k))
    m.normal("y", mean=m.param("mu") + u[g], sd=m.param("sigma", positive=True), plate=obs)
    fit = m.fit({"y": y}, method="ml")
    assert fit.converged and fit.singular and fit.boundary == ("sd_g",)
    assert fit.params["sd_g"] < 1e-4 * fit.params["sigma"]
    ols = -0.5 * n * (math.log(2 * math.pi * np.mean((y - y.mean()) ** 2)) + 1)
    assert fit.loglik == pytest.approx(ols, abs=1e-10)  # the sd exactly 0 (boundary.objective_at_zero)
    assert "boundary" in str(fit).lower()


# --------------------------------------------------------------- errors


def test_unknown_method_is_a_fit_error():
    m, data = dyestuff()
    with pytest.raises(gdag.FitError, match="Unknown fitting method 'bayes'"):
        m.fit(data, method="bayes")


def test_nothing_observed_is_a_fit_error():
    m, data = dyestuff()
    with pytest.raises(gdag.FitError, match="nothing to fit"):
        m.fit({"y": np.full(30, np.nan)})


def test_data_are_checked_like_posterior_data():
    m, data = dyestuff()
    with pytest.raises(gdag.DataError, match="`yy`"):
        m.fit({"yy": data["y"]})
    with pytest.raises(gdag.DataError, match="`y`"):
        m.fit({"y": data["y"][:5]})


def test_parameter_without_data_is_not_identified():
    rng = np.random.default_rng(2)
    unit = rng.integers(0, 3, 20)  # unit 3 has no observations
    m = gdag.Model("units")
    alpha = m.param("alpha", size=4)
    m.normal("y", mean=alpha[unit], sd=m.param("sigma", positive=True), plate=m.plate("obs", 20))
    with pytest.raises(gdag.NotIdentifiedError, match=re.escape("`alpha[3]`")):
        m.fit({"y": rng.normal(size=20)})


def test_collinear_fixed_effects_are_not_identified():
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    m = gdag.Model("collinear")
    a, b, c = m.param("a"), m.param("b"), m.param("c")
    m.normal("y", mean=a + b * x + c * (2 * x), sd=m.param("sigma", positive=True), plate=m.plate("obs", 30))
    with pytest.raises(gdag.NotIdentifiedError, match=r"`b`, `c`"):
        m.fit({"y": rng.normal(size=30)})


def test_unused_parameter_is_not_identified():
    m, data = dyestuff()
    m.param("spare")
    with pytest.raises(gdag.NotIdentifiedError, match="`spare`"):
        m.fit(data)


def test_non_convergence_warns_and_keeps_the_best_point():
    m, data = sleepstudy()
    with pytest.warns(gdag.ConvergenceWarning, match="did not converge"):
        fit = m.fit(data, method="ml", max_iter=2)
    assert not fit.converged
    assert -2 * fit.loglik == min(obj for _, obj in fit.fitlog)
    assert "did not converge" in str(fit).lower() or "not converge" in str(fit).lower()


def test_bad_options_are_fit_errors():
    m, data = dyestuff()
    with pytest.raises(gdag.FitError, match="criterion"):
        m.fit(data, method="ml", criterion="reml")
    with pytest.raises(gdag.FitError, match="optimizer"):
        m.fit(data, optimizer="newton")
    with pytest.raises(gdag.ParamError, match="`nope`"):
        m.fit(data, init={"nope": 1.0})


def test_mixed_effects_example_runs(capsys):
    import runpy

    runpy.run_path(str(Path(__file__).parent.parent / "examples" / "mixed_effects.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "fit by REML" in out and "As lme4 reports it (ML)" in out


def test_missing_responses_are_integrated_out(fits):
    m, data = dyestuff()
    y = data["y"].copy()
    y[[3, 17]] = np.nan
    fit = m.fit({"y": y}, method="reml")
    keep = ~np.isnan(y)
    d = load_csv("dyestuff.csv")
    m2 = gdag.Model("dyestuff_complete_rows")
    u = m2.normal("u", 0.0, m2.param("sd_batch", positive=True), plate=m2.plate("batch", 6))
    batch = d["batch"].astype(int)[keep]
    m2.normal("y", mean=m2.param("mu") + u[batch], sd=m2.param("sigma", positive=True),
              plate=m2.plate("obs", int(keep.sum())))
    fit2 = m2.fit({"y": y[keep]}, method="reml")
    assert fit.nobs == 28
    assert fit.loglik == pytest.approx(fit2.loglik, rel=1e-12)
    for name in fit2.params:
        assert fit.params[name] == pytest.approx(fit2.params[name], rel=1e-6)
    # the missing responses get their posterior predictive distribution
    assert np.isfinite(fit.posterior.mean("y")[3]) and fit.posterior.sd("y")[3] > fit.params["sigma"]


def test_fixed_effect_through_a_deterministic_node(fits):
    """beta enters a sd-0 node; F' pushes it through to the observations."""
    d = load_csv("dyestuff.csv")
    batch = d["batch"].astype(int)
    m = gdag.Model("dyestuff_det")
    level = m.normal("level", mean=m.param("mu"), sd=0.0)
    u = m.normal("u", level, m.param("sd_batch", positive=True), plate=m.plate("batch", 6))
    m.normal("y", mean=u[batch], sd=m.param("sigma", positive=True), plate=m.plate("obs", batch.size))
    fit = m.fit({"y": d["yield"]}, method="reml")
    ref = fits("dyestuff", "reml")
    assert fit.loglik == pytest.approx(ref.loglik, rel=1e-10)
    assert fit.params["mu"] == pytest.approx(ref.params["mu"], rel=1e-8)
    assert fit.stderr["mu"] == pytest.approx(ref.stderr["mu"], rel=1e-5)


def test_known_measurement_sds_are_not_profiled():
    """Romcom-like: ratings with known sds; only the between-friend sd is estimated (ML, EM)."""
    rng = np.random.default_rng(8)
    n_f, n = 15, 90
    who = rng.integers(0, n_f, n)
    s = rng.uniform(0.3, 1.5, n)
    x = 3.0 + rng.normal(size=n_f)[who] * 0.7 + rng.normal(size=n) * s
    m = gdag.Model("romcom")
    R_i = m.normal("R_i", m.param("R"), m.param("tau", positive=True), plate=m.plate("friend", n_f))
    m.normal("X", R_i[who], s, plate=m.plate("rating", n))
    fit = m.fit({"X": x}, method="ml")
    em = m.fit({"X": x}, method="em")

    def dense(tau):
        Z = np.eye(n_f)[who]
        return gls_deviance(tau**2 * Z @ Z.T + np.diag(s**2), np.ones((n, 1)), x)

    best, R = dense(fit.params["tau"])
    assert -2 * fit.loglik == pytest.approx(best, rel=1e-12)
    assert fit.params["R"] == pytest.approx(R[0], rel=1e-10)
    assert dense(fit.params["tau"] * 1.001)[0] > best and dense(fit.params["tau"] * 0.999)[0] > best
    assert em.loglik == pytest.approx(fit.loglik, rel=1e-9)
    assert em.params["tau"] == pytest.approx(fit.params["tau"], rel=1e-4)


def test_positive_parameter_in_a_mean_is_optimized_with_its_bound():
    rng = np.random.default_rng(4)
    x = rng.normal(size=50)
    y = 2.5 * x + rng.normal(size=50) * 0.3
    m = gdag.Model("slope")
    m.normal("y", mean=m.param("k", positive=True) * x, sd=m.param("sigma", positive=True), plate=m.plate("obs", 50))
    fit = m.fit({"y": y}, method="ml")
    b = float(x @ y / (x @ x))
    assert fit.converged and fit.params["k"] == pytest.approx(b, rel=1e-6)
    assert fit.stderr == {}  # k is optimized, not a GLS fixed effect


def test_flat_likelihood_is_fit_to_its_optimum():
    """The Nile local level: scoring reaches statsmodels' MLE to 1e-6, though the likelihood is very flat there.

    The average information is about twice the curvature at this optimum, so
    plain scoring only halves the distance per step and stopped 3e-4
    (relative) short.  statsmodels' exact diffuse likelihood is gdag's REML of
    the same model with the initial level a fixed effect, less ``log(2 pi)/2``
    (tests/data/make_nile_reference.py, which also refines statsmodels' estimates).
    """
    ref = reference("nile")
    y = load_csv("nile.csv")["volume"]
    first = np.zeros(y.size)
    first[0] = 1.0
    m = gdag.Model("nile")
    time = m.plate("time", y.size)
    level = m.normal("level", mean=lambda x: x.lag(1) + m.param("level0") * first,
                     sd=m.param("sd_level", positive=True), plate=time)
    m.normal("y", mean=level, sd=m.param("sigma", positive=True), plate=time)
    fit = m.fit({"y": y}, method="reml")
    assert fit.converged
    assert fit.params["sigma"] ** 2 == pytest.approx(ref["sigma2_irregular"], rel=1e-6)
    assert fit.params["sd_level"] ** 2 == pytest.approx(ref["sigma2_level"], rel=1e-6)
    assert fit.loglik - 0.5 * math.log(2 * math.pi) == pytest.approx(ref["llf"], rel=1e-12)


# ------------------------------------------------------------------ BLAS threads


def test_a_fit_holds_one_blas_thread_throughout_and_restores_the_count(monkeypatch):
    """The optimizer's own steps run on one thread too (not only each evaluation); nesting restores once."""
    import scipy.optimize as so

    from gdag.linalg import blas

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    guard = blas.OneBlasThread()
    if not guard._libs:
        pytest.skip("no OpenBLAS whose thread count can be set")
    counts = lambda: [get() for get, _ in guard._libs]  # noqa: E731
    before = counts()
    monkeypatch.setattr(blas, "_ONE_THREAD", guard)
    try:
        for _, put in guard._libs:
            put(2)
        with guard:
            with guard:
                assert counts() == [1] * len(before)
            assert counts() == [1] * len(before)  # the inner exit leaves the outer one's setting
        assert counts() == [2] * len(before)
        seen = []
        minimize = so.minimize
        monkeypatch.setattr(so, "minimize", lambda *a, **k: seen.append(counts()) or minimize(*a, **k))
        m, data = sleepstudy()
        assert m.fit(data, method="ml", optimizer="lbfgs").converged
        assert seen == [[1] * len(before)]
        assert counts() == [2] * len(before)
    finally:
        for (_, put), n in zip(guard._libs, before):
            put(n)


def _rank_one_deviance(p, x, y, X, groups, reml):
    """-2 log L (REML: restricted) of ``y = X beta + (1 + c x) u_g + e`` with ``u_g ~ N(0, (t sigma)^2)``, sigma
    profiled, computed densely: the boundary of ``(1 + x | g)`` with no slope variance (correlation 1)."""
    t, c = p
    z = 1 + c * x
    Vi, logdet = np.zeros((y.size, y.size)), 0.0
    for k in np.unique(groups):
        i = np.flatnonzero(groups == k)
        Vk = np.eye(i.size) + t * t * np.outer(z[i], z[i])
        Vi[np.ix_(i, i)] = np.linalg.inv(Vk)
        logdet += np.linalg.slogdet(Vk)[1]
    XtVX = X.T @ Vi @ X
    r = y - X @ np.linalg.solve(XtVX, X.T @ Vi @ y)
    n = y.size - (X.shape[1] if reml else 0)
    return logdet + n * (1 + np.log(2 * np.pi * float(r @ Vi @ r) / n)) + (np.linalg.slogdet(XtVX)[1] if reml else 0.0)


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_correlated_slope_without_slope_variance_is_a_clean_boundary_fit(method):
    """(1 + x | g) on data with no slope variance (issue 15): lme4 reports a singular fit (slope sd ~0,
    correlation 1); gdag converges at the boundary with no warning, marks the slope sd, and its logLik is the
    rank-one model's, computed densely (extrapolated to the sd 0: boundary.objective_at_zero)."""
    import scipy.optimize as so

    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(30), 10)
    x = rng.normal(size=300)
    y = 1 + 0.5 * x + rng.normal(size=30)[g] + rng.normal(size=300)
    X = np.column_stack([np.ones_like(x), x])
    dense = so.minimize(_rank_one_deviance, [1.0, 0.0], args=(x, y, X, g, method == "reml"), method="Nelder-Mead",
                        options={"xatol": 1e-12, "fatol": 1e-13, "maxiter": 8000})
    for options in ({}, {"init": {"sd_g_x": 0.5, "c_g_x_Intercept": -0.3}}, {"optimizer": "lbfgs"}):
        fit = gdag.lmer("y ~ 1 + x + (1 + x | g)", {"y": y, "x": x, "g": g}, method=method, **options)
        assert fit.converged and fit.singular and fit.boundary == ("sd_g_x",)
        assert fit.loglik == pytest.approx(-0.5 * dense.fun, abs=2e-8)  # 1e-6 at the sd's floor, before
        assert fit.params["c_g_x_Intercept"] == pytest.approx(dense.x[1], abs=1e-4)


def test_init_keys_are_checked_as_params_keys_are():
    rng = np.random.default_rng(3)
    m = gdag.Model("init_keys")
    g = np.repeat(np.arange(6), 4)
    sd_g = m.param("sd_g", positive=True)
    u = m.normal("u", 0.0, sd_g, plate=m.plate("grp", 6))
    m.normal("y", mean=u[g], sd=m.param("sigma", positive=True), plate=m.plate("obs", g.size))
    y = rng.normal(size=6)[g] + rng.normal(size=g.size)
    with pytest.raises(gdag.ParamError, match=r"`init` names `u`, which is not a parameter of model `init_keys`\. "
                                              r"It is a node"):
        m.fit({"y": y}, init={"u": 1.0})
    assert m.fit({"y": y}, method="ml", init={sd_g: 0.5}).loglik == pytest.approx(
        m.fit({"y": y}, method="ml").loglik, rel=1e-9)
