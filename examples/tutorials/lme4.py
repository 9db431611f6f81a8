"""Tutorial "gdag for lme4 users" (docs/tutorials/lme4.md): every code block of the page, in order.

Run: ``.venv/bin/python examples/tutorials/lme4.py``
"""

import sys
from pathlib import Path

import pandas as pd

import gdag

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from formulas import DATA, sleepstudy  # noqa: E402  lme4's sleepstudy frame, Subject labelled 308, 309, ...

pd.set_option("display.width", 120)
pd.set_option("display.precision", 4)


def dyestuff() -> pd.DataFrame:
    d = pd.read_csv(DATA / "dyestuff.csv")
    return pd.DataFrame({"Yield": d["yield"], "Batch": pd.Categorical(d["batch"].map(lambda b: "ABCDEF"[b]))})


def penicillin() -> pd.DataFrame:
    d = pd.read_csv(DATA / "penicillin.csv")
    return pd.DataFrame({"diameter": d["diameter"],
                         "plate": d["plate"].map(lambda p: "abcdefghijklmnopqrstuvwx"[p]),
                         "sample": d["sample"].map(lambda s: "ABCDEF"[s])})


def pastes() -> pd.DataFrame:
    return pd.read_csv(DATA / "pastes.csv")


def main():
    # --- sleepstudy: correlated intercept and slope ----------------------------------------
    sleep = sleepstudy()
    fit = gdag.lmer("Reaction ~ Days + (Days | Subject)", sleep)
    print(fit)
    print(fit.fixef())
    print(fit.ranef().head(4))
    print(fit.varcorr())
    print(fit.confint())
    print(fit.confint(method="profile"))
    new = pd.DataFrame({"Subject": ["308", "372", "999"], "Days": [5.5, 9.0, 4.0]})
    print(fit.predict(new))

    # --- anova: three nested fits ----------------------------------------------------------
    f1 = gdag.lmer("Reaction ~ Days + (1 | Subject)", sleep)
    f2 = gdag.lmer("Reaction ~ Days + (Days || Subject)", sleep)
    print(gdag.anova(f1, f2, fit, names=["f1", "f2", "fit"]).to_string())

    # --- the uncorrelated term --------------------------------------------------------------
    unc = gdag.lmer("Reaction ~ Days + (Days || Subject)", sleep, method="ml")
    print(unc.varcorr())
    print(round(unc.loglik, 4), list(unc.params))

    # --- Dyestuff --------------------------------------------------------------------------
    dye = gdag.lmer("Yield ~ 1 + (1 | Batch)", dyestuff())
    print(dye.fixef())
    print(dye.varcorr())
    print(dye.ranef())

    # --- Penicillin: crossed -----------------------------------------------------------------
    pen = gdag.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", penicillin())
    print(pen.varcorr())
    print(pen.ranef().query("group == 'sample'"))

    # --- Pastes: nested ----------------------------------------------------------------------
    pst = gdag.lmer("strength ~ 1 + (1 | batch/cask)", pastes())
    print(pst.varcorr())
    print(pst.ranef().head(3))

    # --- the model underneath ----------------------------------------------------------------
    m = gdag.from_formula("Reaction ~ Days + (Days | Subject)", sleep)
    print(m.describe())
    p = fit.params
    print({k: round(float(v), 4) for k, v in p.items() if k != "beta"})
    c, sd0, sd1 = p["c_Subject_Days_Intercept"], p["sd_Subject_Intercept"], p["sd_Subject_Days"]
    sd_days = (c**2 * sd0**2 + sd1**2) ** 0.5
    print(f"SD(Days) = {sd_days:.4f}, Corr = {c * sd0 / sd_days:.4f}")

    # --- exact posteriors of the random effects ---------------------------------------------
    post = fit.posterior
    print(post.to_frame(["Subject_Days"]).head(3)[["level", "mean", "sd", "2.5%", "97.5%"]])
    cov = post.cov("Subject_Intercept", "Subject_Days")   # 18 x 18: intercepts by slopes
    print(f"Cov(intercept, slope) of subject 308: {cov[0, 0]:.4f}")
    draws = post.sample(1000, seed=0)                      # joint draws, exact, no MCMC
    print(draws["Subject_Days"].shape)
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    m.render(out / "sleepstudy.svg", observed=["Reaction"])


if __name__ == "__main__":
    main()
