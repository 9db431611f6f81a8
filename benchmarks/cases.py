"""Benchmark cases: each function times one implementation on one size.

Every function returns a dict with ``seconds`` (the whole task), ``phases``
(seconds per phase, gdag only) and ``check`` (a few numbers that every
implementation of the same case must reproduce, so the runner can verify
that they computed the same thing).  ``benchmarks/run.py`` calls them in
subprocesses so that peak memory is measured per run.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

# ----------------------------------------------------------------- helpers


def _check(values: np.ndarray) -> list[float]:
    """Numbers that pin down a vector of results: its first entries, mean and norm."""
    v = np.asarray(values, dtype=float)
    return [float(v[:3].sum()), float(v.mean()), float(np.sqrt(v @ v / v.size))]


def gdag_posterior(model, data, nodes: list[str]) -> tuple:
    """The public API, timed by phase: ``model.posterior(data)``, then the mean and sd of each of ``nodes``.

    Returns the seconds per phase (:mod:`gdag.timing`: compile, pattern,
    analyze, assemble, factor, solve, variances, accuracy check), the
    posterior, and the means and sds of ``nodes`` concatenated.
    """
    import gdag

    with gdag.timing.record() as phases:
        post = model.posterior(data)
        means = np.concatenate([np.atleast_1d(post.mean(name)) for name in nodes])
        sds = np.concatenate([np.atleast_1d(post.sd(name)) for name in nodes])
    return phases, post, means, sds


def _finish(t0: float, phases: dict, check: list[float], **extra) -> dict:
    seconds = time.perf_counter() - t0
    if phases and "declare" in phases:  # the rest of a timed posterior: validation, copies, Python
        phases = {**phases, "other": max(seconds - sum(phases.values()), 0.0)}
    return dict(seconds=seconds, phases=phases, check=check, **extra)


# ----------------------------------------------------------------- romcom

ROMCOM_RATINGS = 5
ROMCOM_PRIOR = (3.0, 1.0)
ROMCOM_FRIEND_SD = 0.5


def romcom_data(n_friends: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    who = np.repeat(np.arange(n_friends), ROMCOM_RATINGS)
    s = rng.uniform(0.3, 1.5, size=n_friends)[who]
    x = rng.normal(3.0, ROMCOM_FRIEND_SD, size=n_friends)[who] + rng.normal(size=who.size) * s
    return who, s, x


def romcom_gdag(n_friends: int) -> dict:
    """Declare the romcom model, condition on every rating, mean and sd of every R_i."""
    import gdag

    who, s, x = romcom_data(n_friends)
    t0 = time.perf_counter()
    m = gdag.Model("romcom")
    friend, rating = m.plate("friend", n_friends), m.plate("rating", who.size)
    R = m.normal("R", mean=ROMCOM_PRIOR[0], sd=ROMCOM_PRIOR[1])
    R_i = m.normal("R_i", mean=R, sd=ROMCOM_FRIEND_SD, plate=friend)
    m.normal("X", mean=R_i[who], sd=s, plate=rating)
    declare = time.perf_counter() - t0
    phases, _, mean, sd = gdag_posterior(m, {"X": x}, ["R_i"])
    return _finish(t0, {"declare": declare, **phases}, _check(mean), sd_check=_check(sd))


def _romcom_system(n_friends: int, who, s, x):
    """Hand-written A = I - B, D and c of the romcom model (R, R_i, X), in that order."""
    n_ratings = who.size
    n = 1 + n_friends + n_ratings
    friends = 1 + np.arange(n_friends)
    ratings = 1 + n_friends + np.arange(n_ratings)
    rows = np.concatenate([np.arange(n), friends, ratings])
    cols = np.concatenate([np.arange(n), np.zeros(n_friends, dtype=np.int64), 1 + who])
    vals = np.concatenate([np.ones(n), -np.ones(n_friends + n_ratings)])
    A = sp.csc_matrix((vals, (rows, cols)), shape=(n, n))
    d = np.concatenate([[ROMCOM_PRIOR[1] ** 2], np.full(n_friends, ROMCOM_FRIEND_SD**2), s**2])
    c = np.concatenate([[ROMCOM_PRIOR[0]], np.zeros(n_friends + n_ratings)])
    return A, d, c, x, 1 + n_friends


def romcom_floor(n_friends: int) -> dict:
    """The floor: sufficient statistics by ``np.bincount``, the arrow-shaped precision, one CHOLMOD solve; means only.

    Each R_i has precision ``1/0.25 + sum of its ratings' 1/s^2`` and right-hand side
    ``sum x/s^2``; R couples to every R_i with ``-1/0.25``.  The cheapest correct
    hand-written computation of the same means (the data are simulated before
    the clock starts, for gdag too).
    """
    from sksparse import cholmod

    who, s, x = romcom_data(n_friends)
    t0 = time.perf_counter()
    w = 1.0 / s**2
    tau = 1.0 / ROMCOM_FRIEND_SD**2
    precision = tau + np.bincount(who, weights=w, minlength=n_friends)
    rhs = np.bincount(who, weights=w * x, minlength=n_friends)
    first = 1.0 / ROMCOM_PRIOR[1] ** 2 + n_friends * tau
    rows = np.concatenate([np.arange(n_friends + 1), np.arange(1, n_friends + 1)])
    cols = np.concatenate([np.arange(n_friends + 1), np.zeros(n_friends, dtype=np.int64)])
    vals = np.concatenate([[first], precision, np.full(n_friends, -tau)])
    Q = sp.csc_matrix((vals, (rows, cols)), shape=(n_friends + 1, n_friends + 1))
    b = np.concatenate([[ROMCOM_PRIOR[0] / ROMCOM_PRIOR[1] ** 2], rhs])
    mean = cholmod.cholesky(Q, mode="simplicial").solve_A(b)
    return _finish(t0, {}, _check(mean[1:]))


def romcom_dense(n_friends: int) -> dict:
    """Dense numpy Gaussian conditioning: joint covariance blocks, then Sigma_UO Sigma_OO^{-1}.

    ``Sigma = K K^T`` with ``K = A^{-1} D^{1/2}`` (one triangular inversion);
    only the blocks the conditioning needs are formed.
    """
    import scipy.linalg as sla
    from scipy.linalg import lapack

    A, d, c, x, n_U = _romcom_system(n_friends, *romcom_data(n_friends))
    t0 = time.perf_counter()
    Ainv, info = lapack.dtrtri(A.toarray(), lower=1)
    mu = Ainv @ c
    K = Ainv * np.sqrt(d)
    K_U, K_O = K[:n_U], K[n_U:]
    S_oo, S_uo = K_O @ K_O.T, K_U @ K_O.T
    chol = sla.cho_factor(S_oo, lower=True)
    mean = mu[:n_U] + S_uo @ sla.cho_solve(chol, x - mu[n_U:])
    var = np.einsum("ij,ij->i", K_U, K_U) - np.einsum("ij,ji->i", S_uo, sla.cho_solve(chol, S_uo.T))
    return _finish(t0, {}, _check(mean[1:]), sd_check=_check(np.sqrt(var[1:])))


def romcom_pgmpy(n_friends: int) -> dict:
    """pgmpy's LinearGaussianBayesianNetwork.predict_probability on the same model."""
    import pandas as pd
    from pgmpy.factors.continuous import LinearGaussianCPD
    from pgmpy.models import LinearGaussianBayesianNetwork

    who, s, x = romcom_data(n_friends)
    t0 = time.perf_counter()
    net = LinearGaussianBayesianNetwork()
    net.add_node("R")
    cpds = [LinearGaussianCPD("R", [ROMCOM_PRIOR[0]], ROMCOM_PRIOR[1])]  # pgmpy takes sds
    for i in range(n_friends):
        net.add_edge("R", f"R_{i}")
        cpds.append(LinearGaussianCPD(f"R_{i}", [0.0, 1.0], ROMCOM_FRIEND_SD, ["R"]))
    for k in range(who.size):
        net.add_edge(f"R_{who[k]}", f"X_{k}")
        cpds.append(LinearGaussianCPD(f"X_{k}", [0.0, 1.0], float(s[k]), [f"R_{who[k]}"]))
    net.add_cpds(*cpds)
    evidence = pd.DataFrame([x], columns=[f"X_{k}" for k in range(who.size)])
    variables, mean, cov = net.predict_probability(evidence)
    mean = np.asarray(mean).reshape(-1)
    order = {name: j for j, name in enumerate(variables)}
    friends = np.array([mean[order[f"R_{i}"]] for i in range(n_friends)])
    return _finish(t0, {}, _check(friends))


