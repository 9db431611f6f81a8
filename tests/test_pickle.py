"""Pickling round trips of models, posteriors and fits (issue 13, "Persistence"), and ``to_dict(params=...)``.

CHOLMOD's analyses and factors do not pickle: a model's query cache pickles
empty, conditionings leave out their analyses (redone, identically, from the
stored pattern on first use) and a posterior refactors its stored system on
load.  So a loaded posterior answers bit for bit as the original did, in
every mode: per mask, padded (the shared analysis) and with leaf families
summed over their rows.
"""

import copy
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sksparse import cholmod
from test_cache import crossed_model, masked

import gdag
from gdag import observations
from gdag.linalg.factor import PaddedFactor
from gdag.observations import ReducedConditioning
from gdag.pattern import PaddedConditioning


def round_trip(obj):
    return pickle.loads(pickle.dumps(obj))


def romcom(n_friends=40, per_friend=6, seed=0):
    rng = np.random.default_rng(seed)
    m = gdag.Model("romcom")
    who = np.repeat(np.arange(n_friends), per_friend)
    r = m.normal("R", mean=3.0, sd=1.0)
    r_i = m.normal("R_i", mean=r, sd=0.5, plate=m.plate("friend", n_friends))
    m.normal("X", mean=r_i[who], sd=1.0, plate=m.plate("rating", who.size))
    return m, rng.normal(3.0, 1.0, size=who.size)


def answers(post, nodes):
    """Everything a posterior answers, computed now (in this order, so caches fill alike)."""
    out = {"log_evidence": post.log_evidence, "params": post.params}
    for name in nodes:
        out[f"mean {name}"] = post.mean(name)
        out[f"var {name}"] = post.var(name)
        out[f"sd {name}"] = post.sd(name)
    out["cov"] = post.cov(nodes[0], nodes[-1])
    out["draws"] = post.sample(4, seed=7)
    return out


