"""Observations on a Dask cluster (gdag.distributed, issue 12): the same answers as in memory, from row sums."""

import numpy as np
import pandas as pd
import pytest

import gdag
from gdag import distributed as gd

dask = pytest.importorskip("dask")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

TOL = 1e-12


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def crossed_frame(n=6000, seed=0, missing=0.0):
    rng = np.random.default_rng(seed)
    na, nb = 40, 25
    a, b = rng.integers(0, na, n), rng.integers(0, nb, n)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(size=na)[a] + 0.7 * rng.normal(size=nb)[b] + 0.4 * rng.normal(size=na)[a] * x \
        + rng.normal(size=n)
    y[rng.random(n) < missing] = np.nan
    c = np.array(["lo", "mid", "hi"])[rng.integers(0, 3, n)]
    return pd.DataFrame({"y": y, "x": x, "a": np.array([f"a{i:02d}" for i in range(na)])[a], "b": b, "c": c})


PARAMS = {"mu": 1.0, "beta": 0.5, "sd_a": 1.0, "sd_b": 0.7, "sigma": 1.1}


def latent(lv):
    m = gdag.Model("crossed")
    m.param("mu"), m.param("beta")
    pa = m.plate("a", len(lv["a"]), labels=lv["a"])
    pb = m.plate("b", len(lv["b"]), labels=lv["b"])
    m.normal("u_a", 0.0, m.param("sd_a", positive=True), plate=pa)
    m.normal("u_b", 0.0, m.param("sd_b", positive=True), plate=pb)
    m.param("sigma", positive=True)
    return m


def rows(m, part):
    obs = m.plate("obs", len(part))
    b = m.plates["b"].labels.get_indexer(part["b"])  # integer labels: gathers read integers as positions
    mean = m.params["mu"] + m.params["beta"] * part["x"].to_numpy() + m.nodes["u_a"][part["a"]] + m.nodes["u_b"][b]
    m.normal("y", mean, m.params["sigma"], plate=obs)


