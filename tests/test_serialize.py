"""Model.to_dict / Model.from_dict: exact JSON round trips, and hostile dicts raise ModelSpecError."""

import collections
import copy
import json
import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gdag
from gdag.graph import build_graph
from gdag.serialize import model_to_dict

from reference import build_gdag, observe_some, random_spec


def json_round_trip(d):
    return json.loads(json.dumps(d, allow_nan=False))


def nested_model():
    """Nested plates with an index, a self-referencing tree, sd 0, a parameter sd and a scale."""
    m = gdag.Model("schools")
    district = m.plate("district", 3)
    school = m.plate("school", 5, within=district, index=np.array([0, 0, 1, 2, 2]))
    sigma = m.param("sigma", positive=True, value=0.7)
    rho = m.param("rho", value=0.4)
    beta = m.param("beta", size=2, value=[1.0, -2.0])
    top = m.normal("top", mean=2.0, sd=1.5)
    d = m.normal("d", mean=top, sd=sigma, plate=district)
    parent = np.array([0, 0, 1, 1, 3])
    s = m.normal(
        "s",
        mean=lambda s: d[school.index] + rho * s.take(parent, where=np.arange(5) > 0)
        + gdag.dot(np.ones((5, 2)), beta),
        sd=np.array([1.0, 0.0, 0.5, 0.5, 0.2]),
        plate=school,
    )
    m.normal("y", mean=0.5 * s, sd=0.1, plate=school)
    return m


def test_round_trip_of_a_nested_model_is_exact():
    m = nested_model()
    d = m.to_dict()
    m2 = gdag.Model.from_dict(json_round_trip(d))
    assert m2.to_dict() == d
    assert m2.plates["school"].within is m2.plates["district"]
    np.testing.assert_array_equal(m2.plates["school"].index, [0, 0, 1, 2, 2])
    data = {"y": [1.0, np.nan, 2.0, 0.5, np.nan], "d": [np.nan, 0.3, np.nan]}
    p1, p2 = m.posterior(data), m2.posterior(data)
    for name in m.nodes:
        np.testing.assert_array_equal(p1.mean(name), p2.mean(name))
        np.testing.assert_array_equal(p1.var(name), p2.var(name))
    assert p1.log_evidence == p2.log_evidence
    assert m2.graph().edges == m.graph().edges


def test_dict_of_a_model_graph_is_the_dict_of_its_model():
    m = nested_model()
    graph = build_graph(m.spec())
    assert model_to_dict(graph) == m.to_dict()
    # the graph's mean terms are the node's, in declaration order (the order fixes the sums in B)
    assert [t.source.name for t in graph.mean_terms("s")] == ["d", "s", "beta"]
    assert all(a is b for a, b in zip(graph.mean_terms("s"), m.nodes["s"].mean.terms))


def test_dict_is_plain_json_types():
    def walk(obj):
        if isinstance(obj, dict):
            assert all(type(k) is str for k in obj)
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
        else:
            assert obj is None or type(obj) in (str, int, float, bool)

    walk(nested_model().to_dict())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_random_models_round_trip_with_identical_posteriors(seed):
    rng = np.random.default_rng(seed)
    spec = random_spec(rng)
    m = build_gdag(spec)
    d = m.to_dict()
    m2 = gdag.Model.from_dict(json_round_trip(d))
    assert m2.to_dict() == d
    data, *_ = observe_some(spec, rng, 0.5)
    p1, p2 = m.posterior(data), m2.posterior(data)
    for fam in spec.families:
        np.testing.assert_array_equal(p1.mean(fam.name), p2.mean(fam.name))
        np.testing.assert_array_equal(p1.var(fam.name), p2.var(fam.name))
    assert p1.log_evidence == p2.log_evidence


# ------------------------------------------------------------ hostile dicts


def edited(path, value=None, delete=False):
    d = nested_model().to_dict()
    obj = d
    for key in path[:-1]:
        obj = obj[key]
    if delete:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value
    return d


NODE_S = 2  # position of node `s` in nested_model's node list


