"""Many queries, one model: observed subsets sharing one symbolic analysis (padded mode).

The padded mode (gdag.pattern.PaddedConditioning, gdag.linalg.factor.PaddedFactor)
factors ``Q' = [[Q_UU, 0], [0, I]]`` with the analysis of the all-unobserved
pattern.  Its answers must equal the per-mask mode's (up to rounding: another
elimination order) and the dense oracle's, for any observed subset.
"""

import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sksparse import cholmod

import gdag
from gdag import cache
from gdag.data import data_vector, parameter_vector
from gdag.linalg import factor
from gdag.pattern import Conditioning, PaddedConditioning
from gdag.posterior import Posterior

from reference import DensePosterior, assert_close, build_gdag, dense_joint, observe, observe_some, random_spec, sample_truth

RTOL = 1e-9


# Internals: m.posterior() picks one mode by itself (see "routing and the cache" below), so to
# compare the two modes on the same query these helpers build each one directly.


def padded_posterior(m, data, params=None):
    """The posterior of ``data`` in padded mode, through the model's shared analysis, whatever the routing."""
    cm = m._queries.compiled(m.spec())
    x, observed = data_vector(m.spec(), cm, data)
    padded = PaddedConditioning(m._queries.shared_conditioning(cm), observed)
    return Posterior(cm, padded, parameter_vector(m.spec(), cm, params or {}), x)


def both_modes(m, data, params=None):
    """The posterior of ``data`` per mask and padded (through the model's shared analysis)."""
    cm = m._queries.compiled(m.spec())
    x, observed = data_vector(m.spec(), cm, data)
    per_mask = Posterior(cm, Conditioning(cm, observed), parameter_vector(m.spec(), cm, params or {}), x)
    return per_mask, padded_posterior(m, data, params)


@pytest.mark.parametrize("seed", range(25))
def test_padded_mode_matches_per_mask_and_dense_on_many_subsets(seed):
    rng = np.random.default_rng(1000 + seed)
    spec = random_spec(rng)
    m = build_gdag(spec)
    mu, Sigma, offsets, d = dense_joint(spec)
    truth = sample_truth(mu, Sigma, rng)
    scale = 1.0 + np.max(np.abs(truth))
    vscale = 1.0 + np.max(np.diag(Sigma))
    seen_any = 0
    for fraction in (0.2, 0.5, 0.8, 1.0, 0.5):
        data, x = observe(spec, d, offsets, truth, rng, fraction)
        if not data:
            continue
        seen_any += 1
        dense = DensePosterior(spec, x)
        per_mask, padded = both_modes(m, data)
        # internals: Q_UU and b cut from the padded assembly are bitwise the per-mask ones
        q1, q2 = per_mask._system.Q, padded._system.Q
        np.testing.assert_array_equal(q2.indptr, q1.indptr)
        np.testing.assert_array_equal(q2.indices, q1.indices)
        np.testing.assert_array_equal(q2.data, q1.data)
        np.testing.assert_array_equal(padded._system.b, per_mask._system.b)
        for fam in spec.families:
            assert_close(padded.mean(fam.name), per_mask.mean(fam.name), scale, RTOL)
            assert_close(padded.mean(fam.name), dense.mean(fam.name), scale, RTOL)
            assert_close(padded.var(fam.name), per_mask.var(fam.name), vscale, RTOL)
            assert_close(padded.var(fam.name), dense.var(fam.name), vscale, RTOL)
        a, b = spec.families[0].name, spec.families[-1].name
        assert_close(padded.cov(a, b), per_mask.cov(a, b), vscale, RTOL)
        assert_close(padded.cov(a, b), dense.cov(a, b), vscale, RTOL)
        assert padded.log_evidence == pytest.approx(per_mask.log_evidence, rel=RTOL, abs=RTOL)
        assert padded.log_evidence == pytest.approx(dense.log_evidence, rel=RTOL, abs=RTOL)
        assert padded.variance_error_bound() == pytest.approx(per_mask.variance_error_bound(), rel=0.5)
    assert seen_any


def test_padded_factor_maps_standard_normals_to_the_posterior_covariance():
    # a random model leaves nothing stochastic unobserved now and then: no factor to check
    factored = [seed for seed in range(10) if padded_factor_identities_hold(seed)]
    assert len(factored) >= 7, factored  # 8 of these 10 seeds have a factor


