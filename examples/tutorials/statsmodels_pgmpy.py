"""Tutorial "gdag for statsmodels and pgmpy users" (docs/tutorials/statsmodels_pgmpy.md).

Every gdag block of the page, in order.  The statsmodels and pgmpy blocks run
too when those packages are installed (they are benchmark-only peers:
``bash scripts/bench.sh`` installs them); otherwise they are skipped.

Run: ``.venv/bin/python examples/tutorials/statsmodels_pgmpy.py``
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import gdag

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lme4 import DATA, penicillin, sleepstudy  # noqa: E402  the lme4 frames of the lme4 tutorial

pd.set_option("display.width", 120)
pd.set_option("display.precision", 4)
HAVE_STATSMODELS = importlib.util.find_spec("statsmodels") is not None
HAVE_PGMPY = importlib.util.find_spec("pgmpy") is not None


def mixedlm():
    sleep, pen = sleepstudy(), penicillin()

    # gdag: correlated intercept and slope per subject, and crossed plates and samples
    fit = gdag.lmer("Reaction ~ Days + (Days | Subject)", sleep)
    print(fit.fixef()[["estimate", "std_error"]])
    print(fit.varcorr())
    crossed = gdag.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", pen, method="ml")
    print(crossed.varcorr())
    print(round(crossed.loglik, 4))

    if HAVE_STATSMODELS:
        import statsmodels.formula.api as smf

        sm_fit = smf.mixedlm("Reaction ~ Days", sleep, groups=sleep["Subject"], re_formula="~Days").fit(reml=True)
        print(sm_fit.fe_params, sm_fit.cov_re, sm_fit.scale, sep="\n")
        vc = {"plate": "0 + C(plate)", "sample": "0 + C(sample)"}
        sm_crossed = smf.mixedlm("diameter ~ 1", pen, groups=np.ones(len(pen)), vc_formula=vc).fit(reml=False)
        print(sm_crossed.vcomp, sm_crossed.scale, sm_crossed.llf)


def local_level():
    y = pd.read_csv(DATA / "nile.csv")["volume"].to_numpy(float)

    first = np.zeros(y.size)
    first[0] = 1.0  # level0 enters the first level only
    m = gdag.Model("nile")
    time = m.plate("time", y.size)
    level = m.normal("level", mean=lambda x: x.lag(1) + m.param("level0") * first,
                     sd=m.param("sd_level", positive=True), plate=time)
    m.normal("y", mean=level, sd=m.param("sigma", positive=True), plate=time)
    fit = m.fit({"y": y}, method="reml")
    print(f"sigma2_irregular {fit.params['sigma'] ** 2:.1f}, sigma2_level {fit.params['sd_level'] ** 2:.1f}")
    print(f"statsmodels' llf = gdag's REML loglik - log(2 pi)/2 = {fit.loglik - 0.5 * np.log(2 * np.pi):.4f}")
    smooth = fit.posterior
    print(np.round(smooth.mean("level")[:5], 1), np.round(smooth.sd("level")[:5], 1))

    ref = json.loads((DATA / "nile_reference.json").read_text())
    print(f"statsmodels (tests/data/nile_reference.json): {ref['sigma2_irregular']:.1f}, "
          f"{ref['sigma2_level']:.1f}, llf {ref['llf']:.4f}")

    # an AR(1) state with gaps in the data, its parameters known: Kalman smoothing is one posterior
    rng = np.random.default_rng(0)
    T = 200
    obs = np.cumsum(rng.normal(size=T)) * 0.3 + rng.normal(size=T)
    obs[rng.random(T) < 0.2] = np.nan  # missing observations are simply unobserved
    ar = gdag.Model("ar1")
    t = ar.plate("t", T)
    x = ar.normal("x", mean=lambda x: 0.99 * x.lag(1), sd=np.r_[10.0, np.full(T - 1, 0.1 ** 0.5)], plate=t)
    ar.normal("obs", mean=x, sd=0.5 ** 0.5, plate=t)
    post = ar.posterior({"obs": obs})
    print(np.round(post.mean("x")[-3:], 3), np.round(post.sd("x")[-3:], 3))
    print(np.round(post.mean("obs")[np.isnan(obs)][:3], 3))  # the gaps, predicted

    if HAVE_STATSMODELS:
        import statsmodels.api as sm
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        uc = sm.tsa.UnobservedComponents(y, "llevel", use_exact_diffuse=True).fit(disp=False)
        print(uc.params, uc.llf)
        sar = SARIMAX(obs, order=(1, 0, 0), measurement_error=True, trend="n")
        sar.ssm.initialize_known(np.zeros(1), np.array([[100.0]]))
        values = {"ar.L1": 0.99, "sigma2": 0.1, "var.measurement_error": 0.5}
        res = sar.smooth(np.array([values[name] for name in sar.param_names]))
        print(np.max(np.abs(res.smoothed_state[0] - post.mean("x"))))


def network():
    # a small linear-Gaussian network: A -> B, A -> C, (B, C) -> D
    m = gdag.Model("abcd")
    A = m.normal("A", mean=1.0, sd=1.0)
    B = m.normal("B", mean=0.5 + 2.0 * A, sd=0.5)
    C = m.normal("C", mean=-1.0 * A, sd=1.0)
    m.normal("D", mean=B + 0.5 * C, sd=0.3)
    post = m.posterior({"D": 4.0})
    print({v: (round(float(post.mean(v)), 4), round(float(post.sd(v)), 4)) for v in "ABC"})
    print(np.round(post.cov(A, B), 4))
    print(f"log p(D = 4) = {post.log_evidence:.4f}")

    # do(B = 3): B is cut from A; D moves, A does not
    hit = m.do({"B": 3.0}).posterior({})
    print({v: (round(float(hit.mean(v)), 4), round(float(hit.sd(v)), 4)) for v in "ACD"})
    # given D = 4 was seen, had B been 3: the counterfactual D
    cf = post.counterfactual({"B": 3.0})
    print(round(float(cf.mean("D")), 4), round(float(cf.sd("D")), 4))

    if HAVE_PGMPY:
        from pgmpy.factors.continuous import LinearGaussianCPD
        from pgmpy.models import LinearGaussianBayesianNetwork

        net = LinearGaussianBayesianNetwork([("A", "B"), ("A", "C"), ("B", "D"), ("C", "D")])
        net.add_cpds(LinearGaussianCPD("A", [1.0], 1.0),
                     LinearGaussianCPD("B", [0.5, 2.0], 0.5, ["A"]),
                     LinearGaussianCPD("C", [0.0, -1.0], 1.0, ["A"]),
                     LinearGaussianCPD("D", [0.0, 1.0, 0.5], 0.3, ["B", "C"]))
        variables, mean, cov = net.predict_probability(pd.DataFrame({"D": [4.0]}))
        print(variables, np.asarray(mean).ravel())


def main():
    mixedlm()
    local_level()
    network()


if __name__ == "__main__":
    main()