def relative(a, b):
    a, b = np.atleast_1d(a), np.atleast_1d(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def assert_same_posterior(post, ref, nodes):
    for name in nodes:
        assert relative(post.mean(name), ref.mean(name)) < TOL, name
        assert relative(post.sd(name), ref.sd(name)) < TOL, name
    assert abs(post.log_evidence / ref.log_evidence - 1) < TOL


def in_memory(df, lv):
    m = latent(lv)
    rows(m, df)
    return m.posterior({"y": df["y"].to_numpy()}, params=PARAMS)


def test_dsl_posterior_equals_in_memory_for_any_partitioning(client):
    df = crossed_frame()
    ref = None
    for k in (1, 3, 7):
        ddf = dd.from_pandas(df, npartitions=k)
        lv = gd.levels_of({"a": ddf["a"], "b": ddf["b"]})
        assert list(lv["a"]) == sorted(df["a"].unique()) and list(lv["b"]) == sorted(df["b"].unique())
        ref = ref or in_memory(df, lv)
        post = gd.posterior(latent(lv), ddf, rows, params=PARAMS)
        assert_same_posterior(post, ref, ["u_a", "u_b"])
        assert post.rows_count == {"y": len(df)}


def test_same_partitioning_gives_identical_bits(client):
    ddf = dd.from_pandas(crossed_frame(), npartitions=11)
    lv = gd.levels_of({"a": ddf["a"], "b": ddf["b"]})
    one = gd.posterior(latent(lv), ddf, rows, params=PARAMS)
    two = gd.posterior(latent(lv), ddf, rows, params=PARAMS, fan_in=8, lanes=16)
    assert np.array_equal(one.mean("u_a"), two.mean("u_a")) and np.array_equal(one.sd("u_b"), two.sd("u_b"))
    assert one.log_evidence == two.log_evidence
    # the tree, not the workers' order, fixes the sums: a single-threaded scheduler gives the same bits
    with dask.config.set(scheduler="sync"):
        three = gd.posterior(latent(lv), ddf, rows, params=PARAMS)
    assert np.array_equal(one.mean("u_a"), three.mean("u_a")) and one.log_evidence == three.log_evidence


def test_tree_sum_is_a_fixed_tree():
    parts = [dask.delayed(float)(v) for v in (1e16, 1.0, -1e16, 1.0, 3.0)]
    assert dask.compute(gd.tree_sum(parts, fan_in=2), scheduler="sync")[0] == ((1e16 + 1.0) + (-1e16 + 1.0)) + 3.0


def test_lanes_fold_partitions_in_a_fixed_order():
    df = pd.DataFrame({"v": [1e16, 1.0, -1e16, 1.0, 3.0, 5.0, -2.0]})
    ddf = dd.from_pandas(df, npartitions=7, sort=False)
    total = gd.reduce_partitions(lambda part, shared: float(part["v"].sum()), ddf, None, lanes=2, fan_in=2)
    lane0, lane1 = ((1e16 + -1e16) + 3.0) + -2.0, (1.0 + 1.0) + 5.0  # partitions 0, 2, 4, 6 and 1, 3, 5
    assert dask.compute(total, scheduler="sync")[0] == lane0 + lane1


def test_levels_only_in_some_partitions(client):
    df = crossed_frame(n=3000)
    df.loc[df.index[-40:], "a"] = "zz_late"  # a level of the last partition only
    df.loc[df.index[:30], "b"] = 99
    ddf = dd.from_pandas(df, npartitions=4)
    lv = gd.levels_of({"a": ddf["a"], "b": ddf["b"]})
    assert lv["a"][-1] == "zz_late" and lv["b"][-1] == 99
    post = gd.posterior(latent(lv), ddf, rows, params=PARAMS)
    assert_same_posterior(post, in_memory(df, lv), ["u_a", "u_b"])


def test_categorical_levels_keep_their_order(client):
    df = crossed_frame(n=2000)
    df["a"] = pd.Categorical(df["a"], categories=sorted(df["a"].unique(), reverse=True) + ["unused"])
    ddf = dd.from_pandas(df, npartitions=3)
    assert list(gd.levels(ddf["a"])) == list(df["a"].cat.categories)
    assert list(gd.levels(ddf["a"], drop_unused=True)) == list(df["a"].cat.categories[:-1])
    with pytest.raises(gdag.DataError, match="`a` has 2 missing labels"):
        gd.levels(dd.from_pandas(df.assign(a=df["a"].where(df.index > 1)), npartitions=2)["a"])


def test_fitted_values_and_residuals_are_a_second_lazy_pass(client):
    df = crossed_frame(n=2000)
    ddf = dd.from_pandas(df, npartitions=3)
    lv = gd.levels_of({"a": ddf["a"], "b": ddf["b"]})
    post = gd.posterior(latent(lv), ddf, rows, params=PARAMS)
    out = gd.fitted(post, ddf, rows)
    assert isinstance(out, dd.DataFrame) and out.npartitions == 3
    out = out.compute()
    ref = in_memory(df, lv)
    codes_a, codes_b = lv["a"].get_indexer(df["a"]), lv["b"].get_indexer(df["b"])
    expected = 1.0 + 0.5 * df["x"].to_numpy() + ref.mean("u_a")[codes_a] + ref.mean("u_b")[codes_b]
    assert relative(out["y_fitted"].to_numpy(), expected) < TOL
    assert np.allclose(out["y_residual"].to_numpy(), df["y"].to_numpy() - out["y_fitted"].to_numpy(), rtol=0, atol=1e-14)
    assert out.index.equals(df.index)


def test_the_rows_stay_on_the_cluster(client):
    ddf = dd.from_pandas(crossed_frame(n=1000), npartitions=2)
    lv = gd.levels_of({"a": ddf["a"], "b": ddf["b"]})
    post = gd.posterior(latent(lv), ddf, rows, params=PARAMS)
    with pytest.raises(gdag.DataError, match="`y` is observed data on the Dask cluster"):
        post.mean("y")
    draws = post.sample(3, seed=0)
    assert set(draws) == {"u_a", "u_b"}
    assert list(post.to_frame()["node"].unique()) == ["u_a", "u_b"]


# ------------------------------------------------------------------ refusals, before the reduction


def test_an_observed_non_leaf_family_is_refused(client):
    ddf = dd.from_pandas(crossed_frame(n=500).assign(z=1.0), npartitions=2)
    lv = gd.levels_of({"a": ddf["a"], "b": ddf["b"]})

    def two_levels(m, part):
        obs = m.plate("obs", len(part))
        y = m.normal("y", m.params["mu"] + m.nodes["u_a"][part["a"]], m.params["sigma"], plate=obs)
        m.normal("z", 2.0 * y, 1.0, plate=obs)

    with pytest.raises(gdag.ModelSpecError, match="The family `y` is observed on the cluster and `z` depends on the "
                                                 "observed family `y`"):
        gd.posterior(latent(lv), ddf, two_levels, params=PARAMS)


def test_a_parameter_multiplying_an_observed_term_is_refused(client):
    ddf = dd.from_pandas(crossed_frame(n=500), npartitions=2)
    lv = gd.levels_of({"a": ddf["a"], "b": ddf["b"]})

    def scaled(m, part):
        obs = m.plate("obs", len(part))
        m.normal("y", m.params["beta"] * m.nodes["u_a"][part["a"]], m.params["sigma"], plate=obs)

    with pytest.raises(gdag.ModelSpecError, match="The family `y` has the parameter `beta` multiplying its term in `u_a`"):
        gd.posterior(latent(lv), ddf, scaled, params=PARAMS)


def test_rows_without_data_and_new_parameters_are_refused(client):
    ddf = dd.from_pandas(crossed_frame(n=500), npartitions=2)
    lv = gd.levels_of({"a": ddf["a"], "b": ddf["b"]})

    def unnamed(m, part):
        m.normal("score", m.nodes["u_a"][part["a"]], 1.0, plate=m.plate("obs", len(part)))

    with pytest.raises(gdag.DataError, match="The family `score` declared by rows\\(\\) has no data"):
        gd.posterior(latent(lv), ddf, unnamed, params=PARAMS)

    def new_param(m, part):
        m.normal("y", m.param("extra") + m.nodes["u_a"][part["a"]], 1.0, plate=m.plate("obs", len(part)))

    with pytest.raises(gdag.ModelSpecError, match="rows\\(\\) declared the parameter `extra`"):
        gd.posterior(latent(lv), ddf, new_param, params=PARAMS)
    with pytest.raises(gdag.DataError, match="must be a dask.dataframe.DataFrame"):
        gd.posterior(latent(lv), crossed_frame(n=10), rows, params=PARAMS)


# ------------------------------------------------------------------ formulas


FORMULAS = [
    "y ~ x + (1 | a) + (1 | b)",  # crossed
    "y ~ x + (1 | a/b)",  # nested
    "y ~ x + c + (x | a)",  # correlated slopes, a categorical fixed effect from strings
    "y ~ x + (1 | a:b)",
]


@pytest.mark.parametrize("formula", FORMULAS)
def test_formula_posteriors_equal_in_memory(client, formula):
    df = crossed_frame(n=5000, missing=0.05)  # missing responses: rows left out, as in memory
    ddf = dd.from_pandas(df, npartitions=3)
    md, mm = gdag.from_formula(formula, ddf), gdag.from_formula(formula, df)
    assert isinstance(md, gd.DaskModel) and md.design.rows is None
    assert [(g.name, list(g.labels)) for g in md.design.groups] == [(g.name, list(g.labels)) for g in mm.design.groups]
    assert md.design.fixed_names == mm.design.fixed_names
    params = {k: (0.8 if p.positive else 0.3) if p.is_scalar else np.linspace(-1, 1, p.size) for k, p in mm.params.items()}
    post = md.posterior(ddf, params=params)
    ref = mm.posterior(mm.design.data, params=params)
    assert_same_posterior(post, ref, list(md.nodes))
    assert post.rows_count == {mm.design.response: len(mm.design.rows)}


# ------------------------------------------------------------------ fits


def assert_same_fit(fd, fm, tol=1e-10):
    assert fd.converged and fm.converged
    assert abs(fd.loglik - fm.loglik) <= tol * abs(fm.loglik)
    for k, v in fm.params.items():
        assert relative(fd.params[k], v) < tol, k
    for k, v in fm.stderr.items():
        assert relative(fd.stderr[k], v) < tol, k
    assert fd.nobs == fm.nobs


@pytest.mark.parametrize("method", ["ml", "reml"])
@pytest.mark.parametrize("formula", FORMULAS[:3])
def test_formula_fits_equal_in_memory(client, formula, method):
    df = crossed_frame(n=5000, missing=0.05)
    ddf = dd.from_pandas(df, npartitions=3)
    fd, fm = gdag.lmer(formula, ddf, method=method), gdag.lmer(formula, df, method=method)
    assert_same_fit(fd, fm)
    assert fd.design.partition_rows is not None
    for name in fm.posterior._cm.family_names:
        assert relative(fd.posterior.mean(name), fm.posterior.mean(name)) < 1e-10
        assert relative(fd.posterior.sd(name), fm.posterior.sd(name)) < 1e-10
    pd.testing.assert_frame_equal(fd.varcorr(), fm.varcorr(), rtol=1e-10)
    pd.testing.assert_frame_equal(fd.fixef(), fm.fixef(), rtol=1e-10)


def test_fit_is_the_same_for_any_partitioning_and_identical_on_repeat(client):
    df = crossed_frame(n=4000)
    fits = [gdag.lmer("y ~ x + (x | a) + (1 | b)", dd.from_pandas(df, npartitions=k), method="ml") for k in (1, 4, 9)]
    for other in fits[1:]:
        assert_same_fit(other, fits[0], tol=1e-12)
    again = gdag.lmer("y ~ x + (x | a) + (1 | b)", dd.from_pandas(df, npartitions=9), method="ml")
    assert again.loglik == fits[2].loglik and all(np.array_equal(again.params[k], v) for k, v in fits[2].params.items())


def test_dsl_fit_and_fitted_values(client):
    df = crossed_frame(n=5000)
    ddf = dd.from_pandas(df, npartitions=3)
    lv = gd.levels_of({"a": ddf["a"], "b": ddf["b"]})
    fd = gd.fit(latent(lv), ddf, rows, method="reml")
    full = latent(lv)
    rows(full, df)
    fm = full.fit({"y": df["y"].to_numpy()}, method="reml")
    assert_same_fit(fd, fm)
    out = gd.fitted(fd, ddf, rows).compute()
    codes_a, codes_b = lv["a"].get_indexer(df["a"]), lv["b"].get_indexer(df["b"])
    post = fm.posterior
    expected = fm.params["mu"] + fm.params["beta"] * df["x"].to_numpy() + post.mean("u_a")[codes_a] + post.mean("u_b")[codes_b]
    assert relative(out["y_fitted"].to_numpy(), expected) < 1e-10


def test_formula_fitted_values_from_a_fit(client):
    df = crossed_frame(n=3000, missing=0.05)
    ddf = dd.from_pandas(df, npartitions=3)
    fd, fm = gdag.lmer("y ~ x + (x | a)", ddf, method="ml"), gdag.lmer("y ~ x + (x | a)", df, method="ml")
    out = gd.fitted(fd, ddf).compute()
    assert list(out.columns) == ["y_fitted", "y_residual"]
    assert out.index.equals(fm.design.rows)
    assert relative(out["y_fitted"].to_numpy(), fm.fitted().to_numpy()) < 1e-10
    assert relative(out["y_residual"].to_numpy(), fm.residuals().to_numpy()) < 1e-9
    lazy = fd.fitted()
    assert isinstance(lazy, dd.Series) and relative(lazy.compute().to_numpy(), fm.fitted().to_numpy()) < 1e-10
    assert relative(fd.residuals().compute().to_numpy(), fm.residuals().to_numpy()) < 1e-9
    with pytest.raises(gdag.FitError, match="simulate\\(\\) of a fit on a Dask cluster"):
        fd.simulate(2)
    assert relative(fd.predict(df.head()).to_numpy(), fm.predict(df.head())["mean"].to_numpy()) < 1e-10


def test_the_docs_example_runs(tmp_path):
    """docs/larger-than-memory.md's first example, as a script (its own LocalCluster, under the __main__ guard)."""
    import os
    import re
    import subprocess
    import sys

    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "larger-than-memory.md")) as f:
        page = f.read()
    code = re.findall(r"```python\n(.*?)```", page, re.S)[0]
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Linear mixed model fit by maximum likelihood" in out.stdout and "Number of obs: 100000" in out.stdout


