"""pandas in: DataFrames as data, Series in expressions, group columns as labelled plates."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gdag

DATA = Path(__file__).parent / "data"


def sleepstudy_frame():
    """lme4's sleepstudy as lme4 holds it: Subject a factor of its labels ("308", ...)."""
    d = pd.read_csv(DATA / "sleepstudy.csv")
    levels = json.loads((DATA / "sleepstudy_reference.json").read_text())["reml"]["ranef"]["subject"]["levels"]
    subject = pd.Categorical.from_codes(d["subject"].to_numpy(), categories=levels)
    return pd.DataFrame({"Reaction": d["reaction"], "Days": d["days"], "Subject": subject})


def small_model(codes_or_labels, days, n_groups=None, labels=None):
    m = gdag.Model("small")
    g = m.plate("g", n_groups or len(labels), labels=labels)
    u = m.normal("u", 0.0, 2.0, plate=g)
    m.normal("y", mean=days * u[codes_or_labels] + 1.0, sd=0.5, plate=m.plate("obs", len(days)))
    return m


def test_a_dataframe_is_data_and_its_other_columns_are_ignored():
    df = pd.DataFrame({"y": [1.0, np.nan, 3.0], "x": [0.1, 0.2, 0.3], "label": ["a", "b", "c"]})
    m = gdag.Model()
    mu = m.normal("mu", 0.0, 1.0)
    m.normal("y", mean=mu + df["x"], sd=1.0, plate=m.plate("obs", 3))
    from_frame, from_dict = m.posterior(df), m.posterior({"y": df["y"].to_numpy()})
    np.testing.assert_array_equal(from_frame.mean("y"), from_dict.mean("y"))
    assert from_frame.log_evidence == from_dict.log_evidence


def test_fit_takes_a_dataframe_and_a_series_on_the_left_of_an_expression():
    df = sleepstudy_frame()
    m = gdag.Model("sleepstudy")
    S, codes = m.plate_from(df["Subject"])
    b0, b1, rho = m.param("b0"), m.param("b1"), m.param("rho")
    u0 = m.normal("u0", 0.0, m.param("s0", positive=True), plate=S)
    u1 = m.normal("u1", rho * u0, m.param("s1", positive=True), plate=S)
    mean = b0 + df.Days * b1 + u0[df.Subject] + df.Days * u1[codes]  # Series on the left, labels as index
    assert isinstance(df.Days * u1[codes], gdag.Expr) and isinstance(df.Days + u1[codes], gdag.Expr)
    m.normal("Reaction", mean, m.param("sigma", positive=True), plate=m.plate("obs", len(df)))
    fit = m.fit(df)
    ref = json.loads((DATA / "sleepstudy_reference.json").read_text())["reml"]
    assert fit.loglik == pytest.approx(ref["loglik"], rel=1e-6)


@pytest.mark.parametrize("left", [
    lambda s, e: s * e, lambda s, e: s + e, lambda s, e: s - e, lambda s, e: s.to_numpy() * e,
])
def test_expressions_win_over_pandas_and_numpy_on_either_side(left):
    m = gdag.Model()
    u = m.normal("u", 0.0, 1.0, plate=m.plate("g", 2))
    s = pd.Series([1.0, 2.0, 3.0], index=[10, 11, 12])  # the index is not aligned on: positions count
    e = left(s, u[np.array([0, 1, 1])])
    assert isinstance(e, gdag.Expr) and e.length == 3


