"""Sparse linear algebra that knows matrices, never models.

``gram``: the Gram structure of ``A_U^T W A_U`` and its numeric passes;
``ordering``: fill-reducing permutations; ``factor``: the one Cholesky
factor protocol (analyze once, refactor in place, solve, log-determinant,
selected inverse); ``blocked``: a sparse head with a dense tail;
``selinv``: Takahashi's selected inversion; ``blas``: BLAS thread control.
"""