def padded_factor_identities_hold(seed) -> bool:
    """sample(I) = X with X X^T = Q_UU^{-1}, and half_solve's squared norms: exact identities.

    False when the random case has no factor (every stochastic entry observed).
    """
    rng = np.random.default_rng(2000 + seed)
    spec = random_spec(rng)
    m = build_gdag(spec)
    data, *_ = observe_some(spec, rng, 0.5)
    _, padded = both_modes(m, data)
    fac = padded._factor  # internals: the padded factor's own kernels, against the inverse of its Q_UU
    if fac is None:
        return False
    Q = padded._system.Q.toarray()
    Q = Q + np.tril(Q, -1).T
    inverse = np.linalg.inv(Q)
    X = fac.sample(np.eye(fac.n))
    np.testing.assert_allclose(X @ X.T, inverse, rtol=1e-9, atol=1e-9 * np.max(np.abs(inverse)))
    B = rng.normal(size=(fac.n, 3))
    kept = B.copy()
    fac.sample(B)
    half = fac.half_solve(B)
    np.testing.assert_array_equal(B, kept)  # the in-place kernels work on copies
    np.testing.assert_allclose(np.sum(half**2, axis=0), np.einsum("ij,ij->j", B, inverse @ B), rtol=1e-9)
    np.testing.assert_allclose(fac.solve(B), inverse @ B, rtol=1e-9, atol=1e-9 * np.max(np.abs(inverse @ B)))
    np.testing.assert_allclose(fac.solve(B[:, 0]), inverse @ B[:, 0], rtol=1e-9, atol=1e-9 * np.max(np.abs(inverse)))
    assert fac.logdet() == pytest.approx(np.linalg.slogdet(Q)[1], rel=1e-10, abs=1e-10)
    return True


def test_sample_moments_in_padded_mode():
    rng = np.random.default_rng(3)
    spec = random_spec(rng, max_families=5)
    m = build_gdag(spec)
    data, x, *_ = observe_some(spec, rng, 0.5)
    dense = DensePosterior(spec, x)
    _, padded = both_modes(m, data)
    n = 40_000
    draws = padded.sample(n, seed=7)
    for fam in spec.families:
        mean, sd = dense.mean(fam.name), np.sqrt(dense.var(fam.name))
        got = draws[fam.name]
        assert got.shape == (n, fam.size)
        slack = 1e-9 * (1.0 + np.abs(mean))  # entries with variance 0 (observed, or sd 0) up to rounding
        assert np.all(np.abs(got.mean(axis=0) - mean) <= 5 * sd / np.sqrt(n) + slack)
        assert np.all(np.abs(got.var(axis=0) - sd**2) <= 6 * sd**2 * np.sqrt(2 / n) + slack)
    again = padded.sample(n, seed=7)
    for name in draws:
        np.testing.assert_array_equal(draws[name], again[name])


@pytest.mark.parametrize("mode", ["simplicial", "supernodal"])
def test_padded_factor_against_dense_in_both_cholmod_modes(mode):
    # a crossed pattern with a dense block, so that supernodal mode has real supernodes
    rng = np.random.default_rng(4)
    n_a, n_b, n_obs = 60, 40, 900
    n = n_a + n_b + n_obs
    rows = np.concatenate([np.arange(n), n_a + n_b + np.arange(n_obs), n_a + n_b + np.arange(n_obs)])
    cols = np.concatenate([np.arange(n), rng.integers(0, n_a, n_obs), n_a + rng.integers(0, n_b, n_obs)])
    vals = np.concatenate([np.ones(n), -rng.normal(size=2 * n_obs)])
    A = sp.csc_matrix((vals, (rows, cols)), shape=(n, n))
    w = rng.uniform(0.5, 2.0, size=n)
    full = (A.T @ sp.diags(w) @ A).tocsc()
    symbolic = factor.Analysis(cholmod.analyze(sp.tril(full).tocsc(), mode=mode))
    observed = rng.random(n) < 0.6
    keep = np.flatnonzero(~observed)
    A_pad = A.toarray() * ~observed  # observed columns zeroed
    Q_pad = A_pad.T @ (w[:, None] * A_pad) + np.diag(observed.astype(float))
    lower = sp.tril(full).tocsc()  # Q' on Q_RR's whole pattern: explicit zeros where O is involved
    lower.data[:] = Q_pad[lower.indices, np.repeat(np.arange(n), np.diff(lower.indptr))]
    fac = factor.PaddedFactor(symbolic, lower, keep, lambda p: [f"r{int(i)}" for i in p])
    Q_UU = full[keep][:, keep].toarray()
    inverse = np.linalg.inv(Q_UU)
    p = fac.permutation
    L = fac.L().toarray()
    np.testing.assert_allclose(L @ L.T, Q_UU[np.ix_(p, p)], rtol=1e-12, atol=1e-12 * np.max(Q_UU))
    np.testing.assert_allclose(fac.inverse_diagonal(), np.diag(inverse), rtol=1e-10)
    Z = fac.selected_inverse().tocoo()
    np.testing.assert_allclose(Z.data, inverse[np.ix_(p, p)][Z.row, Z.col], rtol=1e-9, atol=1e-12)
    b = rng.normal(size=keep.shape[0])
    np.testing.assert_allclose(fac.solve(b), inverse @ b, rtol=1e-9, atol=1e-12)
    assert fac.logdet() == pytest.approx(np.linalg.slogdet(Q_UU)[1], rel=1e-12)


