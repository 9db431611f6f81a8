"""lme4 formulas: the parser's expansion, errors per unsupported construct, and fits against lme4.

Reference values: tests/data/*_reference.json from make_reference.R (lme4 1.1.31); nothing here needs R.
"""

import re

import numpy as np
import pandas as pd
import pytest

import gdag
from gdag.formula import parse_formula

from lme4data import CASES, FORMULAS, frame, reference

RTOL_LOGLIK = 1e-6
RTOL_EST = 1e-4

# formula -> (response, fixed part, [(bar expression, group, correlated)])
FORMULA_TO_TERMS = {
    "Reaction ~ Days + (Days | Subject)": ("Reaction", "Days", [("Days", "Subject", True)]),
    "y ~ (1 | g)": ("y", "1", [("1", "g", True)]),
    "y ~ 0 + (1 | g)": ("y", "0", [("1", "g", True)]),
    "y ~ x - 1 + (1 | g)": ("y", "x - 1", [("1", "g", True)]),
    "y ~ -1 + x + (1|g)": ("y", "1 - 1 + x", [("1", "g", True)]),
    "y ~ x + (1 + x || g)": ("y", "x", [("1 + x", "g", False)]),
    "y ~ 1 + (1 | a/b)": ("y", "1", [("1", "a", True), ("1", "b:a", True)]),
    "y ~ 1 + (1 | a/b/c)": ("y", "1", [("1", "a", True), ("1", "b:a", True), ("1", "c:b:a", True)]),
    "y ~ 1 + (x | a:b) + (1 | c)": ("y", "1", [("x", "a:b", True), ("1", "c", True)]),
    "log(y) ~ I(x^2) + (a + b)^2 + (I(x^2) | g)": ("log(y)", "I(x**2) + (a + b)^2", [("I(x**2)", "g", True)]),
    "y~x*f+(1|g)": ("y", "x*f", [("1", "g", True)]),
}


@pytest.mark.parametrize("formula", list(FORMULA_TO_TERMS))
def test_parser_expands_bars_as_lme4_does(formula):
    response, fixed, bars = FORMULA_TO_TERMS[formula]
    parsed = parse_formula(formula)
    assert (parsed.response, parsed.fixed) == (response, fixed)
    assert [(b.expr, b.group, b.correlated) for b in parsed.bars] == bars


UNSUPPORTED = {
    "y ~ log(1 | g)": "The term `log(1 | g)` of `y ~ log(1 | g)` is not a random-effect term gdag supports",
    "y ~ ar1(0 + t | g)": "The term `ar1(0 + t | g)`",
    "y ~ (1 | g) - 1 + (x | h) - (1 | k)": "The term `(1 | k)`",
    "y ~ (1 | g + h)": "The grouping `g + h` in `(1 | g + h)` is not supported",
    "y ~ (1 | factor(g))": "The grouping `factor(g)` in `(1 | factor(g))` is not supported",
    "y ~ ( | g)": "The random-effect term `( | g)` has nothing before the bar",
    "y ~ (1 | g | h)": "needs exactly one `|`",
    "y ~ x + + (1 | g)": "has an empty term",
    "y": "needs one `~` with the response on its left",
    "y ~ ": "has nothing on the right of `~`",
    "y ~ (1 | g": "has an unmatched `(`",
}


@pytest.mark.parametrize("formula", list(UNSUPPORTED))
def test_a_formula_gdag_cannot_express_is_an_error_naming_the_term(formula):
    with pytest.raises(gdag.ModelSpecError, match=re.escape(UNSUPPORTED[formula])):
        parse_formula(formula)


def test_errors_from_building_name_the_term_or_column():
    df = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0], "x": [0.0, 1.0, 0.0, 1.0], "g": list("abab")})
    with pytest.raises(gdag.FitError, match=re.escape("family 'binomial' (a GLMM) is not supported")):
        gdag.lmer("y ~ x + (1 | g)", df, family="binomial")
    with pytest.raises(gdag.ModelSpecError, match=re.escape("The grouping factor `h` of `y ~ x + (1 | h)` is not a column")):
        gdag.from_formula("y ~ x + (1 | h)", df)
    with pytest.raises(gdag.ModelSpecError, match=re.escape("formulaic could not build the fixed effects of `y ~ s(x) + (1 | g)`")):
        gdag.from_formula("y ~ s(x) + (1 | g)", df)
    with pytest.raises(gdag.ModelSpecError, match=re.escape("The random-effect term `(0 | g)` has no columns")):
        gdag.from_formula("y ~ x + (0 | g)", df)
    with pytest.raises(gdag.ModelSpecError, match=re.escape("The response `g` must be one numeric column")):
        gdag.from_formula("g ~ x + (1 | g)", df)


