"""lme4's data sets as a user holds them: pandas DataFrames with lme4's column names and factor labels.

The CSVs in tests/data store most grouping factors as 0-based codes in R's level order; the
labels come from the reference JSON written beside them (make_reference.R), so a group column
here is a pandas Categorical whose categories are R's levels in R's order.  InstEval's students
and lecturers (only their first 20 labels stored) stay integer codes, whose numeric order is R's.
"""

import json
from pathlib import Path

import pandas as pd

DATA = Path(__file__).parent / "data"

FORMULAS = {
    "dyestuff": "Yield ~ 1 + (1 | Batch)",
    "penicillin": "diameter ~ 1 + (1 | plate) + (1 | sample)",
    "sleepstudy": "Reaction ~ 1 + Days + (1 + Days | Subject)",
    "sleepstudy_uncorrelated": "Reaction ~ 1 + Days + (1 + Days || Subject)",
    "insteval": "y ~ 1 + (1 | s) + (1 | d) + (1 | dept)",
    "pastes": "strength ~ 1 + (1 | batch/cask)",
    "cake_interaction": "angle ~ recipe * temp + (1 | recipe:replicate)",
    "cake_quadratic": "angle ~ recipe + temp + I(temp^2) + (1 | replicate)",
    "small_group": "y ~ 1 + (1 | g)",
}

# the lme4 fits stored in tests/data: (data set, formula key, reference file, key in it)
CASES = [
    ("dyestuff", "dyestuff", "dyestuff", "reml"),
    ("dyestuff", "dyestuff", "dyestuff", "ml"),
    ("penicillin", "penicillin", "penicillin", "reml"),
    ("penicillin", "penicillin", "penicillin", "ml"),
    ("sleepstudy", "sleepstudy", "sleepstudy", "reml"),
    ("sleepstudy", "sleepstudy", "sleepstudy", "ml"),
    ("sleepstudy", "sleepstudy_uncorrelated", "sleepstudy", "ml_uncorrelated"),
    ("pastes", "pastes", "pastes", "reml"),
    ("pastes", "pastes", "pastes", "ml"),
    ("cake", "cake_interaction", "cake", "interaction_reml"),
    ("cake", "cake_quadratic", "cake", "quadratic_ml"),
]


def reference(name: str) -> dict:
    return json.loads((DATA / f"{name}_reference.json").read_text())


def _factor(codes, name: str, group: str, key: str = "reml") -> pd.Categorical:
    levels = reference(name)[key]["ranef"][group]["levels"]
    return pd.Categorical.from_codes(codes.to_numpy(), categories=levels)


def frame(name: str) -> pd.DataFrame:
    """The data set ``name`` (dyestuff, penicillin, sleepstudy, insteval, pastes, cake, small_group) as a DataFrame."""
    if name in ("pastes", "cake", "small_group"):
        return pd.read_csv(DATA / f"{name}.csv")
    if name == "insteval":
        d = pd.read_csv(DATA / "insteval.csv.gz")
        return pd.DataFrame({"y": d["y"], "s": d["s"], "d": d["d"], "dept": _factor(d["dept"], name, "dept", "ml")})
    d = pd.read_csv(DATA / f"{name}.csv")
    if name == "dyestuff":
        return pd.DataFrame({"Yield": d["yield"], "Batch": _factor(d["batch"], name, "batch")})
    if name == "penicillin":
        return pd.DataFrame({"diameter": d["diameter"], "plate": _factor(d["plate"], name, "plate"),
                             "sample": _factor(d["sample"], name, "sample")})
    if name == "sleepstudy":
        return pd.DataFrame({"Reaction": d["reaction"], "Days": d["days"], "Subject": _factor(d["subject"], name, "subject")})
    raise KeyError(name)
