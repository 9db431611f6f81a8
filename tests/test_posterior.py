"""Posteriors against the dense oracle (tests/reference.py) on random models, and against closed forms."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gdag

from reference import (
    DensePosterior,
    assert_close,
    assert_matches_dense,
    build_gdag,
    kalman_smoother,
    observe_some,
    random_spec,
)

RTOL = 1e-9


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), fraction=st.sampled_from([0.0, 0.3, 0.7, 1.0]))
def test_random_models_match_dense_conditioning(seed, fraction):
    rng = np.random.default_rng(seed)
    spec = random_spec(rng)
    data, x, *_ = observe_some(spec, rng, fraction)
    dense = DensePosterior(spec, x)
    post = build_gdag(spec).posterior(data)
    scale = 1.0 + np.max(np.abs(dense.full_mean))
    vscale = 1.0 + np.max(np.diag(dense.prior_cov))
    assert_matches_dense(post, dense, spec.families, scale, vscale)
    a, b = spec.families[0].name, spec.families[-1].name
    assert_close(post.cov(a, b), dense.cov(a, b), vscale)
    assert post.log_evidence == pytest.approx(dense.log_evidence, rel=RTOL, abs=RTOL)


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
    ms, ps, _ = kalman_smoother(y, phi, q, r, m0, p0)
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


def test_deterministic_variances_from_the_selected_inverse_equal_the_solves(monkeypatch):
    """A node the data do not see that reads a few latent variables (predict's rows): its variance from the
    selected inverse when every pair it reads lies on Q's pattern (nested: school and class), one triangular
    solve per row otherwise (crossed); the two roads agree (user trial: 100k rows to predict took 22 s)."""
    import gdag.posterior as posterior_module
    from gdag.linalg.pairs import diagonal_on_pattern

    rng = np.random.default_rng(0)
    n, S, C = 2000, 20, 200
    cls = rng.integers(0, C, n)
    school, x = cls % S, rng.normal(size=n)
    df = pd.DataFrame({"y": x + rng.normal(size=S)[school] + rng.normal(size=C)[cls] + rng.normal(size=n), "x": x,
                       "school": school, "cls": cls})
    fit = gdag.lmer("y ~ x + (1 | school/cls)", df)
    fast = fit.predict(df.head(300))
    monkeypatch.setattr(posterior_module, "diagonal_on_pattern", lambda *args: None)
    solved = fit.predict(df.head(300))
    np.testing.assert_allclose(fast["sd"].to_numpy(), solved["sd"].to_numpy(), rtol=1e-12)
    np.testing.assert_array_equal(fast["mean"].to_numpy(), solved["mean"].to_numpy())
    # a pair off the pattern (two crossed effects no row of Q joins) is left to the solves
    pattern = sp.csc_matrix(sp.tril(sp.eye(3)))
    M = sp.csr_matrix(np.array([[1.0, 1.0, 0.0]]))
    assert diagonal_on_pattern(M, pattern, lambda a, b: np.ones(a.size)) is None
    assert diagonal_on_pattern(sp.csr_matrix(np.array([[2.0, 0.0, 0.0]])), pattern,
                               lambda a, b: np.ones(a.size)) == pytest.approx([4.0])
