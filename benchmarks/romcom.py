"""Benchmark: the romcom model at scale, gdag against the hand-written CHOLMOD floor.

F friends x 5 ratings; posterior mean and sd of every R_i (R also unknown).
The floor assembles the same precision by hand with scipy.sparse, factors it
with CHOLMOD and solves for the means (no variances).  Both run in this process
on the same BLAS; the ratio is gdag / floor.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import scipy.sparse as sp
from sksparse import cholmod

import gdag

RATINGS_PER_FRIEND = 5
PRIOR_MEAN, PRIOR_SD, FRIEND_SD = 3.0, 1.0, 0.5


def simulate(n_friends: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    who = np.repeat(np.arange(n_friends), RATINGS_PER_FRIEND)
    s = rng.uniform(0.3, 1.5, size=n_friends)
    truth = rng.normal(PRIOR_MEAN, FRIEND_SD, size=n_friends)
    x = truth[who] + rng.normal(size=who.size) * s[who]
    return who, s, x


def gdag_posterior(n_friends, who, s, x):
    """Declare, condition and read every R_i's mean and sd; returns phase times."""
    times = {}
    t0 = time.perf_counter()
    m = gdag.Model("romcom")
    friend = m.plate("friend", n_friends)
    rating = m.plate("rating", who.size)
    R = m.normal("R", mean=PRIOR_MEAN, sd=PRIOR_SD)
    R_i = m.normal("R_i", mean=R, sd=FRIEND_SD, plate=friend)
    m.normal("X", mean=R_i[who], sd=s[who], plate=rating)
    t1 = time.perf_counter()
    post = m.posterior({"X": x})
    t2 = time.perf_counter()
    mean = post.mean(R_i)
    sd = post.sd(R_i)
    t3 = time.perf_counter()
    times.update(declare=t1 - t0, posterior=t2 - t1, sds=t3 - t2, total=t3 - t0)
    return times, mean, sd


def generic_floor_posterior(n_friends, who, s, x):
    """The floor as a user would hand-write it: A = I - B, Q = A_U^T D^-1 A_U, CHOLMOD solve."""
    t0 = time.perf_counter()
    n_ratings = who.size
    n = 1 + n_friends + n_ratings  # R, R_i, X
    friends = 1 + np.arange(n_friends)
    ratings = 1 + n_friends + np.arange(n_ratings)
    rows = np.concatenate([np.arange(n), friends, ratings])
    cols = np.concatenate([np.arange(n), np.zeros(n_friends, dtype=np.int64), 1 + who])
    A = sp.csc_matrix((np.concatenate([np.ones(n), -np.ones(n_friends + n_ratings)]), (rows, cols)), shape=(n, n))
    d = np.concatenate([[PRIOR_SD**2], np.full(n_friends, FRIEND_SD**2), s[who] ** 2])
    c = np.concatenate([[PRIOR_MEAN], np.zeros(n_friends + n_ratings)])
    A_U, A_O = A[:, : 1 + n_friends], A[:, 1 + n_friends :]
    W = sp.diags(1.0 / d)
    Q = (A_U.T @ W @ A_U).tocsc()
    b = A_U.T @ (W @ (c - A_O @ x))
    mean = cholmod.cholesky(Q).solve_A(b)
    return time.perf_counter() - t0, mean[1:]


def floor_posterior(n_friends, who, s, x):
    """Closed-form precision of (R_i, R) given X, CHOLMOD factor + solve for the means."""
    t0 = time.perf_counter()
    n = n_friends + 1
    prec_x = 1.0 / s[who] ** 2
    diag = np.concatenate([np.bincount(who, weights=prec_x, minlength=n_friends) + 1 / FRIEND_SD**2,
                           [1 / PRIOR_SD**2 + n_friends / FRIEND_SD**2]])
    last = np.full(n_friends, n_friends)
    rows = np.concatenate([np.arange(n), np.arange(n_friends), last])
    cols = np.concatenate([np.arange(n), last, np.arange(n_friends)])
    vals = np.concatenate([diag, np.full(2 * n_friends, -1 / FRIEND_SD**2)])
    Q = sp.csc_matrix((vals, (rows, cols)), shape=(n, n))
    b = np.concatenate([np.bincount(who, weights=x * prec_x, minlength=n_friends), [PRIOR_MEAN / PRIOR_SD**2]])
    mean = cholmod.cholesky(Q).solve_A(b)
    return time.perf_counter() - t0, mean[:n_friends]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--friends", type=int, nargs="+", default=[1000, 10000, 100000, 1000000])
    args = parser.parse_args(argv)
    print("gdag: declare + posterior + mean and sd of every R_i.  floor: hand-written A^T D^-1 A + CHOLMOD"
          " means.  closed: hand-derived Q + CHOLMOD means (no variances in either reference).")
    print(f"{'friends':>10} {'gdag s':>9} {'floor s':>9} {'ratio':>7} {'closed s':>9} {'ratio':>7} "
          f"{'declare':>8} {'posterior':>9} {'sds':>7} {'peak MB':>8}")
    for F in args.friends:
        who, s, x = simulate(F)
        gdag_posterior(min(F, 100), *simulate(min(F, 100)))  # warm up numba and imports
        closed_t, closed_mean = floor_posterior(F, who, s, x)
        floor_t, floor_mean = generic_floor_posterior(F, who, s, x)
        times, mean, sd = gdag_posterior(F, who, s, x)
        err = max(np.max(np.abs(mean - floor_mean)), np.max(np.abs(mean - closed_mean)))
        if err > 1e-8:
            raise SystemExit(f"gdag and the floor disagree by {err}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{F:>10} {times['total']:>9.3f} {floor_t:>9.3f} {times['total'] / floor_t:>7.2f} "
              f"{closed_t:>9.3f} {times['total'] / closed_t:>7.2f} "
              f"{times['declare']:>8.3f} {times['posterior']:>9.3f} {times['sds']:>7.3f} {peak:>8.0f}")


if __name__ == "__main__":
    main()
