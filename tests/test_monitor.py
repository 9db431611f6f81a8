"""m.fit(..., callback=, progress=): the callback sees every evaluation and can stop the fit; the display stays quiet unless asked."""

import sys

import numpy as np
import pytest

import gdag
from gdag.fitting import monitor

from lme4data import FORMULAS, frame


@pytest.fixture(scope="module")
def sleep():
    return gdag.from_formula(FORMULAS["sleepstudy"], frame("sleepstudy"))


def fit(model, **options):
    return model.fit(model.design.data, **options)


def test_the_callback_sees_every_evaluation(sleep):
    calls = []
    result = fit(sleep, callback=lambda theta, objective: calls.append((theta, objective)))
    assert result.converged and result.message != monitor.STOPPED
    assert len(calls) == len(result.fitlog) > 2
    assert [objective for _, objective in calls] == [objective for _, objective in result.fitlog]
    theta, objective = calls[int(np.argmin([o for _, o in calls]))]
    assert theta.keys() == result.params.keys()
    assert theta["sigma"] == pytest.approx(result.params["sigma"], rel=1e-12)
    np.testing.assert_allclose(theta["beta"], result.params["beta"], rtol=1e-12)
    assert objective == pytest.approx(result.objective, rel=1e-14)


def test_a_callback_returning_true_stops_the_fit_as_not_converged(sleep):
    calls = []

    def stop_third(theta, objective):
        calls.append(objective)
        return len(calls) == 3

    with pytest.warns(gdag.ConvergenceWarning, match="did not converge \\(stopped by the callback\\)"):
        result = fit(sleep, callback=stop_third)
    assert not result.converged and result.message == "stopped by the callback"
    assert len(calls) == len(result.fitlog) == 3
    assert result.objective == min(calls)  # the best point seen
    assert "NOT converged" in repr(result)


def test_progress_false_and_the_default_in_tests_print_nothing(sleep, capfd):
    fit(sleep, progress=False)
    fit(sleep)  # stderr is not a terminal here: auto is off
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_progress_true_shows_tqdm_on_stderr_once_the_fit_is_slow(sleep, capfd, monkeypatch):
    monkeypatch.setattr(monitor, "DELAY", 0.0)
    fit(sleep, progress=True)
    out, err = capfd.readouterr()
    assert out == "" and "fitting Reaction" in err and "evaluations" in err


def test_bad_options_and_a_missing_tqdm_are_clear_errors(sleep, monkeypatch):
    with pytest.raises(gdag.FitError, match="`callback` must be a function of \\(theta, objective\\); got int"):
        fit(sleep, callback=3)
    with pytest.raises(gdag.FitError, match="`progress` must be True, False or None"):
        fit(sleep, progress="yes")
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ImportError, match='pip install "gdag\\[progress\\]"'):
        fit(sleep, progress=True)
    fit(sleep, progress=None)  # auto without tqdm: no display, no error
