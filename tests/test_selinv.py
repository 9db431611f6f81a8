"""Tests of gdag.linalg.selinv: selected inversion from a sparse Cholesky factor.

Reference values come from ``np.linalg.inv`` of small dense matrices.  The
sparse factors are built on their symbolic (filled) pattern, computed here
by a small pure-Python elimination, so explicit zeros from numerical
cancellation stay in the pattern as CHOLMOD would keep them.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from gdag.linalg.selinv import selected_inverse, selected_inverse_diag

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # hypothesis is optional for this file
    given = None


# --------------------------------------------------------------------------
# Helpers (test-only)
# --------------------------------------------------------------------------


def filled_pattern(nonzero: np.ndarray) -> list[list[int]]:
    """Rows below the diagonal of each column of the Cholesky factor.

    ``nonzero`` is the boolean pattern of a symmetric matrix.  Eliminating
    column ``j`` makes its rows a clique; passing them to the parent (the
    smallest such row) is enough, as the parent passes them on in turn.
    """
    n = nonzero.shape[0]
    columns = [set(np.flatnonzero(nonzero[j + 1 :, j]) + j + 1) for j in range(n)]
    for j in range(n):
        if columns[j]:
            parent = min(columns[j])
            columns[parent] |= columns[j] - {parent}
    return [sorted(rows) for rows in columns]


def factor_on_pattern(dense_factor: np.ndarray, below: list[list[int]]) -> sp.csc_matrix:
    """CSC factor holding ``dense_factor`` on the diagonal and ``below`` rows, zeros kept."""
    n = dense_factor.shape[0]
    indptr = np.zeros(n + 1, dtype=np.int64)
    indices = []
    for j in range(n):
        rows = [j, *below[j]]
        indices.extend(rows)
        indptr[j + 1] = indptr[j] + len(rows)
    indices = np.asarray(indices, dtype=np.int64)
    columns = np.repeat(np.arange(n), np.diff(indptr))
    data = dense_factor[indices, columns]
    return sp.csc_matrix((data, indices, indptr), shape=(n, n))


def sparse_cholesky(Q: np.ndarray, structure: np.ndarray | None = None) -> sp.csc_matrix:
    """Lower Cholesky factor of dense SPD ``Q`` stored on its symbolic pattern.

    ``structure`` is the symmetric boolean pattern to factor symbolically;
    by default the nonzeros of ``Q``.
    """
    dense_factor = np.linalg.cholesky(Q)
    below = filled_pattern(Q != 0 if structure is None else structure)
    L = factor_on_pattern(dense_factor, below)
    # Entries outside the symbolic pattern are exact zeros in floating point
    # too; a failure here means the test's pattern helper is wrong.
    outside = np.tril(np.ones_like(Q, dtype=bool))
    outside[L.indices, np.repeat(np.arange(Q.shape[0]), np.diff(L.indptr))] = False
    assert np.all(dense_factor[outside] == 0.0)
    return L


def random_sparse_spd(n: int, density: float, rng: np.random.Generator) -> np.ndarray:
    """Dense storage of a random sparse symmetric positive definite matrix."""
    mask = np.triu(rng.random((n, n)) < density, k=1)
    upper = np.where(mask, rng.uniform(-1.0, 1.0, (n, n)), 0.0)
    Q = upper + upper.T
    # Diagonal dominance guarantees positive definiteness; the random slack
    # keeps the conditioning varied but moderate.
    Q[np.diag_indices(n)] = np.abs(Q).sum(axis=1) + rng.uniform(0.05, 2.0, n)
    return Q


def random_gram_spd(n: int, density: float, rng: np.random.Generator) -> np.ndarray:
    """A sparse SPD matrix ``B B^T + eps I`` that is not diagonally dominant."""
    B = np.where(rng.random((n, n)) < density, rng.standard_normal((n, n)), 0.0)
    B[np.diag_indices(n)] += 1.0
    return B @ B.T + 0.01 * np.eye(n)


def pattern_coordinates(M: sp.csc_matrix):
    """Row and column index of each stored entry of CSC ``M``."""
    columns = np.repeat(np.arange(M.shape[1]), np.diff(M.indptr))
    return M.indices, columns


def assert_selected_inverse(L: sp.csc_matrix, Q: np.ndarray) -> sp.csc_matrix:
    """Check both public functions against the dense inverse of ``Q``."""
    Z = selected_inverse(L)
    expected_full = np.linalg.inv(Q)
    canonical = L.sorted_indices()

    assert isinstance(Z, sp.csc_matrix)
    assert Z.shape == Q.shape
    np.testing.assert_array_equal(Z.indptr, canonical.indptr)
    np.testing.assert_array_equal(Z.indices, canonical.indices)

    rows, columns = pattern_coordinates(Z)
    scale = np.abs(expected_full).max() if Q.size else 1.0
    np.testing.assert_allclose(
        Z.data, expected_full[rows, columns], rtol=1e-10, atol=1e-10 * scale
    )

    diagonal = selected_inverse_diag(L)
    assert diagonal.dtype == np.float64
    np.testing.assert_array_equal(diagonal, Z.diagonal())
    return Z


# --------------------------------------------------------------------------
# Random matrices
# --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 21, 34, 60])
@pytest.mark.parametrize("density", [0.0, 0.03, 0.1, 0.3, 1.0])
def test_random_sparse_spd(n, density):
    rng = np.random.default_rng(1000 * n + int(100 * density))
    Q = random_sparse_spd(n, density, rng)
    assert_selected_inverse(sparse_cholesky(Q), Q)


@pytest.mark.parametrize("seed", range(6))
def test_random_gram_spd(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 61))
    Q = random_gram_spd(n, density=rng.uniform(0.01, 0.08), rng=rng)
    assert_selected_inverse(sparse_cholesky(Q), Q)


@pytest.mark.parametrize("seed", range(5))
def test_dense_lower_pattern(seed):
    """The full lower triangle is a valid (trivially fill-closed) pattern."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 41))
    Q = random_sparse_spd(n, 0.1, rng)
    dense_factor = np.linalg.cholesky(Q)
    below = [list(range(j + 1, n)) for j in range(n)]
    assert_selected_inverse(factor_on_pattern(dense_factor, below), Q)


