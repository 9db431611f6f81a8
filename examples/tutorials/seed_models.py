"""Tutorial "The seed's three models" (docs/tutorials/seed_models.md): every code block of the page, in order.

The models come from examples/romcom.py, examples/students.py and
examples/app_reliability.py; the sizes here are small so that the whole
script runs in a second or two.  Figures go to the directory given as the
first argument (default: a temporary one), not to docs/figures.

Run: ``.venv/bin/python examples/tutorials/seed_models.py``
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import app_reliability  # noqa: E402
import students  # noqa: E402
from romcom import SIGMA, romcom_model  # noqa: E402


def romcom(out):
    rng = np.random.default_rng(2024)
    n_friends = 30
    counts = rng.integers(1, 16, size=n_friends)        # |M_i|, ratings per friend
    sigma_i = rng.uniform(0.3, 2.0, size=n_friends)     # each friend's consistency
    who = np.repeat(np.arange(n_friends), counts)       # the friend of each rating
    ratings = rng.normal(3.0, SIGMA, size=n_friends)[who] + rng.normal(size=who.size) * sigma_i[who]

    m = romcom_model(n_friends, who, sigma_i[who])
    print(m.describe())
    m.render(out / "romcom.svg", observed=["X"], distributions=True)

    known = m.posterior({"X": ratings, "R": 3.0})       # R given
    free = m.posterior({"X": ratings})                  # R inferred too
    print(f"R = {free.mean('R'):.3f} +- {free.sd('R'):.3f}, log evidence {free.log_evidence:.2f}")

    w = SIGMA**2 / (SIGMA**2 + sigma_i**2 / counts)
    xbar = np.bincount(who, weights=ratings) / counts
    print(f"largest gap to the closed form: {np.max(np.abs(known.mean('R_i') - (w * xbar + (1 - w) * 3.0))):.1e}")
    for i in np.argsort(w)[[0, 1, -2, -1]]:
        print(f"friend {i:2d}: {counts[i]:2d} ratings, mean {xbar[i]:.2f}, w {w[i]:.2f} -> "
              f"{known.mean('R_i')[i]:.3f} +- {known.sd('R_i')[i]:.3f}")


def school_model(out):
    rng = np.random.default_rng(7)
    m, index = students.build(rng, n_state=3, n_district=8, n_school=20, n_class=60, n_student=1500)
    truth = m.posterior({}).sample(1, seed=1)           # one draw from the prior plays the world
    scores = truth["score"][0]
    post = m.posterior({"score": scores})
    print(post.summary("state_effect"))
    print("truth:", np.round(truth["state_effect"][0], 3))
    print(post.to_frame(["ses_effect"])[["label", "mean", "sd"]].round(3))

    k = int(np.argmin(post.mean("school_effect")))      # the weakest school ...
    value = float(np.max(post.mean("school_effect")))   # ... given the best school's effect
    school_of_student = index["school_of_student"]
    do_post, cf = students.school_intervention(m, post, school_of_student, scores, k, value)
    mine = school_of_student == k
    print(f"school {k}: observed {scores[mine].mean():.2f}, under do() {do_post.mean('score')[mine].mean():.2f}, "
          f"counterfactual {cf.mean('score')[mine].mean():.2f} +- {cf.sd('score')[mine][0]:.2f}")
    v = np.full(post.mean("school_effect").shape[0], np.nan)
    v[k] = value
    m.do({"school_effect": v}).render(out / "students_do.svg", observed=["score"])


def apps(out):
    rng = np.random.default_rng(11)
    m, pub_of_app, app_of_inst, dev_of_inst = app_reliability.build(rng, n_pub=20, n_app=200, n_dev=50, n_inst=5000)
    truth = m.posterior({}).sample(1, seed=3)
    y = truth["Y"][0]
    y[rng.random(y.size) < 0.1] = np.nan                # unreported installs: unobserved
    post = m.posterior({"Y": y})
    print(post.summary("D_k", max_rows=3))
    gap = np.flatnonzero(np.isnan(y))[0]
    print(f"Y[{gap}] (unreported) = {post.mean('Y')[gap]:.3f} +- {post.sd('Y')[gap]:.3f}")

    j, best, k, rows, cf = app_reliability.best_app_counterfactual(post, pub_of_app, app_of_inst, dev_of_inst, y)
    print(f"app {j}: A = {post.mean('A_j')[j]:.3f} +- {post.sd('A_j')[j]:.3f}; best sibling {best}, "
          f"A = {post.mean('A_j')[best]:.3f}")
    for r in rows:
        print(f"install {r}: observed {y[r]:.3f}, had app {j} been app {best}: {cf.mean('Y')[r]:.3f} +- {cf.sd('Y')[r]:.3f}")


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    romcom(out)
    school_model(out)
    apps(out)


if __name__ == "__main__":
    main()
