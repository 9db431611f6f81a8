"""From an lme4 formula and a data frame to an ordinary :class:`~gdag.Model`: ``gdag.from_formula``, ``gdag.lmer``.

The formula is split by :mod:`gdag.formula`; formulaic builds the response,
the fixed-effect design ``X`` (R's treatment contrasts) and each bar's
columns ``Z``; each grouping factor becomes a labelled plate.  The model is
then declared in gdag's own language, the way docs/fitting.md writes lme4
models by hand::

    beta                                    one vector parameter, mean gdag.dot(X, beta)
    u_j[level] ~ N(sum_{i<j} c_ji u_i[level], sd_j^2)     per block of correlated terms
    y[row] ~ N(X beta + sum_blocks sum_j Z_j[row] u_j[g[row]], sigma^2)

A block of ``k`` correlated terms is a chain of regressions of each term on
the ones before it: ``u = C u + e``, ``e ~ N(0, diag(sd^2))``, whose
covariance ``(I - C)^{-1} diag(sd^2) (I - C)^{-T}`` is any covariance
matrix (its LDL^T factorization); ``k = 2`` is docs/fitting.md's
``u1 ~ N(rho * u0, s1^2)``.  :mod:`gdag.tables` converts it back to lme4's
SDs and correlations.  The :class:`Design` kept on the model (``m.design``)
holds what the tables and ``predict`` need: names, levels and formulaic's
specs, which rebuild the same columns for new data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from .distributed.fit import DaskModel
from .distributed.posterior import _probe
from .distributed.rows import _dask, is_dask, levels_of
from .errors import DataError, FitError, ModelSpecError, NotIdentifiedError
from .expr import dot
from .formula import (
    Block,
    Group,
    ParsedFormula,
    _as_frame,
    _blocks,
    _combined_labels,
    _fixed,
    _formulaic,
    _group_names,
    _groups,
    _identifier,
    _lme4_name,
    _matrix,
    _unique,
    _variables,
    _variables_of,
    group_labels,
    in_lme4_words,
    parse_formula,
    refuse_stateful,
)
from .frame import codes_of
from .model import Model
from .profile import profile_confint

__all__ = ["Design", "Block", "Group", "FormulaRows", "from_formula", "lmer"]


@dataclass(frozen=True, eq=False)
class Design:
    """What ``from_formula`` built a model from: kept as ``m.design`` for tables and prediction."""

    formula: ParsedFormula
    response: str  # the response node's name
    fixed: Any  # formulaic ModelSpec of the fixed part
    fixed_names: tuple[str, ...]  # lme4's names: (Intercept), Days, ...
    beta: str | None
    sigma: str
    obs: str  # the rows' plate
    groups: tuple[Group, ...]
    blocks: tuple[Block, ...]
    rows: pd.Index | None  # the data rows used (complete in every variable the formula reads); None for a dask frame
    data: Any  # {response: values}, or the dask DataFrame: what m.fit takes
    names: frozenset  # every node and parameter name taken
    train: tuple | None = field(repr=False)  # (X, codes by group, Z by block) of the rows used; None for a dask frame
    partition_rows: Any = field(default=None, repr=False)  # a dask frame's rows(m, part): FormulaRows

    def group(self, name: str) -> Group:
        return next(g for g in self.groups if g.name == name)

    def prediction_model(self, newdata, new_levels: str = "population") -> tuple[Model, str, pd.Index]:
        """The model with ``newdata``'s rows as one deterministic node: ``(model, node, index)``.

        The node's mean is each new row's ``X beta + Z u``, with ``u`` of
        levels the data did not have appended to the plates (their prior:
        mean 0, lme4's ``allow.new.levels``).  Conditioning the model on
        :attr:`data` at the fit's parameters gives the predictive mean and sd
        of every new row at once.
        """
        if new_levels not in ("population", "error"):
            raise DataError(f"`new_levels` must be 'population' or 'error'; got {new_levels!r}.")
        if self.train is None:
            raise DataError("This model's rows are a dask DataFrame: predict with gdag.distributed.fitted(post, newdata) "
                            "(means on the cluster), or fit in memory for predictive sds.")
        frame = _as_frame(newdata, "newdata")
        needed = sorted(_variables(self.formula) - set(_variables_of(self.formula.response)))
        missing = [v for v in needed if v not in frame.columns]
        if missing:
            raise DataError(f"`newdata` has no column {', '.join(f'`{v}`' for v in missing)}, which the formula uses.")
        present = [v for v in needed if v in frame.columns]
        bad = frame[present].isna().any(axis=1).to_numpy()
        if bad.any():
            raise DataError(f"`newdata` has missing values in the formula's columns at row {int(np.flatnonzero(bad)[0])}.")
        X = _matrix(self.fixed, frame, "newdata, fixed effects")
        sizes, codes, labels = {}, {}, {}
        for g in self.groups:
            new_labels = _combined_labels(frame, g.factors)
            found = g.labels.get_indexer(pd.Index(new_labels))
            unseen = pd.unique(np.asarray(new_labels, dtype=object)[found < 0])
            as_text = set(map(str, g.labels))
            mistyped = [v for v in unseen if str(v) in as_text]
            if mistyped:  # "300" for the level 300: the same level in another type, never a new one
                raise DataError(f"`newdata` gives {g.name!s} level {mistyped[0]!r} ({type(mistyped[0]).__name__}), "
                                f"which matches a fitted level only as text; the fitted levels are "
                                f"{type(g.labels[0]).__name__}. Convert the column to the fitted type.")
            if unseen.size and new_levels == "error":
                shown = ", ".join(repr(v) for v in unseen[:5])
                raise DataError(f"`newdata` has levels of `{g.name}` the data did not have: {shown}. "
                                "Use new_levels='population' to predict them from the population.")
            extra = pd.Index(unseen)
            found[found < 0] = len(g.labels) + extra.get_indexer(pd.Index(new_labels)[found < 0])
            sizes[g.name], codes[g.name] = len(g.labels) + len(extra), found.astype(np.int64)
            labels[g.name] = g.labels.append(extra) if len(extra) else g.labels
        Z = [_matrix(b.spec, frame, f"newdata, {b.text}")[:, list(b.columns)] for b in self.blocks]
        model = Model(f"{self.formula.response} (prediction)")
        self.declare(model, sizes, labels, self.train)
        node = _unique("predicted", set(self.names))
        plate = model.plate(_unique("new", {g.plate for g in self.groups} | {self.obs}), len(frame))
        model.normal(node, self._mean(model, X, codes, Z), 0.0, plate=plate)
        return model, node, frame.index

    def profile_confint(self, fit, level: float = 0.95):
        """Profile-likelihood intervals of a fit of this design; see :mod:`gdag.profile`."""
        return profile_confint(fit, level)

    def build(self, name: str) -> Model:
        """A new model of this design (what ``from_formula`` returns), ``model.design`` set.

        For a dask frame it is the latent part only (a :class:`gdag.distributed.DaskModel`):
        the response is declared per partition (:attr:`partition_rows`).
        """
        if self.train is None:
            model = DaskModel(name)
        else:
            model = Model(name)
        self.declare(model, {g.name: len(g.labels) for g in self.groups}, {g.name: g.labels for g in self.groups},
                     self.train)
        model.design = self
        return model

    # ------------------------------------------------------------ internals

    def declare(self, model: Model, sizes: dict, labels: dict, train: tuple | None) -> None:
        """Declare plates, parameters and nodes on ``model``; the response on the training rows (none for ``train=None``)."""
        plates = {g.name: model.plate(g.plate, sizes[g.name], labels=labels[g.name]) for g in self.groups}
        if self.beta is not None:
            model.param(self.beta, size=len(self.fixed_names))
        for b in self.blocks:
            for j, node in enumerate(b.nodes):
                mean = 0.0
                for jj, i, coef in b.coefs:
                    if jj == j:
                        mean = model.param(coef) * model.nodes[b.nodes[i]] + mean
                model.normal(node, mean, model.param(b.sds[j], positive=True), plate=plates[b.group])
        sigma = model.param(self.sigma, positive=True)
        if train is not None:
            self.declare_response(model, train, sigma)

    def declare_response(self, model: Model, train: tuple, sigma=None) -> None:
        """Declare the response on rows ``train = (X, codes by group, Z by block)`` of a model with the latent part."""
        X, codes, Z = train
        obs = model.plate(self.obs, X.shape[0])
        sigma = model.params[self.sigma] if sigma is None else sigma
        model.normal(self.response, self._mean(model, X, codes, Z), sigma, plate=obs)

    def _mean(self, model: Model, X: np.ndarray, codes: dict, Z: list):
        mean = dot(X, model.params[self.beta]) if self.beta is not None else np.zeros(X.shape[0])
        for b, z in zip(self.blocks, Z):
            for j, node in enumerate(b.nodes):
                u, col = model.nodes[node], z[:, j]
                if np.all(col == 1.0):
                    mean = mean + u[codes[b.group]]
                else:
                    mean = mean + u.take(codes[b.group], where=col != 0) * col
        return mean


# ------------------------------------------------------------------ building


def from_formula(formula: str, data, *, name: str | None = None, family: str | None = None) -> Model:
    """An ordinary :class:`~gdag.Model` for an lme4 formula on ``data``.

    Parameters
    ----------
    formula : str
        lme4's syntax: ``"Reaction ~ Days + (Days | Subject)"``.  Fixed
        effects through formulaic (numeric and categorical predictors with
        R's treatment contrasts, interactions, ``I()``, transforms); random
        terms ``(expr | g)``, ``(expr || g)``, ``(expr | a:b)``,
        ``(expr | a/b)``, as many as needed (:mod:`gdag.formula`).
    data : pandas DataFrame (or a mapping of columns)
        Rows with a missing value in any column the formula reads are left
        out, as lme4's default ``na.action`` does; ``m.design.rows`` lists the rows used.
    name : str, optional
        The model's name; default the response.
    family : None or "gaussian"
        gdag's models are linear-Gaussian: any other family (a GLMM) is refused.

    Returns
    -------
    Model
        Declared as docs/formulas.md shows; ``m.design`` holds the formula's
        names and levels, ``m.design.data`` the response to fit it to:
        ``m.fit(m.design.data)``, which :func:`lmer` does in one call.
    """
    _check_family(family)
    parsed = parse_formula(formula)
    if is_dask(data):  # rows on a Dask cluster: the latent part here, the response per partition
        return _from_dask(parsed, data, name or _identifier(parsed.response))
    frame = _as_frame(data, "data")
    for v in sorted(_group_names(parsed) - set(frame.columns)):
        raise ModelSpecError(f"The grouping factor `{v}` of `{parsed.text}` is not a column of the data.")
    used = sorted(v for v in _variables(parsed) if v in frame.columns)
    frame = frame.loc[~frame[used].isna().any(axis=1).to_numpy()] if used else frame
    unused = [v for v in used if isinstance(frame[v].dtype, pd.CategoricalDtype)]
    if unused:  # categories no row has make all-zero columns: dropped, as lme4 drops rank-deficient ones
        frame = frame.assign(**{v: frame[v].cat.remove_unused_categories() for v in unused})
    if len(frame) == 0:
        raise DataError(f"No row of the data is complete in the columns `{parsed.text}` reads.")
    y, X, fixed_spec = _fixed(parsed, frame)
    taken: set = set()
    response = _unique(_identifier(parsed.response), taken)
    beta = _unique("beta", taken) if X.shape[1] else None
    groups, codes = _groups(parsed, frame)
    blocks, Z = _blocks(parsed, frame, taken, {g.name: len(g.labels) for g in groups})
    sigma = _unique("sigma", taken)
    fixed_names = tuple(_lme4_name(c) for c in fixed_spec.column_names)
    design = Design(parsed, response, fixed_spec, fixed_names, beta, sigma,
                    _unique("obs", {g.plate for g in groups}), tuple(groups), tuple(blocks), frame.index,
                    {response: y}, frozenset(taken), (X, codes, Z))
    return design.build(name or _identifier(parsed.response))


def lmer(formula: str, data, method: str = "reml", *, family: str | None = None, REML: bool | None = None,
         **options):
    """Fit an lme4 formula in one call: ``from_formula(formula, data).fit(...)``; returns a :class:`~gdag.Fit`.

    ``method`` is ``"reml"`` (lme4's default ``REML = TRUE``), ``"ml"`` or ``"em"`` (the ML
    criterion by EM steps); lme4's ``REML=True/False`` is accepted too and names the
    method.  ``options`` go to :meth:`Model.fit`.  The Fit's tables
    (``fixef``, ``ranef``, ``varcorr``, ...) speak lme4's names and parameterization.

    Examples
    --------
    >>> import numpy as np, pandas as pd, gdag
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat(np.arange(8), 5)
    >>> df = pd.DataFrame({"y": rng.normal(size=8)[g] + rng.normal(size=40), "g": g})
    >>> fit = gdag.lmer("y ~ 1 + (1 | g)", df)
    >>> fit.design.fixed_names
    ('(Intercept)',)
    """
    if REML is not None:
        if not isinstance(REML, (bool, np.bool_)):
            raise FitError(f"`REML` must be True or False; got {REML!r}.")
        if method not in ("reml", "ml") or method != "reml" and REML:
            raise FitError(f"`REML={REML}` and method={method!r} disagree; give one of them.")
        method = "reml" if REML else "ml"
    model = from_formula(formula, data, family=family)
    try:
        return model.fit(model.design.data, method=method, **options)
    except (FitError, NotIdentifiedError) as err:  # in lme4's words: lmer's options, the fixed effects' names
        raise type(err)(in_lme4_words(str(err), model.design)) from None


def _check_family(family) -> None:
    name = getattr(family, "__name__", family)
    if family is not None and not (isinstance(name, str) and name.lower() in ("gaussian", "normal")):
        raise FitError(f"gdag fits linear-Gaussian models only; family {name!r} (a GLMM) is not supported.")


# ------------------------------------------------------------------ rows on a dask DataFrame


def _from_dask(parsed: ParsedFormula, ddf, name: str):
    """The latent model of ``parsed`` on the dask DataFrame ``ddf``: a :class:`~gdag.distributed.DaskModel`.

    One pass (one ``dask.compute``) finds the levels of the grouping factors
    (the combinations present for ``a:b``) and of string predictors; the first
    rows of the first partition give formulaic's specs.  Each partition's
    response is declared by :class:`FormulaRows` with these levels and specs,
    as :func:`from_formula` declares it in memory.
    """
    refuse_stateful(parsed)
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
    tasks = {fs: rows[list(fs)].drop_duplicates(split_every=8, split_out=1) for fs in factor_sets}
    return dict(zip(tasks, _dask()[0].compute(*tasks.values())))


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
        used = [c for c in self.used if c in part.columns]  # new rows to predict need no response
        if used:
            part = part.loc[~part[used].isna().any(axis=1).to_numpy()]
        return _as_categories(part, self.categories)

    def train(self, part: pd.DataFrame):
        """``(y, (X, codes by group, Z by block))`` of a (complete) partition."""
        d = self.design
        if set(_variables_of(d.formula.response)) <= set(part.columns):
            y = _matrix(self.response_spec, part, "the response")[:, 0]
        else:  # rows to predict (gdag.distributed.fitted on new rows): their residuals are NaN
            y = np.full(len(part), np.nan)
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
