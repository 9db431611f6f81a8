"""Fuzzing with invalid input: every public entry point answers junk with a gdag.ModelError.

Valid random models are checked against the dense oracle in test_posterior.py;
here hypothesis throws junk (wrong shapes, strings, None, nested and ragged
lists, inf, bools, dicts, complex numbers, huge integers, numpy arrays of every
dtype) at data, parameter values, index arrays, sds, plate sizes, names and
query arguments.  Each call must either work (the junk happened to be valid)
or raise a gdag.ModelError subclass: never another exception type, never a
warning (pytest turns warnings into errors), never a non-finite answer.
"""

import os
import re

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gdag

# GDAG_FUZZ_EXAMPLES=5000 runs a deeper search locally; the default keeps the suite fast.
FUZZ = settings(
    max_examples=int(os.environ.get("GDAG_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, 3, 4, 5, -1, 10**30, 10**400, 2**63, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, 1e-200, 1e200, float("nan"), float("inf")]),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.complex_numbers(max_magnitude=10),
    st.sampled_from([object(), Ellipsis, slice(1, 3), np.float32(2.5), np.int8(3), np.bool_(True), np.datetime64("2020-01-01"), range(3)]),
)
ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.uint8, np.bool_, np.complex128, "U3", "O", "M8[D]"]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
)
JUNK = st.recursive(
    st.one_of(SCALARS, ARRAYS),
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
        st.sets(st.integers(0, 5), max_size=3),
    ),
    max_leaves=8,
)
# Junk biased toward "almost right": arrays of about the right length with bad entries.
NEAR = st.one_of(
    hnp.arrays(np.float64, st.integers(0, 7), elements=st.floats(allow_nan=True, allow_infinity=True)),
    hnp.arrays(np.int64, st.integers(0, 7), elements=st.integers(-8, 8)),
    st.lists(st.one_of(st.floats(-3, 3), st.none(), st.just("1.0"), st.booleans(), st.just([1.0])), min_size=0, max_size=7),
    st.lists(st.integers(-(10**20), 10**20), min_size=5, max_size=5),
)
ANY = st.one_of(JUNK, NEAR)

# Junk that happens to be a valid but extreme value (an sd of 1e7 over children with
# sd 0.5) may be ill-conditioned; the AccuracyWarning it then raises is right (see
# test_accuracy.py) and not what these tests are about.
pytestmark = pytest.mark.filterwarnings("ignore::gdag.errors.AccuracyWarning")


def model():
    """A small model with every kind of family: scalar, plated, gathered, parameters, sd parameter, sd 0."""
    m = gdag.Model("fuzz")
    friend = m.plate("friend", 3)
    rating = m.plate("rating", 5)
    beta = m.param("beta", size=2, value=[0.5, -0.5])
    s = m.param("s", positive=True, value=0.8)
    R = m.normal("R", mean=3.0, sd=1.0)
    R_i = m.normal("R_i", mean=R + beta[np.array([0, 1, 0])], sd=s, plate=friend)
    m.normal("T", mean=2.0 * R_i, sd=0.0, plate=friend)
    m.normal("X", mean=R_i[np.array([0, 0, 1, 2, 2])], sd=0.5, plate=rating)
    return m


def answers_or_model_error(action):
    """Run ``action``; a gdag.ModelError is fine, any other exception fails the test."""
    try:
        return action()
    except gdag.ModelError:
        return None


def check_posterior(post):
    """A posterior that was built must give finite answers (or refuse with a gdag error)."""
    if post is None:
        return
    for name in ("R", "R_i", "T", "X"):
        assert np.all(np.isfinite(post.mean(name)))
        v = answers_or_model_error(lambda: post.var(name))
        assert v is None or np.all(np.isfinite(v)) and np.all(np.asarray(v) >= 0)
    answers_or_model_error(lambda: post.log_evidence)


@FUZZ
@given(name=st.sampled_from(["R", "R_i", "X", "T"]), value=ANY)
def test_junk_data_values(name, value):
    m = model()
    check_posterior(answers_or_model_error(lambda: m.posterior({name: value})))


@FUZZ
@given(data=ANY)
def test_junk_data_container(data):
    m = model()
    check_posterior(answers_or_model_error(lambda: m.posterior(data)))


@FUZZ
@given(key=st.one_of(st.text(max_size=4), st.integers(), st.none(), st.just(("X",)), st.floats()), value=ANY)
def test_junk_data_keys(key, value):
    m = model()
    check_posterior(answers_or_model_error(lambda: m.posterior({key: value})))


