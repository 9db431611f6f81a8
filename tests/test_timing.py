"""gdag.timing: seconds per phase of the public API, each second counted once."""

import time

import numpy as np

import gdag
from gdag import timing


def romcom(n_friends=50, seed=0):
    rng = np.random.default_rng(seed)
    who = np.repeat(np.arange(n_friends), 3)
    m = gdag.Model("romcom")
    R = m.normal("R", mean=3.0, sd=1.0)
    R_i = m.normal("R_i", mean=R, sd=0.5, plate=m.plate("friend", n_friends))
    m.normal("X", mean=R_i[who], sd=1.0, plate=m.plate("rating", who.size))
    return m, {"X": rng.normal(3.0, 1.0, who.size)}


def test_phases_of_a_posterior_are_recorded_once_and_within_the_wall_time():
    m, data = romcom()
    start = time.perf_counter()
    with timing.record() as phases:
        post = m.posterior(data)
        post.sd("R_i")
    wall = time.perf_counter() - start
    assert {"compile", "pattern", "analyze", "assemble", "factor", "solve", "variances", "accuracy check"} <= set(phases)
    assert all(v >= 0 for v in phases.values())
    assert sum(phases.values()) <= wall


def test_nested_phases_count_their_seconds_only_once(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    with timing.record() as phases:
        with timing.phase("outer"):
            clock[0] += 2.0
            with timing.phase("inner"):
                clock[0] += 3.0
            with timing.phase("outer"):  # a phase inside itself is not counted twice either
                clock[0] += 1.0
    assert phases == {"outer": 3.0, "inner": 3.0}
    with timing.record() as first, timing.record() as second:  # every open record sees every phase
        with timing.phase("x"):
            clock[0] += 1.0
    assert first == second == {"x": 1.0}


def test_nothing_is_recorded_outside_record():
    m, data = romcom()
    with timing.record() as phases:
        pass
    m.posterior(data).sd("R_i")
    assert phases == {}
