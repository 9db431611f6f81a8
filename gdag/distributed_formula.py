"""``gdag.from_formula`` / ``gdag.lmer`` on a dask DataFrame: global levels first, the response per partition.

:func:`from_formula_dask` reads the data twice at most before any fit: one
pass (:func:`gdag.distributed.levels_of`, one ``dask.compute``) for the
levels of the grouping factors (the combinations present, for ``a:b``) and
of string predictors, and the first rows of the first partition for
formulaic's specs.  It returns the latent part of the model
(:class:`gdag.distributed.DaskModel`: plates sized by the global levels,
random effects, parameters) whose ``design.partition_rows`` declares one
partition's response (:class:`FormulaRows`) exactly as
:func:`gdag.from_formula` declares it in memory, with the same levels,
codes and columns on every partition.  Rows with a missing value in a
column the formula reads are left out, as lme4 does.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import pandas as pd

from .design import (
    Design,
    Group,
    _blocks,
    _combined_labels,
    _fixed,
    _formulaic,
    _group_names,
    _identifier,
    _lme4_name,
    _matrix,
    _unique,
    _variables,
    group_labels,
)
from .distributed import _probe, levels_of
from .errors import DataError, ModelSpecError
from .formula import ParsedFormula
from .frame import codes_of

__all__ = ["from_formula_dask", "FormulaRows"]


def from_formula_dask(parsed: ParsedFormula, ddf, name: str):
    """The latent model of ``parsed`` on the dask DataFrame ``ddf`` (see the module's docstring)."""
    columns = set(ddf.columns)
    for v in sorted(_group_names(parsed) - columns):
        raise ModelSpecError(f"The grouping factor `{v}` of `{parsed.text}` is not a column of the data.")
    used = sorted(v for v in _variables(parsed) if v in columns)
    rows = ddf[used].dropna() if used else ddf
    groups = {}  # lme4 name -> factors
    for bar in parsed.bars:
        groups.setdefault(bar.group, bar.factors)
    factors = sorted({f for fs in groups.values() for f in fs})
    predictors = sorted(v for v in used if v not in factors and _is_text(rows[v].dtype))
    wanted = {f: rows[f] for f in factors}
    wanted.update({v: rows[v] for v in predictors})
    found = levels_of(wanted, drop_unused=True) if wanted else {}
    combos = _combinations(rows, [fs for fs in groups.values() if len(fs) > 1])
    categories = {v: pd.CategoricalDtype(found[v]) for v in predictors}
    for v in used:  # a categorical predictor whose categories dask does not know: they differ by partition
        dtype = rows[v].dtype
        if v not in factors and isinstance(dtype, pd.CategoricalDtype) and not rows[v].cat.known:
            categories[v] = rows[v].cat.as_known().dtype
    probe = _as_categories(_probe(rows), categories)
    y, X, fixed_spec = _fixed(parsed, probe)
    response_spec = _response_spec(parsed, probe)
    taken: set = set()
    response = _unique(_identifier(parsed.response), taken)
    beta = _unique("beta", taken) if X.shape[1] else None
    group_list, plates = [], set()
    for gname, fs in groups.items():
        if len(fs) == 1:
            labels = found[fs[0]]
        else:
            labels = group_labels(fs, combos[fs])[0]
        group_list.append(Group(gname, fs, _unique(_identifier(gname), plates), labels))
        plates.add(group_list[-1].plate)
    blocks, _ = _blocks(parsed, probe, taken)
    sigma = _unique("sigma", taken)
    fixed_names = tuple(_lme4_name(c) for c in fixed_spec.column_names)
    design = Design(parsed, response, fixed_spec, fixed_names, beta, sigma, _unique("obs", plates), tuple(group_list),
                    tuple(blocks), None, rows, frozenset(taken), None)
    partition_rows = FormulaRows(replace(design, data=None), response_spec, used, categories)
    design = replace(design, partition_rows=partition_rows)
    return design.build(name)


def _is_text(dtype) -> bool:
    """Strings or objects (a categorical predictor keeps its own categories, which every partition shares)."""
    if isinstance(dtype, pd.CategoricalDtype):
        return False
    return pd.api.types.is_string_dtype(dtype) or getattr(dtype, "kind", None) == "O"


def _as_categories(frame: pd.DataFrame, categories: dict) -> pd.DataFrame:
    if not categories:
        return frame
    frame = frame.copy()
    for v, dtype in categories.items():
        frame[v] = frame[v].astype(dtype)
    return frame


def _combinations(rows, factor_sets) -> dict:
    """The distinct combinations of each set of factors (``a:b``): small frames, one ``dask.compute``."""
    if not factor_sets:
        return {}
    import dask

    tasks = {fs: rows[list(fs)].drop_duplicates(split_every=8, split_out=1) for fs in factor_sets}
    return dict(zip(tasks, dask.compute(*tasks.values())))


def _response_spec(parsed: ParsedFormula, probe: pd.DataFrame):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return _formulaic().model_matrix(f"{parsed.response} ~ 1", probe, na_action="raise").lhs.model_spec
    except (_formulaic().errors.FormulaicError, Warning, ValueError, TypeError, NameError) as err:
        raise ModelSpecError(f"formulaic could not build the response of `{parsed.text}`: {err}") from None


class FormulaRows:
    """``rows(m, part)`` of a formula: one partition's response declared as :func:`gdag.from_formula` declares it.

    Rows incomplete in the formula's columns are dropped; string predictors
    take the global levels as categories (formulaic then builds the same
    columns on every partition); group labels become codes of the global levels.
    """

    def __init__(self, design: Design, response_spec, used: list, categories: dict):
        self.design, self.response_spec, self.used, self.categories = design, response_spec, used, categories

    def frame(self, part: pd.DataFrame) -> pd.DataFrame:
        """``part`` complete in the formula's columns, string predictors as global categoricals."""
        if self.used:
            part = part.loc[~part[self.used].isna().any(axis=1).to_numpy()]
        return _as_categories(part, self.categories)

    def train(self, part: pd.DataFrame):
        """``(y, (X, codes by group, Z by block))`` of a (complete) partition."""
        d = self.design
        y = _matrix(self.response_spec, part, "the response")[:, 0]
        X = _matrix(d.fixed, part, "the fixed effects")
        codes = {g.name: codes_of(g.labels, _combined_labels(part, g.factors), f"group `{g.name}`", DataError)
                 for g in d.groups}
        Z = [_matrix(b.spec, part, b.text)[:, list(b.columns)] for b in d.blocks]
        return y, (X, codes, Z)

    def __call__(self, m, part: pd.DataFrame):
        part = self.frame(part)
        if len(part) == 0:
            return {}
        y, train = self.train(part)
        self.design.declare_response(m, train)
        return {self.design.response: pd.Series(y, index=part.index)}  # the rows kept

    def empty(self, part: pd.DataFrame) -> bool:
        return len(self.frame(part)) == 0
