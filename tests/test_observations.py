"""Observed leaf families summed over their rows (gdag.observations), against the dense oracle.

The reduction applies on its own only to large families (MIN_ROWS); here it is
forced on every eligible family, so random small models exercise it.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import gdag
from gdag import observations

from reference import DensePosterior, assert_matches_dense, build_gdag, dense_joint, random_spec, sample_truth


@pytest.fixture
def always_reduce(monkeypatch):
    monkeypatch.setattr(observations, "MIN_ROWS", 0)


def leaves_of(spec):
    """Families of ``spec`` that no other family reads (the candidates for the reduction)."""
    read = {source for fam in spec.families for kind, source, *_ in fam.terms if kind not in ("param", "lag")}
    return [fam for fam in spec.families if fam.name not in read]


def observed_leaves_and_some(spec, rng, fraction):
    """Data: every leaf family observed in full (where its sds are positive), the rest at random."""
    mu, Sigma, offsets, d = dense_joint(spec)
    truth = sample_truth(mu, Sigma, rng)
    leaves = {fam.name for fam in leaves_of(spec)}
    data, x = {}, np.full(truth.shape[0], np.nan)
    for fam in spec.families:
        o = offsets[fam.name]
        stochastic = d[o : o + fam.size] > 0
        seen = stochastic & ((fam.name in leaves) | (rng.random(fam.size) < fraction))
        if seen.any():
            vals = np.where(seen, truth[o : o + fam.size], np.nan)
            data[fam.name] = float(vals[0]) if fam.scalar else vals
            x[o : o + fam.size] = vals
    return data, x


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), fraction=st.sampled_from([0.0, 0.3, 0.7]))
def test_reduced_posterior_matches_dense_conditioning(seed, fraction):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(observations, "MIN_ROWS", 0)
        rng = np.random.default_rng(seed)
        spec = random_spec(rng)
        data, x = observed_leaves_and_some(spec, rng, fraction)
        dense = DensePosterior(spec, x)
        post = build_gdag(spec).posterior(data)
        scale, vscale = 1.0 + np.max(np.abs(dense.full_mean)), 1.0 + np.max(np.diag(dense.prior_cov))
        assert_matches_dense(post, dense, spec.families, scale, vscale)
        assert post.log_evidence == pytest.approx(dense.log_evidence, rel=1e-9, abs=1e-9)
        first, last = spec.families[0].name, spec.families[-1].name
        np.testing.assert_allclose(np.atleast_2d(post.cov(first, last)), np.atleast_2d(dense.cov(first, last)),
                                   atol=1e-9 * vscale)


def test_random_models_do_reduce(always_reduce):
    """The random models above do take the reduced path (else the test above tests nothing new)."""
    reduced = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        spec = random_spec(rng)
        data, _ = observed_leaves_and_some(spec, rng, 0.3)
        post = build_gdag(spec).posterior(data)
        reduced += bool(post._cond.leaf_data)  # internals: which conditioning answered
    assert reduced >= 20


def romcom(n_friends, n_ratings, rng):
    who = rng.integers(0, n_friends, size=n_ratings)
    s = rng.uniform(0.3, 1.5, size=n_ratings)
    x = rng.normal(3.0, 1.0, size=n_ratings)
    m = gdag.Model("romcom")
    friend, rating = m.plate("friend", n_friends), m.plate("rating", n_ratings)
    R = m.normal("R", mean=3.0, sd=1.0)
    R_i = m.normal("R_i", mean=R, sd=0.5, plate=friend)
    m.normal("X", mean=R_i[who], sd=s, plate=rating)
    return m, who, s, x


def test_romcom_at_scale_is_the_partial_pooling_formula():
    """Large enough to reduce by default: each R_i given R is the seed's precision-weighted average."""
    rng = np.random.default_rng(0)
    m, who, s, x = romcom(2_000, 10_000, rng)
    post = m.posterior({"X": x})
    assert post._cond.leaf_data  # internals: the reduced path answered
    R = post.mean("R")
    precision = 1 / 0.25 + np.bincount(who, weights=1 / s**2, minlength=2_000)
    pooled = (R / 0.25 + np.bincount(who, weights=x / s**2, minlength=2_000)) / precision
    # given the data, E[R_i] = E[E[R_i | R, data]] and that inner mean is affine in R
    np.testing.assert_allclose(post.mean("R_i"), pooled, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(post.mean("X"), x)
    np.testing.assert_array_equal(post.var("X"), np.zeros(x.size))
    draws = post.sample(3, seed=1)
    np.testing.assert_array_equal(draws["X"], np.tile(x, (3, 1)))


def test_draws_of_a_summed_family_are_a_read_only_view_of_its_data():
    """1,000 draws of 10,000 ratings had been 80 MB of copies of the data (1M ratings, 200 draws: 1.7 GB)."""
    m, who, s, x = romcom(2_000, 10_000, np.random.default_rng(1))
    post = m.posterior({"X": x})
    draws = post.sample(1000, seed=0)
    assert draws["X"].shape == (1000, x.size) and draws["X"].strides[0] == 0 and not draws["X"].flags.writeable
    np.testing.assert_array_equal(draws["X"][-1], x)
    evidence, mean = post.log_evidence, post.mean("X")
    x[:] = 0.0  # the caller's array changed later: the posterior keeps its own copy (it had read the caller's)
    assert draws["X"][0, 0] != 0.0 and draws["R_i"].shape == (1000, 2_000)
    assert post.log_evidence == evidence and np.array_equal(post.mean("X"), mean)


def test_reduced_and_general_paths_agree_on_a_crossed_design(monkeypatch):
    """Rows reading two random effects (InstEval's shape), with a fixed effect and a parameter sd."""
    rng = np.random.default_rng(4)
    n, n_s, n_d = 6_000, 300, 80
    s, dd = rng.integers(0, n_s, n), rng.integers(0, n_d, n)
    x = rng.normal(size=n)

    def model():
        m = gdag.Model("crossed")
        mu = m.param("mu", value=0.3)
        u_s = m.normal("u_s", 0.0, 0.7, plate=m.plate("s", n_s))
        u_d = m.normal("u_d", 0.0, 1.1, plate=m.plate("d", n_d))
        sigma = m.param("sigma", positive=True, value=0.9)
        m.normal("y", mean=mu + u_s[s] + 0.5 * u_d[dd] + 2.0 * x, sd=sigma, plate=m.plate("obs", n))
        return m

    y = rng.normal(size=n)
    reduced = model().posterior({"y": y})
    assert reduced._cond.leaf_data
    monkeypatch.setattr(observations, "MIN_ROWS", 10**9)
    general = model().posterior({"y": y})
    assert not general._cond.leaf_data
    for name in ("u_s", "u_d"):
        np.testing.assert_allclose(reduced.mean(name), general.mean(name), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(reduced.var(name), general.var(name), rtol=1e-10)
    assert reduced.log_evidence == pytest.approx(general.log_evidence, rel=1e-12)
    np.testing.assert_allclose(reduced.cov("u_s", "u_d")[:5, :5], general.cov("u_s", "u_d")[:5, :5],
                               rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000, 5_999])
def test_any_chunking_gives_the_in_memory_answer(chunk_rows):
    rng = np.random.default_rng(2)
    m, who, s, x = romcom(500, 6_000, rng)
    whole = m.posterior({"X": x})
    cond = whole._cond  # internals: the same reduction, summed in other chunks
    chunked = observations.ReducedConditioning(cond.latent, list(cond.leaves), chunk_rows=chunk_rows)
    chunked = chunked.with_data(dict(cond.leaf_data))
    theta = np.zeros(0)
    xl = np.full(cond.cm.n, np.nan)
    a, b = cond.system(theta, xl), chunked.system(theta, xl)
    np.testing.assert_allclose(b.Q.data, a.Q.data, rtol=1e-12)
    np.testing.assert_allclose(b.b, a.b, rtol=1e-12, atol=1e-12)
    again = observations.ReducedConditioning(cond.latent, list(cond.leaves), chunk_rows=chunk_rows)
    same = again.with_data(dict(cond.leaf_data)).system(theta, xl)
    assert np.array_equal(same.Q.data, b.Q.data) and np.array_equal(same.b, b.b)  # same chunking, same bits


def test_leaf_with_observed_parents_and_fixed_effects(always_reduce):
    """Parents partly observed enter the residual; a vector fixed effect enters the constant part."""
    rng = np.random.default_rng(9)
    m = gdag.Model("mixed")
    g = m.plate("g", 6)
    beta = m.param("beta", size=2, value=[0.5, -1.0])
    u = m.normal("u", 1.0, 2.0, plate=g)
    idx = rng.integers(0, 6, 40)
    arm = rng.integers(0, 2, 40)
    m.normal("y", mean=u[idx] + beta[arm], sd=rng.uniform(0.5, 1.0, 40), plate=m.plate("obs", 40))
    u_data = np.array([0.3, np.nan, np.nan, 2.0, np.nan, np.nan])
    data = {"u": u_data, "y": rng.normal(size=40)}
    post = m.posterior(data)
    assert post._cond.leaf_data
    # the oracle: dense conditioning of the same joint
    n = 6 + 40
    B, c, d = np.zeros((n, n)), np.zeros(n), np.zeros(n)
    c[:6], d[:6] = 1.0, 4.0
    B[6 + np.arange(40), idx] = 1.0
    c[6:] = np.array([0.5, -1.0])[arm]
    d[6:] = m.nodes["y"].sd.base ** 2
    A_inv = np.linalg.inv(np.eye(n) - B)
    mu, Sigma = A_inv @ c, A_inv @ np.diag(d) @ A_inv.T
    x = np.concatenate([u_data, data["y"]])
    O = np.flatnonzero(~np.isnan(x))
    U = np.flatnonzero(np.isnan(x))
    K = Sigma[np.ix_(U, O)] @ np.linalg.inv(Sigma[np.ix_(O, O)])
    mean_U = mu[U] + K @ (x[O] - mu[O])
    var_U = np.diag(Sigma[np.ix_(U, U)] - K @ Sigma[np.ix_(O, U)])
    np.testing.assert_allclose(post.mean("u")[U], mean_U, rtol=1e-10)
    np.testing.assert_allclose(post.var("u")[U], var_U, rtol=1e-10)
    S_oo, r = Sigma[np.ix_(O, O)], x[O] - mu[O]
    log_ev = -0.5 * (O.size * np.log(2 * np.pi) + np.linalg.slogdet(S_oo)[1] + r @ np.linalg.solve(S_oo, r))
    assert post.log_evidence == pytest.approx(log_ev, rel=1e-10)


def test_a_leaf_sd_out_of_range_is_named(always_reduce):
    m = gdag.Model("tiny_sd")
    u = m.normal("u", 0.0, 1.0, plate=m.plate("g", 3))
    s = m.param("s", positive=True)
    m.normal("y", mean=u[np.array([0, 1, 2, 2])], sd=s, plate=m.plate("obs", 4))
    with pytest.raises(gdag.ParamError, match=r"`y\[obs=0\]` has variance 0 in double precision"):
        m.posterior({"y": np.ones(4)}, params={"s": 1e-200})


def test_a_leaf_whose_residual_overflows_is_named(always_reduce):
    m = gdag.Model("huge")
    u = m.normal("u", 0.0, 1.0, plate=m.plate("g", 2))
    m.normal("y", mean=u[np.array([0, 1, 1])] + 1e308, sd=1.0, plate=m.plate("obs", 3))
    with pytest.raises(gdag.ModelError, match=r"The mean or data of `y\[obs=2\]` overflow double precision"):
        m.posterior({"y": np.array([1.0, 2.0, -1e308])})


def test_kernel_paths_match_the_joint_system(monkeypatch):
    """The row kernels' variants: one coefficient for all rows or one per row, a term on some rows only,
    a coefficient parameter, a parameter sd per row, a fixed effect, observed parents; against the joint
    system, and chunked."""
    rng = np.random.default_rng(5)
    n, n_g = 300, 12
    g, h = rng.integers(0, n_g, n), rng.integers(0, n_g, n)
    some = np.flatnonzero(rng.random(n) < 0.5)
    design = sp.csr_matrix((rng.uniform(0.5, 2.0, some.size), (some, h[some])), shape=(n, n_g))
    ones = sp.csr_matrix((np.ones(some.size), (some, h[some])), shape=(n, n_g))  # on some rows, one coefficient

    def model(coef):
        m = gdag.Model("kernels")
        u = m.normal("u", 0.5, 1.0, plate=m.plate("g", n_g))
        v = m.normal("v", u, 0.6, plate=m.plate("g2", n_g))
        mean = coef * u[g] + m.param("rho", value=0.7) * v[h] + gdag.dot(design if np.ndim(coef) else ones, v) \
            + m.param("beta", value=0.2)
        m.normal("y", mean=mean, sd=m.param("sds", size=2, positive=True, value=[0.8, 1.3])[g % 2],
                 plate=m.plate("obs", n))
        return m

    y = rng.normal(size=n)
    data = {"y": y, "u": np.where(rng.random(n_g) < 0.3, rng.normal(size=n_g), np.nan)}
    for coef in (1.0, rng.uniform(0.5, 2.0, n)):
        monkeypatch.setattr(observations, "MIN_ROWS", 0)
        reduced = model(coef).posterior(data)
        cond = reduced._cond
        leaf = cond.leaves[0]
        assert cond.leaf_data and leaf.fixed and leaf.sd_theta is not None and leaf.cols[2].min() < 0
        assert (leaf._one_coef is None) == bool(np.ndim(coef))  # internals: both kernel layouts
        monkeypatch.setattr(observations, "MIN_ROWS", 10**9)
        general = model(coef).posterior(data)
        assert not general._cond.leaf_data
        for name in ("u", "v"):
            np.testing.assert_allclose(reduced.mean(name), general.mean(name), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(reduced.var(name), general.var(name), rtol=1e-10)
        assert reduced.log_evidence == pytest.approx(general.log_evidence, rel=1e-12)
        chunked = observations.ReducedConditioning(cond.latent, list(cond.leaves), chunk_rows=7)
        chunked = chunked.with_data(dict(cond.leaf_data))
        one, other = cond.system(reduced._theta, reduced._x), chunked.system(reduced._theta, reduced._x)
        np.testing.assert_allclose(other.Q.data, one.Q.data, rtol=1e-12)
        np.testing.assert_allclose(other.b, one.b, rtol=1e-12, atol=1e-12)
        m_U = reduced._mean_U
        f1, g1 = cond.leaf_residual(reduced._theta, reduced._x, m_U)
        f2, g2 = chunked.leaf_residual(reduced._theta, reduced._x, m_U)
        assert f2 == pytest.approx(f1, rel=1e-12)
        np.testing.assert_allclose(g2, g1, rtol=1e-10, atol=1e-12)