@pytest.mark.parametrize(
    "d, message",
    [
        (edited(("format",), "pickle"), "has format 'pickle' version 1; gdag reads format 'gdag.model' version 1"),
        (edited(("version",), 2), "has format 'gdag.model' version 2"),
        (edited(("version",), True), "version True"),
        (edited(("plates",), delete=True), "The model dict has no `plates` entry."),
        (edited(("plates",), "abc"), "The model dict: `plates` must be a list; got str 'abc'."),
        (edited(("plates", 1, "size"), 5.0), "plates[1]: `size` must be an integer; got float 5.0."),
        (edited(("plates", 1, "size"), True), "plates[1]: `size` must be an integer; got bool True."),
        (edited(("plates", 1, "size"), 10**18), "plate `school` has size 1000000000000000000 but its index has 5 entries."),
        (edited(("plates", 0, "size"), 10**30), "Plate `district` has size 1000000000000000000000000000000"),
        (edited(("plates", 1, "within"), "nowhere"), "plate `school` is within `nowhere`, which is not a plate listed before it."),
        (edited(("plates", 1, "index", 2), 3), "index of plate `school` into `district` has 1 entry outside 0..2"),
        (edited(("plates", 1, "index", 2), "1"), "plates[1]: index must hold integers; entry 2 is str '1'."),
        (edited(("plates", 1, "index", 2), 10**30), "index has an integer too large for an index."),
        (edited(("params", 0, "value", 0), -1.0), "Parameter `sigma` is positive; got"),
        (edited(("params", 0, "value", 0), float("nan")), "params[0]: value must hold finite numbers; entry 0 is nan."),
        (edited(("params", 0, "value", 0), "0.7"), "params[0]: value must hold numbers; entry 0 is str '0.7'."),
        (edited(("params", 2, "size"), 10**9), "parameter `beta` has size 1000000000 but its value has 2 entries."),
        (edited(("params", 0, "scalar"), 1), "params[0]: `scalar` must be true or false; got int 1."),
        (edited(("params", 0, "size"), 2), "parameter `sigma` is scalar but has size 2."),
        (edited(("nodes", NODE_S, "plate"), "classroom"), "node `s` (nodes[2]): plate `classroom` is not listed in `plates`."),
        (edited(("nodes", NODE_S, "mean", "offset"), [0.0]), "node `s` (nodes[2]): the mean offset has 1 entries; the node has 5."),
        (edited(("nodes", NODE_S, "mean", "offset", 0), float("inf")), "mean offset must hold finite numbers; entry 0 is inf."),
        (edited(("nodes", NODE_S, "mean", "offset", 0), 10**400), "mean offset has a number too large for a float."),
        (edited(("nodes", NODE_S, "mean", "terms", 0, "source"), "ghost"), "mean term 0: it refers to `ghost`, which is neither a node nor a parameter."),
        (edited(("nodes", NODE_S, "mean", "terms", 0, "source"), "y"), "The model dict has a cycle: `s -> y -> s`."),
        (edited(("nodes", NODE_S, "mean", "terms", 0, "cols", 0), 7), "mean term 0: cols (entries of `d`): entry 0 is 7, outside 0..2."),
        (edited(("nodes", NODE_S, "mean", "terms", 0, "rows", 0), -1), "mean term 0: rows (entries of `s`): entry 0 is -1, outside 0..4."),
        (edited(("nodes", NODE_S, "mean", "terms", 0, "vals"), [1.0]), "rows, cols and vals must have one entry each per coefficient; got 5, 5 and 1."),
        (edited(("nodes", NODE_S, "mean", "terms", 0, "scale"), "beta"), "its scale `beta` must be a scalar parameter; it has size 2."),
        (edited(("nodes", NODE_S, "mean", "terms", 0, "scale"), "nope"), "its scale `nope` is not a parameter."),
        (edited(("nodes", NODE_S, "mean", "terms", 2, "scale"), "rho"), "parameter `beta` scaled by parameter `rho` is not linear."),
        (edited(("nodes", NODE_S, "sd", "base", 0), -1.0), "sd must be finite and >= 0; entry 0 is -1.0."),
        (edited(("nodes", NODE_S, "sd", "param"), "sigma"), "`param_index` needs 5 entries into `sigma`; got none."),
        (edited(("nodes", 1, "sd", "param"), "rho"), "parameter `rho` is used as an sd, so declare it with positive=True."),
        (edited(("nodes", 1, "sd", "param_index"), [1, 1, 1]), "param_index: entry 0 is 1, outside 0..0."),
        (edited(("nodes", 1, "sd", "param_index"), None), "`param_index` needs 3 entries into `sigma`; got none."),
        (edited(("nodes", 1, "name"), "top"), "The name `top` is already declared"),
        (edited(("nodes", 1, "name"), "1d"), "must be a Python identifier"),
        (edited(("nodes", 1, "name"), None), "nodes[1]: `name` must be a string; got NoneType None."),
        (edited(("nodes", 0, "mean"), delete=True), "node `top` (nodes[0]) has no `mean` entry."),
        (edited(("name",), ""), "A model name must be a non-empty string."),
        (["not", "a", "dict"], "The model dict must be a dict; got list"),
    ],
)
def test_hostile_dicts_raise_model_spec_errors(d, message):
    with pytest.raises(gdag.ModelSpecError if "cycle" not in message else gdag.CycleError, match=re.escape(message)):
        gdag.Model.from_dict(d)