@FUZZ
@given(name=st.sampled_from(["beta", "s"]), value=ANY, params=ANY)
def test_junk_parameter_values(name, value, params):
    m = model()
    check_posterior(answers_or_model_error(lambda: m.posterior({}, params={name: value})))
    check_posterior(answers_or_model_error(lambda: m.posterior({}, params=params)))
    answers_or_model_error(lambda: m.param("gamma", size=2, value=value))
    answers_or_model_error(lambda: m.param("delta", size=value))
    answers_or_model_error(lambda: m.param("eps", positive=value))


@FUZZ
@given(index=ANY, where=ANY, k=ANY)
def test_junk_indices(index, where, k):
    m = model()
    u = m.nodes["R_i"]
    answers_or_model_error(lambda: u[index])
    answers_or_model_error(lambda: u.take(index, where=where))
    answers_or_model_error(lambda: u.take(np.array([0, 1, 2]), where=where))
    answers_or_model_error(lambda: u.lag(k))
    answers_or_model_error(lambda: m.params["beta"][index])
    answers_or_model_error(lambda: m.plate("g", 3, within=m.plates["friend"], index=index))
    answers_or_model_error(lambda: m.plate("h", 3, within=index, index=[0, 1, 2]))
    answers_or_model_error(lambda: gdag.dot(index, u))
    answers_or_model_error(lambda: gdag.dot(np.ones((4, 3)), index))


@FUZZ
@given(sd=ANY, mean=ANY)
def test_junk_sds_and_means(sd, mean):
    m = model()
    friend = m.plates["friend"]
    node = answers_or_model_error(lambda: m.normal("y", mean=m.nodes["R_i"], sd=sd, plate=friend))
    node2 = answers_or_model_error(lambda: m.normal("z", mean=mean, sd=1.0, plate=friend))
    answers_or_model_error(lambda: m.nodes["R_i"] * mean)
    answers_or_model_error(lambda: m.nodes["R_i"] + mean)
    answers_or_model_error(lambda: mean - m.nodes["R_i"])
    answers_or_model_error(lambda: m.nodes["R_i"] / mean)
    if node is not None or node2 is not None:
        check_posterior(answers_or_model_error(lambda: m.posterior({"X": [1.0, 2.0, np.nan, 0.0, 1.0]})))


@FUZZ
@given(size=ANY, name=ANY)
def test_junk_plate_sizes_and_names(size, name):
    m = model()
    plate = answers_or_model_error(lambda: m.plate("q", size))
    if plate is not None and plate.size <= 50:
        m.normal("w", mean=m.nodes["R"], sd=1.0, plate=plate)
        check_posterior(m.posterior({"w": np.ones(plate.size)}))
    answers_or_model_error(lambda: m.plate(name, 2))
    answers_or_model_error(lambda: m.normal(name))
    answers_or_model_error(lambda: m.param(name))
    answers_or_model_error(lambda: m.normal("v", plate=name))
    answers_or_model_error(lambda: gdag.Model(name))


@pytest.fixture(scope="module")
def posterior():
    return model().posterior({"X": [1.0, 2.0, np.nan, 0.0, 1.0]})