# ------------------------------------------------------------ app reliability


def app_sizes(scale: int) -> tuple[int, int, int, int]:
    """(publishers, apps, devices, installs) for scale 1 = the app-store size of the issue."""
    return 10_000 // scale, 1_000_000 // scale, max(2_000 // scale, 20), 10_000_000 // scale


def app_data(scale: int, seed: int = 0):
    n_pub, n_app, n_dev, n_inst = app_sizes(scale)
    rng = np.random.default_rng(seed)
    pub_of_app = np.sort(rng.integers(0, n_pub, n_app))
    pub_of_app[:n_pub] = np.arange(n_pub)
    pub_of_app.sort()
    app = rng.integers(0, n_app, n_inst)
    dev = np.minimum(rng.zipf(1.3, n_inst) - 1, n_dev - 1)  # popular devices host most installs
    y = 0.3 * rng.normal(size=n_app)[app] + 0.4 * rng.normal(size=n_dev)[dev] + 0.8 * rng.normal(size=n_inst)
    return pub_of_app, app, dev, y


def app_gdag(scale: int) -> dict:
    """The seed's app-reliability model: posterior means and sds of every P_i, A_j and D_k."""
    import gdag

    pub_of_app, app, dev, y = app_data(scale)
    n_pub, n_app, n_dev, n_inst = app_sizes(scale)
    t0 = time.perf_counter()
    m = gdag.Model("app_reliability")
    publisher = m.plate("publisher", n_pub)
    apps = m.plate("app", n_app, within=publisher, index=pub_of_app)
    device = m.plate("device", n_dev)
    install = m.plate("install", n_inst)
    P = m.normal("P", mean=0.0, sd=1.0)
    D = m.normal("D", mean=0.0, sd=1.0)
    P_i = m.normal("P_i", mean=P, sd=0.5, plate=publisher)
    A_j = m.normal("A_j", mean=P_i[pub_of_app], sd=0.3, plate=apps)
    D_k = m.normal("D_k", mean=D, sd=0.4, plate=device)
    m.normal("Y", mean=A_j[app] + D_k[dev], sd=0.8, plate=install)
    declare = time.perf_counter() - t0
    phases, post, mean, sd = gdag_posterior(m, {"Y": y}, ["P", "D", "P_i", "A_j", "D_k"])
    result = _finish(t0, {"declare": declare, **phases}, _check(mean), sd_check=_check(sd))
    fill = post._cond.factor_size()  # exact counts from the symbolic analysis
    return dict(result, nnz_Q=int(fill.nnz_Q), nnz_L=int(fill.nnz_L))


