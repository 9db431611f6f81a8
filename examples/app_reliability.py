"""Example: app reliability across publishers, apps and devices (the seed's third model).

    P_i   ~ N(P, sigma_P^2)           publisher reliability,  P ~ N(0, 1)
    A_j   ~ N(P_i(j), sigma_A^2)      app reliability, apps within publishers
    D_k   ~ N(D, sigma_D^2)           device reliability,     D ~ N(0, 1)
    Y_jk  ~ N(A_j + D_k, sigma_Y^2)   observed reliability of app j on device k

Installs are indexed by app and by device at once: the app and device
effects are crossed, so the joint precision is not a tree.  gdag still
factors it sparsely.  Writes docs/figures/app_reliability.svg.
"""

from pathlib import Path

import numpy as np

import gdag

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"


def main():
    rng = np.random.default_rng(11)
    n_pub, n_app, n_dev, n_inst = 20, 200, 50, 5000
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

    FIGURES.mkdir(parents=True, exist_ok=True)
    m.render(FIGURES / "app_reliability.svg", observed=["Y"])
    print(f"figure written to {FIGURES}/app_reliability.svg")


if __name__ == "__main__":
    main()
