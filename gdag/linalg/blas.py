"""BLAS thread control: one OpenBLAS thread around a whole fit."""

from __future__ import annotations

import ctypes
import os
import threading

from scipy.linalg import lapack  # noqa: F401 - loads scipy's OpenBLAS, so that OneBlasThread finds it


class OneBlasThread:
    """Context manager: every loaded OpenBLAS on one thread inside it (unless OPENBLAS_NUM_THREADS is set).

    Internal; used around a whole fit (the optimizer's own work between
    evaluations included: scipy's L-BFGS-B with two spinning threads made an
    18 ms fit of 108 rows take 150 ms) and around each objective evaluation,
    for callers that evaluate outside a fit.  It nests: only the outermost
    entry changes the thread counts, and its exit restores them.  On shared
    machines multi-threaded OpenBLAS spins: dpotrf of a 1,142 x 1,142 matrix
    took up to 1 s instead of 13 ms while another process held the second
    core, and a whole InstEval fit 30 s instead of 0.4 s.  At the sizes of a
    fit's dense blocks one thread loses little (13 against 9 ms on an idle
    2-core machine), so gdag uses one unless the user asked for more through
    OPENBLAS_NUM_THREADS.  Libraries: numpy's and scipy's bundled OpenBLAS and
    the system's (CHOLMOD).  Anything else (MKL, non-Linux) is left alone.
    """

    _PAIRS = (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
              ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
              ("openblas_get_num_threads", "openblas_set_num_threads"))

    def __init__(self):
        self._libs: list = []
        self._prev: list = []
        self._depth = 0
        self._lock = threading.Lock()
        if "OPENBLAS_NUM_THREADS" in os.environ:
            return
        try:
            with open("/proc/self/maps") as fh:
                paths = sorted({line.split()[-1] for line in fh if "openblas" in line.split()[-1].lower()})
        except OSError:
            return
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for get_name, set_name in self._PAIRS:
                if hasattr(lib, get_name) and hasattr(lib, set_name):
                    get, put = getattr(lib, get_name), getattr(lib, set_name)
                    get.restype, get.argtypes, put.argtypes = ctypes.c_int, [], [ctypes.c_int]
                    self._libs.append((get, put))
                    break

    def __enter__(self):
        with self._lock:
            self._depth += 1
            if self._depth == 1:
                self._prev = [get() for get, _ in self._libs]
                for (_, put), prev in zip(self._libs, self._prev):
                    if prev > 1:
                        put(1)
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for (_, put), prev in zip(self._libs, self._prev):
                    if prev > 1:
                        put(prev)


_ONE_THREAD: OneBlasThread | None = None


def one_blas_thread() -> OneBlasThread:
    """The process's :class:`OneBlasThread` (libraries are looked up once)."""
    global _ONE_THREAD
    if _ONE_THREAD is None:
        _ONE_THREAD = OneBlasThread()
    return _ONE_THREAD
