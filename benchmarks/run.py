"""Run every benchmark case and print one table; write docs/benchmarks.md and the scaling plot.

    .venv/bin/python benchmarks/run.py            # the full suite (about 25 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick    # small sizes, under a minute

Each (case, implementation, size) runs in its own subprocess, so its peak
memory is its own, and under a time limit.  Dense numpy references run with
OPENBLAS_NUM_THREADS=1 (numpy's bundled OpenBLAS crashed in large dense
Cholesky factorizations with two threads on these machines).  Peers that are
not installed are skipped with a note; none is a dependency of gdag.
Implementations of the same case must agree on their check numbers, or the
run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

FULL = [
    ("romcom", "gdag", [1_000, 3_000, 10_000, 100_000, 1_000_000]),
    ("romcom", "floor", [1_000, 10_000, 100_000, 1_000_000]),
    ("romcom", "dense numpy", [1_000, 3_000]),
    ("romcom", "pgmpy", [1_000]),
    ("app", "gdag", [100, 10, 1]),
    ("app", "floor", [100, 10, 1]),
    ("state_space", "gdag", [10_000, 100_000, 1_000_000]),
    ("state_space", "statsmodels", [10_000, 100_000, 1_000_000]),
    ("state_space", "floor", [10_000, 100_000, 1_000_000]),
    ("queries", "gdag", [1_000]),
    ("insteval", "gdag", [73_421]),
    ("insteval", "lme4", [73_421]),
    ("insteval", "statsmodels", [73_421]),
    ("movielens", "gdag", [1_000_000]),
    ("movielens", "lme4", [1_000_000]),
    ("insteval_cold", "gdag", [73_421]),
    ("insteval_cold", "lme4", [73_421]),
    ("orthodont_ml", "gdag", [108]),
    ("orthodont_ml", "lme4", [108]),
    ("orthodont_reml", "gdag", [108]),
    ("orthodont_reml", "lme4", [108]),
    ("sleepstudy_ml", "gdag", [180]),
    ("sleepstudy_ml", "lme4", [180]),
    ("sleepstudy_reml", "gdag", [180]),
    ("sleepstudy_reml", "lme4", [180]),
]
QUICK = [
    ("romcom", "gdag", [1_000, 10_000]),
    ("romcom", "floor", [1_000, 10_000]),
    ("romcom", "dense numpy", [1_000]),
    ("romcom", "pgmpy", [100]),
    ("app", "gdag", [100]),
    ("app", "floor", [100]),
    ("state_space", "gdag", [10_000]),
    ("state_space", "statsmodels", [10_000]),
    ("state_space", "floor", [10_000]),
    ("queries", "gdag", [20]),
    ("insteval", "gdag", [73_421]),
]
PEERS = {"pgmpy": "pgmpy", "statsmodels": "statsmodels", "dense numpy": None}
# statsmodels' MixedLM did not finish InstEval in 20 minutes here: it gets a shorter limit
TIME_LIMITS = {"statsmodels": 300.0, "pgmpy": 300.0}
SIZE_NAMES = {"romcom": "friends", "app": "1/scale", "state_space": "T", "queries": "queries",
              "insteval": "ratings", "movielens": "ratings", "insteval_cold": "ratings",
              "orthodont_ml": "rows", "orthodont_reml": "rows", "sleepstudy_ml": "rows", "sleepstudy_reml": "rows"}

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {here!r})
import cases, fits
CASES, WARM_UP = {{**cases.CASES, **fits.CASES}}, {{**cases.WARM_UP, **fits.WARM_UP}}
run = CASES[{case!r}][{impl!r}]
if {impl!r} == "gdag" and {case!r} in WARM_UP:  # insteval_cold has none: it times a fresh process
    run(WARM_UP[{case!r}])  # load numba's compiled kernels and lazy imports outside the timing
result = run({size!r})
result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(result))
"""


# Entries of a result's phases that are counts, not seconds.
COUNTS = {"evaluations"}

# Short runs are repeated (each in a fresh subprocess) while their total stays under this many
# seconds, and the median one is reported: on a shared 2-core machine single short runs vary by
# tens of percent, and by up to 2x between minutes.
REPEAT_BELOW = 10.0