def test_from_formula_declares_the_dag_of_docs_fitting():
    m = gdag.from_formula(FORMULAS["sleepstudy"], frame("sleepstudy"))
    assert isinstance(m, gdag.Model)
    assert list(m.nodes) == ["Subject_Intercept", "Subject_Days", "Reaction"]
    assert list(m.params) == ["beta", "sd_Subject_Intercept", "c_Subject_Days_Intercept", "sd_Subject_Days", "sigma"]
    assert list(m.plates["Subject"].labels[:3]) == ["308", "309", "310"]
    assert m.design.fixed_names == ("(Intercept)", "Days")
    edges = set(m.graph().edges)
    assert ("Subject_Intercept", "Subject_Days") in edges and ("Subject_Days", "Reaction") in edges
    again = gdag.Model.from_dict(m.to_dict())  # an ordinary model: serializable
    assert again.to_dict() == m.to_dict()


def test_rows_with_missing_values_are_left_out_as_lme4_does():
    df = frame("sleepstudy")
    df.loc[[3, 50], "Reaction"] = np.nan
    df["Days"] = df["Days"].astype("Float64")
    df.loc[7, "Days"] = pd.NA
    df["unused"] = np.nan  # a column the formula does not read does not matter
    m = gdag.from_formula(FORMULAS["sleepstudy"], df)
    assert len(m.design.rows) == 177 and 3 not in m.design.rows and 7 not in m.design.rows
    assert m.plates["obs"].size == 177


def fixef_of(fit):
    return dict(zip(fit.design.fixed_names, np.atleast_1d(fit.params["beta"])))


@pytest.mark.parametrize("data, formula, ref_file, key", CASES)
def test_lmer_matches_lme4(data, formula, ref_file, key):
    ref = reference(ref_file)[key]
    fit = gdag.lmer(FORMULAS[formula], frame(data), method="reml" if ref["reml"] else "ml")
    assert fit.converged
    assert fit.loglik == pytest.approx(ref["loglik"], rel=RTOL_LOGLIK)
    assert (fit.nobs, fit.n_params) == (ref["nobs"], ref["df"])
    fixef = fixef_of(fit)
    assert list(fixef) == list(ref["fixef"])  # R's names and order: (Intercept), recipeB, recipeB:temp, I(temp^2)
    scale = np.abs(list(ref["fixef"].values())).max()
    np.testing.assert_allclose(list(fixef.values()), list(ref["fixef"].values()), rtol=RTOL_EST, atol=RTOL_EST * scale)
    se = dict(zip(fit.design.fixed_names, np.atleast_1d(fit.stderr["beta"])))
    np.testing.assert_allclose([se[k] for k in ref["fixef_se"]], list(ref["fixef_se"].values()), rtol=RTOL_EST)
    assert fit.params["sigma"] == pytest.approx(ref["sd"]["residual"], rel=RTOL_EST)


def test_formula_fit_equals_the_hand_written_dag():
    """The sleepstudy DAG written by hand (as docs/fitting.md does) gives the same fit to rounding."""
    df = frame("sleepstudy")
    m = gdag.Model("by_hand")
    S, subject = m.plate_from(df["Subject"])
    b0, b1, rho = m.param("b0"), m.param("b1"), m.param("rho")
    u0 = m.normal("u0", 0.0, m.param("s0", positive=True), plate=S)
    u1 = m.normal("u1", rho * u0, m.param("s1", positive=True), plate=S)
    m.normal("y", b0 + b1 * df.Days + u0[subject] + df.Days * u1[subject], m.param("sigma", positive=True),
             plate=m.plate("obs", len(df)))
    by_hand = m.fit({"y": df.Reaction}, method="reml")
    by_formula = gdag.lmer(FORMULAS["sleepstudy"], frame("sleepstudy"))
    assert by_formula.loglik == pytest.approx(by_hand.loglik, rel=1e-12)
    # the same optimum, reached from other variables: estimates agree as far as the optimizer pins them
    np.testing.assert_allclose(by_formula.params["beta"], [by_hand.params["b0"], by_hand.params["b1"]], rtol=1e-6)
    modes = by_hand.posterior.mean("u1")
    np.testing.assert_allclose(by_formula.posterior.mean("Subject_Days"), modes, rtol=RTOL_EST, atol=RTOL_EST * np.abs(modes).max())


