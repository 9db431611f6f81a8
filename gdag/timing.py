"""Where the time goes: seconds per phase of gdag's own work, on request.

    with gdag.timing.record() as phases:
        post = m.posterior(data)
        post.sd("R_i")
    print(phases)   # {'compile': ..., 'pattern': ..., 'analyze': ..., 'assemble': ...,
                    #  'factor': ..., 'solve': ..., 'variances': ..., 'accuracy check': ...}

The phases are those of docs/concepts.md: compile the declarations, build the
index maps for an observed pattern, analyse its sparsity (ordering and
symbolic factor), assemble values, factor, solve for the means (with
refinement), selected inversion for the variances, and the accuracy check.
A fit (``m.fit``) has the same compile, pattern, analyze, assemble and factor
phases, then ``fixed`` (the GLS profile of the fixed effects and the
objective) and ``gradient`` (residual variances, gradient and curvature); its
``Fit.timings`` are these phases, recorded by the fit itself.
Each second is counted once: a phase that runs inside another is subtracted
from the outer one.  Outside ``record()`` the hooks cost one list test.
The benchmarks (benchmarks/cases.py) time the public API this way.
"""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager

_recording: list[dict] = []  # the open record() blocks, innermost last
_running: list[list] = []  # open phases: [name, start, seconds spent in phases inside it]


@contextmanager
def record():
    """Collect the seconds of each phase run inside the block into the dict it yields."""
    phases: dict[str, float] = {}
    _recording.append(phases)
    try:
        yield phases
    finally:
        _recording.remove(phases)


@contextmanager
def phase(name: str):
    """Count the time of the block as ``name`` (used inside gdag)."""
    if not _recording:
        yield
        return
    entry = [name, time.perf_counter(), 0.0]
    _running.append(entry)
    try:
        yield
    finally:
        _running.pop()
        elapsed = time.perf_counter() - entry[1]
        if _running:
            _running[-1][2] += elapsed
        for phases in _recording:
            phases[name] = phases.get(name, 0.0) + elapsed - entry[2]


def timed(name: str):
    """Decorator: count every call of the function as phase ``name``."""
    def wrap(function):
        @functools.wraps(function)
        def timed_call(*args, **kwargs):
            with phase(name):
                return function(*args, **kwargs)
        return timed_call
    return wrap
