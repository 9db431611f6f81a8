"""The dense oracle: every dense Gaussian computation the tests compare gdag against.

numpy and scipy only.  gdag enters solely through its public API: the DSL in
:func:`build_gdag`, which declares a random spec as a gdag model, and a
posterior's queries in the comparison helpers.  The oracle itself works on the
spec, with loops where they make the model's meaning plain, and never touches
gdag's compiler, conditioning or factors.  Small models only.  (The exact rational oracle for extreme sds is
tests/exact.py; matrix-level checks of gdag's linear algebra compare with
``np.linalg`` in their own test files.)

- :func:`random_spec`, :func:`build_gdag`: random model specs, and the same spec declared through gdag.
- :func:`spec_matrices`, :func:`joint_moments`, :func:`dense_joint`: the spec as
  ``x = c + B x + e``, ``e ~ N(0, diag(d))``, and its joint mean and covariance.
- :func:`draw`, :func:`sample_truth`, :func:`observe`, :func:`observe_some`: values and data.
- :func:`dense_condition`, :class:`DensePosterior`: textbook Gaussian conditioning,
  answering gdag.Posterior's queries (mean, var, cov, log_evidence).
- :func:`gls_deviance`: -2 log L (ML) or -2 log L_R (REML) of a linear Gaussian model at its GLS fixed effects.
- :func:`kalman_smoother`: the scalar state-space chain by Kalman filter and RTS smoother, in longdouble.
- :func:`assert_close`, :func:`assert_matches_dense`: the comparisons the random-model tests share.
"""

from __future__ import annotations

import math
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


def spec_matrices(spec: ModelSpec):
    """``(B, c, d, offsets)``: ``spec`` as ``x = c + B x + e``, ``e ~ N(0, diag(d))``, by loops.

    ``offsets`` maps each family's name to the position of its first entry in ``x``.
    """
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
    return B, c, d, offsets


def joint_moments(B, c, d):
    """Mean and covariance of ``x = c + B x + e``, ``e ~ N(0, diag(d))``: ``x = (I - B)^{-1} (c + e)``."""
    Ainv = np.linalg.inv(np.eye(len(c)) - B)
    return Ainv @ c, Ainv @ np.diag(d) @ Ainv.T


def dense_joint(spec: ModelSpec):
    """Joint mean, covariance, per-family offsets and noise variances ``d`` of ``spec``."""
    B, c, d, offsets = spec_matrices(spec)
    mu, Sigma = joint_moments(B, c, d)
    return mu, Sigma, offsets, d


# ------------------------------------------------------------ values and data


def draw(B, c, d, rng: np.random.Generator):
    """One draw of ``x = c + B x + e``, solving ``(I - B) x = c + e``: sd 0 entries follow their parents."""
    n = len(c)
    return np.linalg.solve(np.eye(n) - B, c + np.sqrt(d) * rng.normal(size=n))


def sample_truth(mu, Sigma, rng: np.random.Generator):
    """One draw from ``N(mu, Sigma)``; a jitter of 1e-12 makes the singular ``Sigma`` of sd 0 entries usable."""
    return rng.multivariate_normal(mu, Sigma + 1e-12 * np.eye(len(mu)), method="svd")


def observe(spec: ModelSpec, d, offsets, truth, rng: np.random.Generator, fraction: float):
    """Data observing each stochastic entry (``d > 0``) of ``truth`` with probability ``fraction``.

    Returns ``(data, x)``: the data dict for gdag (families with nothing observed
    left out, scalar families as floats) and ``x`` over all entries, NaN where
    unobserved.
    """
    data, x = {}, np.full(truth.shape[0], np.nan)
    for fam in spec.families:
        o = offsets[fam.name]
        seen = (d[o : o + fam.size] > 0) & (rng.random(fam.size) < fraction)
        if seen.any():
            vals = np.where(seen, truth[o : o + fam.size], np.nan)
            data[fam.name] = float(vals[0]) if fam.scalar else vals
            x[o : o + fam.size] = vals
    return data, x


def observe_some(spec: ModelSpec, rng: np.random.Generator, fraction: float):
    """A draw of ``spec``'s joint, observed at random: ``(data, x, mu, Sigma, offsets)``."""
    mu, Sigma, offsets, d = dense_joint(spec)
    truth = sample_truth(mu, Sigma, rng)
    data, x = observe(spec, d, offsets, truth, rng, fraction)
    return data, x, mu, Sigma, offsets


# ------------------------------------------------------------ conditioning


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


