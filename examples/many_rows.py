"""Example: a random-slope model on a million rows, fitted by ML from its rows summed once.

    y[i] ~ N(b0 + b1 x[i] + u0[g[i]] + x[i] u1[g[i]], sigma^2),   50,000 groups of 20 rows
    lme4: ``y ~ 1 + x + (1 + x | g)``

The response is observed in full and nothing depends on it, so the fit adds its
rows up once into sums that no parameter changes (per variance class:
Z'WZ, Z'WX, X'WX, ...; docs/fitting.md, "Many rows") and every step of the
optimizer reads those sums, not the rows. On the development machine this
fit takes about a second and its peak memory grows by about 10 times the data
frame (formulaic's design matrices included; declared in the DSL, about 5
times: benchmarks/fit_memory.py); lme4 takes about 70 s on such rows
(benchmarks/fit_memory.py --lme4).

Run: ``.venv/bin/python examples/many_rows.py [rows]``
"""

import resource
import sys
import time

import numpy as np
import pandas as pd

import gdag


def simulate(n: int, per_group: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    groups = max(n // per_group, 2)
    g = rng.integers(0, groups, n)
    x = rng.normal(size=n)
    u0, u1 = rng.normal(size=groups), 0.5 * rng.normal(size=groups)
    y = 2.0 + 0.5 * x + u0[g] + u1[g] * x + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def main(n: int) -> gdag.Fit:
    df = simulate(n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    fit = gdag.lmer("y ~ 1 + x + (1 + x | g)", df, method="ml")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(fit)
    print(f"\n{n:,} rows fitted in {seconds:.2f} s ({fit.n_eval} evaluations); "
          f"peak memory grew by {max(peak - before, 0):.0f} MB over the data frame's {df.memory_usage().sum() / 2**20:.0f} MB")
    print(fit.varcorr())
    return fit


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
