"""Independent dense references for tests: random model specs, built two ways.

``build_gdag`` declares a spec through the public DSL; ``dense_joint`` turns
the same spec into the joint mean and covariance with plain loops and numpy,
never touching gdag's compiler.  ``dense_condition`` is textbook Gaussian
conditioning.  Small models only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

import gdag


@dataclass
class FamilySpec:
    name: str
    size: int
    scalar: bool
    offset: np.ndarray
    # (kind, source, index/W, coef, scale_param): kind in gather|broadcast|identity|dense|sparse|param|lag
    terms: list = field(default_factory=list)
    sd: np.ndarray | None = None  # constant sds (zeros allowed)
    sd_param: tuple | None = None  # (param name, base multipliers, param index)


@dataclass
class ModelSpec:
    families: list
    params: dict  # name -> (size, positive, value)


def random_spec(rng: np.random.Generator, max_families: int = 5, allow_deterministic: bool = True) -> ModelSpec:
    """A random small model: gathers, broadcasts, design matrices, params, self-lags, sd 0."""
    params = {
        "beta": (2, False, rng.normal(size=2)),
        "rho": (1, False, rng.normal(size=1)),
        "sigma": (2, True, rng.uniform(0.3, 2.0, size=2)),
    }
    families: list[FamilySpec] = []
    for f in range(int(rng.integers(1, max_families + 1))):
        scalar = rng.random() < 0.25
        size = 1 if scalar else int(rng.integers(1, 7))
        fam = FamilySpec(f"x{f}", size, scalar, rng.normal(size=size) * (rng.random() < 0.7))
        for src in families:
            if rng.random() < 0.5:
                continue
            kind = rng.choice(["gather", "dense", "sparse", "identity_or_broadcast"])
            coef = rng.normal(size=size)
            scale = "rho" if rng.random() < 0.2 else None
            if kind == "gather":
                fam.terms.append(("gather", src.name, rng.integers(0, src.size, size=size), coef, scale))
            elif kind in ("dense", "sparse"):
                W = rng.normal(size=(size, src.size)) * (rng.random((size, src.size)) < 0.6)
                fam.terms.append((kind, src.name, W, None, scale))
            elif src.size == 1:
                fam.terms.append(("broadcast", src.name, None, coef, scale))
            elif src.size == size:
                fam.terms.append(("identity", src.name, None, coef, scale))
        if rng.random() < 0.3:
            fam.terms.append(("param", "beta", rng.integers(0, 2, size=size), rng.normal(size=size), None))
        if size > 1 and rng.random() < 0.3:
            fam.terms.append(("lag", fam.name, None, float(rng.uniform(-0.95, 0.95)), None))
        if rng.random() < 0.25:
            fam.sd_param = ("sigma", rng.uniform(0.5, 1.5, size=size), rng.integers(0, 2, size=size))
        else:
            sd = rng.uniform(0.2, 2.0, size=size)
            if allow_deterministic and rng.random() < 0.2:
                sd[rng.random(size) < 0.5] = 0.0
            fam.sd = sd
        families.append(fam)
    return ModelSpec(families, params)


def build_gdag(spec: ModelSpec, order: list | None = None) -> gdag.Model:
    """Declare ``spec`` through the public DSL."""
    m = gdag.Model("random")
    plist = list(spec.params.items())
    if order is not None:
        plist = [plist[i] for i in order]
    params = {
        name: m.param(name, size=None if size == 1 else size, positive=pos, value=val[0] if size == 1 else val)
        for name, (size, pos, val) in plist
    }
    nodes: dict = {}
    for fam in spec.families:
        plate = None if fam.scalar else m.plate(f"p_{fam.name}", fam.size)

        def mean(self_node, fam=fam):
            expr = fam.offset.copy() if fam.size > 1 else float(fam.offset[0])
            for kind, source, index, coef, scale in fam.terms:
                if kind == "lag":
                    term = coef * self_node.lag(1)
                elif kind == "param":
                    term = coef * params[source][index]
                elif kind == "gather":
                    term = coef * nodes[source][index]
                elif kind == "dense":
                    term = gdag.dot(index, nodes[source])
                elif kind == "sparse":
                    term = gdag.dot(sp.csr_matrix(index), nodes[source])
                else:  # identity or broadcast: coefficient array times the node
                    term = coef * nodes[source]
                if scale is not None:
                    term = params[scale] * term
                expr = expr + term  # numpy array on the left must still build an expression
            return expr

        if fam.sd_param is not None:
            pname, base, pidx = fam.sd_param
            sd = base * params[pname][pidx]
        else:
            sd = fam.sd
        nodes[fam.name] = m.normal(fam.name, mean=mean, sd=sd, plate=plate)
    return m


def dense_joint(spec: ModelSpec):
    """Joint mean, covariance and per-variable offsets of ``spec``, by loops."""
    offsets, n = {}, 0
    for fam in spec.families:
        offsets[fam.name] = n
        n += fam.size
    B = np.zeros((n, n))
    c = np.zeros(n)
    d = np.zeros(n)
    values = {name: val for name, (_, _, val) in spec.params.items()}
    rho = values["rho"][0]
    for fam in spec.families:
        o = offsets[fam.name]
        for i in range(fam.size):
            c[o + i] += fam.offset[i]
        for kind, source, index, coef, scale in fam.terms:
            s = rho if scale is not None else 1.0
            for i in range(fam.size):
                if kind == "param":
                    c[o + i] += coef[i] * values[source][index[i]]
                elif kind == "lag":
                    if i >= 1:
                        B[o + i, o + i - 1] += coef
                elif kind == "gather":
                    B[o + i, offsets[source] + index[i]] += s * coef[i]
                elif kind in ("dense", "sparse"):
                    for j in range(index.shape[1]):
                        B[o + i, offsets[source] + j] += s * index[i, j]
                elif kind == "broadcast":
                    B[o + i, offsets[source]] += s * coef[i]
                else:
                    B[o + i, offsets[source] + i] += s * coef[i]
        for i in range(fam.size):
            if fam.sd_param is not None:
                pname, base, pidx = fam.sd_param
                d[o + i] = (base[i] * values[pname][pidx[i]]) ** 2
            else:
                d[o + i] = fam.sd[i] ** 2
    Ainv = np.linalg.inv(np.eye(n) - B)
    return Ainv @ c, Ainv @ np.diag(d) @ Ainv.T, offsets, d


def dense_condition(mu, Sigma, observed: np.ndarray, x: np.ndarray):
    """Posterior mean, covariance (over all variables) and log p(x_O)."""
    O = np.flatnonzero(observed)
    mean, cov = mu.copy(), Sigma.copy()
    if O.size == 0:
        np.fill_diagonal(cov, np.maximum(np.diag(cov), 0.0))
        return mean, cov, 0.0
    S_oo = Sigma[np.ix_(O, O)]
    S_ao = Sigma[:, O]
    resid = x[O] - mu[O]
    K = np.linalg.solve(S_oo, S_ao.T).T
    mean = mu + K @ resid
    cov = Sigma - K @ S_ao.T
    # observed entries are known exactly; round-off must not leave them (or
    # deterministic entries) a tiny negative variance that sqrt turns into NaN
    mean[O] = x[O]
    cov[O, :] = 0.0
    cov[:, O] = 0.0
    np.fill_diagonal(cov, np.maximum(np.diag(cov), 0.0))
    sign, logdet = np.linalg.slogdet(S_oo)
    assert sign > 0
    loglik = -0.5 * (O.size * np.log(2 * np.pi) + logdet + resid @ np.linalg.solve(S_oo, resid))
    return mean, cov, loglik
