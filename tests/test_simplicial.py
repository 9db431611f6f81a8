"""Patterns that do not fill in: which orders are found, and gdag's own factor of them against dense algebra.

References: ``np.linalg`` on small dense matrices.  Whole models that take
this path (chains, trees, nested models) are checked against the dense
oracle and the Kalman smoother in test_posterior.py and test_accuracy.py.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from gdag.linalg import factor
from gdag.linalg.forest import ForestAnalysis
from gdag.linalg.ordering import zero_fill_order
from gdag.linalg.selinv import selected_inverse_ldl
from gdag.linalg.simplicial import ZeroFillAnalysis, is_closed


def lower_of(dense):
    return sp.tril(sp.csc_matrix(dense)).tocsc()


def spd_on(edges, n, seed):
    """A random diagonally dominant symmetric matrix with the given off-diagonal pattern."""
    rng = np.random.default_rng(seed)
    Q = np.zeros((n, n))
    for i, j in edges:
        Q[i, j] = Q[j, i] = rng.uniform(-1, 1)
    Q[np.diag_indices(n)] = np.abs(Q).sum(axis=1) + rng.uniform(0.1, 2.0, n)
    return Q


def chain_with_leaves(T, leaves):
    """x_0 - x_1 - ... - x_{T-1}, and a leaf y_t (after all x) on each t in ``leaves``: a state-space posterior."""
    edges = [(t + 1, t) for t in range(T - 1)] + [(T + k, t) for k, t in enumerate(leaves)]
    return edges, T + len(leaves)


def band(n, width):
    return [(i, j) for j in range(n) for i in range(j + 1, min(n, j + width + 1))]


def test_orders_found_exactly():
    # a chain, and a band (an AR(2) prior), fill nothing in their own order
    for edges, n in [(band(30, 1), 30), (band(30, 2), 30)]:
        found = zero_fill_order(lower_of(spd_on(edges, n, 0)))
        assert found is not None and found.reorder is None
    # a chain whose leaves come last needs the reverse order (leaves first): a forest, found without a permuted copy
    edges, n = chain_with_leaves(20, [0, 3, 4, 11, 19])
    found = zero_fill_order(lower_of(spd_on(edges, n, 1)))
    assert found is not None and found.forest is not None
    np.testing.assert_array_equal(found.forest.order, np.arange(n)[::-1])
    # a band whose extra variables come last (not a forest) takes the reverse order's permuted pattern
    edges = band(12, 2) + [(12, 0), (13, 5)]
    found = zero_fill_order(lower_of(spd_on(edges, 14, 3)))
    assert found is not None and found.forest is None
    np.testing.assert_array_equal(found.reorder.perm, np.arange(14)[::-1])
    # a cycle fills in whatever the order
    cycle = band(12, 1) + [(11, 0)]
    assert zero_fill_order(lower_of(spd_on(cycle, 12, 2))) is None


def test_closed_pattern_check_against_counted_fill():
    rng = np.random.default_rng(3)
    for seed in range(40):
        n = int(rng.integers(2, 12))
        edges = [(i, j) for j in range(n) for i in range(j + 1, n) if rng.random() < 0.3]
        Q = spd_on(edges, n, seed)
        L = np.linalg.cholesky(Q)
        closed = np.count_nonzero(np.abs(L) > 0) == np.count_nonzero(np.tril(Q))
        lower = lower_of(Q)
        assert is_closed(lower.indptr, lower.indices) == closed


CASES = {"tree, parents first": ForestAnalysis, "chain with leaves": ForestAnalysis, "chain": ForestAnalysis,
         "star, hub in the middle": ForestAnalysis, "band": ZeroFillAnalysis}


@pytest.mark.parametrize("case", list(CASES))
def test_own_factor_against_dense(case):
    if case == "tree, parents first":
        edges, n = [(1, 0), (2, 0), (4, 3), (5, 3), (6, 5), (7, 2)], 8
        Q = spd_on(edges, n, 4)
        Q = Q[::-1][:, ::-1]  # parents first, so that the reverse order is the one without fill
    elif case == "chain with leaves":
        edges, n = chain_with_leaves(15, [1, 2, 7, 14])
        Q = spd_on(edges, n, 5)
    elif case == "chain":
        n = 20
        Q = spd_on(band(n, 1), n, 9)
    elif case == "star, hub in the middle":  # neither order is a forest's; the static degree order is
        n = 11
        Q = spd_on([(max(i, 5), min(i, 5)) for i in range(n) if i != 5], n, 10)
    else:
        n = 25
        Q = spd_on(band(n, 3), n, 6)
    lower = lower_of(Q)
    analysis = factor.analyze(lower)
    assert isinstance(analysis.symbolic, CASES[case])
    fac = factor.CholeskyFactor(analysis, lower, lambda k: [f"v{int(i)}" for i in k])
    rng = np.random.default_rng(7)
    inverse = np.linalg.inv(Q)
    for b in (rng.normal(size=n), rng.normal(size=(n, 3)), rng.normal(size=(n, 12))):
        np.testing.assert_allclose(fac.solve(b), np.linalg.solve(Q, b), rtol=1e-12, atol=1e-13)
    assert fac.logdet() == pytest.approx(np.linalg.slogdet(Q)[1], rel=1e-13)
    np.testing.assert_allclose(fac.inverse_diagonal(), np.diag(inverse), rtol=1e-12)
    i, j = np.nonzero(np.tril(Q, -1))
    np.testing.assert_allclose(fac.covariances(i, j), inverse[i, j], rtol=1e-11, atol=1e-14)
    # a forest's sweeps do the general kernels' operations in the same order: the same bits
    p = fac.permutation
    moved = lower_of(Q[np.ix_(p, p)])
    general = ZeroFillAnalysis(moved.indptr, moved.indices).copy()
    general.cholesky_inplace(moved)
    np.testing.assert_array_equal(general.D(), fac._factor.D())
    np.testing.assert_array_equal(general.L().data, fac.L().data)
    np.testing.assert_array_equal(general.selected_inverse().data, fac.selected_inverse().data)
    np.testing.assert_array_equal(selected_inverse_ldl(moved.indptr, moved.indices, general._data),
                                  general.selected_inverse().data)
    # L is a Cholesky factor of the permuted matrix; half solves and draws use it
    L = fac.L().toarray()
    np.testing.assert_allclose(L @ L.T, Q[np.ix_(p, p)], rtol=1e-12, atol=1e-13)
    B = rng.normal(size=(n, 2))
    half = fac.half_solve(B)
    np.testing.assert_allclose(np.sum(half**2, axis=0), np.einsum("ij,ij->j", B, inverse @ B), rtol=1e-12)
    X = fac.sample(np.eye(n))
    np.testing.assert_allclose(X @ X.T, inverse, rtol=1e-11, atol=1e-13)
    # refactoring new values on the same pattern
    Q2 = Q * 2.0
    fac.refactor_inplace(lower_of(Q2))
    np.testing.assert_allclose(fac.inverse_diagonal(), np.diag(inverse) / 2.0, rtol=1e-12)


def test_own_factor_names_the_variable_whose_pivot_fails():
    n = 6
    Q = spd_on(band(n, 1), n, 8)
    Q[3, 3] = -1.0
    lower = lower_of(Q)
    with pytest.raises(Exception, match="`v3` is not identified"):
        factor.CholeskyFactor(factor.analyze(lower), lower, lambda k: [f"v{int(i)}" for i in k])