def test_forward_reference_without_a_cycle():
    d = nested_model().to_dict()
    d["nodes"][0], d["nodes"][1] = d["nodes"][1], d["nodes"][0]  # d listed before top
    with pytest.raises(gdag.ModelSpecError, match=re.escape("it refers to node `top`, which is listed after it.")):
        gdag.Model.from_dict(d)


def test_self_reference_cycle_in_a_dict():
    d = nested_model().to_dict()
    term = d["nodes"][NODE_S]["mean"]["terms"][1]
    assert term["source"] == "s"
    term["cols"][0] = term["rows"][0]
    with pytest.raises(gdag.CycleError, match="depends on itself"):
        gdag.Model.from_dict(d)


# --------------------------------------------------- random mutations (fuzz)

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.sampled_from([0, 1, -1, 2, 10**30, float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e308, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.one_of(st.integers(-3, 8), st.floats(-2, 2), st.none(), st.text(max_size=2)), max_size=6),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["s", "d", "top", "y", "sigma", "rho", "beta", "school", "district", "gdag.model"]),
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_dicts(draw):
    if draw(st.booleans()):
        d = nested_model().to_dict()
    else:
        d = build_gdag(random_spec(np.random.default_rng(draw(st.integers(0, 1000))))).to_dict()
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(d))[1:]
        path = draw(st.sampled_from(paths))
        parent = d
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "append", "duplicate", "nudge", "nudge"]))
        value = parent[path[-1]]
        if action == "nudge" and type(value) in (int, float):  # a plausible edit: often still a valid model
            parent[path[-1]] = draw(st.sampled_from([value + 1, value - 1, -value, 0 * value, 2 * value]))
        elif action == "delete":
            del parent[path[-1]]
        elif action == "append" and isinstance(value, list):
            value.append(draw(JUNK))
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(path[-1], copy.deepcopy(parent[path[-1]]))
        else:
            parent[path[-1]] = draw(JUNK)
    return d


def test_mutated_dicts_load_or_raise_model_errors():
    """A mutated dict loads as a valid model, or is refused with an error that says where in the dict.

    Most mutations are refused; the counts make sure the loading side is
    tested too (and that the test cannot pass on refusals alone).
    """
    outcomes = collections.Counter()

    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(d=mutated_dicts())
    def load_or_refuse(d):
        try:
            m = gdag.Model.from_dict(d)
        except (gdag.ModelSpecError, gdag.CycleError) as err:
            assert str(err).startswith("The model dict"), err
            outcomes["refused"] += 1
            return
        outcomes["loaded"] += 1
        # A dict that loads is a valid model: it round-trips and answers (or refuses with a gdag error).
        assert gdag.Model.from_dict(json_round_trip(m.to_dict())).to_dict() == m.to_dict()
        with warnings.catch_warnings():
            # Mutations may make a model ill-conditioned; that warning is not what this test is about.
            warnings.simplefilter("ignore", gdag.AccuracyWarning)
            try:
                m.posterior({})
                outcomes["answered"] += 1
            except gdag.ModelError:
                pass

    load_or_refuse()
    assert outcomes["refused"] >= 1 and outcomes["answered"] >= 1, dict(outcomes)