class DensePosterior:
    """The posterior of ``spec`` given ``x`` (NaN: unobserved), queried like gdag.Posterior, by family name.

    ``prior_mean``, ``prior_cov``: the joint before conditioning; ``full_mean``,
    ``full_cov``: after, over all entries (observed ones: their value, variance 0).
    """

    def __init__(self, spec: ModelSpec, x: np.ndarray):
        self.prior_mean, self.prior_cov, offsets, _ = dense_joint(spec)
        self.full_mean, self.full_cov, self.log_evidence = dense_condition(
            self.prior_mean, self.prior_cov, ~np.isnan(x), x)
        self._slices = {fam.name: slice(offsets[fam.name], offsets[fam.name] + fam.size) for fam in spec.families}

    def mean(self, name: str) -> np.ndarray:
        return self.full_mean[self._slices[name]]

    def var(self, name: str) -> np.ndarray:
        return np.diag(self.full_cov)[self._slices[name]]

    def cov(self, a: str, b: str | None = None) -> np.ndarray:
        return self.full_cov[self._slices[a], self._slices[a if b is None else b]]


# ------------------------------------------------------------ likelihood


def gls_deviance(V, X, r, reml=False):
    """``(deviance, beta)`` of ``r ~ N(X beta, V)`` at the GLS ``beta``: -2 log L, or with ``reml`` -2 log L_R.

    REML integrates ``beta`` out under a flat prior: ``-2 log L_R = -2 log L + log|X^T V^{-1} X| - p log 2 pi``.
    """
    n, p = X.shape
    solved = np.linalg.solve(V, np.column_stack([X, r]))
    Vi_X, Vi_r = solved[:, :p], solved[:, p]
    XtViX = X.T @ Vi_X
    beta = np.linalg.solve(XtViX, X.T @ Vi_r) if p else np.zeros(0)
    res = r - X @ beta
    out = np.linalg.slogdet(V)[1] + res @ np.linalg.solve(V, res) + n * math.log(2 * math.pi)
    if reml:
        out += np.linalg.slogdet(XtViX)[1] - p * math.log(2 * math.pi)
    return out, beta


# ------------------------------------------------------------ state space


def kalman_smoother(y, phi, q, r, m0, p0):
    """``x_t = phi x_{t-1} + N(0, q)``, ``x_0 ~ N(m0, p0)``, ``y_t = x_t + N(0, r)`` given ``y`` (NaN: missing).

    Kalman filter and Rauch-Tung-Striebel smoother in numpy longdouble; ``q``,
    ``r`` and ``p0`` are variances (pass longdoubles to keep their squares
    exact).  Returns the smoothed means and variances (float) and
    ``log p(y_observed)``.
    """
    F = np.longdouble
    phi, q, r = F(phi), F(q), F(r)
    y = np.asarray(y, dtype=float).tolist()
    T = len(y)
    mp, Pp, mf, Pf = [F(0)] * T, [F(0)] * T, [F(0)] * T, [F(0)] * T
    loglik, two_pi = F(0), F(2 * math.pi)
    for t in range(T):
        m, P = (F(m0), F(p0)) if t == 0 else (phi * mf[t - 1], phi * phi * Pf[t - 1] + q)
        mp[t], Pp[t] = m, P
        if y[t] == y[t]:  # observed: NaN is not equal to itself
            S = P + r
            v = F(y[t]) - m
            loglik -= (np.log(two_pi * S) + v * v / S) / 2
            m, P = m + P / S * v, P * r / S
        mf[t], Pf[t] = m, P
    ms, Ps = mf[:], Pf[:]
    for t in range(T - 2, -1, -1):
        G = Pf[t] * phi / Pp[t + 1]
        ms[t] = mf[t] + G * (ms[t + 1] - mp[t + 1])
        Ps[t] = Pf[t] + G * G * (Ps[t + 1] - Pp[t + 1])
    return np.array(ms, dtype=float), np.array(Ps, dtype=float), float(loglik)


# ------------------------------------------------------------ comparing


def assert_close(actual, expected, scale, rtol=1e-9):
    """``actual`` equals ``expected`` to ``rtol``, or to ``rtol * scale`` absolutely (entries near 0)."""
    np.testing.assert_allclose(np.atleast_1d(actual), np.atleast_1d(expected), rtol=rtol, atol=rtol * scale)


def assert_matches_dense(post, dense: DensePosterior, families, scale, vscale, rtol=1e-9):
    """A gdag posterior's means and variances of ``families`` equal the dense oracle's (see :func:`assert_close`)."""
    for fam in families:
        assert_close(post.mean(fam.name), dense.mean(fam.name), scale, rtol)
        assert_close(post.var(fam.name), dense.var(fam.name), vscale, rtol)
