"""Many queries, one model: which mode each query takes, what the query cache reuses, what resets it.

gdag.cache.QueryCache sends observed patterns of a model whose all-unobserved
factor has fill through the shared analysis (the padded mode, test_pattern.py)
unless most variables are observed, and conditions the others per mask; the
mode depends on the model and the pattern alone, never on earlier queries, so
answers and draws are the same bits whatever was asked before.  A few recent
patterns are kept, and a new declaration starts over.  Which mode a query took is read from ``m.describe()``; the
identities of cached objects are internals, marked where they are tested.
"""

import numpy as np
import pytest

import gdag
from gdag import cache
from gdag.data import data_vector
from gdag.linalg import factor
from gdag.pattern import Conditioning


def crossed_model(n_a=30, n_b=20, n_obs=400, seed=0):
    """Crossed effects: a factor with fill, so that queries share the analysis."""
    rng = np.random.default_rng(seed)
    m = gdag.Model("crossed")
    a = m.normal("a", sd=1.0, plate=m.plate("A", n_a))
    b = m.normal("b", sd=1.0, plate=m.plate("B", n_b))
    sigma = m.param("sigma", value=0.8, positive=True)
    m.normal("y", mean=a[rng.integers(0, n_a, n_obs)] + b[rng.integers(0, n_b, n_obs)], sd=sigma,
             plate=m.plate("obs", n_obs))
    return m, rng.normal(size=n_obs)


def masked(y, rng, fraction):
    out = y.copy()
    out[rng.random(y.shape[0]) >= fraction] = np.nan
    return out


def last_mode(m):
    """The mode of ``m``'s last posterior query, as ``m.describe()`` reports it: "padded" or "per mask"."""
    return "padded" if "the padded Q'" in m.describe() else "per mask"


def mode_of(m, data):
    """The mode a posterior query of ``data`` takes."""
    m.posterior(data)
    return last_mode(m)


def test_queries_share_one_analysis(monkeypatch):
    m, y = crossed_model()
    calls = []
    real = factor.analyze
    monkeypatch.setattr(factor, "analyze", lambda Q: calls.append(Q.shape[0]) or real(Q))
    rng = np.random.default_rng(0)
    posts, modes = [], []
    for _ in range(30):
        posts.append(m.posterior({"y": masked(y, rng, 0.8)}))
        modes.append(last_mode(m))
    assert set(modes) == {"padded"}  # the first pattern too
    assert len(calls) == 1  # the shared analysis: none per query
    # internals from here on: the padded queries hold the shared conditioning's analysis itself,
    cm = m._queries.compiled(m.spec())
    shared = m._queries.shared_conditioning(cm)
    assert all(p._cond.analysis() is shared.analysis() for p in posts)
    # the cache holds a few conditionings, not one per query
    assert len(m._queries) <= cache.CONDITIONING_CACHE + 1  # and the shared one
    # and the fit's road keeps the per-mask mode
    x, observed = data_vector(m.spec(), cm, {"y": masked(y, rng, 0.8)})
    assert isinstance(m._queries.conditioning_for(cm, observed), Conditioning)
    fit = m.fit({"y": masked(y, rng, 0.8)}, method="ml")
    assert fit.converged


def test_a_repeated_pattern_reuses_its_conditioning():
    m, y = crossed_model()
    rng = np.random.default_rng(1)
    data = [{"y": masked(y, rng, 0.8)} for _ in range(3)]
    first, modes = [], []
    for d in data:
        first.append(m.posterior(d)._cond)
        modes.append(last_mode(m))
    again = [m.posterior(d)._cond for d in data]
    assert all(a is b for a, b in zip(first, again))  # internals: the cached conditioning object itself
    assert modes == ["padded"] * 3


def test_near_tree_models_stay_per_mask():
    # romcom-like: the factor is a tree, analyses are cheap, padding would cost more
    rng = np.random.default_rng(2)
    m = gdag.Model("romcom")
    who = np.repeat(np.arange(50), 5)
    r = m.normal("R", mean=3.0, sd=1.0)
    r_i = m.normal("R_i", mean=r, sd=0.5, plate=m.plate("friend", 50))
    m.normal("X", mean=r_i[who], sd=1.0, plate=m.plate("rating", who.size))
    x = rng.normal(3.0, 1.0, size=who.size)
    for _ in range(5):
        assert mode_of(m, {"X": masked(x, rng, 0.8)}) == "per mask"


def test_mostly_observed_queries_stay_per_mask(monkeypatch):
    m, y = crossed_model()
    rng = np.random.default_rng(3)
    monkeypatch.setattr(cache, "SHARED_FRACTION", 0.9)
    assert mode_of(m, {"y": masked(y, rng, 0.5)}) == "per mask"
    monkeypatch.setattr(cache, "SHARED_FRACTION", 0.1)
    assert mode_of(m, {"y": masked(y, rng, 0.5)}) == "padded"


def test_a_new_declaration_starts_over():
    m, y = crossed_model()
    rng = np.random.default_rng(4)
    data = {"y": masked(y, rng, 0.8)}
    first = m.posterior(data)._cond
    m.normal("extra", sd=1.0)
    again = m.posterior(data)._cond
    assert again is not first and again.cm is not first.cm  # internals: a new compiled model and conditioning