@pytest.mark.parametrize("seed", range(5))
def test_factor_with_explicit_zeros(seed):
    """Zeros stored inside a fill-closed pattern are part of the pattern."""
    rng = np.random.default_rng(seed)
    n = 40
    symmetric = rng.random((n, n)) < 0.08
    below = filled_pattern(symmetric | symmetric.T)
    dense_factor = np.zeros((n, n))
    dense_factor[np.diag_indices(n)] = rng.uniform(0.5, 2.0, n)
    for j, rows in enumerate(below):
        # Small off-diagonal values keep L well conditioned, so the dense
        # reference inverse is accurate to the tolerance.
        values = rng.uniform(-0.3, 0.3, len(rows))
        values[rng.random(len(rows)) < 0.3] = 0.0
        dense_factor[rows, j] = values
    L = factor_on_pattern(dense_factor, below)
    assert np.count_nonzero(L.data == 0.0) > 0
    assert_selected_inverse(L, dense_factor @ dense_factor.T)


@pytest.mark.parametrize("seed", range(4))
def test_random_permuted(seed):
    """A fill-reducing-like symmetric permutation of a sparse matrix."""
    rng = np.random.default_rng(seed)
    n = 50
    Q = random_sparse_spd(n, 0.06, rng)
    perm = rng.permutation(n)
    Q_perm = Q[np.ix_(perm, perm)]
    L = sparse_cholesky(Q_perm)
    assert_selected_inverse(L, Q_perm)
    # Undoing the permutation gives the marginal variances of Q.
    variances = np.empty(n)
    variances[perm] = selected_inverse_diag(L)
    np.testing.assert_allclose(variances, np.diag(np.linalg.inv(Q)), rtol=1e-10)


if given is not None:

    @settings(max_examples=40, deadline=None)
    @given(
        n=st.integers(1, 30),
        density=st.floats(0.0, 1.0),
        seed=st.integers(0, 2**32 - 1),
    )
    def test_random_sparse_spd_hypothesis(n, density, seed):
        Q = random_sparse_spd(n, density, np.random.default_rng(seed))
        assert_selected_inverse(sparse_cholesky(Q), Q)


# --------------------------------------------------------------------------
# Structured patterns
# --------------------------------------------------------------------------


