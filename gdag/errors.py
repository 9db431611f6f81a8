"""Every exception and warning gdag raises.

All errors subclass :class:`ModelError`, itself a ``ValueError``, so user code
can catch one type.  Messages name the node, plate or parameter at fault and
say what to do instead.
"""

from __future__ import annotations


class ModelError(ValueError):
    """Base class of every gdag error."""


class ModelSpecError(ModelError):
    """A declaration (plate, node, parameter or mean expression) is invalid."""


class GraphError(ModelError):
    """The model's graph is malformed."""


class CycleError(GraphError):
    """The scalar dependency graph has a cycle; the message names it."""


class DataError(ModelError):
    """Observed data or a query names an unknown node or has bad entries."""


class ParamError(ModelError):
    """A parameter value is missing, of the wrong shape or out of range."""


class NotIdentifiedError(ModelError):
    """The posterior (or a fit) is not proper: the message names what is unidentified."""


class FitError(ModelError):
    """A fit could not be started or carried out."""


class GdagWarning(UserWarning):
    """Base class of gdag's warnings."""


class ConvergenceWarning(GdagWarning):
    """An optimizer stopped before its convergence criterion was met."""


class AccuracyWarning(GdagWarning):
    """The factorization is so ill-conditioned that answers may be inaccurate."""


def warn(message: str, category: type) -> None:
    """Issue a gdag warning attributed to the user's line: the first caller outside the gdag package."""
    import os
    import sys
    import warnings

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    level, frame = 2, sys._getframe(1)  # stacklevel 1 would be this function
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
