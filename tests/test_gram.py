"""The Gram kernels against dense products, in both index widths.

``gdag.linalg.gram`` builds ``Q = A^T diag(w) A`` (lower triangle) and
``b = A^T rhs`` from entry lists; the fit splits ``Q`` by classes of rows.
Index arrays are int32 when every index fits and int64 otherwise; the int64
path is forced here by lowering the threshold.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gdag.linalg import gram as assembly

from reference import DensePosterior, assert_matches_dense, build_gdag, observe_some, random_spec


def random_entries(rng, n_rows, n_cols, n_entries):
    """Entry lists of a random ``A`` with repeated positions (which add up) and the dense ``A``."""
    rows = rng.integers(0, n_rows, n_entries)
    cols = rng.integers(0, n_cols, n_entries)
    values = rng.normal(size=n_entries)
    A = np.zeros((n_rows, n_cols))
    np.add.at(A, (rows, cols), values)
    return rows, cols, values, A


@pytest.fixture(params=["int32", "int64"])
def index_width(request, monkeypatch):
    if request.param == "int64":
        monkeypatch.setattr(assembly, "INT32_MAX", 0)  # every size counts as too large for int32
    return np.int32 if request.param == "int32" else np.int64


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_rows=st.integers(1, 30), n_cols=st.integers(1, 12),
       n_entries=st.integers(0, 80))
def test_gram_values_match_the_dense_product(seed, n_rows, n_cols, n_entries):
    for wide in (False, True):
        rng = np.random.default_rng(seed)
        rows, cols, values, A = random_entries(rng, n_rows, n_cols, n_entries)
        w, rhs = rng.uniform(0.5, 2.0, n_rows), rng.normal(size=n_rows)
        saved = assembly.INT32_MAX
        assembly.INT32_MAX = 0 if wide else saved
        try:
            structure = assembly.gram_structure(rows, cols, n_rows, n_cols)
            Q, b = assembly.gram_values(structure, values, w, rhs)
        finally:
            assembly.INT32_MAX = saved
        assert structure.csr_entry.dtype == (np.int64 if wide else np.int32)
        np.testing.assert_allclose(Q.toarray(), np.tril(A.T @ (w[:, None] * A)), atol=1e-12)
        np.testing.assert_allclose(b, A.T @ rhs, atol=1e-12)
        assert Q.has_sorted_indices
        x, d = rng.normal(size=n_cols), rng.uniform(0.5, 2.0, n_rows)
        np.testing.assert_allclose(assembly.a_times(structure, values, x, n_rows), A @ x, atol=1e-12)
        np.testing.assert_allclose(assembly.at_times(structure, values, rhs), A.T @ rhs, atol=1e-12)
        e, w, f = assembly.weighted_residual(structure, values, x, rhs, d)
        np.testing.assert_allclose(e, rhs - A @ x, atol=1e-12)
        np.testing.assert_allclose(w, (rhs - A @ x) / d, atol=1e-12)
        assert f == pytest.approx(float((rhs - A @ x) @ ((rhs - A @ x) / d)), rel=1e-12, abs=1e-12)


def test_class_grams_split_the_gram_matrix_by_row_class(index_width):
    rng = np.random.default_rng(3)
    n_rows, n_cols = 40, 15
    rows, cols, values, A = random_entries(rng, n_rows, n_cols, 120)
    w = rng.uniform(0.5, 2.0, n_rows)
    classes = rng.integers(0, 3, n_rows)
    structure = assembly.gram_structure(rows, cols, n_rows, n_cols)
    assert structure.csr_entry.dtype == index_width
    grams = assembly.class_gram_values(structure, values, w, classes, 3)
    Q = assembly.gram_values(structure, values, w)
    for c in range(3):
        wc = np.where(classes == c, w, 0.0)
        dense = np.zeros((n_cols, n_cols))
        dense[structure.q_rows, np.repeat(np.arange(n_cols), np.diff(structure.q_indptr))] = grams[c]
        np.testing.assert_allclose(dense, np.tril(A.T @ (wc[:, None] * A)), atol=1e-12)
    np.testing.assert_allclose(grams.sum(axis=0), Q.data, atol=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_posteriors_are_the_same_with_64_bit_indices(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    spec = random_spec(rng)
    data, x, *_ = observe_some(spec, rng, 0.5)
    dense = DensePosterior(spec, x)
    monkeypatch.setattr(assembly, "INT32_MAX", 0)
    post = build_gdag(spec).posterior(data)
    if post._cond.n_unobserved:  # internals: the posterior's Gram structure took the int64 path
        assert post._cond.gram.structure.csr_entry.dtype == np.int64
    scale, vscale = 1.0 + np.max(np.abs(dense.full_mean)), 1.0 + np.max(np.diag(dense.prior_cov))
    assert_matches_dense(post, dense, spec.families, scale, vscale)
    assert post.log_evidence == pytest.approx(dense.log_evidence, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("thin", [False, True])
def test_dividing_inside_the_pass_gives_the_same_bits(thin):
    """``gram_values(..., d, r, divide=True)`` equals ``gram_values(..., 1 / d, r / d)`` bit for bit."""
    rng = np.random.default_rng(11)
    n_rows, n_cols = 60, 25
    if thin:  # at most two entries a row, in two columns: the thin road
        rows = np.repeat(np.arange(n_rows), 2)
        cols = np.stack([rng.integers(0, 12, n_rows), rng.integers(12, n_cols, n_rows)], axis=1).ravel()
    else:
        rows, cols = rng.integers(0, n_rows, 200), rng.integers(0, n_cols, 200)
    values = rng.normal(size=rows.shape[0])
    structure = assembly.gram_structure(rows, cols, n_rows, n_cols)
    assert (structure.pair_pos is not None) == thin
    d, r = rng.uniform(1e-3, 1e3, n_rows), rng.normal(size=n_rows)
    Q, b = assembly.gram_values(structure, values, 1.0 / d, r / d)
    Q_div, b_div = assembly.gram_values(structure, values, d, r, divide=True)
    assert np.array_equal(Q.data, Q_div.data) and np.array_equal(b, b_div)
    assert np.array_equal(assembly.gram_values(structure, values, 1.0 / d).data,
                          assembly.gram_values(structure, values, d, divide=True).data)
    d[0] = 0.0  # a variance that underflowed: infinite weight, as numpy divides (the caller refuses it after)
    with np.errstate(divide="ignore", invalid="ignore"):
        Q, b = assembly.gram_values(structure, values, 1.0 / d, r / d)
        Q_div, b_div = assembly.gram_values(structure, values, d, r, divide=True)
    np.testing.assert_array_equal(Q_div.data, Q.data)
    np.testing.assert_array_equal(b_div, b)


def test_weighted_residual_without_e_gives_the_same_w_and_f():
    rng = np.random.default_rng(12)
    rows, cols, values, A = random_entries(rng, 30, 10, 70)
    structure = assembly.gram_structure(rows, cols, 30, 10)
    x, r, d = rng.normal(size=10), rng.normal(size=30), rng.uniform(0.5, 2.0, 30)
    e, w, f = assembly.weighted_residual(structure, values, x, r, d)
    none, w2, f2 = assembly.weighted_residual(structure, values, x, r, d, keep_e=False)
    assert none is None and np.array_equal(w, w2) and f == f2