def arrow_precision(block_sizes, rng) -> np.ndarray:
    """Block-diagonal precision plus one last variable coupled to all others."""
    n = sum(block_sizes) + 1
    Q = np.zeros((n, n))
    start = 0
    for size in block_sizes:
        block = rng.standard_normal((size, size))
        Q[start : start + size, start : start + size] = block @ block.T + size * np.eye(size)
        start += size
    coupling = rng.uniform(-0.5, 0.5, n - 1)
    Q[-1, :-1] = coupling
    Q[:-1, -1] = coupling
    Q[-1, -1] = 1.0 + np.abs(coupling).sum() * 4.0
    return Q


@pytest.mark.parametrize("block_sizes", [[1] * 40, [2] * 20, [1, 3, 2, 5, 1, 4]])
def test_arrow_pattern(block_sizes):
    rng = np.random.default_rng(len(block_sizes))
    Q = arrow_precision(block_sizes, rng)
    L = sparse_cholesky(Q)
    # Blocks fill in, and every column reaches the last row.
    assert all(L[-1, j] != 0 for j in range(Q.shape[0]))
    assert_selected_inverse(L, Q)


def test_tridiagonal_plus_dense_last_row():
    rng = np.random.default_rng(7)
    n = 45
    Q = np.zeros((n, n))
    off = rng.uniform(-0.4, 0.4, n - 2)
    Q[np.arange(n - 2), np.arange(1, n - 1)] = off
    Q[np.arange(1, n - 1), np.arange(n - 2)] = off
    Q[-1, :-1] = Q[:-1, -1] = rng.uniform(-0.3, 0.3, n - 1)
    Q[np.diag_indices(n)] = np.abs(Q).sum(axis=1) + 0.5
    assert_selected_inverse(sparse_cholesky(Q), Q)


@pytest.mark.parametrize("phi", [-0.9, 0.0, 0.5, 0.99])
def test_ar1_chain_closed_form(phi):
    """Stationary AR(1) precision: the covariance is phi^|i-j| / (1 - phi^2)."""
    n = 60
    Q = np.diag(np.full(n, 1.0 + phi**2))
    Q[0, 0] = Q[-1, -1] = 1.0
    Q[np.arange(n - 1), np.arange(1, n)] = -phi
    Q[np.arange(1, n), np.arange(n - 1)] = -phi
    # The chain's structure, so that phi = 0 keeps its (zero) links.
    structure = np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= 1
    L = sparse_cholesky(Q, structure)
    assert L.nnz == 2 * n - 1
    Z = assert_selected_inverse(L, Q)
    rows, columns = pattern_coordinates(Z)
    closed_form = phi ** np.abs(rows - columns) / (1.0 - phi**2)
    np.testing.assert_allclose(Z.data, closed_form, rtol=1e-10)


# --------------------------------------------------------------------------
# Input forms
# --------------------------------------------------------------------------


def small_factor():
    rng = np.random.default_rng(3)
    Q = random_sparse_spd(25, 0.15, rng)
    return sparse_cholesky(Q), Q


def test_unsorted_indices_and_caller_matrix_untouched():
    L, Q = small_factor()
    rng = np.random.default_rng(0)
    shuffled = L.copy()
    for j in range(L.shape[1]):
        start, end = shuffled.indptr[j], shuffled.indptr[j + 1]
        order = start + rng.permutation(end - start)
        shuffled.indices[start:end] = shuffled.indices[order]
        shuffled.data[start:end] = shuffled.data[order]
    shuffled.has_sorted_indices = False
    before = (shuffled.indptr.copy(), shuffled.indices.copy(), shuffled.data.copy())

    Z = assert_selected_inverse(shuffled, Q)
    np.testing.assert_array_equal(Z.indices, L.indices)

    np.testing.assert_array_equal(shuffled.indptr, before[0])
    np.testing.assert_array_equal(shuffled.indices, before[1])
    np.testing.assert_array_equal(shuffled.data, before[2])


def test_stale_sorted_flag_is_not_trusted():
    L, Q = small_factor()
    shuffled = L.copy()
    column = int(np.argmax(np.diff(L.indptr)))
    start, end = shuffled.indptr[column], shuffled.indptr[column + 1]
    shuffled.indices[start:end] = shuffled.indices[start:end][::-1].copy()
    shuffled.data[start:end] = shuffled.data[start:end][::-1].copy()
    # Claim canonical form although the column is reversed.
    shuffled.has_canonical_format = True
    assert_selected_inverse(shuffled, Q)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_index_dtypes(index_dtype):
    L, Q = small_factor()
    L = sp.csc_matrix(
        (L.data, L.indices.astype(index_dtype), L.indptr.astype(index_dtype)),
        shape=L.shape,
    )
    assert_selected_inverse(L, Q)