def run_median(case: str, impl: str, size: int, timeout: float, repeats: int) -> dict:
    """The median of up to ``repeats`` fresh runs (by seconds), repeated while they total under REPEAT_BELOW s."""
    runs = [run_one(case, impl, size, timeout)]
    while (len(runs) < repeats and all(r.get("seconds") is not None for r in runs)
           and sum(r["seconds"] for r in runs) < REPEAT_BELOW):
        runs.append(run_one(case, impl, size, timeout))
    timed = sorted((r for r in runs if r.get("seconds") is not None), key=lambda r: r["seconds"])
    if not timed:
        return runs[0]
    median = dict(timed[(len(timed) - 1) // 2])
    median["runs"] = [round(r["seconds"], 3) for r in runs if r.get("seconds") is not None]
    return median


def run_one(case: str, impl: str, size: int, timeout: float) -> dict:
    """Run one implementation in a subprocess; returns its result or a note."""
    module = PEERS.get(impl)
    if module is not None and subprocess.run([sys.executable, "-c", f"import {module}"],
                                             capture_output=True).returncode != 0:
        return {"note": f"{impl} not installed (pip install {module})"}
    env = dict(os.environ)
    if impl == "dense numpy":
        env["OPENBLAS_NUM_THREADS"] = "1"
    code = CHILD.format(here=str(HERE), case=case, impl=impl, size=size)
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"note": f"did not finish in {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"note": f"failed: {tail[0][:120]}"}


def save_results(path: Path, results: dict) -> None:
    """Every measurement as JSON (the data behind the table; ``--only`` starts from it)."""
    rows = [dict(case=c, impl=i, size=s, result=r) for (c, i, s), r in results.items()]
    path.write_text(json.dumps(rows, indent=1) + "\n")


def load_results(path: Path) -> dict:
    if not path.exists():
        raise SystemExit(f"--only needs the results of an earlier full run in {path}")
    return {(r["case"], r["impl"], r["size"]): r["result"] for r in json.loads(path.read_text())}


def agree(a: list, b: list, rtol: float = 1e-6) -> bool:
    return all(abs(x - y) <= rtol * (1 + abs(y)) for x, y in zip(a, b))


def machine() -> str:
    import numpy
    import scipy

    import gdag

    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.platform()}, {os.cpu_count()} cores ({cpu}); Python {platform.python_version()}, "
            f"numpy {numpy.__version__}, scipy {scipy.__version__}, gdag {gdag.__version__}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes only (under a minute)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed to one run")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--repeat", type=int, default=None,
                        help=f"fresh runs per short measurement (while they total under {REPEAT_BELOW:.0f} s), "
                             "the median reported (default 5; 1 with --quick)")
    parser.add_argument("--only", nargs="+", metavar="CASE",
                        help="re-run these cases only; the other rows come from the last full run's results")
    parser.add_argument("--rewrite", action="store_true",
                        help="run nothing: write the table and plot again from the saved results")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 5
    plan = QUICK if args.quick else FULL
    saved = HERE / ("results_quick.json" if args.quick else "results.json")

    results: dict = load_results(saved) if args.only or args.rewrite else {}
    for case, impl, sizes in plan:
        if args.rewrite or (args.only and case not in args.only):
            continue
        for size in sizes:
            print(f"running {case} / {impl} / {size} ...", file=sys.stderr, flush=True)
            limit = min(args.timeout, TIME_LIMITS.get(impl, args.timeout))
            results[case, impl, size] = run_median(case, impl, size, limit, args.repeat)

    rows = table_rows(results)
    text = format_table(rows)
    print(text)
    mismatches = [r for r in rows if r.get("mismatch")]
    if not args.no_write:
        save_results(saved, results)
        write_report(text, results, args.quick, args.repeat)
    if mismatches:
        raise SystemExit(f"{len(mismatches)} reference(s) disagree with gdag: see the table")


