"""Benchmark: a local-level state-space model, gdag against a Kalman/RTS smoother.

    x_0 ~ N(0, 10^2),  x_t ~ N(phi x_{t-1}, q),  y_t ~ N(x_t, r)

gdag declares x as a self-referencing family (``x.lag(1)``) and gets smoothed
means and sds from one banded factorization.  The reference is a plain
Kalman filter plus Rauch-Tung-Striebel smoother, a Python loop over time
(the recursion is sequential, so numpy can only vectorize within a step).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import gdag

PHI, Q, R, P0 = 0.99, 0.1, 0.5, 100.0


def simulate(T, seed=0):
    rng = np.random.default_rng(seed)
    y = np.cumsum(rng.normal(size=T)) * 0.3 + rng.normal(size=T)
    y[rng.random(T) < 0.2] = np.nan
    return y


def gdag_smoother(y):
    T = y.shape[0]
    m = gdag.Model("local_level")
    time_ = m.plate("time", T)
    sd = np.full(T, np.sqrt(Q))
    sd[0] = np.sqrt(P0)
    x = m.normal("x", mean=lambda x: PHI * x.lag(1), sd=sd, plate=time_)
    m.normal("y", mean=x, sd=np.sqrt(R), plate=time_)
    post = m.posterior({"y": y})
    return post.mean(x), post.var(x)


def rts_smoother(y):
    T = y.shape[0]
    mf, pf, mp, pp = (np.empty(T) for _ in range(4))
    m, p = 0.0, P0
    for t in range(T):
        if t:
            m, p = PHI * m, PHI * PHI * p + Q
        mp[t], pp[t] = m, p
        if y[t] == y[t]:  # observed
            k = p / (p + R)
            m, p = m + k * (y[t] - m), (1 - k) * p
        mf[t], pf[t] = m, p
    ms, ps = mf.copy(), pf.copy()
    for t in range(T - 2, -1, -1):
        g = pf[t] * PHI / pp[t + 1]
        ms[t] = mf[t] + g * (ms[t + 1] - mp[t + 1])
        ps[t] = pf[t] + g * g * (ps[t + 1] - pp[t + 1])
    return ms, ps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--T", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args(argv)
    gdag_smoother(simulate(100))  # compile numba kernels outside the timings
    print(f"{'T':>10} {'gdag s':>9} {'RTS s':>9} {'ratio':>7} {'max |dmean|':>12}")
    for T in args.T:
        y = simulate(T)
        t0 = time.perf_counter()
        mean, var = gdag_smoother(y)
        t1 = time.perf_counter()
        ms, ps = rts_smoother(y)
        t2 = time.perf_counter()
        err = float(np.max(np.abs(mean - ms)))
        print(f"{T:>10} {t1 - t0:>9.3f} {t2 - t1:>9.3f} {(t1 - t0) / (t2 - t1):>7.2f} {err:>12.2e}")


if __name__ == "__main__":
    main()
