"""Memory: what the machine has available and what a computation would need.

gdag refuses, with a :class:`~gdag.ModelError` that gives both numbers, a
computation whose estimated memory exceeds what the operating system reports
as available, instead of letting it swap or be killed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import ModelError
from .linalg.ordering import fill


def available_memory() -> float:
    """Bytes the OS could give this process now: ``MemAvailable`` from /proc/meminfo.

    Falls back to the free physical pages (``os.sysconf``) and, where neither
    is known, to infinity (no refusal).
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except (OSError, ValueError, IndexError):
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (OSError, ValueError, AttributeError):
        return float("inf")


def gigabytes(n_bytes) -> float:
    """``n_bytes`` in GB (1e9 bytes), for messages; safe for huge Python ints."""
    return float(min(n_bytes, 10**300)) / 1e9


# ------------------------------------------------------ factor size estimate

# Bytes per nonzero of L at the peak of a posterior with variances: CHOLMOD's
# values (8, plus supernodal padding of 5-70%), the CSC copy of L for selected
# inversion (8 + 8 for the index) and selected inversion's work array (8).
# Measured peaks on crossed models: 64-74 bytes per nonzero of L, everything
# included; the O(n) arrays are counted separately.
BYTES_PER_FACTOR_ENTRY = 64
BYTES_PER_VARIABLE = 200


@dataclass(frozen=True)
class FactorSize:
    """Sizes of the sparse system for one observed pattern, from the symbolic analysis alone."""

    n_unobserved: int
    nnz_Q: int  # lower triangle of Q_UU, diagonal included
    nnz_L: int  # structural nonzeros of the Cholesky factor
    flops: float  # sum of squared column counts
    n_variables: int
    padded_to: int = 0  # > 0: factored as the padded system over this many stochastic variables

    @property
    def memory(self) -> float:
        """Estimated peak bytes of a posterior with variances."""
        return BYTES_PER_FACTOR_ENTRY * self.nnz_L + BYTES_PER_VARIABLE * self.n_variables

    def describe(self) -> str:
        system = "Q_UU"
        if self.padded_to:
            system = f"the padded Q' (all {self.padded_to} stochastic variables, shared analysis)"
        return (
            f"{self.n_unobserved} unobserved; {system} has {self.nnz_Q} nonzeros (lower triangle), "
            f"its Cholesky factor {self.nnz_L} ({self.flops:.2g} flops); "
            f"estimated memory {gigabytes(self.memory):.3g} GB of {gigabytes(available_memory()):.3g} GB available"
        )


def factor_size(cond) -> FactorSize:
    """The :class:`FactorSize` of a :class:`~gdag.pattern.Conditioning` (cached on it by its ``factor_size``)."""
    pattern = cond.gram.pattern
    if cond.n_unobserved == 0:
        return FactorSize(0, 0, 0, 0.0, cond.cm.n)
    analysis = cond.analysis()
    nnz_L, flops = analysis.counts if analysis.counts is not None else factor_nonzeros(pattern, analysis.P())
    return FactorSize(cond.n_unobserved, int(pattern.nnz), nnz_L, flops, cond.cm.n)


# Arrays smaller than this are never refused up front (before declaring or compiling)
UPFRONT_FLOOR = 2**27
# Bytes a declaration keeps per scalar entry (its sd and a term's row and column indices)
BYTES_PER_DECLARED_ENTRY = 24
# Bytes a compiled model and its data take per parameter entry (theta, F's column and defaults)
BYTES_PER_PARAMETER_ENTRY = 32


def check_entries(need: float, what: str) -> None:
    """Refuse, before numpy tries to allocate them, arrays of ``need`` bytes beyond the available memory.

    ``what`` says whose arrays, and their sizes (the start of the message).  Below
    ``UPFRONT_FLOOR`` bytes nothing is refused here: such arrays are harmless, and the
    factor's own check (:func:`check_memory`) sees everything a posterior needs.
    """
    if need < UPFRONT_FLOOR:
        return
    available = available_memory()
    if need > available:
        raise ModelError(
            f"{what} need an estimated {gigabytes(need):.3g} GB, more than the {gigabytes(available):.3g} GB "
            "available (MemAvailable). Use smaller plates, or a machine with more memory."
        )


def check_model_size(spec, name: str) -> None:
    """Refuse a query whose compiled model alone would not fit in memory, before compiling it."""
    n_vars = sum(nd.size for nd in spec.nodes.values())
    n_params = sum(p.size for p in spec.params.values())
    check_entries(float(n_vars) * BYTES_PER_VARIABLE + float(n_params) * BYTES_PER_PARAMETER_ENTRY,
                  f"The {n_vars} scalar variables and {n_params} parameter entries of `{name}`")


def check_memory(size: FactorSize, name: str) -> None:
    """Refuse, with both numbers, a posterior whose estimated memory exceeds what is available."""
    available = available_memory()
    if size.memory > available:
        raise ModelError(
            f"The posterior of `{name}` needs an estimated {gigabytes(size.memory):.3g} GB (a Cholesky factor with "
            f"{size.nnz_L} nonzeros for {size.n_unobserved} unobserved variables), more than the "
            f"{gigabytes(available):.3g} GB available (MemAvailable). Observe more of the model, split it, or use "
            "a machine with more memory."
        )


def factor_nonzeros(lower, perm) -> tuple[int, float]:
    """``(nnz(L), flops)`` of the Cholesky factor of ``Q[perm][:, perm]``, exactly, without factoring.

    ``lower`` is the lower triangle of ``Q`` (scipy CSC, any values).  The
    elimination tree and the row subtrees give every column count in
    O(nnz(L)) integer work, far less than the numeric factorization
    (O(sum of squared column counts) flops, the second number returned).
    CHOLMOD's supernodal factor stores a little more (relaxed supernodes pad
    with explicit zeros), which :data:`BYTES_PER_FACTOR_ENTRY` allows for.
    """
    if lower.shape[0] == 0:
        return 0, 0.0
    _, nnz_L, flops = fill(lower, perm)
    return nnz_L, flops


def start_draws(n, seed, entries_per_draw: int):
    """The generator for ``sample(n, seed)``, after checking ``n``, ``seed`` and the draws' memory.

    ``entries_per_draw``: floats one draw holds (the unobserved variables and the nodes asked for).
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ModelError(f"sample(n) needs a positive integer n; got {n!r}.")
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError):
        raise ModelError(
            f"sample(seed=...) takes None, a non-negative integer or a numpy Generator; got {seed!r:.60}."
        ) from None
    need = entries_per_draw * int(n) * 8
    if need > available_memory():
        raise ModelError(
            f"sample({n}) would need {gigabytes(need):.3g} GB for the draws, more than the "
            f"{gigabytes(available_memory()):.3g} GB available; draw fewer at a time or name fewer nodes."
        )
    return rng
