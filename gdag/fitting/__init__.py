"""Estimating unknown parameters, one stage per module (imports flow down this list).

``roles``: what each parameter entry does; ``derivatives``: residual
variances, gradient and curvature of one evaluation; ``objective``: the
profiled ML/REML objective (assemble, factor, profile); ``optimize``:
starting point, Fisher scoring, L-BFGS-B, EM and the fit log; ``fit``: the
:class:`Fit` result and :func:`fit`.
"""