def test_insteval_crossed_formula_matches_lme4():
    ref = reference("insteval")["ml"]
    fit = gdag.lmer(FORMULAS["insteval"], frame("insteval"), method="ml")
    assert fit.loglik == pytest.approx(ref["loglik"], rel=RTOL_LOGLIK)
    assert fit.params["sd_s_Intercept"] == pytest.approx(ref["sd"]["s"]["(Intercept)"], rel=RTOL_EST)
    assert fit.params["sd_d_Intercept"] == pytest.approx(ref["sd"]["d"]["(Intercept)"], rel=RTOL_EST)


def test_lmer_speaks_lme4s_names_drops_unused_levels_and_names_its_options():
    """User trial: an unused category made an all-zero column ('beta[4] appears in no mean'; lme4 drops it), a
    constant x was reported as `beta[0]`, `beta[1]`, and lme4's `weights=` was refused as an option of m.fit()."""
    rng = np.random.default_rng(0)
    n = 300
    g, x = rng.integers(0, 20, n), rng.normal(size=n)
    f = pd.Categorical(rng.choice(["a", "b", "c"], n), categories=["a", "b", "c", "never"])
    df = pd.DataFrame({"y": x + rng.normal(size=20)[g] + rng.normal(size=n), "x": x, "g": g, "f": f})
    with_unused = gdag.lmer("y ~ x + f + (1 | g)", df)
    without = gdag.lmer("y ~ x + f + (1 | g)", df.assign(f=df["f"].astype(str)))
    assert with_unused.design.fixed_names == without.design.fixed_names == ("(Intercept)", "x", "fb", "fc")
    assert with_unused.loglik == pytest.approx(without.loglik, rel=1e-12)
    with pytest.raises(gdag.NotIdentifiedError, match=r"fixed effects `\(Intercept\)`, `x` are not identified"):
        gdag.lmer("y ~ 1 + x + (1 | g)", df.assign(x=1.0))
    with pytest.raises(gdag.FitError, match=r"gdag.lmer\(\) has no option `weights`.*lme4's weights, offset"):
        gdag.lmer("y ~ x + (1 | g)", df, weights=np.ones(n))


@pytest.mark.parametrize("values", [lambda y: y.astype(object), lambda y: y.astype(str), lambda y: y + 1j])
def test_a_response_of_text_or_objects_is_refused_before_formulaic_expands_it(values):
    """formulaic one-hot encodes such a column (20k rows: 3.7 GB, then a message about 20,000 columns)."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"y": rng.normal(size=2000), "x": rng.normal(size=2000), "g": rng.integers(0, 50, 2000)})
    df["y"] = values(df["y"])
    with pytest.raises(gdag.ModelSpecError, match=r"The response `y` must be one numeric column; it has dtype (object|str|complex128)\."):
        gdag.lmer("y ~ x + (1 | g)", df)


def test_predict_with_no_rows_is_empty_and_without_newdata_points_to_fitted():
    df = frame("sleepstudy")
    fit = gdag.lmer(FORMULAS["sleepstudy"], df)
    empty = fit.predict(df.head(0))
    assert list(empty.columns) == ["mean", "sd", "sd_obs"] and len(empty) == 0
    with pytest.raises(gdag.FitError, match=re.escape("For the data's own rows, fit.fitted() gives lme4's predict(fit)")):
        fit.predict()


def test_as_many_random_effects_as_observations_is_refused_as_lme4_does():
    """A text column where a number was meant: (x | g) with 300 levels of x has 300 x 10 random effects."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"y": rng.normal(size=300), "x": rng.normal(size=300).astype(str), "g": rng.integers(0, 10, 300)})
    with pytest.raises(gdag.ModelSpecError, match=re.escape("number of observations (=300) <= number of random effects "
                                                            "(=3000) for term `(x | g)` (300 columns x 10 levels of `g`)")):
        gdag.lmer("y ~ 1 + (x | g)", df)
    with pytest.raises(gdag.ModelSpecError, match=re.escape("(=300) for term `(1 | h)`")):  # one observation per level
        gdag.lmer("y ~ 1 + (1 | h)", df.assign(h=np.arange(300)))
