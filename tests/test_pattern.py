"""Observed patterns: the padded mode against the per-mask mode and the dense oracle.

The padded mode (gdag.pattern.PaddedConditioning, gdag.linalg.factor.PaddedFactor)
factors ``Q' = [[Q_UU, 0], [0, I]]`` with the analysis of the all-unobserved
pattern, so that many queries share one symbolic analysis.  Its answers must
equal the per-mask mode's (up to rounding: another elimination order) and the
dense oracle's, for any observed subset.  Which mode a query takes is
test_cache.py's subject; the padded factor against dense matrices is test_factor.py's.
"""

import warnings

import numpy as np
import pytest

import gdag
from gdag.data import data_vector, parameter_vector
from gdag.linalg import forest
from gdag.pattern import Conditioning, PaddedConditioning
from gdag.posterior import Posterior

from reference import DensePosterior, assert_close, build_gdag, dense_joint, observe, observe_some, random_spec, sample_truth

RTOL = 1e-9


# Internals: m.posterior() picks one mode by itself (see test_cache.py), so to
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


def _forest_models():
    """Chains, trees and non-forests, each as a Model (all unobserved)."""
    chain = gdag.Model("chain")
    x = chain.normal("x", mean=lambda x: 0.9 * x.lag(1), sd=1.0, plate=chain.plate("t", 50))
    chain.normal("y", mean=x, sd=0.5, plate=chain.plate("t2", 50))
    tree = gdag.Model("tree")
    parent = np.array([0, 0, 0, 1, 1, 2, 5, 5])
    tree.normal("v", mean=lambda v: v.take(parent, where=np.arange(8) > 0), sd=1.0, plate=tree.plate("n", 8))
    nested = gdag.Model("nested")
    R = nested.normal("R", 0.0, 1.0)
    nested.normal("R_i", R, 0.5, plate=nested.plate("f", 30))
    backwards = gdag.Model("backwards")  # one parent each, but a forest in neither order
    up, has = np.array([0, 0, 4, 0, 3, 0]), np.array([False, True, True, False, True, True])
    backwards.normal("w", mean=lambda w: w.take(up, where=has), sd=1.0, plate=backwards.plate("k", 6))
    two = gdag.Model("two_parents")
    u = two.normal("u", 0.0, 1.0, plate=two.plate("g", 4))
    two.normal("z", u[np.array([0, 1, 2, 3])] + u[np.array([1, 2, 3, 0])], 1.0, plate=two.plate("r", 4))
    return [chain, tree, nested, backwards, two]


@pytest.mark.parametrize("index", range(5))
def test_forest_sizes_without_a_gram_structure_match_the_analysis(index):
    """Conditioning.factor_size of an all-unobserved forest (from the edges alone) equals the analysis' own."""
    m = _forest_models()[index]
    cm = m._queries.compiled(m.spec())
    nothing = np.zeros(cm.n, dtype=bool)
    quick, full = Conditioning(cm, nothing), Conditioning(cm, nothing)
    full.gram  # noqa: B018 (internals: built first, the size comes from the analysis)
    size = quick.factor_size()
    assert size == full.factor_size()
    assert ("_gram" in quick.__dict__) == (index >= 3)  # internals: the shortcut took the forests only
    if index == 3:  # one parent each: the shortcut looked, and found no forest
        assert forest.skeleton_forest_edges(cm.n, cm.B_rows, cm.B_cols) is None
