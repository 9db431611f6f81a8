"""Peak memory of an ML fit of ``y ~ 1 + x + (1 + x | g)`` (20 rows a group) over the raw data's size.

Each size runs in its own fresh process (``python benchmarks/fit_memory.py SIZE``
runs one).  The raw data are ``y``, ``x`` and the group code: 24 bytes a row,
generated in chunks so that generating them leaves no high-water mark above
them.  "Added" is the process's peak resident memory (``ru_maxrss``) less its
resident memory once the data exist (``import gdag`` and numba's kernels are
loaded before that, so they are not counted): what the declaration and the
fit take.  ``python benchmarks/fit_memory.py`` runs 1M, 5M and 20M rows and
writes ``results_fit_memory.json`` beside this file.

``--lme4`` also fits the same data with lme4 (``lmer(y ~ 1 + x + (1 + x | g),
REML = FALSE)`` through Rscript, when R and lme4 are installed) at the sizes
given after it (default 1M): its time covers ``lmer()`` only, and its memory
is measured the same way, the R process's peak (VmHWM) less its resident
memory once the data are read.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
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


def one_fresh(n: int) -> dict:
    """:func:`one` in a fresh process."""
    out = subprocess.run([sys.executable, __file__, str(n)], capture_output=True, text=True, cwd=HERE)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[0][7:]) if line else dict(rows=n, error=out.stderr[-500:])


LME4 = r"""
suppressPackageStartupMessages(library(lme4))
status <- function(key) as.numeric(sub("[^0-9]*([0-9]+).*", "\\1", grep(key, readLines("/proc/self/status"), value = TRUE))) / 1024
d <- read.csv(commandArgs(TRUE)[1])
d$g <- factor(d$g)
base <- status("^VmRSS")
t0 <- proc.time()[["elapsed"]]
fit <- lmer(y ~ 1 + x + (1 + x | g), d, REML = FALSE)
seconds <- proc.time()[["elapsed"]] - t0
cat(sprintf("RESULT %.3f %.10f %.1f %.1f\n", seconds, as.numeric(logLik(fit)), base, status("^VmHWM")))
"""


def lme4(n: int) -> dict:
    """The same data fitted by lme4 through Rscript: its seconds, logLik and peak memory added over the data read."""
    group, x, y = data(n)
    with tempfile.TemporaryDirectory() as tmp:
        csv, script = Path(tmp) / "d.csv", Path(tmp) / "fit.R"
        np.savetxt(csv, np.column_stack([group, x, y]), delimiter=",", header="g,x,y", comments="", fmt=["%d", "%.17g", "%.17g"])
        script.write_text(LME4)
        out = subprocess.run(["Rscript", str(script), str(csv)], capture_output=True, text=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not line:
        return dict(rows=n, error=out.stderr[-500:])
    seconds, loglik, base, peak = map(float, line[0].split()[1:])
    raw = 3 * 8 * n / 2**20
    return dict(rows=n, seconds=seconds, loglik=loglik, added_mb=peak - base, added_over_raw=(peak - base) / raw)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--lme4":
        if shutil.which("Rscript") is None:
            raise SystemExit("--lme4 needs R with lme4 (apt-get install r-cran-lme4)")
        for n in [int(a) for a in sys.argv[2:]] or [1_000_000]:
            print({"lme4": lme4(n), "gdag": one_fresh(n)}, flush=True)
        return
    if len(sys.argv) > 1:
        print("RESULT " + json.dumps(one(int(sys.argv[1]))))
        return
    results = []
    for n in SIZES:
        results.append(one_fresh(n))
        print(results[-1], flush=True)
    (HERE / "results_fit_memory.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
