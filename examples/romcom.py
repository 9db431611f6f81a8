"""Example: partial pooling of romcom ratings (the seed article's first model).

Each friend i has an interest R_i in romantic comedies, and rates the movies
they saw:

    R      ~ N(3, 1)                 general interest among my friends
    R_i    ~ N(R, sigma^2)           friend i's interest, sigma = 0.5
    X_ij   ~ N(R_i, sigma_i^2)       friend i's ratings, j in M_i

With R known, the seed gives the posterior mean in closed form:

    E[R_i | X, R] = w_i * mean(X_i.) + (1 - w_i) * R,
    w_i = sigma^2 / (sigma^2 + sigma_i^2 / |M_i|)

Friends with few or noisy ratings (small w_i) shrink toward R.  gdag computes
the same numbers from one sparse factorization, and also the posterior with R
unknown, and (at 100,000 friends) where the time goes.  Writes
docs/figures/romcom.svg and an expanded drawing of 4 friends.
"""

from pathlib import Path

import numpy as np

import gdag

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"
SIGMA = 0.5


def romcom_model(n_friends, who, sd_of_rating, name="romcom"):
    """The seed's hierarchical model for ``n_friends`` and ratings by friend ``who``."""
    m = gdag.Model(name)
    friend = m.plate("friend", n_friends)
    rating = m.plate("rating", who.size, within=friend, index=who)  # X_ij inside friend i's plate, as the seed draws it
    R = m.normal("R", mean=3.0, sd=1.0)
    R_i = m.normal("R_i", mean=R, sd=SIGMA, plate=friend)
    m.normal("X", mean=R_i[who], sd=sd_of_rating, plate=rating)
    return m


def main():
    rng = np.random.default_rng(2024)
    n_friends = 30
    counts = rng.integers(1, 16, size=n_friends)  # |M_i|: how many romcoms friend i rated
    sigma_i = rng.uniform(0.3, 2.0, size=n_friends)  # how consistent friend i's ratings are
    who = np.repeat(np.arange(n_friends), counts)
    interest = rng.normal(3.0, SIGMA, size=n_friends)
    ratings = interest[who] + rng.normal(size=who.size) * sigma_i[who]

    m = romcom_model(n_friends, who, sigma_i[who])
    R_known = 3.0
    with_R = m.posterior({"X": ratings, "R": R_known})
    post = m.posterior({"X": ratings})

    xbar = np.bincount(who, weights=ratings) / counts
    weight = SIGMA**2 / (SIGMA**2 + sigma_i**2 / counts)
    closed_form = weight * xbar + (1 - weight) * R_known

    print(f"R unknown: posterior R = {post.mean('R'):.3f} +- {post.sd('R'):.3f}; "
          f"log evidence of the ratings = {post.log_evidence:.2f}")
    print("\nPartial pooling with R = 3 known (seed formula vs gdag), and with R unknown:")
    print(f"{'friend':>6} {'|M_i|':>5} {'sigma_i':>7} {'mean X':>7} {'w_i':>5} "
          f"{'formula':>8} {'gdag':>8} {'sd':>6} {'R unknown':>10}")
    mean_known, sd_known, mean_free = with_R.mean("R_i"), with_R.sd("R_i"), post.mean("R_i")
    for i in np.argsort(weight):
        print(f"{i:>6} {counts[i]:>5} {sigma_i[i]:>7.2f} {xbar[i]:>7.2f} {weight[i]:>5.2f} "
              f"{closed_form[i]:>8.3f} {mean_known[i]:>8.3f} {sd_known[i]:>6.3f} {mean_free[i]:>10.3f}")
    worst = np.max(np.abs(mean_known - closed_form))
    print(f"\nlargest difference between gdag and the closed form: {worst:.1e}")
    if worst > 1e-10:
        raise SystemExit("gdag disagrees with the seed's partial-pooling formula")

    at_scale(rng)

    FIGURES.mkdir(parents=True, exist_ok=True)
    m.render(FIGURES / "romcom.svg", observed=["X"], distributions=True)
    few = np.array([0, 0, 1, 2, 2, 2, 3])
    small = romcom_model(4, few, 1.0, name="romcom_4_friends")
    small.render(FIGURES / "romcom_expanded.svg", expanded=True, observed=["X"])
    print(f"figures written to {FIGURES}/romcom.svg and romcom_expanded.svg")


def at_scale(rng, n_friends=100_000):
    """The same model with 100,000 friends: still the closed form, and where the time goes."""
    counts = rng.integers(1, 16, size=n_friends)
    sigma_i = rng.uniform(0.3, 2.0, size=n_friends)
    who = np.repeat(np.arange(n_friends), counts)
    ratings = rng.normal(3.0, SIGMA, size=n_friends)[who] + rng.normal(size=who.size) * sigma_i[who]
    m = romcom_model(n_friends, who, sigma_i[who], name="romcom_at_scale")
    with gdag.timing.record() as phases:
        post = m.posterior({"X": ratings, "R": 3.0})
        mean = post.mean("R_i")
        post.sd("R_i")
    weight = SIGMA**2 / (SIGMA**2 + sigma_i**2 / counts)
    closed_form = weight * np.bincount(who, weights=ratings) / counts + (1 - weight) * 3.0
    if np.max(np.abs(mean - closed_form)) > 1e-10:
        raise SystemExit("gdag disagrees with the seed's partial-pooling formula at scale")
    print(f"\n{n_friends:,} friends, {who.size:,} ratings: largest difference from the closed form "
          f"{np.max(np.abs(mean - closed_form)):.1e}; seconds per phase (gdag.timing):")
    print("  " + ", ".join(f"{name} {seconds:.3f}" for name, seconds in phases.items()))


if __name__ == "__main__":
    main()