def assert_identical(a, b):
    """Bit for bit: floats, arrays and dicts of them."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_identical(a[key], b[key])
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, key


def check_posterior(post, nodes):
    """Pickled fresh and pickled after every answer: the loaded posterior answers identically.

    Identically for the same calls in the same order: CHOLMOD's ``solve_Lt`` of a draw turns a simplicial
    LDL' factor into LL' in place, after which solves (``cov``) may differ in the last bit, pickled or not;
    the loaded posterior's factor is a fresh one, as the original's was before its first draw.
    """
    before = round_trip(post)  # nothing computed yet but the means
    expected = answers(post, nodes)
    assert_identical(answers(round_trip(post), nodes), expected)  # caches (variances, G) carried
    assert_identical(answers(before, nodes), expected)  # computed after loading, on the rebuilt factor
    assert_identical(answers(copy.deepcopy(post), nodes), expected)


def test_a_model_pickles_without_its_cache_and_answers_as_a_fresh_one():
    m, y = crossed_model()
    rng = np.random.default_rng(0)
    data = {"y": masked(y, rng, 0.8)}
    m.posterior({"y": masked(y, rng, 0.8)})
    m.posterior(data)  # the model's cache now holds analyses (CHOLMOD's among them)
    assert len(m._queries) > 0  # internals: what pickling leaves out
    loaded = round_trip(m)
    assert len(loaded._queries) == 0 and loaded._queries is not m._queries
    assert loaded.to_dict() == m.to_dict() and loaded.name == m.name
    assert all(node.model is loaded for node in loaded.nodes.values())
    fresh = crossed_model()[0]  # the same declarations, nothing queried: the loaded model's state
    assert_identical(answers(loaded.posterior(data), ["a", "b"]), answers(fresh.posterior(data), ["a", "b"]))
    # the loaded model fits and takes new declarations like the original
    assert loaded.fit(data, method="ml").params == pytest.approx(m.fit(data, method="ml").params, rel=1e-12)
    loaded.normal("extra", mean=loaded.nodes["a"][0], sd=1.0)
    assert "extra" not in m.nodes and loaded.posterior(data).mean("extra") == pytest.approx(
        loaded.posterior(data).mean("a")[0])


def test_a_posterior_on_a_cholmod_factor_round_trips(monkeypatch):
    monkeypatch.setattr(gdag.cache, "SHARED_FRACTION", 1.1)  # a per-pattern factor (CHOLMOD's own), not padded
    m, y = crossed_model()
    post = m.posterior({"y": masked(y, np.random.default_rng(1), 0.8)}, {"sigma": 0.6})
    assert isinstance(post._factor._factor, cholmod.Factor)  # internals: CHOLMOD's own factor is left out
    check_posterior(post, ["a", "b", "y"])
    assert round_trip(post).params == {"sigma": 0.6}


def test_a_posterior_with_cholmods_own_ordering_round_trips():
    m, y = crossed_model(n_a=300, n_b=200, n_obs=4000)
    post = m.posterior({"y": masked(y, np.random.default_rng(2), 0.8)})
    assert post._cond.analysis().reorder is None  # internals: CHOLMOD ordered it; redone alike on load
    check_posterior(post, ["a", "b"])
    np.testing.assert_array_equal(round_trip(post)._factor.permutation, post._factor.permutation)


def test_a_padded_posterior_round_trips():
    m, y = crossed_model()
    rng = np.random.default_rng(3)
    m.posterior({"y": masked(y, rng, 0.8)})
    post = m.posterior({"y": masked(y, rng, 0.7)})  # another pattern: through the shared analysis
    assert isinstance(post._cond, PaddedConditioning) and isinstance(post._factor, PaddedFactor)
    check_posterior(post, ["a", "b", "y"])


def test_a_posterior_with_summed_leaf_rows_round_trips(monkeypatch):
    monkeypatch.setattr(observations, "MIN_ROWS", 0)
    m, x = romcom()
    post = m.posterior({"X": x})
    assert isinstance(post._cond, ReducedConditioning)
    check_posterior(post, ["R", "R_i", "X"])
    loaded = round_trip(post)
    np.testing.assert_array_equal(loaded.mean("X"), x)
    assert loaded.sample(2, seed=0, nodes="X")["X"].shape == (2, x.size)
    assert loaded.summary("X") == post.summary("X")


def test_posteriors_of_small_and_deterministic_models_round_trip():
    m, x = romcom()
    check_posterior(m.posterior({"X": masked(x, np.random.default_rng(4), 0.5)}), ["R", "R_i", "X"])
    check_posterior(m.posterior(), ["R", "R_i"])  # nothing observed
    check_posterior(m.posterior({"X": x, "R_i": np.full(40, 3.0), "R": 3.0}), ["R", "X"])  # nothing unobserved
    d = gdag.Model("det")
    a = d.normal("a", sd=1.0, plate=d.plate("p", 5))
    s = d.normal("s", mean=a[0] + 2 * a[1], sd=0.0)  # deterministic
    d.normal("z", mean=s, sd=0.5)
    check_posterior(d.posterior({"z": 1.0}), ["a", "s", "z"])


def sleepstudy_like(seed=0):
    rng = np.random.default_rng(seed)
    subjects, days = 12, 8
    g = np.repeat([f"s{k:02d}" for k in range(subjects)], days)
    x = np.tile(np.arange(days, dtype=float), subjects)
    u0, u1 = rng.normal(0, 25, subjects), rng.normal(0, 6, subjects)
    code = np.repeat(np.arange(subjects), days)
    y = 250 + 10 * x + u0[code] + u1[code] * x + rng.normal(0, 25, x.size)
    return pd.DataFrame({"Reaction": y, "Days": x, "Subject": pd.Categorical(g)})


@pytest.mark.parametrize("posterior_first", [False, True])
def test_a_formula_fit_round_trips_with_its_tables(posterior_first):
    df = sleepstudy_like()
    fit = gdag.lmer("Reaction ~ Days + (Days | Subject)", df)
    nodes = list(fit.posterior._cm.family_names) if posterior_first else None  # built (and variances) before pickling
    if posterior_first:
        fit.posterior.var(nodes[0])
    loaded = round_trip(fit)
    assert repr(loaded) == repr(fit) and loaded.summary() == fit.summary()
    assert loaded.loglik == fit.loglik and loaded.converged == fit.converged
    for name, value in fit.params.items():
        np.testing.assert_array_equal(loaded.params[name], value)
    for table in ("fixef", "ranef", "varcorr"):
        pd.testing.assert_frame_equal(getattr(loaded, table)(), getattr(fit, table)(), check_exact=True)
    for series in ("fitted", "residuals"):
        pd.testing.assert_series_equal(getattr(loaded, series)(), getattr(fit, series)(), check_exact=True)
    new = df.iloc[:5].assign(Subject=pd.Categorical(["s00", "s01", "new", "s03", "s04"]))
    pd.testing.assert_frame_equal(loaded.predict(new), fit.predict(new), check_exact=True)
    nodes = list(fit.posterior._cm.family_names)
    assert fit.design is not None and loaded.design is not None
    assert_identical(answers(loaded.posterior, nodes), answers(fit.posterior, nodes))


def test_a_dsl_fit_round_trips_before_and_after_its_posterior_is_built():
    m, y = crossed_model()
    data = {"y": masked(y, np.random.default_rng(5), 0.9)}
    fit = m.fit(data, method="ml")
    unbuilt = round_trip(fit)  # the posterior not built yet: built after loading
    built = round_trip((fit.posterior, fit))[1]
    expected = answers(fit.posterior, ["a", "b"])  # once: a draw leaves CHOLMOD's factor in LL' form (see check_posterior)
    for other in (unbuilt, built):
        assert other.params == fit.params and other.loglik == fit.loglik and other.stderr == fit.stderr
        assert other.summary() == fit.summary()
        assert_identical(answers(other.posterior, ["a", "b"]), expected)


def test_to_dict_carries_fitted_values():
    m, y = crossed_model()
    data = {"y": masked(y, np.random.default_rng(6), 0.9)}
    fit = m.fit(data, method="ml")
    d = m.to_dict(params=fit.params)
    assert d["params"][0]["value"] == [fit.params["sigma"]]
    assert m.to_dict()["params"][0]["value"] == [0.8]  # the model itself keeps its declared value
    loaded = gdag.Model.from_dict(d)
    assert loaded.params["sigma"].value[0] == fit.params["sigma"]
    assert_identical(answers(loaded.posterior(data), ["a", "b"]),
                     answers(crossed_model()[0].posterior(data, fit.params), ["a", "b"]))
    np.testing.assert_allclose(loaded.posterior(data).mean("a"), fit.posterior.mean("a"), rtol=1e-12, atol=1e-12)
    with pytest.raises(gdag.ParamError, match="`crossed`.*'tau'"):
        m.to_dict(params={"tau": 1.0})
    with pytest.raises(gdag.ParamError, match="positive"):
        m.to_dict(params={"sigma": -1.0})
    with pytest.raises(gdag.ParamError, match="mapping"):
        m.to_dict(params=[1.0])


def test_a_posterior_loaded_in_another_process_answers_identically(tmp_path):
    # what joblib and multiprocessing do: CHOLMOD's analysis (its own ordering here) redone in a fresh process
    m, y = crossed_model(n_a=300, n_b=200, n_obs=4000)
    post = m.posterior({"y": masked(y, np.random.default_rng(8), 0.8)})
    (tmp_path / "post.pkl").write_bytes(pickle.dumps(post))
    script = ("import pickle, sys; post = pickle.load(open(sys.argv[1], 'rb')); "
              "pickle.dump((post.var('a'), post.cov('a', 'b'), post.sample(3, seed=2), post.log_evidence), open(sys.argv[2], 'wb'))")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "post.pkl"), str(tmp_path / "out.pkl")], check=True)
    var, cov, draws, log_evidence = pickle.loads((tmp_path / "out.pkl").read_bytes())
    np.testing.assert_array_equal(var, post.var("a"))
    np.testing.assert_array_equal(cov, post.cov("a", "b"))
    assert log_evidence == post.log_evidence
    assert_identical(draws, post.sample(3, seed=2))


def test_a_formula_model_round_trips_and_fits_alike():
    df = sleepstudy_like(1)
    m = gdag.from_formula("Reaction ~ Days + (Days | Subject)", df)
    loaded = round_trip(m)
    assert loaded.design is not None and loaded.to_dict() == m.to_dict()
    fit, again = m.fit(df), loaded.fit(df)
    assert again.loglik == fit.loglik
    pd.testing.assert_frame_equal(again.varcorr(), fit.varcorr(), check_exact=True)
