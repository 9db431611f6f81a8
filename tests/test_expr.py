"""Affine expressions (gdag.expr): what builds one, and what a gather means."""

import numpy as np

import gdag
from gdag.expr import Expr


def test_numpy_array_on_the_left_builds_an_expression():
    m = gdag.Model()
    u = m.normal("u", plate=m.plate("g", 3))
    offset = np.array([1.0, 2.0, 3.0])
    for expr in (offset + u, offset * u, offset - u, u * offset):
        assert isinstance(expr, Expr) and expr.length == 3


def test_single_integer_gather_broadcasts():
    m = gdag.Model()
    u = m.normal("u", mean=np.array([0.0, 5.0]), sd=1.0, plate=m.plate("g", 2))
    y = m.normal("y", mean=u[1], sd=1.0, plate=m.plate("obs", 4))
    post = m.posterior({})
    np.testing.assert_allclose(post.mean(y), 5.0)
    np.testing.assert_allclose(post.cov(y, u)[:, 1], 1.0)
    np.testing.assert_allclose(post.cov(y, u)[:, 0], 0.0)


def test_a_nodes_terms_store_equal_arrays_once():
    """``b0 + b1 * x + u0[g] + x * u1[g]`` over n rows keeps one rows array, one ``g`` and one ``x``
    (each term had its own before: 150 bytes a row for this mean), and answers as before."""
    rng = np.random.default_rng(0)
    n, G = 1000, 10
    g, x = rng.integers(0, G, n), rng.normal(size=n)
    m = gdag.Model()
    obs, grp = m.plate("obs", n), m.plate("grp", G)
    u0, u1 = m.normal("u0", 0.0, 1.0, plate=grp), m.normal("u1", 0.0, 0.5, plate=grp)
    y = m.normal("y", m.param("b0", value=1.0) + m.param("b1", value=2.0) * x + u0[g] + x * u1[g], 1.0, plate=obs)
    terms = y.mean.terms
    assert len({id(t.rows) for t in terms}) == 1
    gathers = [t for t in terms if not t.source.is_param]
    assert gathers[0].cols is gathers[1].cols
    scaled = [t.vals for t in terms if t.vals.strides != (0,)]
    assert len(scaled) == 2 and scaled[0] is scaled[1]
    g0, x0 = g.copy(), x.copy()
    g[:] = 0  # the caller's arrays were copied, once
    x[:] = 0.0
    np.testing.assert_array_equal(gathers[1].cols, g0)
    np.testing.assert_array_equal(scaled[0], x0)
    post = m.posterior({"y": np.ones(n)})
    assert np.all(np.isfinite(post.mean("u1"))) and np.any(post.mean("u1") != 0)
