"""Posteriors against dense Gaussian conditioning on random models (tests/reference.py)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gdag
from reference import build_gdag, dense_condition, dense_joint, random_spec

RTOL = 1e-9


def observe_some(spec, rng, fraction):
    """Random data for the stochastic entries of a random subset of families."""
    mu, Sigma, offsets, d = dense_joint(spec)
    truth = rng.multivariate_normal(mu, Sigma + 1e-12 * np.eye(len(mu)), method="svd")
    x = np.full(len(mu), np.nan)
    data = {}
    for fam in spec.families:
        o = offsets[fam.name]
        stochastic = d[o : o + fam.size] > 0
        seen = stochastic & (rng.random(fam.size) < fraction)
        if seen.any():
            vals = np.where(seen, truth[o : o + fam.size], np.nan)
            data[fam.name] = vals if not fam.scalar else float(vals[0])
            x[o : o + fam.size] = vals
    return data, x, mu, Sigma, offsets


def assert_close(actual, expected, scale):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), fraction=st.sampled_from([0.0, 0.3, 0.7, 1.0]))
def test_random_models_match_dense_conditioning(seed, fraction):
    rng = np.random.default_rng(seed)
    spec = random_spec(rng)
    data, x, mu, Sigma, offsets = observe_some(spec, rng, fraction)
    mean, cov, loglik = dense_condition(mu, Sigma, ~np.isnan(x), x)
    post = build_gdag(spec).posterior(data)
    scale = 1.0 + np.max(np.abs(mean))
    vscale = 1.0 + np.max(np.diag(Sigma))
    for fam in spec.families:
        s = slice(offsets[fam.name], offsets[fam.name] + fam.size)
        assert_close(np.atleast_1d(post.mean(fam.name)), mean[s], scale)
        assert_close(np.atleast_1d(post.var(fam.name)), np.diag(cov)[s], vscale)
    a, b = spec.families[0], spec.families[-1]
    block = cov[offsets[a.name] : offsets[a.name] + a.size, offsets[b.name] : offsets[b.name] + b.size]
    assert_close(post.cov(a.name, b.name), block, vscale)
    assert post.log_evidence == pytest.approx(loglik, rel=RTOL, abs=RTOL)


def test_declaration_order_of_params_does_not_matter():
    rng = np.random.default_rng(7)
    spec = random_spec(rng, max_families=5)
    data, *_ = observe_some(spec, rng, 0.5)
    first = build_gdag(spec).posterior(data)
    second = build_gdag(spec, order=[2, 0, 1]).posterior(data)
    for fam in spec.families:
        np.testing.assert_allclose(first.mean(fam.name), second.mean(fam.name), rtol=1e-12)
    assert first.log_evidence == pytest.approx(second.log_evidence, rel=1e-12)


def romcom(n_friends=6, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, size=n_friends)
    who = np.repeat(np.arange(n_friends), counts)
    s_i = rng.uniform(0.3, 2.0, size=n_friends)
    m = gdag.Model("romcom")
    friend, rating = m.plate("friend", n_friends), m.plate("rating", len(who))
    R = m.normal("R", mean=3.0, sd=1.0)
    R_i = m.normal("R_i", mean=R, sd=0.7, plate=friend)
    m.normal("X", mean=R_i[who], sd=s_i[who], plate=rating)
    x = rng.normal(3.0, 1.0, size=len(who))
    return m, x, who, counts, s_i


def test_partial_pooling_formula_of_the_seed():
    """E[R_i | X, R] is the precision-weighted average of the friend's mean rating and R."""
    m, x, who, counts, s_i = romcom()
    R, sigma = 3.2, 0.7
    post = m.posterior({"X": x, "R": R})
    xbar = np.bincount(who, weights=x) / counts
    noise = s_i**2 / counts
    weight = sigma**2 / (sigma**2 + noise)
    np.testing.assert_allclose(post.mean("R_i"), weight * xbar + (1 - weight) * R, rtol=1e-12)
    np.testing.assert_allclose(post.var("R_i"), 1.0 / (1.0 / sigma**2 + counts / s_i**2), rtol=1e-12)
    assert post.var("R") == 0.0 and post.mean("R") == R


