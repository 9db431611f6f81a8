"""Example: test scores of students nested in classrooms, schools, districts and states,
crossed with socio-economic background (the seed article's second model).

    state_s      ~ N(0, 4^2)
    district_d   ~ N(state[state of d], 3^2)         districts within states
    school_k     ~ N(district[district of k], 2^2)   schools within districts
    classroom_c  ~ N(school[school of c], 2^2)       classrooms within schools
    ses_g        ~ N(0, 5^2)                         socio-economic background
    score_i      ~ N(70 + classroom[c(i)] + ses[g(i)], 8^2)

Students belong to a classroom (a tree) and to a background group at the same
time, so the dependency graph is not a tree.  gdag conditions on the scores
and reports every latent effect exactly.

Then a school-level intervention.  ``m.do({"school_effect": v})`` sets one
school's effect from outside (a new head teacher, say): the school is cut
from its district, its classrooms and students follow.  Two questions:

* interventional: what would school k's students score under the new
  effect?  Its own scores were made without the intervention, so they are
  left out (NaN); the other schools' scores, which it does not touch, still
  inform the shared effects (``m.do(...).posterior(other_scores)``).
* counterfactual: given the scores we saw, what would school k's students
  have scored had its effect been v?  (``post.counterfactual(...)``: each
  student keeps their own noise; the scores move by v - school_k, whose
  posterior uncertainty is the counterfactual's.)

Writes docs/figures/students.svg and students_do.svg.
"""

from pathlib import Path

import numpy as np

import gdag

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"


def nest(rng, n_children, n_parents):
    """Assign children to parents so that every parent has at least one child."""
    parent = np.concatenate([np.arange(n_parents), rng.integers(0, n_parents, n_children - n_parents)])
    return np.sort(parent)


def build(rng, n_state=3, n_district=8, n_school=20, n_class=60, n_student=1500, n_ses=4):
    """The seed's model: ``(m, index)``, ``index`` the parent arrays by name (``index["school_of_student"]``)."""
    state_of_district = nest(rng, n_district, n_state)
    district_of_school = nest(rng, n_school, n_district)
    school_of_class = nest(rng, n_class, n_school)
    class_of_student = nest(rng, n_student, n_class)
    ses_of_student = rng.integers(0, n_ses, n_student)

    m = gdag.Model("students")
    state = m.plate("state", n_state)
    district = m.plate("district", n_district, within=state, index=state_of_district)
    school = m.plate("school", n_school, within=district, index=district_of_school)
    classroom = m.plate("classroom", n_class, within=school, index=school_of_class)
    student = m.plate("student", n_student, within=classroom, index=class_of_student)
    background = m.plate("ses", n_ses)

    s = m.normal("state_effect", mean=0.0, sd=4.0, plate=state)
    d = m.normal("district_effect", mean=s[state_of_district], sd=3.0, plate=district)
    k = m.normal("school_effect", mean=d[district_of_school], sd=2.0, plate=school)
    c = m.normal("class_effect", mean=k[school_of_class], sd=2.0, plate=classroom)
    g = m.normal("ses_effect", mean=0.0, sd=5.0, plate=background)
    m.normal("score", mean=70.0 + c[class_of_student] + g[ses_of_student], sd=8.0, plate=student)
    index = dict(state_of_district=state_of_district, district_of_school=district_of_school,
                 school_of_class=school_of_class, class_of_student=class_of_student, ses_of_student=ses_of_student,
                 school_of_student=school_of_class[class_of_student])
    return m, index


def school_intervention(m, post, school_of_student, scores, school: int, value: float):
    """The school set to ``value``: ``(interventional posterior given the other schools' scores, counterfactual)``."""
    v = np.full(post.mean("school_effect").shape[0], np.nan)
    v[school] = value  # NaN: every other school left alone
    others = np.where(school_of_student == school, np.nan, scores)
    return m.do({"school_effect": v}).posterior({"score": others}), post.counterfactual({"school_effect": v})


def main():
    rng = np.random.default_rng(7)
    m, index = build(rng)
    school_of_student = index["school_of_student"]
    n_student = school_of_student.shape[0]

    truth = m.posterior({}).sample(1, seed=1)  # a draw from the prior plays the true world
    scores = truth["score"][0]
    post = m.posterior({"score": scores})

    print(m.describe())
    print(f"\nlog evidence of {n_student} scores: {post.log_evidence:.2f}\n")
    for name in ["state_effect", "ses_effect"]:
        print(post.summary(name))
        print(f"true values: {np.round(truth[name][0], 3)}\n")
    print(post.summary("school_effect", max_rows=5))

    inside = np.abs(post.mean("class_effect") - truth["class_effect"][0]) < 2 * post.sd("class_effect")
    print(f"\n{inside.mean():.0%} of classroom effects lie within 2 posterior sds of the truth")

    k = int(np.argmin(post.mean("school_effect")))
    value = float(np.max(post.mean("school_effect")))
    do_post, cf = school_intervention(m, post, school_of_student, scores, k, value)
    mine = school_of_student == k
    print(f"\nSchool {k} (effect {post.mean('school_effect')[k]:.2f} +- {post.sd('school_effect')[k]:.2f}) set to "
          f"{value:.2f}, the best school's effect:")
    print(f"  school {k}'s {mine.sum()} students: observed mean score {scores[mine].mean():.2f}")
    print(f"  under do(), predicted from the other schools: {do_post.mean('score')[mine].mean():.2f} "
          f"(each +- {do_post.sd('score')[mine][0]:.2f}: a new student's noise included)")
    print(f"  counterfactual, each student's own noise kept: {cf.mean('score')[mine].mean():.2f} "
          f"(each +- {cf.sd('score')[mine][0]:.2f})")

    FIGURES.mkdir(parents=True, exist_ok=True)
    m.render(FIGURES / "students.svg", observed=["score"])
    v = np.full(post.mean("school_effect").shape[0], np.nan)
    v[k] = value
    m.do({"school_effect": v}).render(FIGURES / "students_do.svg", observed=["score"])
    print(f"figures written to {FIGURES}/students.svg and students_do.svg")


if __name__ == "__main__":
    main()
