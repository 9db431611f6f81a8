"""Watching a fit: the progress display and the user's ``callback`` (``m.fit(..., progress=, callback=)``).

:class:`Monitor` is the :class:`~gdag.fitting.optimize.FitLog`'s hook, called
after every evaluation.  The display is tqdm's (an optional extra,
``pip install "gdag[progress]"``), shown only once a fit has run for
:data:`DELAY` seconds; a callback that returns True raises :class:`FitStopped`,
which the fit catches and records as not converged.
"""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from ..errors import FitError

__all__ = ["Monitor", "FitStopped", "DELAY", "STOPPED"]

# Seconds a fit runs before its progress display appears.
DELAY = 2.0
STOPPED = "stopped by the callback"


class FitStopped(Exception):
    """Raised by :meth:`Monitor.__call__` when the callback asks the fit to stop."""


class Monitor:
    """Calls ``callback(theta, objective)`` and updates the progress bar after each evaluation.

    ``theta`` is a dict parameter name -> float (scalar parameters) or array,
    ``objective`` is -2 log L (ML) or the REML criterion at it.
    """

    def __init__(self, names, spans, scalar, progress: bool | None, callback: Callable | None, what: str):
        if callback is not None and not callable(callback):
            raise FitError(f"`callback` must be a function of (theta, objective); got {type(callback).__name__}.")
        if progress is not None and not isinstance(progress, (bool, np.bool_)):
            raise FitError(f"`progress` must be True, False or None (shown when stderr is a terminal); got {progress!r:.60}.")
        self._params = list(zip(names, spans, scalar))
        self._callback, self._bar = callback, None
        if progress is None:
            progress = _interactive()
        if progress:
            try:
                from tqdm import tqdm
            except ImportError as exc:
                raise ImportError('progress=True needs tqdm, an optional extra: pip install "gdag[progress]" '
                                  '(or pip install tqdm).') from exc
            self._bar = tqdm(desc=f"fitting {what}", unit=" evaluations", delay=DELAY, file=sys.stderr, leave=False)

    def __call__(self, theta: np.ndarray, objective: float) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"-2 logL {objective:.10g}", refresh=False)
        if self._callback is not None:
            values = {name: float(theta[span][0]) if one else theta[span].copy() for name, span, one in self._params}
            if self._callback(values, float(objective)):
                raise FitStopped()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _interactive() -> bool:
    """Auto progress: on when stderr is a terminal and tqdm is installed (looked for only then: 5 ms to import)."""
    if not getattr(sys.stderr, "isatty", lambda: False)():
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True