@FUZZ
@given(a=ANY, b=ANY, n=ANY, seed=ANY)
def test_junk_queries(posterior, a, b, n, seed):
    post = posterior
    for query in (post.mean, post.var, post.sd, post.cov, post.summary):
        answers_or_model_error(lambda: query(a))
    answers_or_model_error(lambda: post.cov("R_i", b))
    answers_or_model_error(lambda: post.cov(a, b))
    answers_or_model_error(lambda: post.sample(n, seed=0))
    answers_or_model_error(lambda: post.sample(2, seed=seed))
    answers_or_model_error(lambda: post.sample(2, seed=0, nodes=a))
    answers_or_model_error(lambda: post.summary("R_i", max_rows=n))
    answers_or_model_error(lambda: model().graph(expanded=a))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda p: p.mean(123), gdag.DataError, "This posterior has no node `123`"),
        (lambda p: p.cov("nope"), gdag.DataError, "This posterior has no node `nope`"),
        (lambda p: p.var("beta"), gdag.DataError, "`beta` is a parameter, not a random node"),
        (lambda p: p.sample(-1), gdag.ModelError, "sample(n) needs a positive integer n; got -1."),
        (lambda p: p.sample(2.5), gdag.ModelError, "sample(n) needs a positive integer n; got 2.5."),
        (lambda p: p.sample(10**30), gdag.ModelError, "GB for the draws, more than the"),
        (lambda p: p.sample(2, seed="x"), gdag.ModelError, "sample(seed=...) takes None, a non-negative integer"),
        (lambda p: p.sample(2, nodes=3), gdag.DataError, "sample(nodes=...) takes a node, a name or a list"),
        (lambda p: p.summary("R_i", max_rows="all"), gdag.ModelError, "summary(max_rows=...) needs a non-negative integer"),
    ],
)
def test_bad_queries_are_named(posterior, call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call(posterior)


def test_sample_accepts_a_single_node_or_name(posterior):
    draws = posterior.sample(3, seed=1, nodes="R_i")
    assert list(draws) == ["R_i"] and draws["R_i"].shape == (3, 3)


@pytest.mark.parametrize(
    "value, message",
    [
        ([[1.0], [2.0, 3.0], [1.0], [1.0], [1.0]], "Data for node `X` must be a number or a 1-d array of 5; got a ragged"),
        ([1.0, 2.0, True, 0.0, 1.0], "Data for node `X` must be numeric; it has True/False entries."),
        (np.array([1, 2, 3, 4, 5j]), "Data for node `X` must be real; got complex values."),
        ([10**400] * 5, "Data for node `X` has non-numeric entries."),
        ({"a": 1.0}, "Data for node `X` must be a number or a 1-d array; got a dict."),
        (sp.csr_matrix(np.ones((1, 5))), "Data for node `X` must be a number or a 1-d array; got a csr_matrix."),
    ],
)
def test_odd_data_is_named(value, message):
    with pytest.raises(gdag.DataError, match=re.escape(message)):
        model().posterior({"X": value})


@pytest.mark.parametrize(
    "value, message",
    [
        (True, "The value of parameter `s` must be numeric; got True/False values."),
        (1 + 1j, "The value of parameter `s` must be real; got a complex value."),
        (10**400, "The value of parameter `s` must be numeric"),
    ],
)
def test_odd_parameter_values_are_named(value, message):
    with pytest.raises(gdag.ParamError, match=re.escape(message)):
        model().posterior({}, params={"s": value})


def test_declaration_fixes():
    m = model()
    with pytest.raises(gdag.ModelSpecError, match="gdag accepts at most 2\\*\\*40 entries"):
        m.plate("huge", 2**41)
    with pytest.raises(gdag.ModelSpecError, match="gdag accepts at most 2\\*\\*40 entries"):
        m.param("huge", size=2**41)
    with pytest.raises(gdag.ModelSpecError, match="`positive` must be True or False"):
        m.param("p", positive=np.ones(2))
    with pytest.raises(gdag.ModelSpecError, match="sd must be real"):
        m.normal("c", sd=1 + 1j)
    with pytest.raises(gdag.ModelSpecError, match="got True/False values"):
        m.normal("c", sd=True)
    with pytest.raises(gdag.ModelSpecError, match="array multiplying an expression in `R` must be real"):
        m.nodes["R"] * (1 + 2j)
    with pytest.raises(gdag.ModelSpecError, match="graph\\(expanded=...\\) takes True or False"):
        m.graph(expanded=np.ones(3))
    # a lag longer than the plate leaves every entry without a parent
    lagged = m.nodes["R_i"].lag(10**30)
    assert lagged.terms[0].rows.size == 0
    # an array as `data` is refused with a message, not numpy's truth-value error
    with pytest.raises(gdag.DataError, match="`data` must be a mapping"):
        m.posterior(np.ones(3))


@pytest.mark.parametrize(
    "sd, params, error, message",
    [
        (1e-160, {}, gdag.ModelSpecError, "`y[t=1]` has sd 1e-160, whose variance is 1e-320 in double precision"),
        (1e160, {}, gdag.ModelSpecError, "`y[t=1]` has sd 1e+160, whose variance is inf"),
        (None, {"tau": 1e-200}, gdag.ParamError, "`y[t=0]` has sd (base times parameter value)"),
    ],
)
def test_sds_outside_double_precision_are_refused(sd, params, error, message):
    m = gdag.Model()
    t = m.plate("t", 3)
    tau = m.param("tau", positive=True, value=1.0)
    u = m.normal("u", sd=1.0)
    sds = np.array([1.0, sd, 1.0]) if sd is not None else tau
    m.normal("y", mean=u, sd=sds, plate=t)
    with pytest.raises(error, match=re.escape(message)):
        m.posterior({"y": [0.0, np.nan, 1.0]}, params=params)


def test_overflowing_answers_are_refused_not_returned():
    m = gdag.Model()
    u = m.normal("u", sd=1e150)
    m.normal("y", mean=1e150 * u, sd=1e-150)
    with pytest.raises(gdag.ModelError, match="overflows double precision"):
        m.posterior({"y": 1e300}).mean("u")
    m2 = gdag.Model()
    m2.normal("y", sd=1e-100)
    with pytest.raises(gdag.ModelError, match="The log evidence of `model` overflows double precision"):
        m2.posterior({"y": 1e200}).log_evidence
