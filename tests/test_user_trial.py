"""What a first-time user ran into, pinned: each a clear gdag error instead of a plausible wrong answer."""

import numpy as np
import pandas as pd
import pytest

import gdag


def test_a_frame_whose_columns_name_no_node_is_refused():
    m = gdag.Model("t")
    u = m.normal("u", 0.0, 1.0, plate=m.plate("g", 3))
    m.normal("score", mean=u[np.array([0, 1, 2])], sd=1.0, plate=m.plate("obs", 3))
    with pytest.raises(gdag.DataError, match=r"No column of the data frame names a node.*Did you mean `score`\?"):
        m.posterior(pd.DataFrame({"Score": [1.0, 2.0, 3.0]}))


def test_a_level_given_in_another_type_is_refused_not_predicted_as_new():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(300, 306), 6)
    df = pd.DataFrame({"y": rng.normal(size=6)[g - 300] + rng.normal(size=g.size), "x": rng.normal(size=g.size), "g": g})
    fit = gdag.lmer("y ~ x + (1 | g)", df)
    with pytest.raises(gdag.DataError, match=r"level '300' \(str\), which matches a fitted level only as text"):
        fit.predict(pd.DataFrame({"x": [1.0], "g": ["300"]}))
    seen = fit.predict(pd.DataFrame({"x": [1.0], "g": [300]}))
    assert np.isfinite(seen["mean"]).all()


def test_lmer_takes_lme4s_REML_flag():
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(8), 5)
    df = pd.DataFrame({"y": rng.normal(size=8)[g] + rng.normal(size=g.size), "g": g})
    ml = gdag.lmer("y ~ 1 + (1 | g)", df, REML=False)
    assert ml.loglik == pytest.approx(gdag.lmer("y ~ 1 + (1 | g)", df, method="ml").loglik, rel=1e-12)
    assert gdag.lmer("y ~ 1 + (1 | g)", df, REML=True).method == "reml"
    with pytest.raises(gdag.FitError, match="disagree"):
        gdag.lmer("y ~ 1 + (1 | g)", df, method="ml", REML=True)