def app_floor(scale: int) -> dict:
    """Hand-written Q_UU (P, D, P_i, A_j, D_k) with scipy.sparse and CHOLMOD means (one refinement step), no variances."""
    from sksparse import cholmod

    pub_of_app, app, dev, y = app_data(scale)
    n_pub, n_app, n_dev, n_inst = app_sizes(scale)
    t0 = time.perf_counter()
    # unknowns: P, D, P_i, A_j, D_k; equations: one per unknown plus one per install
    o_pi, o_aj, o_dk = 2, 2 + n_pub, 2 + n_pub + n_app
    n_U = o_dk + n_dev
    eq = np.arange(n_U)
    rows = [eq, o_pi + np.arange(n_pub), o_aj + np.arange(n_app), o_dk + np.arange(n_dev),
            n_U + np.arange(n_inst), n_U + np.arange(n_inst)]
    cols = [eq, np.zeros(n_pub, int), o_pi + pub_of_app, np.ones(n_dev, int), o_aj + app, o_dk + dev]
    vals = [np.ones(n_U), -np.ones(n_pub), -np.ones(n_app), -np.ones(n_dev), np.ones(n_inst), np.ones(n_inst)]
    A_U = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_U + n_inst, n_U))
    d = np.concatenate([[1.0, 1.0], np.full(n_pub, 0.25), np.full(n_app, 0.09), np.full(n_dev, 0.16), np.full(n_inst, 0.64)])
    r = np.concatenate([np.zeros(n_U), y])  # installs: y = A_j + D_k + e, so A_U x_U = y
    W = sp.diags(1.0 / d)
    Q = (A_U.T @ W @ A_U).tocsc()
    b = A_U.T @ (W @ r)
    factor = cholmod.cholesky(Q)
    mean = factor.solve_A(b)
    # one correction from the unformed residual (corrected semi-normal equations): at scale 1 the scaled
    # condition number is about 1e11 and the first solve is up to 1e-2 posterior sds off
    mean += factor.solve_A(A_U.T @ (W @ (r - A_U @ mean)))
    # reorder to gdag's declaration order: P, D, P_i, A_j, D_k (the same here)
    return _finish(t0, {}, _check(mean))


