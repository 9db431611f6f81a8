"""Interventions (m.do, gdag.shift) and counterfactuals (post.counterfactual) against dense numpy.

The interventional oracle is the mutilated SEM: the set rows of ``B`` zeroed,
``c`` the value, ``d`` 0, then conditioned densely.  The counterfactual oracle
is the twin network written out literally: ``e = A x - c`` under the dense
factual posterior of ``x``, then ``x* = A*^{-1} (c* + e*)`` with ``e*`` the
same noises except at the set entries.
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gdag
from gdag import observations

from reference import (
    assert_close,
    build_gdag,
    dense_condition,
    joint_moments,
    observe,
    random_spec,
    spec_matrices,
)


def _random_intervention(spec, offsets, rng, allow_shift=True):
    """``(name, values, positions, kind)``: some entries of a random family set or shifted (NaN elsewhere)."""
    fam = spec.families[int(rng.integers(len(spec.families)))]
    pick = rng.random(fam.size) < 0.6
    pick[int(rng.integers(fam.size))] = True
    values = np.where(pick, rng.normal(size=fam.size) * 2, np.nan)
    kind = "shift" if allow_shift and rng.random() < 0.3 else "set"
    positions = offsets[fam.name] + np.flatnonzero(pick)
    given = float(values[0]) if fam.scalar else values
    return fam.name, given, positions, values[pick], kind


def _mutilated(B, c, d, positions, values, kind):
    B, c, d = B.copy(), c.copy(), d.copy()
    if kind == "shift":
        c[positions] += values
    else:
        B[positions, :] = 0.0
        c[positions] = values
        d[positions] = 0.0
    return B, c, d


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), fraction=st.sampled_from([0.0, 0.4, 0.8]))
def test_do_matches_the_mutilated_model_conditioned_densely(seed, fraction):
    rng = np.random.default_rng(seed)
    spec = random_spec(rng)
    m = build_gdag(spec)
    before = m.to_dict()
    B, c, d, offsets = spec_matrices(spec)
    name, given_values, pos, vals, kind = _random_intervention(spec, offsets, rng)
    iv = {name: gdag.shift(given_values) if kind == "shift" else given_values}
    m2 = m.do(iv)
    assert m.to_dict() == before  # the original is untouched
    Bs, cs, ds = _mutilated(B, c, d, pos, vals, kind)
    mu, Sigma = joint_moments(Bs, cs, ds)
    truth = rng.multivariate_normal(mu, Sigma + 1e-12 * np.eye(len(mu)), method="svd")
    data, x = observe(spec, ds, offsets, truth, rng, fraction)
    mean, cov, loglik = dense_condition(mu, Sigma, ~np.isnan(x), x)
    post = m2.posterior(data)
    scale, vscale = 1.0 + np.max(np.abs(mean)), 1.0 + np.max(np.diag(Sigma))
    for fam in spec.families:
        s = slice(offsets[fam.name], offsets[fam.name] + fam.size)
        assert_close(post.mean(fam.name), mean[s], scale)
        assert_close(post.var(fam.name), np.diag(cov)[s], vscale)
    if (~np.isnan(x)).any():
        assert post.log_evidence == pytest.approx(loglik, rel=1e-9, abs=1e-9)


def _twin_network(B, c, d, mean, cov, positions, values, kind):
    """Mean and covariance of ``x* = A*^{-1} (c* + P (A x - c))`` under ``x ~ N(mean, cov)``."""
    n = len(c)
    A = np.eye(n) - B
    Bs, cs, _ = _mutilated(B, c, d, positions, values, kind)
    keep = np.ones(n)
    if kind == "set":
        keep[positions] = 0.0
    A_star_inv = np.linalg.inv(np.eye(n) - Bs)
    M = A_star_inv @ np.diag(keep) @ A  # x -> x*, through the noises e = A x - c
    offset = A_star_inv @ (cs - keep * c)
    return M @ mean + offset, M @ cov @ M.T


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), fraction=st.sampled_from([0.0, 0.4, 0.8, 1.0]))
def test_counterfactual_matches_the_dense_twin_network(seed, fraction):
    rng = np.random.default_rng(seed)
    spec = random_spec(rng)
    m = build_gdag(spec)
    B, c, d, offsets = spec_matrices(spec)
    mu, Sigma = joint_moments(B, c, d)
    truth = rng.multivariate_normal(mu, Sigma + 1e-12 * np.eye(len(mu)), method="svd")
    data, x = observe(spec, d, offsets, truth, rng, fraction)
    mean, cov, _ = dense_condition(mu, Sigma, ~np.isnan(x), x)
    name, given_values, pos, vals, kind = _random_intervention(spec, offsets, rng)
    cf = m.posterior(data).counterfactual({name: gdag.shift(given_values) if kind == "shift" else given_values})
    cf_mean, cf_cov = _twin_network(B, c, d, mean, cov, pos, vals, kind)
    scale, vscale = 1.0 + np.max(np.abs(cf_mean)), 1.0 + np.max(np.diag(Sigma)) + np.max(np.diag(cf_cov))
    for fam in spec.families:
        s = slice(offsets[fam.name], offsets[fam.name] + fam.size)
        assert_close(cf.mean(fam.name), cf_mean[s], scale)
        assert_close(cf.var(fam.name), np.diag(cf_cov)[s], vscale)
    a, b = spec.families[0].name, spec.families[-1].name
    sa = slice(offsets[a], offsets[a] + spec.families[0].size)
    sb = slice(offsets[b], offsets[b] + spec.families[-1].size)
    assert_close(cf.cov(a, b), cf_cov[sa, sb], vscale)


def _chain_model():
    m = gdag.Model("chain")
    a = m.normal("a", mean=1.0, sd=1.0)
    b = m.normal("b", mean=2 * a + 1, sd=0.5)
    m.normal("y", mean=b - a, sd=0.3)
    return m


def test_counterfactual_by_hand_and_its_draws():
    m = _chain_model()
    post = m.posterior({"y": 2.0, "b": 4.0})
    cf = post.counterfactual({"a": 0.0})
    # e_b = b - 2a - 1 and e_y = y - b + a under the posterior of a; b* = 1 + e_b, y* = b* + e_y
    a_mean, a_var = post.mean("a"), post.var("a")
    assert cf.mean("a") == 0.0 and cf.var("a") == 0.0
    assert cf.mean("b") == pytest.approx(4.0 - 2 * a_mean)
    assert cf.var("b") == pytest.approx(4 * a_var)
    assert cf.mean("y") == pytest.approx(2.0 - a_mean)  # y* = y + (b* - b) - (a* - a) = y - a
    assert cf.var("y") == pytest.approx(a_var)
    draws = cf.sample(20000, seed=1)
    assert np.all(draws["a"] == 0.0)
    assert np.mean(draws["b"]) == pytest.approx(cf.mean("b"), abs=0.05)
    assert np.std(draws["b"]) == pytest.approx(cf.sd("b"), rel=0.05)
    shifted = post.counterfactual({"a": gdag.shift(1.0)})  # b* = b + 2, y* = y + 2 - 1; nothing random moves
    assert shifted.mean("y") == pytest.approx(3.0) and shifted.var("y") == pytest.approx(0.0, abs=1e-15)


def test_counterfactual_of_leaves_summed_over_rows(monkeypatch):
    rng = np.random.default_rng(3)
    m = gdag.Model("romcom")
    friend, rating = m.plate("friend", 8), m.plate("rating", 40, within=None)
    who = rng.integers(0, 8, size=40)
    R = m.normal("R", mean=3.0, sd=1.0)
    R_i = m.normal("R_i", mean=R, sd=0.7, plate=friend)
    m.normal("X", mean=1.5 * R_i[who] + 0.2, sd=0.5, plate=rating)
    data = {"X": rng.normal(3.0, 1.0, size=40)}
    value = np.full(8, np.nan)
    value[2] = 5.0
    joint = m.posterior(data).counterfactual({"R_i": value})
    monkeypatch.setattr(observations, "MIN_ROWS", 0)
    reduced_post = m.posterior(data)
    assert "X" in reduced_post._cond.leaf_data
    reduced = reduced_post.counterfactual({"R_i": value})
    for name in ("R", "R_i", "X"):
        np.testing.assert_allclose(reduced.mean(name), joint.mean(name), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(reduced.var(name), joint.var(name), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(reduced.cov("X"), joint.cov("X"), atol=1e-10)
    assert np.all(reduced.var("X")[who != 2] == 0.0)  # ratings of other friends stay as observed
    x_set = np.full(40, np.nan)
    x_set[:3] = [1.0, 2.0, 3.0]  # set some leaf entries themselves, and shift R
    both = {"X": x_set, "R": gdag.shift(0.5)}
    reduced_both = reduced_post.counterfactual(both)
    monkeypatch.setattr(observations, "MIN_ROWS", 10**9)
    joint_both = m.posterior(data).counterfactual(both)
    for name in ("R", "R_i", "X"):
        np.testing.assert_allclose(reduced_both.mean(name), joint_both.mean(name), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(reduced_both.var(name), joint_both.var(name), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(reduced_both.mean("X")[:3], [1.0, 2.0, 3.0])


def test_intervened_model_is_an_ordinary_model():
    m = _chain_model()
    m2 = m.do({"b": 3.0})
    assert m2.interventions[0].name == "b" and m.interventions == ()
    d = m2.to_dict()
    assert gdag.Model.from_dict(d).to_dict() == d
    post = m2.posterior({"y": 2.5})
    assert post.mean("b") == 3.0 and post.var("b") == 0.0
    # y = 3 - a + e_y: a's posterior is the prior's, updated by y alone
    assert post.mean("a") == pytest.approx(1.0 + (0.5 - 1.0) / 1.09)
    chained = m2.do({"a": gdag.shift(1.0)})
    assert [iv.kind for iv in chained.interventions] == ["set", "shift"]
    assert chained.posterior().mean("y") == pytest.approx(3.0 - 2.0)


def test_do_with_a_parameter_sd_on_some_entries_and_a_fit():
    rng = np.random.default_rng(0)
    m = gdag.Model("groups")
    g = m.plate("g", 6)
    obs = m.plate("obs", 60)
    where = np.repeat(np.arange(6), 10)
    s_u, s_y = m.param("s_u", positive=True, value=1.0), m.param("s_y", positive=True, value=0.5)
    mu = m.param("mu", value=0.0)
    u = m.normal("u", mean=mu, sd=s_u, plate=g)
    m.normal("y", mean=u[where], sd=s_y, plate=obs)
    y = rng.normal(size=60) + np.repeat(rng.normal(size=6), 10)
    fixed = np.full(6, np.nan)
    fixed[:2] = [1.0, -1.0]
    m2 = m.do({"u": fixed})
    saved = m2.to_dict()  # a parameter sd with zero multipliers at the set entries round-trips
    assert gdag.Model.from_dict(saved).to_dict() == saved
    post = m2.posterior({"y": y})
    np.testing.assert_array_equal(post.mean("u")[:2], [1.0, -1.0])
    np.testing.assert_array_equal(post.var("u")[:2], [0.0, 0.0])
    assert np.all(post.var("u")[2:] > 0)
    fit = m2.fit({"y": y}, method="ml")
    assert fit.converged
    sub = gdag.Model("sub")  # the same fit on the groups left alone, and the set groups' rows as known means
    s_u2, s_y2 = sub.param("s_u", positive=True), sub.param("s_y", positive=True)
    mu2 = sub.param("mu")
    g4, o = sub.plate("g", 4), sub.plate("obs", 60)
    u4 = sub.normal("u", mean=mu2, sd=s_u2, plate=g4)
    known = np.where(where < 2, fixed[np.minimum(where, 1)], 0.0)
    take = np.maximum(where - 2, 0)
    sub.normal("y", mean=u4.take(take, where=where >= 2) + known, sd=s_y2, plate=o)
    ref = sub.fit({"y": y}, method="ml")
    for name in ("s_u", "s_y", "mu"):
        assert fit.params[name] == pytest.approx(ref.params[name], rel=1e-4)


@pytest.mark.parametrize(
    "interventions, error, message",
    [
        ({"beta": 1.0}, gdag.ModelSpecError, "`beta` is a parameter of model `chain`, not a node"),
        ({"c": 1.0}, gdag.ModelSpecError, "Cannot intervene on `c`: model `chain` has no such node"),
        ({}, gdag.ModelSpecError, "do() and counterfactual() take a non-empty mapping"),
        ({"a": [1.0, 2.0]}, gdag.DataError, "The value given to do() for node `a` has shape (2,); it needs 1 value"),
        ({"a": np.inf}, gdag.DataError, "The value given to do() for node `a` is infinite at entries [0]"),
        ({"a": np.nan}, gdag.DataError, "The intervention on `a` is NaN at every entry"),
        ({"a": "x"}, gdag.DataError, "The value given to do() for node `a` must be a number"),
        ({"a": gdag.shift(True)}, gdag.DataError, "The shift given to do() for node `a` must be numeric"),
    ],
)
def test_errors_are_worded(interventions, error, message):
    m = _chain_model()
    m.param("beta", value=1.0)
    with pytest.raises(error, match=re.escape(message)):
        m.do(interventions)
    with pytest.raises(error, match=re.escape(message)):
        m.posterior({"y": 1.0}).counterfactual(interventions)


def test_observing_a_set_entry_is_refused():
    m2 = _chain_model().do({"b": 3.0})
    with pytest.raises(gdag.DataError, match=re.escape("Node `b` is set by do() at entries [0], so the intervened")):
        m2.posterior({"b": 3.0})
    other = gdag.Model("other")
    with pytest.raises(gdag.ModelSpecError, match=re.escape("do() uses `a` from another model than `chain`. Use that model's own node")):
        _chain_model().do({other.normal("a"): 1.0})
    with pytest.raises(gdag.ModelSpecError, match=re.escape("counterfactual() uses `a` from another model")):
        _chain_model().posterior({"y": 1.0}).counterfactual({other.nodes["a"]: 1.0})
    m = _chain_model()
    with pytest.raises(gdag.ModelSpecError, match=re.escape("The interventions name `a` twice")):
        m.posterior({"y": 1.0}).counterfactual({m.nodes["a"]: 1.0, "a": 2.0})


def _vertex(source: str, name: str) -> str:
    match = re.search(rf"^\s*\"?{re.escape(name)}\"? \[(.*)\]$", source, re.M)
    assert match, f"no vertex {name} in\n{source}"
    return match.group(1)


def test_drawing_marks_set_and_shifted_nodes_and_cut_edges():
    m = _chain_model()
    plain = m.render().source
    src = m.do({"b": 3.0, "a": gdag.shift(1.0)}).render().source
    b, a, y = _vertex(src, "b"), _vertex(src, "a"), _vertex(src, "y")
    assert "shape=box" in b and "peripheries=2" in b and "style=filled" in b and "fillcolor=" in b
    assert "xlabel=<+δ>" in a and "penwidth=2" in a and "shape=ellipse" in a
    assert "shape=ellipse" in y and "fillcolor" not in y
    cut = re.search(r"^\s*a -> b \[(.*)\]$", src, re.M).group(1)
    assert "style=dashed" in cut and "✕" in cut and "cut by do()" in cut
    assert re.search(r"^\s*a -> y$", src, re.M) and re.search(r"^\s*b -> y$", src, re.M)
    assert "✕" not in plain and "shape=box" not in plain  # the original model draws as before


def test_drawing_of_a_partly_set_plate():
    m = gdag.Model("groups")
    g = m.plate("g", 4)
    mu = m.normal("mu", mean=0.0, sd=1.0)
    m.normal("u", mean=mu, sd=1.0, plate=g)
    src = m.do({"u": [1.0, np.nan, np.nan, np.nan]}).render().source
    u = _vertex(src, "u")
    assert "shape=box" in u and "dashed" in u  # only some entries set: the edge from mu stays, solid
    assert re.search(r"^\s*mu -> u$", src, re.M) and "✕" not in src
    whole = m.do({"u": 1.0}).render().source
    assert "style=\"filled\"" in whole or "style=filled" in _vertex(whole, "u")
    assert re.search(r"^\s*mu -> u \[.*style=dashed", whole, re.M)


# ------------------------------------------------------------ the seed's models, from the examples, small


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _dense_sem(families):
    """``(B, c, d, offsets)`` from ``[(name, size, const, sd, [(source, index, coef), ...])]``, by loops."""
    offsets, n = {}, 0
    for name, size, *_ in families:
        offsets[name] = n
        n += size
    B, c, d = np.zeros((n, n)), np.zeros(n), np.zeros(n)
    for name, size, const, sd, terms in families:
        for i in range(size):
            row = offsets[name] + i
            c[row], d[row] = const, sd**2
            for source, index, coef in terms:
                B[row, offsets[source] + (0 if index is None else index[i])] += coef
    return B, c, d, offsets


def test_app_reliability_counterfactual_matches_the_dense_twin_network():
    example = runpy.run_path(str(EXAMPLES / "app_reliability.py"))
    rng = np.random.default_rng(5)
    m, pub, app, dev = example["build"](rng, n_pub=4, n_app=12, n_dev=5, n_inst=60)
    y = m.posterior().sample(1, seed=2)["Y"][0]
    y[rng.random(60) < 0.2] = np.nan
    post = m.posterior({"Y": y})
    j, best, k, rows, cf = example["best_app_counterfactual"](post, pub, app, dev, y)
    assert pub[j] == pub[best] and rows.size and np.all(app[rows] == j)
    B, c, d, offsets = _dense_sem([
        ("P", 1, 0.0, 1.0, []), ("D", 1, 0.0, 1.0, []), ("P_i", 4, 0.0, 0.5, [("P", None, 1.0)]),
        ("A_j", 12, 0.0, 0.3, [("P_i", pub, 1.0)]), ("D_k", 5, 0.0, 0.4, [("D", None, 1.0)]),
        ("Y", 60, 0.0, 0.8, [("A_j", app, 1.0), ("D_k", dev, 1.0)]),
    ])
    x = np.full(len(c), np.nan)
    x[offsets["Y"]:] = y
    mu, Sigma = joint_moments(B, c, d)
    mean, cov, _ = dense_condition(mu, Sigma, ~np.isnan(x), x)
    value = post.mean("A_j")[best]
    cf_mean, cf_cov = _twin_network(B, c, d, mean, cov, np.array([offsets["A_j"] + j]), np.array([value]), "set")
    ys = slice(offsets["Y"], offsets["Y"] + 60)
    assert_close(cf.mean("Y"), cf_mean[ys], 10.0)
    assert_close(cf.var("Y"), np.diag(cf_cov)[ys], 1.0)
    assert_close(cf.cov("Y", "A_j"), cf_cov[ys, offsets["A_j"]:offsets["A_j"] + 12], 1.0)


def test_students_school_intervention_matches_dense():
    example = runpy.run_path(str(EXAMPLES / "students.py"))
    rng = np.random.default_rng(1)
    sizes = dict(n_state=2, n_district=3, n_school=5, n_class=8, n_student=40, n_ses=3)
    m, ix = example["build"](rng, **sizes)
    scores = m.posterior().sample(1, seed=4)["score"][0]
    post = m.posterior({"score": scores})
    school, value = 2, 4.0
    do_post, cf = example["school_intervention"](m, post, ix["school_of_student"], scores, school, value)
    B, c, d, offsets = _dense_sem([
        ("state_effect", 2, 0.0, 4.0, []),
        ("district_effect", 3, 0.0, 3.0, [("state_effect", ix["state_of_district"], 1.0)]),
        ("school_effect", 5, 0.0, 2.0, [("district_effect", ix["district_of_school"], 1.0)]),
        ("class_effect", 8, 0.0, 2.0, [("school_effect", ix["school_of_class"], 1.0)]),
        ("ses_effect", 3, 0.0, 5.0, []),
        ("score", 40, 70.0, 8.0, [("class_effect", ix["class_of_student"], 1.0), ("ses_effect", ix["ses_of_student"], 1.0)]),
    ])
    pos = np.array([offsets["school_effect"] + school])
    s = slice(offsets["score"], offsets["score"] + 40)
    # interventional: the mutilated model given the other schools' scores
    Bs, cs, ds = _mutilated(B, c, d, pos, np.array([value]), "set")
    x = np.full(len(c), np.nan)
    x[s] = np.where(ix["school_of_student"] == school, np.nan, scores)
    mean, cov, _ = dense_condition(*joint_moments(Bs, cs, ds), ~np.isnan(x), x)
    for name, size in (("district_effect", 3), ("class_effect", 8), ("score", 40)):
        f = slice(offsets[name], offsets[name] + size)
        assert_close(do_post.mean(name), mean[f], 100.0)
        assert_close(do_post.var(name), np.diag(cov)[f], 100.0)
    # counterfactual: the twin network under the factual posterior
    x[s] = scores
    mean, cov, _ = dense_condition(*joint_moments(B, c, d), ~np.isnan(x), x)
    cf_mean, cf_cov = _twin_network(B, c, d, mean, cov, pos, np.array([value]), "set")
    assert_close(cf.mean("score"), cf_mean[s], 100.0)
    assert_close(cf.var("score"), np.diag(cf_cov)[s], 100.0)
    assert np.all(cf.var("score")[ix["school_of_student"] != school] == 0.0)  # other students: as observed


def test_expanded_drawing_marks_the_set_entries():
    m = gdag.Model("groups")
    g = m.plate("g", 3)
    mu = m.normal("mu", mean=0.0, sd=1.0)
    m.normal("u", mean=mu, sd=1.0, plate=g)
    src = m.do({"u": [np.nan, 2.0, np.nan]}).render(expanded=True).source
    assert "shape=box" in _vertex(src, "u[1]") and "shape=box" not in _vertex(src, "u[0]")
    assert re.search(r'^\s*mu -> "u\[0\]"', src, re.M) and not re.search(r'^\s*mu -> "u\[1\]"', src, re.M)


def test_counterfactual_on_a_chain_moves_every_later_step():
    n = 60  # one set entry moving 100 variables: the variances by one solve per set entry
    m = gdag.Model("ar")
    t = m.plate("t", n)
    m.normal("x", mean=lambda x: 0.9 * x.lag(1), sd=1.0, plate=t)
    m.normal("y", mean=m.nodes["x"], sd=0.5, plate=t)
    y = np.random.default_rng(0).normal(size=n)
    value = np.full(n, np.nan)
    value[10] = 3.0
    cf = m.posterior({"y": y}).counterfactual({"x": value})
    B = np.zeros((2 * n, 2 * n))
    B[np.arange(1, n), np.arange(n - 1)] = 0.9
    B[np.arange(n, 2 * n), np.arange(n)] = 1.0
    c, d = np.zeros(2 * n), np.r_[np.ones(n), np.full(n, 0.25)]
    x = np.r_[np.full(n, np.nan), y]
    mean, cov, _ = dense_condition(*joint_moments(B, c, d), ~np.isnan(x), x)
    cf_mean, cf_cov = _twin_network(B, c, d, mean, cov, np.array([10]), np.array([3.0]), "set")
    assert_close(np.r_[cf.mean("x"), cf.mean("y")], cf_mean, 10.0)
    assert_close(np.r_[cf.var("x"), cf.var("y")], np.diag(cf_cov), 1.0)


def test_counterfactual_draws_check_their_inputs_as_posterior_draws_do():
    m = gdag.Model("pair")
    a = m.normal("a", 0.0, 1.0)
    m.normal("b", mean=2.0 * a, sd=0.5)
    cf = m.posterior({"b": 1.0}).counterfactual({"a": 1.0})
    with pytest.raises(gdag.ModelError, match=r"sample\(seed=\.\.\.\) takes None, a non-negative integer"):
        cf.sample(2, seed="seven")
    with pytest.raises(gdag.ModelError, match=r"sample\(n\) needs a positive integer n; got 0\."):
        cf.sample(0)
    assert cf.cov("a", "b").shape == (1, 1)


def test_the_one_nilpotent_series_is_the_inverse_of_i_minus_b():
    # gdag.pattern.nilpotent_series serves the deterministic elimination and counterfactual descendants
    from gdag.pattern import nilpotent_series

    rng = np.random.default_rng(0)
    n = 7
    B = np.tril(rng.normal(size=(n, n)), -1) * (rng.random((n, n)) < 0.5)
    X = rng.normal(size=(n, 3))
    want = np.linalg.solve(np.eye(n) - B, X)
    np.testing.assert_allclose(nilpotent_series(sp.csr_matrix(B), X), want, rtol=1e-12, atol=1e-12)
    J = sp.csr_matrix((np.ones(2), ([1, 4], [0, 1])), shape=(n, 2))  # two unit columns: their descendants
    got = nilpotent_series(sp.csr_matrix(B), J)
    dense = np.linalg.solve(np.eye(n) - B, J.toarray())
    assert sp.issparse(got) and got.nnz == np.count_nonzero(np.abs(dense) > 1e-14)  # only where a chain reaches
    np.testing.assert_allclose(got.toarray(), dense, rtol=1e-12, atol=1e-12)
