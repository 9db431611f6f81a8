"""Rows on a 2-worker LocalCluster against the in-memory path: ``y ~ 1 + x + (1 + x | g)`` from parquet files.

For each size, the rows are written by :mod:`dask_data` (once; kept between
runs), then fitted by ML (``--what fit``, the default) or conditioned at the
true parameters (``--what posterior``) in a fresh process:

* **dask**: ``gdag.lmer(formula, dd.read_parquet(path), method="ml")`` on a
  ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``;
* **memory**: ``gdag.lmer(formula, pd.read_parquet(path), method="ml")``,
  only for the sizes given to ``--in-memory``.

Reported: wall time (reading the files included), rows per second, peak
resident memory of each worker and of the client (``ru_maxrss`` of each
process), written to ``benchmarks/dask_results.json``; ``--table`` prints
the markdown table and draws ``docs/figures/dask_scaling.png`` from it::

    .venv/bin/python benchmarks/dask_fit.py --sizes 1e7 5e7 2e8 --in-memory 1e7 2e7
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "dask_results.json")
FIGURE = os.path.join(HERE, "..", "docs", "figures", "dask_scaling.png")
FORMULA = "y ~ 1 + x + (1 + x | g)"


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _params(m):
    """The generating values, in the model's parameterization (for ``--what posterior``)."""
    import numpy as np
    from dask_data import TRUTH

    values = {"beta": np.array([TRUTH["intercept"], TRUTH["slope"]]), "sigma": TRUTH["sigma"]}
    for name in m.params:
        if name.startswith("sd_g_Intercept"):
            values[name] = TRUTH["sd_g"]
        elif name.startswith("sd_g_x"):
            values[name] = TRUTH["sd_slope"] * np.sqrt(1 - TRUTH["rho"] ** 2)
        elif name.startswith("c_g_x"):
            values[name] = TRUTH["rho"] * TRUTH["sd_slope"] / TRUTH["sd_g"]
    return values


def run_dask(path: str, what: str, lanes: int | None = None) -> dict:
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    import gdag

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster)
    try:
        start = time.perf_counter()
        ddf = dd.read_parquet(path)
        m = gdag.from_formula(FORMULA, ddf)
        built = time.perf_counter() - start
        if what == "fit":
            fit = m.fit(ddf, method="ml", **({} if lanes is None else {"lanes": lanes}))
            summary = {"loglik": float(fit.loglik), "params": {k: _plain(v) for k, v in fit.params.items()},
                       "converged": bool(fit.converged), "pass_and_setup": fit.timings["setup"],
                       "optimize": fit.timings["optimize"]}
        else:
            post = m.posterior(ddf, params=_params(m))
            summary = {"log_evidence": float(post.log_evidence)}
        wall = time.perf_counter() - start
        workers = client.run(_peak_mb)
        return {"wall": wall, "levels_and_model": built, "worker_peak_mb": sorted(workers.values()),
                "client_peak_mb": _peak_mb(), "partitions": ddf.npartitions, **summary}
    finally:
        client.close()
        cluster.close()


def run_memory(path: str, what: str) -> dict:
    import pandas as pd

    import gdag

    start = time.perf_counter()
    df = pd.read_parquet(path)
    if what == "fit":
        fit = gdag.lmer(FORMULA, df, method="ml")
        summary = {"loglik": float(fit.loglik), "params": {k: _plain(v) for k, v in fit.params.items()},
                   "converged": bool(fit.converged)}
    else:
        m = gdag.from_formula(FORMULA, df)
        post = m.posterior(m.design.data, params=_params(m))
        summary = {"log_evidence": float(post.log_evidence)}
    return {"wall": time.perf_counter() - start, "client_peak_mb": _peak_mb(), **summary}


def _plain(v):
    import numpy as np

    return np.asarray(v).tolist()