def test_plate_from_keeps_levels_as_r_factor_makes_them():
    m = gdag.Model()
    cat = pd.Series(pd.Categorical(["lo", "hi", "lo"], categories=["lo", "mid", "hi"]), name="dose")
    plate, codes = m.plate_from(cat)
    assert plate.name == "dose" and plate.size == 3 and list(plate.labels) == ["lo", "mid", "hi"]
    assert codes.tolist() == [0, 2, 0] and codes.dtype == np.int64
    plate, codes = m.plate_from(["b", "a", "c", "a"], name="letters")  # sorted, as factor() sorts
    assert list(plate.labels) == ["a", "b", "c"] and codes.tolist() == [1, 0, 2, 0]
    plate, codes = m.plate_from(pd.Series([10, 9, 100], name="num"))  # numbers numerically
    assert list(plate.labels) == [9, 10, 100] and codes.tolist() == [1, 0, 2]


def test_gathering_by_labels_equals_gathering_by_codes():
    days = np.array([1.0, 2.0, 3.0, 4.0])
    labels = ["x", "y", "z"]
    rows = pd.Series(["z", "x", "x", "y"], dtype="string")
    by_label = small_model(rows, days, labels=labels).posterior({"y": [1.0, 2.0, np.nan, 0.5]})
    by_code = small_model(np.array([2, 0, 0, 1]), days, labels=labels).posterior({"y": [1.0, 2.0, np.nan, 0.5]})
    np.testing.assert_array_equal(by_label.mean("u"), by_code.mean("u"))
    np.testing.assert_array_equal(by_label.sd("y"), by_code.sd("y"))


def test_label_errors_say_what_to_do():
    m = gdag.Model()
    u = m.normal("u", 0.0, 1.0, plate=m.plate("g", 2))
    with pytest.raises(gdag.ModelSpecError, match=re.escape("its plate has none. Declare the plate with `plate, codes = m.plate_from(column)`")):
        u[pd.Series(["a", "b"])]
    v = m.normal("v", 0.0, 1.0, plate=m.plate("h", 2, labels=["a", "b"]))
    with pytest.raises(gdag.ModelSpecError, match=re.escape("has 1 label the plate does not have: 'c'.")):
        v[["a", "c", "c"]]
    with pytest.raises(gdag.DataError, match=re.escape("The group `s` has 1 missing label (first at row 1)")):
        m.plate_from(pd.Series(["a", None], name="s"))
    with pytest.raises(gdag.ModelSpecError, match=re.escape("needs `name=`")):
        m.plate_from(np.array(["a", "b"]))
    with pytest.raises(gdag.ModelSpecError, match=re.escape("the label 'a' appears more than once")):
        m.plate("k", 2, labels=["a", "a"])
    with pytest.raises(gdag.ModelSpecError, match=re.escape("has 2 entries but 3 labels")):
        m.plate("k", 2, labels=["a", "b", "c"])


def test_nullable_columns_are_unobserved_where_missing_and_labels_are_not_data():
    m = gdag.Model()
    mu = m.normal("mu", 0.0, 1.0)
    m.normal("y", mean=mu, sd=1.0, plate=m.plate("obs", 3))
    df = pd.DataFrame({"y": pd.array([1.0, None, 2.0], dtype="Float64")})
    post = m.posterior(df)
    assert post.mean("mu") == pytest.approx(m.posterior({"y": [1.0, np.nan, 2.0]}).mean("mu"), rel=1e-15)
    with pytest.raises(gdag.DataError, match="Data for node `y` has non-numeric entries"):
        m.posterior(pd.DataFrame({"y": pd.Categorical(["a", "b", "a"])}))
    with pytest.raises(gdag.DataError, match=re.escape("has the column `y` more than once")):
        m.posterior(pd.DataFrame([[1.0, 2.0, 3.0]], columns=["y", "y", "z"]).iloc[[0, 0, 0]])


def test_labels_survive_to_dict():
    m = gdag.Model()
    plate, codes = m.plate_from(pd.Series(["b", "a"], name="g"))
    m.normal("u", 0.0, 1.0, plate=plate)
    m2 = gdag.Model.from_dict(json.loads(json.dumps(m.to_dict())))
    assert list(m2.plates["g"].labels) == ["a", "b"]
    assert m2.to_dict() == m.to_dict()