def test_earlier_posteriors_are_unaffected_by_later_queries():
    m, y = crossed_model()
    rng = np.random.default_rng(5)
    data = {"y": masked(y, rng, 0.7)}
    post = m.posterior(data, {"sigma": 0.6})
    assert last_mode(m) == "padded"
    mean_before = post.mean("a")
    draws_before = post.sample(3, seed=1)
    for _ in range(10):  # other patterns and parameter values through the same shared analysis
        other = m.posterior({"y": masked(y, rng, 0.6)}, {"sigma": 1.3})
        other.var("a")
        other.sample(2, seed=0)
    reference = gdag.Model.from_dict(m.to_dict()).posterior(data, {"sigma": 0.6})  # the same model, fresh
    np.testing.assert_array_equal(post.mean("a"), mean_before)
    np.testing.assert_array_equal(post.var("a"), reference.var("a"))  # computed only now
    np.testing.assert_array_equal(post.cov("a", "b"), reference.cov("a", "b"))
    assert post.log_evidence == reference.log_evidence
    draws_after = post.sample(3, seed=1)
    for name in draws_before:
        np.testing.assert_array_equal(draws_after[name], draws_before[name])


def test_describe_and_the_memory_check_report_the_padded_system(monkeypatch):
    m, y = crossed_model()
    rng = np.random.default_rng(6)
    data = {"y": masked(y, rng, 0.8)}
    m.posterior(data)
    n_unobserved = 30 + 20 + int(np.isnan(data["y"]).sum())  # a, b and the missing y
    assert f"{n_unobserved} unobserved; the padded Q' (all 450 stochastic variables, shared analysis)" in m.describe()
    monkeypatch.setattr(gdag.resources, "available_memory", lambda: 1000.0)
    with pytest.raises(gdag.ModelError, match=rf"nonzeros for {n_unobserved} unobserved variables"):
        m.posterior(data)


def romcom_model(n=40, seed=2):
    """A near tree (per-mask queries, gdag's own factor)."""
    rng = np.random.default_rng(seed)
    m = gdag.Model("romcom")
    who = np.repeat(np.arange(n), 5)
    r_i = m.normal("R_i", mean=m.normal("R", mean=3.0, sd=1.0), sd=0.5, plate=m.plate("friend", n))
    m.normal("X", mean=r_i[who], sd=1.0, plate=m.plate("rating", who.size))
    return m, rng.normal(3.0, 1.0, size=who.size)


def answers(post, first):
    """Every answer of ``post``, asked in two orders (``first``: draws before the rest, or after)."""
    out = {}
    if first == "draws":
        out.update((f"draw {k}", v) for k, v in post.sample(5, seed=7).items())
    names = [n for n in ("a", "b", "R", "R_i") if n in post._cm.family_names]
    for name in names:
        out[f"mean {name}"] = post.mean(name)
        out[f"var {name}"] = post.var(name)
    out["cov"] = post.cov(names[0], names[-1])
    out["log evidence"] = post.log_evidence
    out["bound"] = post.variance_error_bound()
    if first != "draws":
        out.update((f"draw {k}", v) for k, v in post.sample(5, seed=7).items())
    return out


@pytest.mark.parametrize("case, fraction", [("crossed", 0.8), ("crossed", 0.99), ("crossed", 0.0), ("romcom", 0.7)])
def test_answers_do_not_depend_on_earlier_queries(case, fraction):
    """Same model, data and seed: the same bits and draws, whatever was queried before and in whichever order.

    Earlier queries of other patterns (padded, per mask, nothing observed), other parameter values and a
    fit went before on one model; a fresh model and ``from_dict(to_dict())`` of the queried one answer alike.
    """
    make = crossed_model if case == "crossed" else romcom_model
    m, y = make()
    name = "y" if case == "crossed" else "X"
    rng = np.random.default_rng(11)
    data = {name: masked(y, rng, fraction)}
    reference = answers(make()[0].posterior(data), "draws")
    for other in (0.95, 0.3, 0.0, 1.0, 0.99):  # unrelated earlier queries of the same model
        post = m.posterior({name: masked(y, rng, other)})
        post.sample(3, seed=0)
        post.var(name)
    if case == "crossed":
        m.posterior({name: masked(y, rng, 0.8)}, {"sigma": 1.7}).log_evidence
        m.fit({name: masked(y, rng, 0.9)}, method="ml")
    loaded = gdag.Model.from_dict(m.to_dict())
    for model, first in ((m, "draws"), (m, "rest"), (loaded, "rest"), (make()[0], "rest")):
        got = answers(model.posterior(data), first)
        assert got.keys() == reference.keys()
        for key in reference:
            assert np.array_equal(got[key], reference[key]), (key, first)


def test_a_pattern_evicted_and_conditioned_again_answers_the_same_bits():
    m, y = crossed_model()
    rng = np.random.default_rng(12)
    data = {"y": masked(y, rng, 0.8)}
    before = answers(m.posterior(data), "rest")
    for _ in range(cache.CONDITIONING_CACHE + 2):  # enough other patterns to evict it
        m.posterior({"y": masked(y, rng, 0.8)})
    again = answers(m.posterior(data), "rest")
    assert all(np.array_equal(again[key], before[key]) for key in before)
