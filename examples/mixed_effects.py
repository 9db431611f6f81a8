"""Example: mixed-effect models fitted by REML and ML, as lme4 fits them.

Two classic data sets from lme4 (copied to tests/data):

* Penicillin, crossed random effects: 24 plates x 6 samples, one diameter per pair.
  lme4: ``diameter ~ 1 + (1|plate) + (1|sample)``

      u_plate[p]  ~ N(0, sd_plate^2)      u_sample[s] ~ N(0, sd_sample^2)
      y[i]        ~ N(mu + u_plate[plate[i]] + u_sample[sample[i]], sigma^2)

* sleepstudy, correlated random intercepts and slopes: reaction time over 10
  days of sleep deprivation for 18 subjects.
  lme4: ``Reaction ~ 1 + Days + (1 + Days|Subject)``

      u0[j] ~ N(0, s0^2)                  random intercept
      u1[j] ~ N(rho * u0[j], s1^2)        random slope, regressed on the intercept
      y[i]  ~ N(b0 + b1 days[i] + u0[subj[i]] + days[i] u1[subj[i]], sigma^2)

  The pair (u0, u1) is bivariate normal: gdag writes the correlation as a
  regression of one effect on the other (a DAG), and lme4's SDs and
  correlation follow: sd(u1) = sqrt(rho^2 s0^2 + s1^2), corr = rho s0 / sd(u1).

Run: ``.venv/bin/python examples/mixed_effects.py``
"""

from pathlib import Path

import numpy as np

import gdag

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def load(name):
    table = np.genfromtxt(DATA / name, delimiter=",", names=True)
    return {k: table[k] for k in table.dtype.names}


def penicillin():
    d = load("penicillin.csv")
    plate, sample = d["plate"].astype(int), d["sample"].astype(int)
    m = gdag.Model("penicillin")
    P, S, obs = m.plate("plate", plate.max() + 1), m.plate("sample", sample.max() + 1), m.plate("obs", plate.size)
    mu = m.param("mu")
    u_plate = m.normal("u_plate", 0.0, m.param("sd_plate", positive=True), plate=P)
    u_sample = m.normal("u_sample", 0.0, m.param("sd_sample", positive=True), plate=S)
    m.normal("y", mean=mu + u_plate[plate] + u_sample[sample], sd=m.param("sigma", positive=True), plate=obs)
    return m, {"y": d["diameter"]}


def sleepstudy():
    d = load("sleepstudy.csv")
    subj, days = d["subject"].astype(int), d["days"]
    m = gdag.Model("sleepstudy")
    S, obs = m.plate("subject", subj.max() + 1), m.plate("obs", subj.size)
    b0, b1, rho = m.param("b0"), m.param("b1"), m.param("rho")
    u0 = m.normal("u0", 0.0, m.param("s0", positive=True), plate=S)
    u1 = m.normal("u1", rho * u0, m.param("s1", positive=True), plate=S)
    m.normal("y", mean=b0 + b1 * days + u0[subj] + days * u1[subj], sd=m.param("sigma", positive=True), plate=obs)
    return m, {"y": d["reaction"]}


def main():
    m, data = penicillin()
    fit = m.fit(data, method="reml")
    print(fit)
    post = fit.posterior  # conditional modes and sds: lme4's ranef(fit, condVar = TRUE)
    print("\nsample effects (conditional mean +- sd):")
    for k, (mean, sd) in enumerate(zip(post.mean("u_sample"), post.sd("u_sample"))):
        print(f"  sample {'ABCDEF'[k]}: {mean:+.4f} +- {sd:.4f}")

    print("\n" + "=" * 72 + "\n")
    m, data = sleepstudy()
    for method in ("reml", "ml"):
        fit = m.fit(data, method=method)
        print(fit)
        p = fit.params
        sd_slope = np.sqrt(p["rho"] ** 2 * p["s0"] ** 2 + p["s1"] ** 2)
        print(f"\nAs lme4 reports it ({method.upper()}): Subject (Intercept) SD {p['s0']:.4f}, Days SD {sd_slope:.4f}, "
              f"Corr {p['rho'] * p['s0'] / sd_slope:.4f}; Residual SD {p['sigma']:.4f}\n")


if __name__ == "__main__":
    main()
