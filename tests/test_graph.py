"""Model graphs (gdag.graph): family edges and kinds, expanded graphs of scalar variables."""

import numpy as np
import pytest

import gdag

GRAPH_CASES = [
    (
        "hierarchy",
        lambda m: (
            m.normal("R"),
            m.normal("R_i", mean=m.nodes["R"], plate=m.plate("friend", 3)),
        ),
        {("R", "R_i"): {"mean"}},
        {"R": "random", "R_i": "random"},
    ),
    (
        "fixed and random effects",
        lambda m: (
            m.param("beta", size=2),
            m.param("sigma", positive=True),
            m.normal("u", plate=m.plate("g", 2)),
            m.normal(
                "y",
                mean=gdag.dot(np.ones((4, 2)), m.params["beta"]) + m.nodes["u"][np.array([0, 1, 1, 0])],
                sd=m.params["sigma"],
                plate=m.plate("obs", 4),
            ),
        ),
        {("beta", "y"): {"fixed"}, ("sigma", "y"): {"sd"}, ("u", "y"): {"mean"}},
        {"beta": "param", "sigma": "param", "u": "random", "y": "random"},
    ),
    (
        "correlated slopes",
        lambda m: (
            m.param("rho"),
            m.normal("u0", plate=m.plate("g", 3)),
            m.normal("u1", mean=m.params["rho"] * m.nodes["u0"], plate=m.plates["g"]),
        ),
        {("u0", "u1"): {"mean"}, ("rho", "u1"): {"scale"}},
        {"rho": "param", "u0": "random", "u1": "random"},
    ),
    (
        "deterministic and AR chain",
        lambda m: (
            m.normal("b", mean=1.0, sd=0.0),
            m.normal("x", mean=lambda x: m.nodes["b"] + 0.5 * x.lag(1), sd=np.r_[0.0, 1.0, 1.0],
                     plate=m.plate("t", 3)),
        ),
        {("b", "x"): {"mean"}, ("x", "x"): {"mean"}},
        {"b": "deterministic", "x": "partly deterministic"},
    ),
]


@pytest.mark.parametrize("name, build, edges, kinds", GRAPH_CASES, ids=[c[0] for c in GRAPH_CASES])
def test_family_graph(name, build, edges, kinds):
    m = gdag.Model(name)
    build(m)
    g = m.graph()
    assert {(u, v): d["roles"] for u, v, d in g.edges(data=True)} == edges
    assert {v: d["kind"] for v, d in g.nodes(data=True)} == kinds


def test_expanded_graph_has_one_vertex_per_scalar():
    m = gdag.Model()
    friend = m.plate("friend", 3)
    R = m.normal("R")
    R_i = m.normal("R_i", mean=R, plate=friend)
    m.normal("X", mean=2.0 * R_i[np.array([0, 0, 2])], plate=m.plate("rating", 3))
    g = m.graph(expanded=True)
    assert set(g.nodes) == {"R", "R_i[0]", "R_i[1]", "R_i[2]", "X[0]", "X[1]", "X[2]"}
    assert set(g.edges) == {("R", "R_i[0]"), ("R", "R_i[1]"), ("R", "R_i[2]"),
                            ("R_i[0]", "X[0]"), ("R_i[0]", "X[1]"), ("R_i[2]", "X[2]")}
    assert g.edges["R_i[2]", "X[2]"]["coef"] == 2.0


def test_expanded_graph_refuses_large_models():
    m = gdag.Model("big")
    m.normal("u", plate=m.plate("g", 6000))
    with pytest.raises(gdag.ModelSpecError, match="use m.graph\\(\\) for the family-level graph"):
        m.graph(expanded=True)


def test_expanded_graph_sums_a_parent_that_enters_a_mean_twice():
    m = gdag.Model("twice")
    a = m.normal("a", sd=1.0, plate=m.plate("g", 3))
    idx = np.array([0, 2, 2])
    m.normal("y", mean=2.0 * a[idx] + 3.0 * a[np.array([0, 1, 2])], sd=1.0, plate=m.plate("obs", 3))
    g = m.graph(expanded=True)
    assert g.edges["a[0]", "y[0]"]["coef"] == 5.0  # both terms use a[0]
    assert g.edges["a[2]", "y[1]"]["coef"] == 2.0 and g.edges["a[1]", "y[1]"]["coef"] == 3.0
    assert g.edges["a[2]", "y[2]"]["coef"] == 5.0
    # the same sums as the precision: y[0] = 5 a[0] + e, so Cov(a[0], y[0]) = 5
    post = m.posterior({"y": np.array([np.nan, np.nan, np.nan])})
    assert post.cov("a", "y")[0, 0] == pytest.approx(5.0)