@pytest.mark.parametrize("convert", [sp.csc_array, sp.csr_matrix, sp.coo_matrix])
def test_other_sparse_containers(convert):
    L, Q = small_factor()
    Z = selected_inverse(convert(L))
    np.testing.assert_allclose(Z.toarray(), selected_inverse(L).toarray(), rtol=1e-14)


def test_duplicate_entries_are_summed():
    L, Q = small_factor()
    coo = L.tocoo()
    # Split every value into two halves stored separately.
    doubled = sp.csc_matrix(
        (
            np.concatenate([coo.data / 2, coo.data / 2]),
            (np.concatenate([coo.row, coo.row]), np.concatenate([coo.col, coo.col])),
        ),
        shape=L.shape,
    )
    np.testing.assert_allclose(
        selected_inverse_diag(doubled), selected_inverse_diag(L), rtol=1e-14
    )


# --------------------------------------------------------------------------
# Edge cases and errors
# --------------------------------------------------------------------------


def test_empty_matrix():
    L = sp.csc_matrix((0, 0))
    Z = selected_inverse(L)
    assert Z.shape == (0, 0) and Z.nnz == 0
    diagonal = selected_inverse_diag(L)
    assert diagonal.shape == (0,) and diagonal.dtype == np.float64


def test_one_by_one():
    L = sp.csc_matrix(np.array([[2.0]]))
    np.testing.assert_allclose(selected_inverse(L).toarray(), [[0.25]])
    np.testing.assert_allclose(selected_inverse_diag(L), [0.25])


def test_diagonal_factor():
    d = np.array([1.0, 2.0, 0.5, 4.0])
    L = sp.diags(d, format="csc")
    np.testing.assert_allclose(selected_inverse_diag(L), 1.0 / d**2)


def test_rejects_dense_input():
    with pytest.raises(TypeError, match="scipy.sparse"):
        selected_inverse(np.eye(3))


def test_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        selected_inverse(sp.csc_matrix(np.ones((3, 2))))


def test_rejects_upper_triangular_entry():
    L = sp.csc_matrix(np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="lower triangular"):
        selected_inverse(L)


def test_rejects_missing_diagonal():
    L = sp.csc_matrix(np.array([[1.0, 0.0], [0.5, 0.0]]))
    with pytest.raises(ValueError, match="diagonal"):
        selected_inverse_diag(L)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_rejects_bad_diagonal(bad):
    L = sp.csc_matrix(
        (np.array([1.0, 0.5, bad]), np.array([0, 1, 1]), np.array([0, 2, 3])),
        shape=(2, 2),
    )
    with pytest.raises(ValueError, match="positive"):
        selected_inverse(L)


def test_rejects_complex():
    L = sp.csc_matrix(np.array([[1.0 + 1.0j]]))
    with pytest.raises(ValueError, match="real"):
        selected_inverse(L)


def test_rejects_pattern_not_closed_under_fill():
    # Column 0 reaches rows 1 and 2, so L[2, 1] must be stored.
    dense_factor = np.array([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.5, 0.0, 1.0]])
    L = factor_on_pattern(dense_factor, [[1, 2], [], []])
    with pytest.raises(ValueError, match="closed under fill"):
        selected_inverse(L)
    # Keeping the explicit zero makes the same factor valid.
    L = factor_on_pattern(dense_factor, [[1, 2], [2], []])
    assert_selected_inverse(L, dense_factor @ dense_factor.T)


# --------------------------------------------------------------------------
# CHOLMOD factors, when scikit-sparse is installed
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_cholmod_factor(seed):
    cholmod = pytest.importorskip("sksparse.cholmod")
    rng = np.random.default_rng(seed)
    n = 60
    Q = random_sparse_spd(n, 0.05, rng)
    factor = cholmod.cholesky(sp.csc_matrix(Q))
    perm = factor.P()
    Q_perm = Q[np.ix_(perm, perm)]
    assert_selected_inverse(factor.L(), Q_perm)