def rts_smoother(y, phi, q, r, m0, p0):
    """Kalman filter + Rauch-Tung-Striebel smoother for x_t = phi x_{t-1} + N(0,q), y_t = x_t + N(0,r)."""
    T = len(y)
    mf, pf, mp, pp = np.zeros(T), np.zeros(T), np.zeros(T), np.zeros(T)
    for t in range(T):
        mp[t], pp[t] = (m0, p0) if t == 0 else (phi * mf[t - 1], phi**2 * pf[t - 1] + q)
        if np.isnan(y[t]):
            mf[t], pf[t] = mp[t], pp[t]
        else:
            k = pp[t] / (pp[t] + r)
            mf[t], pf[t] = mp[t] + k * (y[t] - mp[t]), (1 - k) * pp[t]
    ms, ps = mf.copy(), pf.copy()
    for t in range(T - 2, -1, -1):
        g = pf[t] * phi / pp[t + 1]
        ms[t] = mf[t] + g * (ms[t + 1] - mp[t + 1])
        ps[t] = pf[t] + g**2 * (ps[t + 1] - pp[t + 1])
    return ms, ps


def test_state_space_chain_matches_rts_smoother():
    rng = np.random.default_rng(3)
    T, phi, q, r, m0, p0 = 200, 0.95, 0.3, 0.5, 1.0, 4.0
    y = rng.normal(size=T).cumsum() * 0.3
    y[rng.random(T) < 0.3] = np.nan
    m = gdag.Model("local_level")
    time = m.plate("time", T)
    offset = np.zeros(T)
    offset[0] = m0
    sd = np.full(T, np.sqrt(q))
    sd[0] = np.sqrt(p0)
    x = m.normal("x", mean=lambda x: offset + phi * x.lag(1), sd=sd, plate=time)
    m.normal("y", mean=x, sd=np.sqrt(r), plate=time)
    post = m.posterior({"y": y})
    ms, ps = rts_smoother(y, phi, q, r, m0, p0)
    np.testing.assert_allclose(post.mean("x"), ms, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(post.var("x"), ps, rtol=1e-9)


def test_samples_match_exact_moments():
    m, x, *_ = romcom(n_friends=4, seed=1)
    post = m.posterior({"X": x[:-3].tolist() + [np.nan] * 3})
    draws = post.sample(40000, seed=11)
    R_i = draws["R_i"]
    assert R_i.shape == (40000, 4)
    sd = post.sd("R_i")
    # 40000 draws: the sample mean's error is sd/200; 6 such errors is a loose but failing-when-wrong bound
    np.testing.assert_allclose(R_i.mean(axis=0), post.mean("R_i"), atol=6 * sd.max() / 200)
    np.testing.assert_allclose(np.cov(R_i.T), post.cov("R_i"), atol=0.05 * sd.max() ** 2)
    np.testing.assert_array_equal(draws["X"][:, :-3], np.broadcast_to(x[:-3], (40000, len(x) - 3)))


def test_deterministic_node_is_its_mean():
    m = gdag.Model()
    a = m.normal("a", mean=1.0, sd=2.0)
    b = m.normal("b", mean=2 * a + 1, sd=0)
    m.normal("y", mean=b, sd=1.0)
    post = m.posterior({"y": 4.0})
    # a | y: y = 2a + 1 + e, prior a ~ N(1, 4)
    prec = 1 / 4 + 4 / 1
    mean_a = (1 / 4 * 1 + 2 * (4.0 - 1)) / prec
    assert post.mean(a) == pytest.approx(mean_a)
    assert post.mean(b) == pytest.approx(2 * mean_a + 1)
    assert post.var(b) == pytest.approx(4 / prec)
    assert post.cov(a, b)[0, 0] == pytest.approx(2 / prec)


def test_querying_does_not_mutate_model_or_earlier_posteriors():
    m, x, *_ = romcom()
    first = m.posterior({"X": x})
    before = (first.mean("R_i").copy(), first.var("R_i").copy(), first.log_evidence)
    second = m.posterior({"X": x + 1.0})
    m.normal("extra", mean=m.nodes["R"], sd=1.0)
    np.testing.assert_array_equal(first.mean("R_i"), before[0])
    np.testing.assert_array_equal(first.var("R_i"), before[1])
    assert first.log_evidence == before[2]
    assert not np.allclose(second.mean("R_i"), before[0])
    with pytest.raises(gdag.DataError, match="extra"):
        first.mean("extra")
