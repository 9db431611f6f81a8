"""Benchmark cases for fits: small mixed models against lme4, and InstEval in a fresh process.

Each function times one implementation, as the functions of ``cases.py`` do,
and ``run.py`` runs it in its own subprocess:

* ``orthodont_ml``, ``orthodont_reml``: ``distance ~ age + (age | Subject)`` on
  nlme's Orthodont (108 rows, 27 subjects; ``data/orthodont.csv``);
* ``sleepstudy_ml``, ``sleepstudy_reml``: ``Reaction ~ Days + (Days | Subject)``
  on lme4's sleepstudy (180 rows, 18 subjects; ``tests/data/sleepstudy.csv``).

  Both sides fit once untimed (gdag loads its compiled kernels, R its
  methods), then time ``REPEATS`` fits in the same process and report the
  median: gdag declares the model and calls ``m.fit``; lme4 calls
  ``lmer()`` (data loading excluded on both sides).
* ``insteval_cold``: the InstEval ML fit of ``cases.insteval_gdag`` in a fresh
  process: the first fit after ``import gdag``, so it includes loading numba's
  compiled kernels and everything else a process does once (``import gdag``
  itself is reported as a phase, not counted, as R loads lme4 before its
  clock starts).  The phases give the second fit in the same process, which
  is the warm time.  The reference is the same lme4 run as ``insteval``'s.

``.venv/bin/python benchmarks/fits.py --write-data`` writes ``data/orthodont.csv``
again (needs R with nlme); the file is committed, so gdag's side never needs R.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cases
import numpy as np

HERE = Path(__file__).resolve().parent
ORTHODONT = HERE / "data" / "orthodont.csv"
SLEEPSTUDY = HERE.parent / "tests" / "data" / "sleepstudy.csv"
REPEATS = 20

# (csv, gdag's columns: group, covariate, response; lme4's formula and grouping column)
DATASETS = {
    "orthodont": (ORTHODONT, ("subject", "age", "distance"), "distance ~ age + (age | subject)"),
    "sleepstudy": (SLEEPSTUDY, ("subject", "days", "reaction"), "reaction ~ days + (days | subject)"),
}

WRITE_ORTHODONT = r"""
data(Orthodont, package = "nlme")
d <- as.data.frame(Orthodont)
write.csv(data.frame(subject = as.integer(d$Subject) - 1L, age = d$age, distance = d$distance),
          commandArgs(TRUE)[1], row.names = FALSE, quote = FALSE)
"""

LME4_REPEATED = r"""
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(TRUE)
d <- read.csv(args[1])
d$subject <- factor(d$subject)
f <- as.formula(args[2])
reml <- args[3] == "reml"
fit <- lmer(f, d, REML = reml)  # untimed, as gdag's first fit
times <- numeric(as.integer(args[4]))
for (i in seq_along(times)) {
  t0 <- as.numeric(Sys.time())
  fit <- lmer(f, d, REML = reml)
  times[i] <- as.numeric(Sys.time()) - t0
}
cat(sprintf("RESULT %.6f %.10f %d\n", median(times), as.numeric(logLik(fit)), fit@optinfo$feval))
"""


def load(path: Path) -> dict:
    with open(path) as fh:
        names = fh.readline().strip().split(",")
        values = np.loadtxt(fh, delimiter=",", ndmin=2)
    return {n: values[:, i] for i, n in enumerate(names)}


def declare_slopes(group: np.ndarray, x: np.ndarray):
    """``y ~ x + (x | g)``: ``u1 | u0 ~ N(rho u0, s1^2)`` regresses the slope on the intercept (docs/fitting.md)."""
    import gdag

    m = gdag.Model("random_slopes")
    G, obs = m.plate("group", int(group.max()) + 1), m.plate("obs", group.size)
    u0 = m.normal("u0", 0.0, m.param("s0", positive=True), plate=G)
    u1 = m.normal("u1", m.param("rho") * u0, m.param("s1", positive=True), plate=G)
    m.normal("y", mean=m.param("b0") + m.param("b1") * x + u0[group] + x * u1[group],
             sd=m.param("sigma", positive=True), plate=obs)
    return m


def slopes_gdag(dataset: str, method: str, repeats: int) -> dict:
    """Median of ``repeats`` warm fits (declare + ``m.fit``); ``repeats = 0`` fits once, untimed (the warm-up)."""
    path, (g, x, y), _ = DATASETS[dataset]
    d = load(path)
    group, cov, resp = d[g].astype(int), d[x], d[y]
    times, fit = [], None
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fit = declare_slopes(group, cov).fit({"y": resp}, method=method)
        times.append(time.perf_counter() - t0)
    phases = {"evaluations": float(fit.n_eval), **{k: fit.timings[k] for k in ("setup", "optimize")}}
    return dict(seconds=statistics.median(times), phases=phases, check=[fit.loglik])


def slopes_lme4(dataset: str, method: str, repeats: int) -> dict:
    path, _, formula = DATASETS[dataset]
    if shutil.which("Rscript") is None or subprocess.run(["Rscript", "-e", "library(lme4)"],
                                                         capture_output=True).returncode != 0:
        return {"note": "R/lme4 not installed (apt-get install r-cran-lme4)"}
    proc = subprocess.run(["Rscript", "-e", LME4_REPEATED, str(path), formula, method, str(repeats)],
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            _, seconds, loglik, feval = line.split()
            return dict(seconds=float(seconds), phases={"evaluations": float(feval)}, check=[float(loglik)])
    return {"note": "lme4 failed: " + proc.stderr.strip()[-120:]}


def insteval_cold_gdag(_size: int) -> dict:
    """The first InstEval ML fit of a fresh process (``import gdag`` reported, not counted), then the second."""
    t0 = time.perf_counter()
    import gdag  # noqa: F401

    imported = time.perf_counter() - t0
    first = cases.insteval_gdag(_size)
    second = cases.insteval_gdag(_size)
    phases = {"import gdag": imported, "second fit": second["seconds"], "evaluations": first["phases"]["evaluations"]}
    return dict(seconds=first["seconds"], phases=phases, check=first["check"])


def _small(dataset: str, method: str) -> dict:
    return {"gdag": lambda n: slopes_gdag(dataset, method, REPEATS if n else 0),
            "lme4": lambda n: slopes_lme4(dataset, method, REPEATS)}


# insteval_cold has no warm-up: its point is the first fit of a process.
WARM_UP = {f"{name}_{method}": 0 for name in DATASETS for method in ("ml", "reml")}

CASES = {
    **{f"{name}_{method}": _small(name, method) for name in DATASETS for method in ("ml", "reml")},
    "insteval_cold": {"gdag": insteval_cold_gdag, "lme4": cases.insteval_lme4},
}


def write_data() -> None:
    ORTHODONT.parent.mkdir(exist_ok=True)
    subprocess.run(["Rscript", "-e", WRITE_ORTHODONT, str(ORTHODONT)], check=True)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-data"]:
        raise SystemExit("usage: fits.py --write-data   (the cases run through benchmarks/run.py)")
    write_data()
