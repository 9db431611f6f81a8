"""Example: lme4 formulas on a pandas DataFrame, lme4's tables back.

sleepstudy (lme4's data set, copied to tests/data): reaction times of 18
subjects over 10 days of sleep deprivation.  lme4 writes

    lmer(Reaction ~ Days + (Days | Subject), sleepstudy)

and so does gdag: ``gdag.lmer`` builds the DAG of docs/fitting.md

    b0[s] ~ N(0, sd0^2)                      the subject's intercept
    b1[s] ~ N(c * b0[s], sd1^2)              its slope, regressed on the intercept
    Reaction[i] ~ N(beta0 + beta1 Days[i] + b0[s[i]] + Days[i] b1[s[i]], sigma^2)

fits it by REML, and reports lme4's parameterization (SDs and the
correlation of intercept and slope), the conditional modes per subject
label, Wald intervals, and predictions for seen and unseen subjects.

Run: ``.venv/bin/python examples/formulas.py``
"""

import json
from pathlib import Path

import pandas as pd

import gdag

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def sleepstudy() -> pd.DataFrame:
    """The data as lme4 holds it: Subject a factor with labels 308, 309, ..."""
    d = pd.read_csv(DATA / "sleepstudy.csv")
    labels = json.loads((DATA / "sleepstudy_reference.json").read_text())["reml"]["ranef"]["subject"]["levels"]
    return pd.DataFrame({"Reaction": d["reaction"], "Days": d["days"],
                         "Subject": pd.Categorical.from_codes(d["subject"], categories=labels)})


def main():
    df = sleepstudy()
    fit = gdag.lmer("Reaction ~ Days + (Days | Subject)", df)  # REML, as lme4's default
    print(fit)  # lme4's summary(): random effects as SDs and correlations, fixed effects

    pd.set_option("display.width", 120)
    print("\nfit.varcorr()  (lme4: as.data.frame(VarCorr(fit)))\n", fit.varcorr())
    print("\nfit.fixef()\n", fit.fixef())
    print("\nfit.ranef(), first rows  (lme4: ranef(fit, condVar = TRUE))\n", fit.ranef().head())
    print("\nfit.confint()\n", fit.confint())

    new = pd.DataFrame({"Subject": ["308", "372", "new subject"], "Days": [5.0, 9.0, 5.0]})
    print("\nfit.predict(new)  (an unseen subject gets the population mean, and its sd the subject variance)\n",
          fit.predict(new))

    # the same fit, uncorrelated effects, by ML: (Days || Subject) is (1 | Subject) + (0 + Days | Subject)
    unc = gdag.lmer("Reaction ~ Days + (Days || Subject)", df, method="ml")
    print("\nReaction ~ Days + (Days || Subject), ML:\n", unc.varcorr())

    # from_formula gives the ordinary model: draw it, query it, fit it
    m = gdag.from_formula("Reaction ~ Days + (Days | Subject)", df)
    print("\n", m, "\n nodes:", list(m.nodes), "\n parameters:", list(m.params))


if __name__ == "__main__":
    main()