def table_rows(results: dict) -> list[dict]:
    """One row per (case, size), gdag first, with every reference measured at that size."""
    sizes = sorted({(case, size) for case, _, size in results}, key=lambda cs: (list(SIZE_NAMES).index(cs[0]), cs[1]))
    rows = []
    for case, size in sizes:
        res = results.get((case, "gdag", size), {"note": "not run at this size"})
        row = dict(case=case, size=size, gdag=res.get("seconds"), runs=res.get("runs", []), peak=res.get("peak_mb"),
                   phases=res.get("phases", {}), note=res.get("note", ""), refs=[])
        for key in ("nnz_Q", "nnz_L"):
            if key in res:
                row[key] = res[key]
        for (c2, impl2, s2), ref in results.items():
            if c2 != case or s2 != size or impl2 == "gdag":
                continue
            entry = dict(name=impl2, seconds=ref.get("seconds"), runs=ref.get("runs", []), note=ref.get("note", ""))
            tolerance = 1e-7 if case in ("insteval", "insteval_cold", "movielens") else 1e-6  # logLik/1e5: 0.01 absolute
            if "check" in ref and "check" in res and not agree(res["check"], ref["check"], tolerance):
                entry["note"] = "DISAGREES with gdag"
                row["mismatch"] = True
            row["refs"].append(entry)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = "| case | size | gdag s | gdag peak MB | reference | reference s | gdag / reference | phases (s) |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        phases = ", ".join(f"{k} {v:.0f}" if k in COUNTS else f"{k} {v:.3f}" for k, v in r["phases"].items())
        if "nnz_L" in r:
            phases += f"; nnz(Q) {r['nnz_Q']:,}, nnz(L) {r['nnz_L']:,}"
        gdag_s = _seconds(r["gdag"], r["runs"]) if r["gdag"] is not None else r["note"]
        peak = f"{r['peak']:.0f}" if r["peak"] else ""
        refs = r["refs"] or [dict(name="-", seconds=None, note="")]
        for i, ref in enumerate(refs):
            ref_s = _seconds(ref["seconds"], ref["runs"]) if ref["seconds"] is not None else ref["note"]
            ratio = f"{r['gdag'] / ref['seconds']:.3g}" if ref["seconds"] and r["gdag"] else ""
            if ref["note"] and ref["seconds"] is not None:
                ratio += f" ({ref['note']})"
            first = i == 0
            lines.append(f"| {r['case'] if first else ''} | {r['size'] if first else ''} | {gdag_s if first else ''} | "
                         f"{peak if first else ''} | {ref['name']} | {ref_s} | {ratio} | {phases if first else ''} |")
    return "\n".join(lines)


def _seconds(median: float, runs: list) -> str:
    """The median time, with the range of the runs when there were several."""
    text = f"{median:.3f}"
    if len(runs) > 1:
        text += f" ({min(runs):.3g}-{max(runs):.3g})"
    return text


def write_report(table: str, results: dict, quick: bool, args_repeat: int) -> None:
    docs = ROOT / "docs"
    out = docs / ("benchmarks_quick.md" if quick else "benchmarks.md")
    body = [
        "# Benchmarks",
        "",
        f"Written by `benchmarks/run.py{' --quick' if quick else ''}` on {machine()}.",
        f"Each time is the median of up to {args_repeat} runs, each in a fresh subprocess, repeated while "
        f"they total under {REPEAT_BELOW:.0f} s (the range in parentheses). Ratios below 1 mean gdag is faster. "
        "For references that measure less (means only) the ratio overstates gdag's cost.",
        "The results against each target, with the profiles behind the gaps, are in "
        "[benchmarks/README.md](../benchmarks/README.md).",
        "",
        table,
        "",
    ]
    out.write_text("\n".join(body))
    plot_scaling(results, docs / "figures" / ("scaling_quick.png" if quick else "scaling.png"))


def plot_scaling(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no scaling plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for impl, style in [("gdag", "o-"), ("floor", "s--"), ("dense numpy", "^:"), ("pgmpy", "v:")]:
        pts = sorted((s, r["seconds"]) for (c, i, s), r in results.items()
                     if c == "romcom" and i == impl and r.get("seconds"))
        if pts:
            ax.loglog(*zip(*pts), style, label=impl)
    ax.set_xlabel("friends (x 5 ratings)")
    ax.set_ylabel("seconds")
    ax.set_title("romcom posterior: gdag (means and sds) vs references")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    main()
