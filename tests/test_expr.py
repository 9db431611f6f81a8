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