@pytest.mark.parametrize("mode", ["simplicial", "supernodal"])
def test_cholmod_refactors_a_matrix_whose_pattern_is_a_subset_of_the_analysed_one(mode):
    # the padded mode keeps Q_RR's full pattern (explicit zeros), but CHOLMOD also accepts a subset
    rng = np.random.default_rng(5)
    for _ in range(20):
        n = int(rng.integers(5, 200))
        X = sp.random(n, n, density=min(1.0, 5.0 / n), random_state=int(rng.integers(2**31)), format="csc")
        Q = (X @ X.T + n * sp.eye(n)).tocsc()
        symbolic = cholmod.analyze(sp.tril(Q).tocsc(), mode=mode)
        off = sp.tril(Q, -1).tocoo()
        kept = rng.random(off.nnz) < 0.5
        half = sp.coo_matrix((off.data[kept], (off.row[kept], off.col[kept])), shape=(n, n))
        M = (half + half.T + sp.diags(Q.diagonal())).tocsc()
        lower = sp.tril(M).tocsc()
        lower.eliminate_zeros()
        refactored = symbolic.copy()
        refactored.cholesky_inplace(lower)
        fresh = cholmod.cholesky(lower, mode=mode)
        b = rng.normal(size=n)
        np.testing.assert_allclose(refactored.solve_A(b), np.linalg.solve(M.toarray(), b), rtol=1e-10)
        np.testing.assert_allclose(refactored.solve_A(b), fresh.solve_A(b), rtol=1e-12)
        assert refactored.logdet() == pytest.approx(fresh.logdet(), rel=1e-12)


# ------------------------------------------------------ routing and the cache


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


def test_queries_share_one_analysis_after_the_first(monkeypatch):
    m, y = crossed_model()
    calls = []
    real = factor.analyze
    monkeypatch.setattr(factor, "analyze", lambda Q: calls.append(Q.shape[0]) or real(Q))
    rng = np.random.default_rng(0)
    posts, modes = [], []
    for _ in range(30):
        posts.append(m.posterior({"y": masked(y, rng, 0.8)}))
        modes.append(last_mode(m))
    assert modes[0] == "per mask"  # the first pattern
    assert set(modes[1:]) == {"padded"}
    assert len(calls) == 2  # the first pattern's, then the shared one: none per later query
    # internals from here on: the padded queries hold the shared conditioning's analysis itself,
    cm = m._queries.compiled(m.spec())
    shared = m._queries.shared_conditioning(cm)
    assert all(p._cond.analysis() is shared.analysis() for p in posts[1:])
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
    assert modes[:2] == ["per mask", "padded"]


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
        m.posterior({"X": masked(x, rng, 0.8)})
        assert last_mode(m) == "per mask"


def test_mostly_observed_queries_stay_per_mask(monkeypatch):
    m, y = crossed_model()
    rng = np.random.default_rng(3)
    m.posterior({"y": masked(y, rng, 0.5)})
    monkeypatch.setattr(cache, "SHARED_FRACTION", 0.9)
    m.posterior({"y": masked(y, rng, 0.5)})
    assert last_mode(m) == "per mask"
    monkeypatch.setattr(cache, "SHARED_FRACTION", 0.1)
    m.posterior({"y": masked(y, rng, 0.5)})
    assert last_mode(m) == "padded"


def test_a_new_declaration_starts_over():
    m, y = crossed_model()
    rng = np.random.default_rng(4)
    m.posterior({"y": masked(y, rng, 0.8)})
    m.posterior({"y": masked(y, rng, 0.8)})
    assert last_mode(m) == "padded"
    m.normal("extra", sd=1.0)
    m.posterior({"y": masked(y, rng, 0.8)})
    assert last_mode(m) == "per mask"


