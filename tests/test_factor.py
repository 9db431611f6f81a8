"""gdag.linalg.factor against dense linear algebra: solves, the padded factor, refactoring, and failures that name the variable.

References: ``np.linalg`` on small dense matrices, and a dense LDL^T for the
first pivot that fails.  The factors of whole models are checked through
their posteriors (test_posterior.py, test_pattern.py).
"""

import re

import numpy as np
import pytest
import scipy.sparse as sp
from sksparse import cholmod

import gdag
from gdag.linalg import factor

# --------------------------------------------------------- solves


def test_solves_with_gdags_ordering_match_dense_for_any_number_of_columns():
    n = 60
    hub = np.zeros(n - 1, dtype=int)
    rng = np.random.default_rng(0)
    rows, cols = np.r_[np.arange(n), np.arange(1, n)], np.r_[np.arange(n), hub]
    vals = np.r_[n + rng.uniform(1, 2, n), rng.uniform(-1, 1, n - 1)]
    lower = sp.csc_matrix((vals, (rows, cols)), shape=(n, n))
    analysis = factor.analyze(lower)
    assert analysis.reorder is not None  # the arrow takes gdag's static ordering
    fac = factor.CholeskyFactor(analysis, lower, lambda k: [str(i) for i in k])
    dense = lower.toarray() + np.tril(lower.toarray(), -1).T
    for k in (1, 3, factor.FEW_COLUMNS, factor.FEW_COLUMNS + 1, 25):
        b = rng.normal(size=(n, k))
        np.testing.assert_allclose(fac.solve(b), np.linalg.solve(dense, b), rtol=1e-12, atol=1e-14)
    b = rng.normal(size=n)
    np.testing.assert_allclose(fac.solve(b), np.linalg.solve(dense, b), rtol=1e-12, atol=1e-14)


# ------------------------------------------- the padded factor, refactoring


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


# ------------------------------------------- failures name the variable


def labels(positions):
    return [f"v{int(p)}" for p in positions]


def first_failing_pivot(Q: np.ndarray, P: np.ndarray) -> int:
    """Dense LDL^T of Q[P][:, P]: the original index of the first pivot that is not positive."""
    A = Q[np.ix_(P, P)].copy()
    for j in range(A.shape[0]):
        if not A[j, j] > 0:
            return int(P[j])
        A[j + 1 :, j + 1 :] -= np.outer(A[j + 1 :, j], A[j + 1 :, j]) / A[j, j]
    raise AssertionError("Q is positive definite")


def singular_matrices():
    rng = np.random.default_rng(0)
    yield "zero diagonal", np.diag([1.0, 2.0, 0.0, 3.0])
    yield "negative diagonal", np.diag([1.0, 2.0, -1.0, 3.0])
    # an arrow whose hub (index 0) has a zero Schur complement; the ordering moves the hub last
    n = 7
    arrow = np.eye(n)
    arrow[0, :] = arrow[:, 0] = 1.0
    arrow[0, 0] = n - 1.0
    yield "arrow", arrow
    # a dense block (supernodal factorization) with a hub that makes it indefinite, shuffled
    m = 300
    X = rng.normal(size=(m, m))
    M = X @ X.T / m + np.eye(m)
    a = rng.normal(size=m)
    dense = np.zeros((m + 1, m + 1))
    dense[:m, :m] = M
    dense[:m, m] = dense[m, :m] = a
    dense[m, m] = a @ np.linalg.solve(M, a) * (1 - 1e-6)
    perm = rng.permutation(m + 1)
    yield "dense indefinite", dense[np.ix_(perm, perm)]


@pytest.mark.parametrize("mode", ["simplicial", "supernodal"])
@pytest.mark.parametrize("name, Q", list(singular_matrices()))
def test_cholesky_failure_names_the_variable_through_the_permutation(name, Q, mode):
    lower = sp.csc_matrix(np.tril(Q))
    symbolic = cholmod.analyze(lower, mode=mode)
    expected = f"v{first_failing_pivot(Q, symbolic.P())}"
    with pytest.raises(gdag.NotIdentifiedError, match=re.escape(f"`{expected}` is not identified")):
        factor.CholeskyFactor(factor.Analysis(symbolic), lower, labels)
    if name == "arrow":
        assert expected == "v0"  # the hub, although CHOLMOD eliminates it last


def test_padded_factor_failure_names_the_padded_position_through_the_permutation():
    # U = {0, 2, 3} of R = {0..4}; the U block is singular at R position 3's pivot only
    pattern = sp.csc_matrix(np.tril(np.ones((5, 5))))
    symbolic = factor.Analysis(cholmod.analyze(pattern, mode="simplicial"))
    lower = pattern.copy()
    lower.data[:] = 0.0  # explicit zeros off the diagonal
    lower.setdiag([2.0, 1.0, 3.0, 0.0, 1.0])
    with pytest.raises(gdag.NotIdentifiedError, match=re.escape("`r3` is not identified")):
        factor.PaddedFactor(symbolic, lower, np.array([0, 2, 3]), lambda p: [f"r{int(i)}" for i in p])
