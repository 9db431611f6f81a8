"""Bad input: each case raises a gdag error that names the culprit (wording pinned where it matters)."""

import re

import numpy as np
import pytest
import scipy.sparse as sp

import gdag


@pytest.fixture
def romcom():
    m = gdag.Model("romcom")
    friend = m.plate("friend", 3)
    rating = m.plate("rating", 5)
    R = m.normal("R", mean=3.0, sd=1.0)
    R_i = m.normal("R_i", mean=R, sd=0.5, plate=friend)
    m.normal("X", mean=R_i[np.array([0, 0, 1, 2, 2])], sd=1.0, plate=rating)
    return m


def test_all_errors_are_value_errors():
    for cls in (gdag.ModelSpecError, gdag.CycleError, gdag.DataError, gdag.ParamError,
                gdag.NotIdentifiedError, gdag.FitError):
        assert issubclass(cls, gdag.ModelError) and issubclass(cls, ValueError)


@pytest.mark.parametrize(
    "sd, message",
    [
        (-1.0, "Node `y`: sd must be finite and >= 0; entry 0 is -1.0."),
        (np.nan, "Node `y`: sd must be finite and >= 0; entry 0 is nan."),
        (np.array([1.0, 2.0]), "Node `y`: sd has shape (2,); it needs length 3 or a single value."),
        ("big", "Node `y`: sd must be a number, an array or a positive parameter; got 'big'."),
    ],
)
def test_bad_sd(sd, message):
    m = gdag.Model()
    p = m.plate("p", 3)
    with pytest.raises(gdag.ModelSpecError, match=re.escape(message)):
        m.normal("y", mean=0.0, sd=sd, plate=p)


def test_sd_parameter_must_be_declared_positive():
    m = gdag.Model()
    s = m.param("s")
    with pytest.raises(gdag.ModelSpecError, match=re.escape("parameter `s` is used as an sd, so declare it with positive=True")):
        m.normal("y", sd=s)


def test_sd_cannot_be_a_node():
    m = gdag.Model()
    a = m.normal("a")
    with pytest.raises(gdag.ModelSpecError, match="an sd cannot depend on a node"):
        m.normal("y", sd=a)


@pytest.mark.parametrize(
    "index, message",
    [
        (np.array([0, 3]), "The index into `u` has 1 entry outside 0..2 (first at position 1: 3)."),
        (np.array([0, -1]), "The index into `u` has 1 entry outside 0..2 (first at position 1: -1). Negative indices do not wrap around"),
        (np.array([0.0, 1.0]), "The index into `u` must hold integers; got dtype float64. Convert it with `.astype(int)`"),
        (np.array([True, False]), "The index into `u` must hold integers; got dtype bool."),
    ],
)
def test_bad_gather_index(index, message):
    m = gdag.Model()
    u = m.normal("u", plate=m.plate("g", 3))
    with pytest.raises(gdag.ModelSpecError, match=re.escape(message)):
        u[index]


def test_mean_length_must_match_plate():
    m = gdag.Model()
    u = m.normal("u", plate=m.plate("g", 3))
    with pytest.raises(gdag.ModelSpecError, match=re.escape("Node `y` has 4 entries but its mean has length 2.")):
        m.normal("y", mean=u[np.array([0, 1])], plate=m.plate("obs", 4))


def test_mismatched_lengths_in_a_sum():
    m = gdag.Model()
    u = m.normal("u", plate=m.plate("g", 3))
    with pytest.raises(gdag.ModelSpecError, match="Cannot combine expressions of lengths 3 and 2"):
        u + np.ones(2)


@pytest.mark.parametrize("W", [np.ones((4, 2)), sp.csr_matrix(np.ones((4, 2)))])
def test_design_matrix_shape(W):
    m = gdag.Model()
    beta = m.param("beta", size=3)
    with pytest.raises(gdag.ModelSpecError, match=re.escape("The design matrix for `beta` has 2 columns but `beta` has 3 entries.")):
        gdag.dot(W, beta)


