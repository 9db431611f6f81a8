"""Peak memory of an ML fit of ``y ~ 1 + x + (1 + x | g)`` (20 rows a group) over the raw data's size.

Each size runs in its own fresh process (``python benchmarks/fit_memory.py SIZE``
runs one).  The raw data are ``y``, ``x`` and the group code: 24 bytes a row,
generated in chunks so that generating them leaves no high-water mark above
them.  "Added" is the process's peak resident memory (``ru_maxrss``) less its
resident memory once the data exist (``import gdag`` and numba's kernels are
loaded before that, so they are not counted): what the declaration and the
fit take.  ``python benchmarks/fit_memory.py`` runs 1M, 5M and 20M rows and
writes ``results_fit_memory.json`` beside this file.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZES = (1_000_000, 5_000_000, 20_000_000)
PER_GROUP = 20


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def data(n: int, seed: int = 0):
    """``(group, x, y)``: group intercepts sd 1, slopes sd 0.5, residual sd 1, filled a million rows at a time."""
    rng = np.random.default_rng(seed)
    groups = n // PER_GROUP
    u0, u1 = rng.normal(size=groups), 0.5 * rng.normal(size=groups)
    group, x, y = np.empty(n, np.int64), np.empty(n), np.empty(n)
    for start in range(0, n, 1 << 20):
        s = slice(start, min(n, start + (1 << 20)))
        k = s.stop - s.start
        group[s] = rng.integers(0, groups, k)
        x[s] = rng.normal(size=k)
        y[s] = 2.0 + 0.5 * x[s] + u0[group[s]] + u1[group[s]] * x[s] + rng.normal(size=k)
    return group, x, y


def one(n: int) -> dict:
    from fits import declare_slopes

    import gdag

    warm = data(4096, seed=1)  # numba's kernels and the code paths loaded before the baseline
    declare_slopes(warm[0], warm[1]).fit({"y": warm[2]}, method="ml")
    group, x, y = data(n)
    base = rss_mb()
    t0 = time.perf_counter()
    fit = declare_slopes(group, x).fit({"y": y}, method="ml")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    raw = 3 * 8 * n / 2**20
    return dict(rows=n, raw_mb=raw, baseline_mb=base, peak_mb=peak, added_mb=peak - base,
                added_over_raw=(peak - base) / raw, seconds=seconds, n_eval=fit.n_eval, loglik=fit.loglik,
                gdag=gdag.__version__ if hasattr(gdag, "__version__") else "")


def main() -> None:
    if len(sys.argv) > 1:
        print("RESULT " + json.dumps(one(int(sys.argv[1]))))
        return
    results = []
    for n in SIZES:
        out = subprocess.run([sys.executable, __file__, str(n)], capture_output=True, text=True, cwd=HERE)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        results.append(json.loads(line[0][7:]) if line else dict(rows=n, error=out.stderr[-500:]))
        print(results[-1], flush=True)
    (HERE / "results_fit_memory.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
