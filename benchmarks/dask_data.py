"""Synthetic rows for the Dask benchmark, written as parquet files: ``y ~ 1 + x + (1 + x | g)``.

Each file is made by numpy in one vectorized step from its own seed, so a
data set of any size is written in bounded memory and the same arguments
give the same files::

    .venv/bin/python benchmarks/dask_data.py /tmp/gdag-rows --rows 200_000_000 --groups 1_000_000

Columns: ``y`` and ``x`` (float64), ``g`` (int64 group label).  The truth:
intercept 1, slope 0.5, group intercepts sd 1, group slopes sd 0.3 with
correlation 0.4, residual sd 1.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

ROWS_PER_FILE = 5_000_000
TRUTH = {"intercept": 1.0, "slope": 0.5, "sd_g": 1.0, "sd_slope": 0.3, "rho": 0.4, "sigma": 1.0}


def group_effects(groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The true group intercepts and slopes (the same for every file of a data set)."""
    rng = np.random.default_rng([seed, 2**31 - 1])
    z0, z1 = rng.standard_normal(groups), rng.standard_normal(groups)
    rho = TRUTH["rho"]
    return TRUTH["sd_g"] * z0, TRUTH["sd_slope"] * (rho * z0 + np.sqrt(1 - rho * rho) * z1)


def file_rows(k: int, n: int, groups: int, effects, seed: int = 0) -> dict[str, np.ndarray]:
    """The ``n`` rows of file ``k``."""
    rng = np.random.default_rng([seed, k])
    g = rng.integers(0, groups, n)
    x = rng.standard_normal(n)
    u0, u1 = effects
    y = TRUTH["intercept"] + TRUTH["slope"] * x + u0[g] + u1[g] * x + TRUTH["sigma"] * rng.standard_normal(n)
    return {"y": y, "x": x, "g": g.astype(np.int64)}


def write(path: str, rows: int, groups: int, seed: int = 0, rows_per_file: int = ROWS_PER_FILE) -> list[str]:
    """Write ``rows`` rows as parquet files ``part-00000.parquet``... under ``path``; returns their names.

    Files already there with the right size are kept (a larger data set extends a smaller one's files).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(path, exist_ok=True)
    effects = group_effects(groups, seed)
    names = []
    for k, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        name = os.path.join(path, f"part-{k:05d}.parquet")
        names.append(name)
        if os.path.exists(name) and pq.ParquetFile(name).metadata.num_rows == n:
            continue
        pq.write_table(pa.table(file_rows(k, n, groups, effects, seed)), name, compression="snappy")
    for extra in sorted(os.listdir(path)):  # files of a larger earlier data set are not part of this one
        full = os.path.join(path, extra)
        if extra.startswith("part-") and full not in names:
            os.remove(full)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--rows", type=lambda s: int(float(s.replace("_", ""))), default=10_000_000)
    parser.add_argument("--groups", type=lambda s: int(float(s.replace("_", ""))), default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t = time.perf_counter()
    names = write(args.path, args.rows, args.groups, args.seed)
    print(f"{len(names)} files, {args.rows:,} rows, {args.groups:,} groups in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