def test_earlier_posteriors_are_unaffected_by_later_queries():
    m, y = crossed_model()
    rng = np.random.default_rng(5)
    m.posterior({"y": masked(y, rng, 0.8)})
    data = {"y": masked(y, rng, 0.7)}
    post = m.posterior(data, {"sigma": 0.6})
    assert last_mode(m) == "padded"
    mean_before = post.mean("a")
    draws_before = post.sample(3, seed=1)
    for _ in range(10):  # other patterns and parameter values through the same shared analysis
        other = m.posterior({"y": masked(y, rng, 0.6)}, {"sigma": 1.3})
        other.var("a")
        other.sample(2, seed=0)
    reference, _ = both_modes(m, data, {"sigma": 0.6})
    np.testing.assert_array_equal(post.mean("a"), mean_before)
    np.testing.assert_allclose(post.var("a"), reference.var("a"), rtol=1e-10)  # computed only now
    np.testing.assert_allclose(post.cov("a", "b"), reference.cov("a", "b"), rtol=1e-9, atol=1e-12)
    assert post.log_evidence == pytest.approx(reference.log_evidence, rel=1e-12)
    draws_after = post.sample(3, seed=1)
    for name in draws_before:
        np.testing.assert_array_equal(draws_after[name], draws_before[name])


def test_describe_and_the_memory_check_report_the_padded_system(monkeypatch):
    m, y = crossed_model()
    rng = np.random.default_rng(6)
    m.posterior({"y": masked(y, rng, 0.8)})
    data = {"y": masked(y, rng, 0.8)}
    m.posterior(data)
    n_unobserved = 30 + 20 + int(np.isnan(data["y"]).sum())  # a, b and the missing y
    assert f"{n_unobserved} unobserved; the padded Q' (all 450 stochastic variables, shared analysis)" in m.describe()
    monkeypatch.setattr(gdag.resources, "available_memory", lambda: 1000.0)
    with pytest.raises(gdag.ModelError, match=rf"nonzeros for {n_unobserved} unobserved variables"):
        m.posterior(data)


# ------------------------------------------------- messages name U's variables


def guarded_model(prior_sd, child_sd, n_children):
    """An observed family, then ``mu`` with children ``u``, then an unobserved family ``w``.

    All of ``z`` but one entry is observed, so positions over R and over U
    differ by 39 from ``mu`` on: a label looked up in the wrong index set
    would name an entry of ``w``.
    """
    m = gdag.Model("guarded")
    m.normal("z", sd=1.0, plate=m.plate("Z", 40))
    mu = m.normal("mu", sd=prior_sd)
    m.normal("u", mean=mu, sd=child_sd, plate=m.plate("g", n_children))
    m.normal("w", sd=1.0, plate=m.plate("W", 60))
    return m


def test_not_identified_names_the_variable_in_padded_mode():
    m = guarded_model(1e9, 1.0, 16)
    z = np.arange(40.0)
    z[3] = np.nan
    with pytest.raises(gdag.NotIdentifiedError, match=r"The posterior is not proper: `(mu|u\[g=\d+\])` is not identified"):
        padded_posterior(m, {"z": z})


def test_near_singular_model_names_its_node_in_padded_mode():
    m = guarded_model(1e12, 1e-12, 3)
    z = np.arange(40.0)
    z[5] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gdag.AccuracyWarning)
        with pytest.raises(gdag.NotIdentifiedError, match=r"`(mu|u\[g=\d\])`"):
            padded_posterior(m, {"z": z}).var("u")


def test_accuracy_warning_names_the_worst_variable_in_padded_mode():
    m = guarded_model(1e4, 1.0, 4)
    z = np.arange(40.0)
    z[7] = np.nan
    post = padded_posterior(m, {"z": z})
    with pytest.warns(gdag.AccuracyWarning, match=r"worst around `(mu|u\[g=\d\])`"):
        v = post.var("mu")
    assert v == pytest.approx(1e8, rel=1e-6)


def test_padded_factor_failure_names_the_padded_position_through_the_permutation():
    # U = {0, 2, 3} of R = {0..4}; the U block is singular at R position 3's pivot only
    pattern = sp.csc_matrix(np.tril(np.ones((5, 5))))
    symbolic = factor.Analysis(cholmod.analyze(pattern, mode="simplicial"))
    lower = pattern.copy()
    lower.data[:] = 0.0  # explicit zeros off the diagonal
    lower.setdiag([2.0, 1.0, 3.0, 0.0, 1.0])
    with pytest.raises(gdag.NotIdentifiedError, match=re.escape("`r3` is not identified")):
        factor.PaddedFactor(symbolic, lower, np.array([0, 2, 3]), lambda p: [f"r{int(i)}" for i in p])