def test_design_matrix_dtype_and_values():
    m = gdag.Model()
    beta = m.param("beta", size=2)
    with pytest.raises(gdag.ModelSpecError, match="must be a real 2-d array"):
        gdag.dot(np.array([["a", "b"]]), beta)
    with pytest.raises(gdag.ModelSpecError, match="NaN or infinite"):
        gdag.dot(np.array([[1.0, np.nan]]), beta)


def test_duplicate_and_invalid_names(romcom):
    with pytest.raises(gdag.ModelSpecError, match=re.escape("The name `R` is already declared in model `romcom`")):
        romcom.normal("R")
    with pytest.raises(gdag.ModelSpecError, match=re.escape("The name `R_i` is already declared")):
        romcom.param("R_i")
    with pytest.raises(gdag.ModelSpecError, match="must be a Python identifier"):
        romcom.normal("my node")


def test_empty_plate():
    m = gdag.Model()
    with pytest.raises(gdag.ModelSpecError, match=re.escape("Plate `g` has size 0; a plate needs at least one entry.")):
        m.plate("g", 0)


def test_nonlinear_products():
    m = gdag.Model()
    a, b = m.normal("a"), m.normal("b")
    rho, tau = m.param("rho"), m.param("tau")
    with pytest.raises(gdag.ModelSpecError, match="is not linear"):
        a * b
    with pytest.raises(gdag.ModelSpecError, match="product of parameters `tau` and `rho`"):
        tau * (rho * a)
    with pytest.raises(gdag.ModelSpecError, match="Dividing by `b` is not linear"):
        a / b


def test_unknown_names_in_data_and_queries(romcom):
    with pytest.raises(gdag.DataError, match=re.escape("`data` names `Y`, which is not a node of model `romcom`.")):
        romcom.posterior({"Y": np.zeros(5)})
    post = romcom.posterior({"X": np.zeros(5)})
    with pytest.raises(gdag.DataError, match=re.escape("This posterior has no node `Z`")):
        post.mean("Z")


@pytest.mark.parametrize(
    "value, message",
    [
        (np.zeros(4), "Data for node `X` has shape (4,); it needs 5 values (NaN for unobserved entries)."),
        (np.array([0, 0, np.inf, 0, 0]), "Data for node `X` has infinite values at entries [2]"),
        (np.array(["a"] * 5), "Data for node `X` must be numeric; got dtype <U1."),
        (np.array([True] * 5), "Data for node `X` must be numeric; got dtype bool."),
        ("3.0", "Data for node `X` must be numeric; got '3.0'."),
    ],
)
def test_bad_data(romcom, value, message):
    with pytest.raises(gdag.DataError, match=re.escape(message)):
        romcom.posterior({"X": value})


def test_observing_a_deterministic_node():
    m = gdag.Model()
    a = m.normal("a")
    m.normal("b", mean=2 * a, sd=0)
    with pytest.raises(gdag.DataError, match="Node `b` has sd 0 at entries \\[0\\], so it is deterministic"):
        m.posterior({"b": 1.0})


def test_parameter_values():
    m = gdag.Model("fx")
    beta = m.param("beta")
    s = m.param("s", positive=True)
    m.normal("y", mean=beta, sd=s)
    with pytest.raises(gdag.ParamError, match=re.escape("No value for parameters `beta`, `s`.")):
        m.posterior({"y": 1.0})
    with pytest.raises(gdag.ParamError, match=re.escape("Parameter `s` is positive; got -1.0.")):
        m.posterior({"y": 1.0}, params={"beta": 0.0, "s": -1.0})
    with pytest.raises(gdag.ParamError, match=re.escape("`params` names `gamma`, which is not a parameter")):
        m.posterior({"y": 1.0}, params={"gamma": 1.0})
    with pytest.raises(gdag.ParamError, match=re.escape("Parameter `beta` has size 1; its value has shape (2,).")):
        m.posterior({"y": 1.0}, params={"beta": [1.0, 2.0], "s": 1.0})
    with pytest.raises(gdag.ParamError, match="`beta` must be numeric"):
        m.posterior({"y": 1.0}, params={"beta": "x", "s": 1.0})


