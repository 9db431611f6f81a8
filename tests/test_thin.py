"""Thin designs (at most two entries per row of ``A``): the lighter Gram road gives the general road's bits.

``gdag.linalg.gram`` builds a thin ``A``'s structure from its rows' pairs
(``gdag.linalg.thin``) and adds each row's products in row order; the
general column-by-column pass adds the same products in the same order.
References: the general pass itself (bitwise) and dense products.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gdag.linalg import gram as assembly


def thin_entries(rng, n_rows, n_cols):
    """A random thin ``A``: each row has no entry, one, or two in distinct columns (pairs repeat across rows)."""
    rows, cols = [], []
    for r in range(n_rows):
        k = int(rng.integers(0, 3))
        picked = rng.choice(n_cols, size=min(k, n_cols), replace=False)
        rows += [r] * picked.shape[0]
        cols += picked.tolist()
    order = rng.permutation(len(rows))  # entries come in any order
    rows, cols = np.array(rows, dtype=np.int64)[order], np.array(cols, dtype=np.int64)[order]
    values = rng.normal(size=rows.shape[0])
    A = np.zeros((n_rows, n_cols))
    np.add.at(A, (rows, cols), values)
    return rows, cols, values, A


def both_roads(rows, cols, n_rows, n_cols, monkeypatch):
    thin = assembly.gram_structure(rows, cols, n_rows, n_cols)
    with monkeypatch.context() as patch:
        patch.setattr(assembly, "thin_pattern", lambda *args: None)
        general = assembly.gram_structure(rows, cols, n_rows, n_cols)
    return thin, general


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_rows=st.integers(1, 40), n_cols=st.integers(1, 10))
def test_thin_road_gives_the_general_roads_bits(seed, n_rows, n_cols):
    rng = np.random.default_rng(seed)
    rows, cols, values, A = thin_entries(rng, n_rows, n_cols)
    with pytest.MonkeyPatch.context() as monkeypatch:
        thin, general = both_roads(rows, cols, n_rows, n_cols, monkeypatch)
    assert thin.pair_pos is not None and general.pair_pos is None
    np.testing.assert_array_equal(thin.q_indptr, general.q_indptr)
    np.testing.assert_array_equal(thin.q_rows, general.q_rows)
    w, rhs = rng.uniform(0.5, 2.0, n_rows), rng.normal(size=n_rows) * 10.0 ** rng.integers(-8, 8, n_rows)
    (Q_thin, b_thin), (Q_general, b_general) = (assembly.gram_values(s, values, w, rhs) for s in (thin, general))
    np.testing.assert_array_equal(Q_thin.data, Q_general.data)
    np.testing.assert_array_equal(b_thin, b_general)
    np.testing.assert_allclose(Q_thin.toarray(), np.tril(A.T @ (w[:, None] * A)), atol=1e-12)
    np.testing.assert_allclose(b_thin, A.T @ rhs, rtol=1e-12, atol=1e-12 * np.abs(rhs).max())
    classes = rng.integers(0, 3, n_rows)
    np.testing.assert_array_equal(assembly.class_gram_values(thin, values, w, classes, 3),
                                  assembly.class_gram_values(general, values, w, classes, 3))
    np.testing.assert_array_equal(assembly.at_times(thin, values, rhs), assembly.at_times(general, values, rhs))


def test_rows_with_more_entries_or_a_repeated_column_take_the_general_road():
    rows, cols = np.array([0, 0, 1, 1, 1]), np.array([0, 1, 0, 1, 2])
    assert assembly.gram_structure(rows, cols, 2, 3).pair_pos is None  # row 1 has three entries
    rows, cols = np.array([0, 0, 1]), np.array([1, 1, 0])
    structure = assembly.gram_structure(rows, cols, 2, 2)
    assert structure.pair_pos is None  # row 0 has two entries in column 1 (they add up)
    Q, b = assembly.gram_values(structure, np.array([1.0, 2.0, 3.0]), np.ones(2), np.ones(2))
    np.testing.assert_allclose(Q.toarray(), [[9.0, 0.0], [0.0, 9.0]])
