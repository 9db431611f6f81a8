"""Sparse linear algebra that knows matrices, never models.

``gram``: the Gram structure of ``A_U^T W A_U`` and its numeric passes;
``ordering``: fill-reducing permutations; ``factor``: the one
:class:`~gdag.linalg.factor.Factor` protocol (analyze once, refactor in
place, solve, log-determinant, selected inverse) and its CHOLMOD factors;
``blocked``: a diagonal head with a dense tail; ``selinv``: Takahashi's
selected inversion; ``pairs``: the entry pairs of ``diag(A X A^T)``;
``blas``: BLAS thread control.
"""

import math

# log(2 pi), in every Gaussian log density (the posterior's log evidence, the fit's -2 log L)
LOG_2PI = math.log(2 * math.pi)