def test_a_dsl_model_given_a_dask_frame_is_pointed_to_its_road():
    """m.posterior(ddf) on a DSL model said "must be a mapping ...; got DataFrame": it names gdag.distributed."""
    ddf = dd.from_pandas(pd.DataFrame({"y": np.arange(6.0)}), npartitions=2)
    m = gdag.Model("dsl")
    m.normal("y", 0.0, 1.0, plate=m.plate("obs", 6))
    for call in (lambda: m.posterior(ddf), lambda: m.fit(ddf)):
        with pytest.raises(gdag.DataError, match=r"gdag.distributed.posterior\(m, ddf, rows\)"):
            call()


def test_a_fixed_effect_the_first_rows_do_not_see_is_fitted(client):
    """Dask user trial: the roles came from the first 65,536 rows, where a later period's indicator is all zero,
    and the fit raised "Parameter entry `z` appears in no mean"; every entry of a parameter in the leaves' means
    is a fixed effect, and the whole pass says what the data see."""
    rng = np.random.default_rng(0)
    n = 80_000
    g, x = rng.integers(0, 50, n), rng.normal(size=n)
    z = (np.arange(n) >= 70_000).astype(float)
    df = pd.DataFrame({"y": x + 0.5 * z + rng.normal(size=50)[g] + rng.normal(size=n), "x": x, "z": z, "g": g})
    on_cluster = gdag.lmer("y ~ 1 + x + z + (1 | g)", dd.from_pandas(df, npartitions=2), method="ml")
    in_memory = gdag.lmer("y ~ 1 + x + z + (1 | g)", df, method="ml")
    assert_same_fit(on_cluster, in_memory)


