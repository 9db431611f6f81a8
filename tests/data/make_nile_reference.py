"""Write nile.csv and nile_reference.json: statsmodels' ML estimates of the Nile local-level model.

Not run by CI (statsmodels is a benchmark-only dependency; the tests read
the numbers written here).  Regenerate with:

    cd tests/data && ../../.venv/bin/python make_nile_reference.py

The model (Durbin and Koopman 2012, chapter 2): ``mu_1`` diffuse,
``mu_t = mu_{t-1} + eta_t``, ``y_t = mu_t + eps_t``, ``eta ~ N(0, s2_level)``,
``eps ~ N(0, s2_irregular)``, fit by statsmodels'
``UnobservedComponents(y, "llevel", use_exact_diffuse=True)``.  Its diffuse
log-likelihood is gdag's restricted likelihood (REML) of the same model with
the initial level as a fixed effect: integrating a flat ``level0`` out of
``mu_1 ~ N(level0, s2_level)`` leaves ``mu_1`` flat.  The two differ by the
constant ``log(2 pi) / 2`` (gdag's REML counts ``(n - p) log 2 pi``).

statsmodels' own ``fit()`` stops about 2e-3 (relative) from its optimum on
this flat likelihood, so the estimates are refined: its score (by complex
steps, exact to rounding) is solved for zero from that start, and the result
is checked to be a maximum.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy
import statsmodels
import statsmodels.api as sm
from scipy.optimize import root
from statsmodels.datasets import nile

HERE = Path(__file__).resolve().parent


def main():
    data = nile.load_pandas().data
    year, y = data["year"].to_numpy(int), data["volume"].to_numpy(float)
    np.savetxt(HERE / "nile.csv", np.column_stack([year, y]), delimiter=",", header="year,volume",
               comments="", fmt=["%d", "%.17g"])
    mod = sm.tsa.UnobservedComponents(y, "llevel", use_exact_diffuse=True)
    default = mod.fit(disp=0)
    start = mod.fit(start_params=default.params, disp=0, method="bfgs", gtol=1e-12, maxiter=10000).params
    sol = root(lambda p: mod.score(p, approx_complex_step=True) * p, start, method="hybr", tol=1e-15)
    p = sol.x
    score = mod.score(p, approx_complex_step=True)
    hessian = mod.hessian(p)
    assert np.all(np.abs(score * p) < 1e-10) and np.all(np.linalg.eigvalsh(-hessian) > 0)
    names = mod.param_names  # sigma2.irregular, sigma2.level
    ref = {
        "model": "UnobservedComponents(volume, 'llevel', use_exact_diffuse=True)",
        "statsmodels": statsmodels.__version__, "scipy": scipy.__version__, "numpy": np.__version__,
        "nobs": int(y.size),
        "sigma2_irregular": float(p[names.index("sigma2.irregular")]),
        "sigma2_level": float(p[names.index("sigma2.level")]),
        "llf": float(mod.loglike(p)),
        "score_times_params": [float(s) for s in score * p],
        "default_fit": {"sigma2_irregular": float(default.params[0]), "sigma2_level": float(default.params[1]),
                        "llf": float(default.llf)},
    }
    (HERE / "nile_reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(json.dumps(ref, indent=1))


if __name__ == "__main__":
    main()