def measure(kind: str, path: str, what: str, lanes: int | None = None) -> dict:
    """One run in a fresh process (peak memory is per process)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": HERE}
    extra = [] if lanes is None else ["--lanes", str(lanes)]
    out = subprocess.run([sys.executable, __file__, "--one", kind, path, "--what", what, *extra], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = ["| rows | path | wall (s) | rows/s | peak per worker (MB) | client peak (MB) | logLik |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in sorted(results, key=lambda r: (r["rows"], r["kind"])):
        if "error" in r:
            lines.append(f"| {r['rows']:,} | {r['kind']} | failed: {r['error'][:60]} | | | | |")
            continue
        workers = ", ".join(f"{w:,.0f}" for w in r.get("worker_peak_mb", [])) or "-"
        value = r.get("loglik", r.get("log_evidence"))
        lines.append(f"| {r['rows']:,} | {r['kind']} | {r['wall']:.1f} | {r['rows'] / r['wall']:,.0f} | {workers} | "
                     f"{r['client_peak_mb']:,.0f} | {value:,.2f} |")
    return "\n".join(lines)


def plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for kind, style in (("dask", "o-"), ("memory", "s--")):
        rs = sorted((r for r in results if r["kind"] == kind and "error" not in r), key=lambda r: r["rows"])
        if not rs:
            continue
        n = [r["rows"] for r in rs]
        ax1.plot(n, [r["wall"] for r in rs], style, label=kind)
        peak = [max(r.get("worker_peak_mb", [0]) + [0]) for r in rs] if kind == "dask" else [r["client_peak_mb"] for r in rs]
        ax2.plot(n, peak, style, label="dask: peak per worker" if kind == "dask" else "memory: peak of the process")
        if kind == "dask":
            ax2.plot(n, [r["client_peak_mb"] for r in rs], "o:", label="dask: client peak")
    for ax, label in ((ax1, "wall time (s)"), (ax2, "peak resident memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{FORMULA}, ML fit: 2-worker LocalCluster vs in memory", fontsize=10)
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    number = lambda s: int(float(s.replace("_", "")))  # noqa: E731
    parser.add_argument("--sizes", nargs="*", type=number, default=[])
    parser.add_argument("--in-memory", nargs="*", type=number, default=[])
    parser.add_argument("--groups", type=number, default=1_000_000)
    parser.add_argument("--data", default="/tmp/gdag-dask-rows")
    parser.add_argument("--what", choices=("fit", "posterior"), default="fit")
    parser.add_argument("--lanes", type=int, default=None, help="the dask pass's lanes (default gdag's)")
    parser.add_argument("--table", action="store_true", help="print the table and draw the plot from the results")
    args = parser.parse_args()
    if args.one:
        kind, path = args.one
        print(json.dumps(run_dask(path, args.what, args.lanes) if kind == "dask" else run_memory(path, args.what)))
        return
    sys.path.insert(0, HERE)
    from dask_data import write

    results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else []
    for rows in sorted(set(args.sizes) | set(args.in_memory)):
        path = f"{args.data}-{args.groups}-{rows}"
        write(path, rows, args.groups)
        for kind in (["dask"] if rows in args.sizes else []) + (["memory"] if rows in args.in_memory else []):
            label = kind if kind == "memory" or args.lanes is None else f"dask, lanes={args.lanes}"
            r = {"rows": rows, "groups": args.groups, "kind": label, "what": args.what,
                 **measure(kind, path, args.what, args.lanes if kind == "dask" else None)}
            print(json.dumps(r), flush=True)
            results = [o for o in results if (o["rows"], o["kind"], o.get("what"), o.get("groups")) !=
                       (rows, label, args.what, args.groups)] + [r]
            json.dump(results, open(RESULTS, "w"), indent=1)
    if args.table or not (args.sizes or args.in_memory):
        chosen = [r for r in results if r.get("what", "fit") == args.what]
        print(table(chosen))
        plot(chosen)


if __name__ == "__main__":
    main()
