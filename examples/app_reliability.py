"""Example: app reliability across publishers, apps and devices (the seed's third model).

    P_i   ~ N(P, sigma_P^2)           publisher reliability,  P ~ N(0, 1)
    A_j   ~ N(P_i(j), sigma_A^2)      app reliability, apps within publishers
    D_k   ~ N(D, sigma_D^2)           device reliability,     D ~ N(0, 1)
    Y_jk  ~ N(A_j + D_k, sigma_Y^2)   observed reliability of app j on device k

Installs are indexed by app and by device at once: the app and device
effects are crossed, so the joint precision is not a tree.  gdag still
factors it sparsely.

Then a counterfactual: what would device k's observed crash rates of app j
have been, had app j had the reliability of the best app of its publisher?
Given the data, the noises of every install stay as they were (abduction);
A_j is set to the best app's posterior mean (action); and the installs of app
j move by the difference, with the uncertainty about A_j itself (prediction):

    Y*_jk = Y_jk + (a_best - A_j),   A_j | data ~ N(m_j, s_j^2).

Writes docs/figures/app_reliability.svg and app_reliability_do.svg (the
intervened model: A_j a double box, its edge from P_i cut).
"""

from pathlib import Path

import numpy as np

import gdag

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"


def build(rng, n_pub=20, n_app=200, n_dev=50, n_inst=5000):
    """The seed's model: ``(m, publisher_of_app, app_of_install, device_of_install)``."""
    publisher_of_app = np.sort(np.concatenate([np.arange(n_pub), rng.integers(0, n_pub, n_app - n_pub)]))
    app_of_install = rng.integers(0, n_app, n_inst)
    device_of_install = rng.integers(0, n_dev, n_inst)

    m = gdag.Model("app_reliability")
    publisher = m.plate("publisher", n_pub)
    app = m.plate("app", n_app, within=publisher, index=publisher_of_app)
    device = m.plate("device", n_dev)
    install = m.plate("install", n_inst)

    P = m.normal("P", mean=0.0, sd=1.0)
    D = m.normal("D", mean=0.0, sd=1.0)
    P_i = m.normal("P_i", mean=P, sd=0.5, plate=publisher)
    A_j = m.normal("A_j", mean=P_i[publisher_of_app], sd=0.3, plate=app)
    D_k = m.normal("D_k", mean=D, sd=0.4, plate=device)
    m.normal("Y", mean=A_j[app_of_install] + D_k[device_of_install], sd=0.8, plate=install)
    return m, publisher_of_app, app_of_install, device_of_install


def best_app_counterfactual(post, publisher_of_app, app_of_install, device_of_install, y):
    """App j (the least reliable app, by posterior mean, with a reported install), the best app of its publisher,
    and the counterfactual world in which A_j is set to the best app's posterior mean: ``(j, best, k, rows, cf)``."""
    a = post.mean("A_j")
    reported = np.unique(app_of_install[~np.isnan(y)])
    j = int(reported[np.argmin(a[reported])])
    siblings = np.flatnonzero(publisher_of_app == publisher_of_app[j])
    best = int(siblings[np.argmax(a[siblings])])
    value = np.full(a.shape[0], np.nan)  # NaN: every other app left alone
    value[j] = a[best]
    cf = post.counterfactual({"A_j": value})
    k = int(device_of_install[(app_of_install == j) & ~np.isnan(y)][0])  # a device that reported app j
    rows = np.flatnonzero((app_of_install == j) & (device_of_install == k))
    return j, best, k, rows, cf


def main():
    rng = np.random.default_rng(11)
    m, publisher_of_app, app_of_install, device_of_install = build(rng)
    n_inst = app_of_install.shape[0]

    truth = m.posterior({}).sample(1, seed=3)
    y = truth["Y"][0]
    y[rng.random(n_inst) < 0.1] = np.nan  # some installs never reported: simply unobserved
    post = m.posterior({"Y": y})

    print(m.describe())
    print(f"\nlog evidence: {post.log_evidence:.2f}\n")
    print(post.summary("P_i", max_rows=5))
    print()
    print(post.summary("D_k", max_rows=5))
    missing = np.isnan(y)
    print(f"\n{missing.sum()} unreported installs predicted, e.g. Y[{np.flatnonzero(missing)[0]}] = "
          f"{post.mean('Y')[missing][0]:.3f} +- {post.sd('Y')[missing][0]:.3f}")
    covered = np.abs(post.mean("A_j") - truth["A_j"][0]) < 2 * post.sd("A_j")
    print(f"{covered.mean():.0%} of app effects lie within 2 posterior sds of the truth")

    j, best, k, rows, cf = best_app_counterfactual(post, publisher_of_app, app_of_install, device_of_install, y)
    print(f"\nApp {j} (publisher {publisher_of_app[j]}): A_j = {post.mean('A_j')[j]:.3f} +- {post.sd('A_j')[j]:.3f}; "
          f"the publisher's best app is {best}, A = {post.mean('A_j')[best]:.3f}.")
    print(f"Had app {j} been as reliable as app {best}, device {k}'s crash rates of it would have been:")
    print(f"{'install':>8} {'observed':>9} {'counterfactual':>15} {'sd':>6}")
    for r in rows:
        print(f"{r:>8} {y[r]:>9.3f} {cf.mean('Y')[r]:>15.3f} {cf.sd('Y')[r]:>6.3f}")
    others = np.flatnonzero(app_of_install != j)
    print(f"installs of other apps unchanged: {np.array_equal(cf.mean('Y')[others], post.mean('Y')[others], equal_nan=True)}")

    FIGURES.mkdir(parents=True, exist_ok=True)
    m.render(FIGURES / "app_reliability.svg", observed=["Y"], distributions=True)
    value = np.full(post.mean("A_j").shape[0], np.nan)
    value[j] = post.mean("A_j")[best]
    m.do({"A_j": value}).render(FIGURES / "app_reliability_do.svg", observed=["Y"])
    print(f"figures written to {FIGURES}/app_reliability.svg and app_reliability_do.svg")


if __name__ == "__main__":
    main()
