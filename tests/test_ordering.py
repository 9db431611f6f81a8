"""The static fill-reducing ordering: permutations of values, and the choice against CHOLMOD's."""

import numpy as np
import scipy.sparse as sp

from gdag.linalg.factor import analyze
from gdag.linalg.ordering import ACCEPT_FILL, choose_ordering, permutation, static_degree_order


def random_lower(n, density, seed):
    X = sp.random(3 * n, n, density=density, random_state=seed)
    return sp.tril(X.T @ X + sp.eye(n)).tocsc(), (X.T @ X + sp.eye(n)).toarray()


def test_permutation_moves_values_into_the_permuted_lower_triangle():
    for seed in range(5):
        lower, dense = random_lower(40, 0.08, seed)
        perm = np.random.default_rng(seed).permutation(40)
        moved = permutation(lower, perm).apply(lower)
        np.testing.assert_array_equal(moved.toarray(), np.tril(dense[np.ix_(perm, perm)]))
        assert moved.has_sorted_indices


def test_static_order_puts_leaves_before_hubs():
    # an arrow: variable 0 couples to every other one
    n = 50
    rows = np.arange(1, n)
    lower = sp.csc_matrix((np.ones(2 * n - 1), (np.r_[np.arange(n), rows], np.r_[np.arange(n), np.zeros(n - 1, int)])), shape=(n, n))
    assert static_degree_order(lower)[-1] == 0


def test_choice_takes_static_when_it_barely_fills_and_cholmod_otherwise():
    n = 50
    hub = np.zeros(n - 1, dtype=int)
    arrow = sp.csc_matrix((np.ones(2 * n - 1), (np.r_[np.arange(n), np.arange(1, n)], np.r_[np.arange(n), hub])), shape=(n, n))
    perm, symbolic, _ = choose_ordering(arrow, analyze)
    assert perm is not None and symbolic is None
    # a 2-d grid: static degree order fills badly, so CHOLMOD's ordering is tried and compared
    k = 30
    path = sp.diags_array([-np.ones(k - 1), 2 * np.ones(k), -np.ones(k - 1)], offsets=[-1, 0, 1])
    grid = sp.kronsum(path, path, format="csc")
    lower = sp.tril(grid).tocsc()
    from gdag.resources import factor_nonzeros

    nnz_static, flops_static = factor_nonzeros(lower, static_degree_order(lower))
    assert nnz_static > ACCEPT_FILL * lower.nnz
    perm, symbolic, counts = choose_ordering(lower, analyze)
    if symbolic is not None:
        assert factor_nonzeros(lower, symbolic.P())[1] <= flops_static


def test_static_order_sorts_by_off_diagonal_degree_with_or_without_stored_diagonals():
    for seed in range(5):
        lower, dense = random_lower(40, 0.08, seed)
        if seed % 2:  # drop some stored diagonal entries: the degree counts neighbours only
            lower = lower.tolil()
            lower.setdiag(0, k=0)
            lower = sp.csc_matrix(lower)
            lower.eliminate_zeros()
        off = dense.copy()
        np.fill_diagonal(off, 0.0)
        expected = np.argsort(np.count_nonzero(off, axis=0), kind="stable")
        np.testing.assert_array_equal(static_degree_order(lower), expected)


def test_chosen_ordering_reports_the_size_of_its_factor():
    for seed in range(3):
        lower, _ = random_lower(60, 0.05, seed)
        reorder, symbolic, (nnz, flops) = choose_ordering(lower, analyze)
        perm = reorder.perm if reorder is not None else symbolic.P()
        moved = sp.tril(sp.csc_matrix(lower + sp.tril(lower, -1).T)[perm][:, perm]).tocsc()
        L = np.linalg.cholesky(moved.toarray() + np.triu(moved.toarray(), 1).T)
        counts = np.count_nonzero(L, axis=0)
        assert nnz == counts.sum()
        assert flops == float(np.sum(counts.astype(float) ** 2))
