"""Every exception and warning gdag raises.

All errors subclass :class:`ModelError`, itself a ``ValueError``, so user code
can catch one type.  Messages name the node, plate or parameter at fault and
say what to do instead.
"""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


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


def user_frame(start: int = 1):
    """The first frame outside the gdag package above the caller, and its distance (the one frame walker).

    Returns ``(frame, depth)``: ``depth`` counts frames from the caller of this
    function (1) up to that frame, as ``warnings.warn``'s ``stacklevel`` does.
    ``frame`` is None when every frame is gdag's own.
    """
    depth, frame = start, sys._getframe(start + 1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, depth = frame.f_back, depth + 1
    return frame, depth


def declaration_site() -> str:
    """``file:line`` of the user code that declared something (quoted in messages)."""
    frame, _ = user_frame()
    if frame is None:
        return "<unknown>"
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def warn(message: str, category: type) -> None:
    """Issue a gdag warning attributed to the user's line: the first caller outside the gdag package."""
    _, depth = user_frame()
    warnings.warn(message, category, stacklevel=depth + 1)
