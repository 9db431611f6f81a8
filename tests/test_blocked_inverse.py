"""The blocked factor's inverse entries (its diagonal from ``L^{-1}``, other pairs from ``K^{-1}``) against a dense inverse."""

import numpy as np
import pytest
import scipy.sparse as sp

from gdag.fitting.derivatives import entry_pairs
from gdag.linalg.blocked import analyze_blocked
from gdag.linalg.pairs import row_pairs


def crossed_precision(seed: int, sizes=(40, 12, 3), n_rows=300):
    """``Q = diag(prior) + A^T A`` of a crossed design (each row: one level of every factor); its lower triangle."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n = int(offsets[-1])
    cols = np.column_stack([offsets[f] + rng.integers(0, size, n_rows) for f, size in enumerate(sizes)])
    A = sp.csr_matrix((rng.uniform(0.5, 1.5, cols.size), cols.reshape(-1), np.arange(0, cols.size + 1, len(sizes))),
                      shape=(n_rows, n))
    Q = (A.T @ A + sp.diags(rng.uniform(0.5, 2.0, n))).toarray()
    family = np.repeat(np.arange(len(sizes)), sizes)
    return Q, sp.csc_matrix(np.tril(Q)), family


@pytest.mark.parametrize("seed", range(4))
def test_blocked_inverse_entries_match_the_dense_inverse(seed):
    Q, lower, family = crossed_precision(seed)
    analysis = analyze_blocked(lower, family, required=True)
    assert analysis.n_H == 40 and analysis.n_T == 15
    assert np.all(np.diff(np.bincount(analysis.c_rows, minlength=analysis.n_T)) >= 0)  # busiest tail columns last
    factor = analysis.factor(lower, lambda positions: [str(p) for p in positions])
    inverse = np.linalg.inv(Q)
    every = np.arange(Q.shape[0])
    np.testing.assert_allclose(factor.inverse_diagonal(), np.diag(inverse), rtol=1e-12)
    np.testing.assert_allclose(factor.covariances(every, every.copy()), np.diag(inverse), rtol=1e-12)
    rows, cols = np.nonzero(np.tril(Q))  # the pattern's pairs (head-head only on the diagonal)
    np.testing.assert_allclose(factor.covariances(rows, cols), inverse[rows, cols], rtol=1e-10, atol=1e-14)
    b = np.random.default_rng(seed).normal(size=(Q.shape[0], 3))
    np.testing.assert_allclose(factor.solve(b), np.linalg.solve(Q, b), rtol=1e-10, atol=1e-12)
    assert factor.logdet() == pytest.approx(np.linalg.slogdet(Q)[1], rel=1e-12)
    # new values on the same pattern: the buffers are reused, the inverse's diagonal recomputed
    scaled = lower.copy()
    scaled.data = scaled.data * np.where(scaled.indices == np.repeat(every, np.diff(scaled.indptr)), 1.5, 1.0)
    factor.refactor_inplace(scaled)
    dense = scaled.toarray()
    dense = dense + np.tril(dense, -1).T
    np.testing.assert_allclose(factor.inverse_diagonal(), np.diag(np.linalg.inv(dense)), rtol=1e-12)
    np.testing.assert_allclose(factor.solve(b), np.linalg.solve(dense, b), rtol=1e-10, atol=1e-12)
    assert factor.logdet() == pytest.approx(np.linalg.slogdet(dense)[1], rel=1e-12)


def test_entry_pairs_of_rows_with_one_entry_are_the_row_pairs():
    rng = np.random.default_rng(0)
    entry_row = np.concatenate([np.arange(20), rng.integers(20, 50, 60)])  # 20 rows of one entry, then shared rows
    entry_col = rng.integers(0, 15, entry_row.size)
    perm = rng.permutation(entry_row.size)
    entry_row, entry_col = entry_row[perm], entry_col[perm]
    for rows in (np.arange(50) < 20, np.arange(50) >= 10):
        mine, ref = entry_pairs(entry_row, entry_col, rows, 50), row_pairs(entry_row, entry_col, rows, 50)
        for name in ("row", "first", "second", "mult", "col_first", "col_second"):
            np.testing.assert_array_equal(getattr(mine, name), getattr(ref, name))