# --------------------------------------------------------------- state space

SS_PHI, SS_Q, SS_R, SS_P0 = 0.99, 0.1, 0.5, 100.0


def ss_data(T: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.cumsum(rng.normal(size=T)) * 0.3 + rng.normal(size=T)
    y[rng.random(T) < 0.2] = np.nan
    return y


def ss_gdag(T: int) -> dict:
    """Local-level model with a self-referencing family: smoothed means and variances."""
    import gdag

    y = ss_data(T)
    t0 = time.perf_counter()
    m = gdag.Model("local_level")
    time_ = m.plate("time", T)
    sd = np.full(T, np.sqrt(SS_Q))
    sd[0] = np.sqrt(SS_P0)
    x = m.normal("x", mean=lambda x: SS_PHI * x.lag(1), sd=sd, plate=time_)
    m.normal("y", mean=x, sd=np.sqrt(SS_R), plate=time_)
    declare = time.perf_counter() - t0
    phases, _, mean, sd = gdag_posterior(m, {"y": y}, ["x"])
    return _finish(t0, {"declare": declare, **phases}, _check(mean), sd_check=_check(sd))


def ss_statsmodels(T: int) -> dict:
    """statsmodels' Kalman filter and smoother (SARIMAX(1, 0, 0) with measurement error), the same model.

    The state starts known, ``x_0 ~ N(0, SS_P0)``, as gdag's first entry does;
    the smoother is asked for the smoothed states and their variances only.
    """
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    y = ss_data(T)
    t0 = time.perf_counter()
    model = SARIMAX(y, order=(1, 0, 0), measurement_error=True, trend="n")
    model.ssm.initialize_known(np.zeros(1), np.array([[SS_P0]]))
    model.ssm.set_smoother_output(0, smoother_state=True, smoother_state_cov=True)
    values = {"ar.L1": SS_PHI, "var.measurement_error": SS_R, "sigma2": SS_Q}
    result = model.smooth(np.array([values[name] for name in model.param_names]), cov_type="none")
    mean, var = result.smoothed_state[0], result.smoothed_state_cov[0, 0]
    return _finish(t0, {}, _check(mean), sd_check=_check(np.sqrt(var)))


def ss_floor(T: int) -> dict:
    """The floor: a banded Cholesky solve (LAPACK pbsv) of the tridiagonal posterior precision, means only.

    With ``x_t = phi x_{t-1} + e_t`` (variance ``q``, ``x_0`` variance ``p0``)
    and ``y_t = x_t + eps_t`` (variance ``r``) where observed, ``Q`` has
    ``1/d_t + phi^2/q [t < T-1] + [y_t observed]/r`` on its diagonal and
    ``-phi/q`` beside it, and ``b_t = y_t / r`` where observed.
    """
    from scipy.linalg import solveh_banded

    y = ss_data(T)
    t0 = time.perf_counter()
    observed = ~np.isnan(y)
    bands = np.empty((2, T))
    bands[0] = 1.0 / SS_Q
    bands[0, 0] = 1.0 / SS_P0
    bands[0, :-1] += SS_PHI**2 / SS_Q
    bands[0] += observed / SS_R
    bands[1, :-1] = -SS_PHI / SS_Q
    bands[1, -1] = 0.0
    b = np.where(observed, y, 0.0) / SS_R
    mean = solveh_banded(bands, b, lower=True, overwrite_ab=True, overwrite_b=True, check_finite=False)
    return _finish(t0, {}, _check(mean))


# -------------------------------------------------------------- many queries


def queries_gdag(n_queries: int, n_friends: int = 10_000) -> dict:
    """One romcom model, ``n_queries`` different random observed subsets of its ratings."""
    import gdag

    who, s, x = romcom_data(n_friends)
    rng = np.random.default_rng(1)
    m = gdag.Model("romcom")
    friend, rating = m.plate("friend", n_friends), m.plate("rating", who.size)
    R = m.normal("R", mean=ROMCOM_PRIOR[0], sd=ROMCOM_PRIOR[1])
    R_i = m.normal("R_i", mean=R, sd=ROMCOM_FRIEND_SD, plate=friend)
    m.normal("X", mean=R_i[who], sd=s, plate=rating)
    t0 = time.perf_counter()
    first = None
    total = 0.0
    for q in range(n_queries):
        xq = np.where(rng.random(x.size) < 0.8, x, np.nan)
        tq = time.perf_counter()
        post = m.posterior({"X": xq})
        post.mean(R_i)
        post.sd(R_i)
        dt = time.perf_counter() - tq
        first = dt if first is None else first
        total += dt
    return _finish(t0, {"first query": first, "per later query": (total - first) / max(n_queries - 1, 1)},
                   [float(n_queries)])


# ------------------------------------------------------------------ fitting

LME4_SCRIPT = r"""
suppressPackageStartupMessages(library(lme4))
d <- read.csv(commandArgs(TRUE)[1])
for (g in strsplit(commandArgs(TRUE)[3], ",")[[1]]) d[[g]] <- factor(d[[g]])
t0 <- proc.time()[["elapsed"]]
fit <- lmer(as.formula(commandArgs(TRUE)[2]), d, REML = FALSE)
cat(sprintf("RESULT %.6f %.10f\n", proc.time()[["elapsed"]] - t0, as.numeric(logLik(fit))))
"""


def _insteval():
    import insteval

    return insteval.load()


def movielens_data(n_ratings: int = 1_000_000, n_users: int = 6_040, n_items: int = 3_706, seed: int = 0):
    """A crossed rating model at the size of MovieLens-1M: y = mu + u[user] + v[item] + e."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n_ratings)
    item = np.minimum((rng.pareto(1.0, n_ratings) * 50).astype(int), n_items - 1)
    y = 3.5 + 0.4 * rng.normal(size=n_users)[user] + 0.5 * rng.normal(size=n_items)[item] + 0.9 * rng.normal(size=n_ratings)
    return user, item, y


def _crossed_gdag(groups: dict, y: np.ndarray) -> dict:
    """ML fit of y ~ 1 + (1|g) for every g in ``groups`` (name -> integer codes)."""
    import gdag

    t0 = time.perf_counter()
    m = gdag.Model("crossed")
    obs = m.plate("obs", y.size)
    mean = m.param("mu")
    for name, codes in groups.items():
        u = m.normal(f"u_{name}", 0.0, m.param(f"sd_{name}", positive=True), plate=m.plate(name, int(codes.max()) + 1))
        mean = mean + u[codes]
    m.normal("y", mean=mean, sd=m.param("sigma", positive=True), plate=obs)
    fit = m.fit({"y": y}, method="ml")
    return _finish(t0, {"evaluations": float(fit.n_iter)}, [fit.loglik / 1e5])


def _crossed_lme4(groups: dict, y: np.ndarray) -> dict:
    import os
    import shutil
    import subprocess
    import tempfile

    if shutil.which("Rscript") is None or subprocess.run(["Rscript", "-e", "library(lme4)"],
                                                         capture_output=True).returncode != 0:
        return {"note": "R/lme4 not installed (apt-get install r-cran-lme4)"}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.csv")
        cols = list(groups)
        np.savetxt(path, np.column_stack([groups[c] for c in cols] + [y]), delimiter=",",
                   header=",".join(cols + ["y"]), comments="", fmt=["%d"] * len(cols) + ["%.17g"])
        formula = "y ~ 1 + " + " + ".join(f"(1 | {c})" for c in cols)
        proc = subprocess.run(["Rscript", "-e", LME4_SCRIPT, path, formula, ",".join(cols)],
                              capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            _, seconds, loglik = line.split()
            return dict(seconds=float(seconds), phases={}, check=[float(loglik) / 1e5])
    return {"note": "lme4 failed: " + proc.stderr.strip()[-120:]}


def _crossed_statsmodels(groups: dict, y: np.ndarray) -> dict:
    """statsmodels MixedLM in variance-components form (one all-encompassing group)."""
    import pandas as pd
    import statsmodels.formula.api as smf

    df = pd.DataFrame({**{k: v for k, v in groups.items()}, "y": y})
    t0 = time.perf_counter()
    vc = {k: f"0 + C({k})" for k in groups}
    fit = smf.mixedlm("y ~ 1", df, groups=np.ones(y.size), vc_formula=vc).fit(reml=False)
    return _finish(t0, {}, [float(fit.llf) / 1e5])


def insteval_gdag(_size: int) -> dict:
    s, d, dept, y = _insteval()
    return _crossed_gdag({"s": s, "d": d, "dept": dept}, y)


def insteval_lme4(_size: int) -> dict:
    s, d, dept, y = _insteval()
    return _crossed_lme4({"s": s, "d": d, "dept": dept}, y)


def insteval_statsmodels(_size: int) -> dict:
    s, d, dept, y = _insteval()
    return _crossed_statsmodels({"s": s, "d": d, "dept": dept}, y)


def movielens_gdag(n_ratings: int) -> dict:
    user, item, y = movielens_data(n_ratings)
    return _crossed_gdag({"user": user, "item": item}, y)


def movielens_lme4(n_ratings: int) -> dict:
    user, item, y = movielens_data(n_ratings)
    return _crossed_lme4({"user": user, "item": item}, y)


WARM_UP = {"romcom": 1000,  # 5,000 ratings: the leaf-sum path (4,096+ rows) loads its kernels too
            "app": 1000, "state_space": 100, "queries": 2, "insteval": 1, "movielens": 20_000}

CASES = {
    "romcom": {"gdag": romcom_gdag, "floor": romcom_floor, "dense numpy": romcom_dense, "pgmpy": romcom_pgmpy},
    "app": {"gdag": app_gdag, "floor": app_floor},
    "state_space": {"gdag": ss_gdag, "statsmodels": ss_statsmodels, "floor": ss_floor},
    "queries": {"gdag": queries_gdag},
    "insteval": {"gdag": insteval_gdag, "lme4": insteval_lme4, "statsmodels": insteval_statsmodels},
    "movielens": {"gdag": movielens_gdag, "lme4": movielens_lme4},
}
