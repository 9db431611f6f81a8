"""gdag: exact inference in linear-Gaussian directed acyclic models.

Declare Gaussian nodes whose means are affine in their parents, and gdag
compiles the model to one sparse joint precision matrix whose Cholesky
factor (CHOLMOD) gives exact posteriors, the log evidence and fits.
"""

from . import timing  # noqa: F401  (gdag.timing.record)
from .counterfactual import Counterfactual
from .design import from_formula, lmer
from .errors import (
    AccuracyWarning,
    ConvergenceWarning,
    CycleError,
    DataError,
    FitError,
    GdagWarning,
    GraphError,
    ModelError,
    ModelSpecError,
    NotIdentifiedError,
    ParamError,
)
from .expr import Expr, dot
from .fitting.fit import Fit
from .interop import to_arviz
from .intervene import shift
from .model import Model
from .posterior import Posterior
from .spec import Node, Param, Plate
from .tables import anova

__version__ = "0.1.0"

__all__ = [
    "Model",
    "Node",
    "Param",
    "Plate",
    "Expr",
    "Posterior",
    "Counterfactual",
    "Fit",
    "dot",
    "shift",
    "from_formula",
    "lmer",
    "anova",
    "to_arviz",
    "ModelError",
    "ModelSpecError",
    "GraphError",
    "CycleError",
    "DataError",
    "ParamError",
    "NotIdentifiedError",
    "FitError",
    "GdagWarning",
    "ConvergenceWarning",
    "AccuracyWarning",
]
