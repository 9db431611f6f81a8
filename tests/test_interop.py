"""gdag.to_arviz (ArviZ InferenceData of exact draws) and the Posterior's notebook table."""

import sys

import numpy as np
import pytest

import gdag

from lme4data import FORMULAS, frame

DRAWS = 4000


def labelled_model():
    m = gdag.Model("schools")
    g = m.plate("school", 3, labels=["north", "south", "east"])
    mu = m.normal("mu", 0.0, 10.0)
    u = m.normal("u", mu, 2.0, plate=g)
    m.normal("y", mean=u[[0, 0, 1, 1, 2, 2]], sd=1.0, plate=m.plate("obs", 6))
    return m


def check_draws(idata, post, names):
    for name in names:
        draws = idata.posterior[name].values
        assert draws.shape[:2] == (1, DRAWS)
        flat = draws.reshape(DRAWS, -1)
        mean, sd = np.atleast_1d(post.mean(name)), np.atleast_1d(post.sd(name))
        # Monte Carlo error: sd / sqrt(n) for the mean, about sd / sqrt(2n) for the sd; 5 of them
        rounding = 1e-9 * (1 + np.abs(mean))  # observed entries: their data, sd 0
        assert np.all(np.abs(flat.mean(0) - mean) <= 5 * sd / np.sqrt(DRAWS) + rounding), name
        assert np.all(np.abs(flat.std(0) - sd) <= 5 * sd / np.sqrt(2 * DRAWS) + rounding), name


def test_dsl_posterior_draws_carry_plate_labels_and_observed_data():
    y = np.array([1.0, 1.5, -0.3, 0.2, np.nan, 4.0])
    post = labelled_model().posterior({"y": y})
    idata = gdag.to_arviz(post, draws=DRAWS, seed=1)
    assert set(idata.groups()) == {"posterior", "observed_data"}
    assert set(idata.posterior.data_vars) == {"mu", "u", "y"}  # y has an unobserved entry
    assert idata.posterior["u"].dims == ("chain", "draw", "school")
    assert idata.posterior["mu"].dims == ("chain", "draw")
    assert list(idata.posterior.coords["school"].values) == ["north", "south", "east"]
    assert list(idata.posterior.coords["obs"].values) == list(range(6))  # an unlabelled plate: integers
    check_draws(idata, post, ["mu", "u", "y"])
    np.testing.assert_allclose(idata.posterior["y"].values[0, :, 0], 1.0, rtol=1e-12)  # observed entries: their data
    np.testing.assert_array_equal(idata.observed_data["y"].values, y)
    assert idata.posterior.attrs["inference_library"] == "gdag"
    again = gdag.to_arviz(post, draws=DRAWS, seed=1)
    np.testing.assert_array_equal(again.posterior["u"].values, idata.posterior["u"].values)


def test_lmer_fit_exports_its_posterior_at_the_estimates():
    fit = gdag.lmer(FORMULAS["sleepstudy"], frame("sleepstudy"))
    idata = gdag.to_arviz(fit, draws=DRAWS)
    post = fit.posterior
    assert set(idata.posterior.data_vars) == {"Subject_Intercept", "Subject_Days"}
    assert idata.posterior["Subject_Days"].dims == ("chain", "draw", "Subject")
    assert list(idata.posterior.coords["Subject"].values) == list(frame("sleepstudy")["Subject"].cat.categories)
    check_draws(idata, post, ["Subject_Intercept", "Subject_Days"])
    np.testing.assert_array_equal(idata.observed_data["Reaction"].values, frame("sleepstudy")["Reaction"].to_numpy())
    assert idata.constant_data["sigma"].values == pytest.approx(fit.params["sigma"])
    np.testing.assert_array_equal(idata.constant_data["beta"].values, fit.params["beta"])
    assert idata.posterior.attrs["method"] == "reml"
    assert idata.posterior.attrs["loglik"] == fit.loglik


def test_without_arviz_the_error_says_what_to_install(monkeypatch):
    post = labelled_model().posterior({"y": np.zeros(6)})
    monkeypatch.setitem(sys.modules, "arviz", None)  # import arviz raises ImportError
    with pytest.raises(ImportError, match=r'pip install "gdag\[arviz\]"'):
        gdag.to_arviz(post)


def test_to_arviz_refuses_other_objects():
    with pytest.raises(gdag.ModelError, match="takes a gdag.Posterior or a gdag.Fit; got dict"):
        gdag.to_arviz({})


def test_posterior_html_lists_nodes_sizes_observed_counts_and_summaries():
    post = labelled_model().posterior({"y": [1.0, 1.5, -0.3, 0.2, np.nan, 4.0]})
    page = post._repr_html_()
    assert "<table>" in page and "<code>schools</code>" in page
    assert "<td>u</td><td>school</td><td>3</td><td>0</td><td>mean " in page
    assert "<td>y</td><td>obs</td><td>6</td><td>5</td>" in page
    assert f"<td>{post.mean('mu'):.4g} ± {post.sd('mu'):.4g}</td>" in page
    full = labelled_model().posterior({"y": np.zeros(6)})._repr_html_()
    assert "<td>y</td><td>obs</td><td>6</td><td>6</td><td>observed</td>" in full