def intercepts_fit(seed: int):
    """3000 rows of ``y ~ x + (1 | g)`` (30 groups) and their ML fit on the cluster, 3 partitions."""
    rng = np.random.default_rng(seed)
    n = 3000
    g, x = rng.integers(0, 30, n), rng.normal(size=n)
    df = pd.DataFrame({"y": x + rng.normal(size=30)[g] + rng.normal(size=n), "x": x, "g": g})
    return df, gdag.lmer("y ~ x + (1 | g)", dd.from_pandas(df, npartitions=3), method="ml")


def test_fitted_on_new_rows_without_the_response_predicts_their_means(client):
    """Dask user trial: gd.fitted(fit, new_ddf) raised a raw KeyError without the response column."""
    df, fit = intercepts_fit(0)
    new = df[["x", "g"]].head(50)
    out = gd.fitted(fit, dd.from_pandas(new, npartitions=2)).compute()
    expected = gdag.lmer("y ~ x + (1 | g)", df, method="ml").predict(new)["mean"].to_numpy()
    np.testing.assert_allclose(out["y_fitted"].to_numpy(), expected, rtol=1e-10)
    assert out["y_residual"].isna().all()


def test_a_transform_with_statistics_over_the_rows_is_refused(client):
    """Dask user trial: center(x) failed with "name 'x' is not defined"; its mean would come from the first rows."""
    df = pd.DataFrame({"y": np.arange(40.0), "x": np.arange(40.0) % 7, "g": np.arange(40) % 4})
    with pytest.raises(gdag.ModelSpecError, match=r"uses center\(\), whose statistics .* come from all the rows"):
        gdag.from_formula("y ~ center(x) + (1 | g)", dd.from_pandas(df, npartitions=2))


def test_a_dask_fit_predicts_means_of_pandas_and_dask_rows(client):
    """Dask user trial: fit.predict(pandas_df) was refused with a message about posteriors."""
    df, fit = intercepts_fit(1)
    expected = gdag.lmer("y ~ x + (1 | g)", df, method="ml").predict(df.head(40))["mean"].to_numpy()
    np.testing.assert_allclose(fit.predict(df.head(40)).to_numpy(), expected, rtol=1e-10)
    lazy = fit.predict(dd.from_pandas(df.head(40)[["x", "g"]], npartitions=2))
    np.testing.assert_allclose(lazy.compute().to_numpy(), expected, rtol=1e-10)