def test_self_reference_cycles_are_named():
    m = gdag.Model()
    t = m.plate("t", 4)
    with pytest.raises(gdag.CycleError, match=re.escape("`x[t=2]` depends on itself")):
        m.normal("x", mean=lambda x: 0.5 * x.take(np.array([0, 0, 2, 1]), where=np.array([False, True, True, True])), plate=t)
    with pytest.raises(gdag.CycleError, match=re.escape("The model has a cycle: `y[t=2] -> y[t=1] -> y[t=2]`")):
        m.normal("y", mean=lambda y: y.take(np.array([0, 2, 1, 2]), where=np.array([False, True, True, True])), plate=t)
    # a failed declaration leaves nothing behind
    assert "x" not in m.nodes and "y" not in m.nodes


def test_self_reference_forward_in_index_order_is_fine():
    m = gdag.Model()
    t = m.plate("t", 3)
    x = m.normal("x", mean=lambda x: x.take(np.array([1, 2, 0]), where=np.array([True, True, False])), plate=t)
    post = m.posterior({"x": [np.nan, np.nan, 1.0]})
    assert post.mean(x)[0] == pytest.approx(1.0)


def test_plate_and_model_ownership():
    m1, m2 = gdag.Model("one"), gdag.Model("two")
    p = m1.plate("p", 2)
    a = m1.normal("a")
    with pytest.raises(gdag.ModelSpecError, match="must be a plate declared on this model"):
        m2.normal("y", plate=p)
    with pytest.raises(gdag.ModelSpecError, match="uses `a` from another model"):
        m2.normal("y", mean=a)


def test_nodes_and_parameters_as_keys():
    m = gdag.Model("keys")
    mu = m.param("mu")
    y = m.normal("y", mean=mu, sd=1.0, plate=m.plate("o", 3))
    by_object = m.posterior({y: [1.0, np.nan, 2.0]}, params={mu: 0.5})
    by_name = m.posterior({"y": [1.0, np.nan, 2.0]}, params={"mu": 0.5})
    np.testing.assert_array_equal(by_object.mean(y), by_name.mean("y"))
    other = gdag.Model("other")
    z = other.normal("z")
    with pytest.raises(gdag.DataError, match=re.escape("`data` uses `z` from another model than `keys`.")):
        m.posterior({z: 1.0}, params={mu: 0.5})


def test_missing_plate_is_suggested():
    m = gdag.Model()
    u = m.normal("u", plate=m.plate("g", 4))
    with pytest.raises(gdag.ModelSpecError, match=re.escape("Did you forget `plate=`?")):
        m.normal("y", mean=u[np.arange(4)], sd=1.0)


def test_unknown_fit_option_is_a_fit_error():
    m = gdag.Model()
    mu = m.param("mu")
    m.normal("y", mean=mu, sd=1.0, plate=m.plate("o", 3))
    with pytest.raises(gdag.FitError, match=re.escape("m.fit() has no option `tolerance`")):
        m.fit({"y": [1.0, 2.0, 3.0]}, method="ml", tolerance=1e-3)


def test_model_repr():
    m = gdag.Model("r")
    m.normal("a")
    assert repr(m) == "<gdag.Model `r`: 0 plates, 1 nodes, 0 parameters>"


def test_a_nan_covariate_is_named_with_its_entry_and_what_to_do():
    m = gdag.Model()
    with pytest.raises(gdag.ModelSpecError, match=r"array multiplying an expression in `b` has NaN or infinite "
                                                  r"entries \(1, the first at entry 1\); a covariate must be known"):
        m.param("b") * np.array([1.0, np.nan, 2.0])
