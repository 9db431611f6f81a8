"""Memory guards: the factor's size from the symbolic analysis, refusals that give both numbers, describe()."""

import re

import numpy as np
import pytest
import scipy.sparse as sp
from sksparse import cholmod

import gdag
from gdag import resources


def crossed(n_a=40, n_b=30, n_obs=600, seed=0):
    rng = np.random.default_rng(seed)
    m = gdag.Model("crossed")
    a = m.normal("a", sd=1.0, plate=m.plate("A", n_a))
    b = m.normal("b", sd=1.0, plate=m.plate("B", n_b))
    m.normal("y", mean=a[rng.integers(0, n_a, n_obs)] + b[rng.integers(0, n_b, n_obs)], sd=1.0, plate=m.plate("obs", n_obs))
    return m, rng.normal(size=n_obs)


@pytest.mark.parametrize("n, density", [(1, 1.0), (30, 0.1), (300, 0.01), (2000, 0.002)])
def test_factor_nonzeros_match_cholmod_exactly(n, density):
    A = sp.random(n, n, density=density, random_state=n)
    lower = sp.csc_matrix(sp.tril(A @ A.T + n * sp.eye(n)))
    symbolic = cholmod.analyze(lower, mode="simplicial")  # simplicial: no supernodal padding
    nnz, flops = resources.factor_nonzeros(lower, symbolic.P())
    L = symbolic.cholesky(lower).L()
    assert nnz == L.nnz
    assert flops == pytest.approx(float(np.sum(np.diff(L.indptr).astype(float) ** 2)))


def test_factor_size_of_a_posterior_matches_its_factor(monkeypatch):
    monkeypatch.setattr(gdag.cache, "SHARED_FRACTION", 1.1)  # the per-pattern factor, whose size is estimated
    m, y = crossed()
    post = m.posterior({"y": y})
    # internals: the estimate from the symbolic analysis against the posterior's own Q_UU and factor
    size = post._cond.factor_size()
    L = post._factor.L()  # supernodal or not: explicit zeros are padding
    assert size.nnz_L == L.count_nonzero() or size.nnz_L <= L.nnz
    assert size.n_unobserved == 70 and size.nnz_Q == post._system.Q.nnz


def test_posterior_refused_when_memory_is_short(monkeypatch):
    m, y = crossed()
    monkeypatch.setattr(resources, "available_memory", lambda: 1000.0)
    with pytest.raises(gdag.ModelError, match=r"The posterior of `crossed` needs an estimated [0-9.e-]+ GB \(a Cholesky "
                                             r"factor with \d+ nonzeros for 70 unobserved variables\), more than the "
                                             r"1e-06 GB available \(MemAvailable\)"):
        m.posterior({"y": y})


def test_sample_refused_when_memory_is_short(monkeypatch):
    m, y = crossed()
    post = m.posterior({"y": y})
    monkeypatch.setattr(gdag.resources, "available_memory", lambda: 1e6)
    with pytest.raises(gdag.ModelError, match=re.escape("sample(10000) would need 0.0592 GB for the draws, more than the 0.001 GB")):
        post.sample(10_000)


def test_available_memory_reads_meminfo():
    mem = resources.available_memory()
    assert mem > 0
    with open("/proc/meminfo") as f:
        line = next(line for line in f if line.startswith("MemAvailable:"))
    assert mem == pytest.approx(float(line.split()[1]) * 1024, rel=0.5)


def test_describe_reports_sizes_for_nothing_observed_then_the_last_query():
    m, y = crossed()
    text = m.describe()
    assert "posterior (nothing observed): 670 unobserved; Q_UU has" in text
    assert re.search(r"its Cholesky factor \d+ \([0-9.e+]+ flops\); estimated memory [0-9.e-]+ GB of [0-9.e+]+ GB available", text)
    m.posterior({"y": y})
    text = m.describe()
    assert "posterior (last queried pattern): 70 unobserved" in text
    for family in ("a", "b", "y"):
        assert re.search(rf"\n  {family} +\w+ +\d+ +0", text)
