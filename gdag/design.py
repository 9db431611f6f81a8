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

import keyword
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .distributed import is_dask
from .errors import DataError, FitError, ModelSpecError
from .expr import dot
from .formula import ParsedFormula, parse_formula
from .frame import levels
from .model import Model
from .profile import profile_confint

__all__ = ["Design", "Block", "Group", "from_formula", "lmer"]


@dataclass(frozen=True)
class Group:
    """A grouping factor: its lme4 name (``Subject``, ``a:b``), data columns, plate and levels."""

    name: str
    factors: tuple[str, ...]
    plate: str
    labels: pd.Index


@dataclass(frozen=True)
class Block:
    """Random effects correlated within each level of ``group``: one node per term.

    ``coefs`` lists ``(j, i, param)``: ``param * u_i`` is in the mean of ``u_j``
    (``i < j``); ``spec`` and ``columns`` rebuild the block's ``Z`` for new data.
    """

    group: str
    label: str  # lme4's grp in VarCorr: Subject, then Subject.1 for a second block of the same factor
    text: str  # the bar as written
    terms: tuple[str, ...]
    nodes: tuple[str, ...]
    sds: tuple[str, ...]
    coefs: tuple[tuple[int, int, str], ...]
    spec: Any
    columns: tuple[int, ...]


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
    partition_rows: Any = field(default=None, repr=False)  # a dask frame's rows(m, part) (gdag.distributed_formula)

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
            from .distributed import DaskModel

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
        from .distributed_formula import from_formula_dask

        return from_formula_dask(parsed, data, name or _identifier(parsed.response))
    frame = _as_frame(data, "data")
    for v in sorted(_group_names(parsed) - set(frame.columns)):
        raise ModelSpecError(f"The grouping factor `{v}` of `{parsed.text}` is not a column of the data.")
    used = sorted(v for v in _variables(parsed) if v in frame.columns)
    frame = frame.loc[~frame[used].isna().any(axis=1).to_numpy()] if used else frame
    if len(frame) == 0:
        raise DataError(f"No row of the data is complete in the columns `{parsed.text}` reads.")
    y, X, fixed_spec = _fixed(parsed, frame)
    taken: set = set()
    response = _unique(_identifier(parsed.response), taken)
    beta = _unique("beta", taken) if X.shape[1] else None
    groups, codes = _groups(parsed, frame)
    blocks, Z = _blocks(parsed, frame, taken)
    sigma = _unique("sigma", taken)
    fixed_names = tuple(_lme4_name(c) for c in fixed_spec.column_names)
    design = Design(parsed, response, fixed_spec, fixed_names, beta, sigma,
                    _unique("obs", {g.plate for g in groups}), tuple(groups), tuple(blocks), frame.index,
                    {response: y}, frozenset(taken), (X, codes, Z))
    return design.build(name or _identifier(parsed.response))


def lmer(formula: str, data, method: str = "reml", *, family: str | None = None, REML: bool | None = None,
         **options):
    """Fit an lme4 formula in one call: ``from_formula(formula, data).fit(...)``; returns a :class:`~gdag.Fit`.

    ``method`` is ``"reml"`` (lme4's default ``REML = TRUE``), ``"ml"`` or
    ``"em"``; lme4's own ``REML=True/False`` is accepted too and names the
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
    return model.fit(model.design.data, method=method, **options)


def _check_family(family) -> None:
    name = getattr(family, "__name__", family)
    if family is not None and not (isinstance(name, str) and name.lower() in ("gaussian", "normal")):
        raise FitError(f"gdag fits linear-Gaussian models only; family {name!r} (a GLMM) is not supported.")


def _fixed(parsed: ParsedFormula, frame: pd.DataFrame):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            mm = _formulaic().model_matrix(f"{parsed.response} ~ {parsed.fixed}", frame, na_action="raise")
    except (_formulaic().errors.FormulaicError, Warning, ValueError, TypeError, NameError) as err:
        raise ModelSpecError(f"formulaic could not build the fixed effects of `{parsed.text}`: {err}") from None
    if mm.lhs.shape[1] != 1:
        raise ModelSpecError(f"The response `{parsed.response}` must be one numeric column; it gave {mm.lhs.shape[1]}.")
    y = np.asarray(mm.lhs, dtype=float)[:, 0]
    return y, np.asarray(mm.rhs, dtype=float), mm.rhs.model_spec


def _groups(parsed: ParsedFormula, frame: pd.DataFrame):
    groups, codes = {}, {}
    for bar in parsed.bars:
        if bar.group in groups:
            continue
        labels, code = group_labels(bar.factors, frame)
        plates = {g.plate for g in groups.values()}
        groups[bar.group] = Group(bar.group, bar.factors, _unique(_identifier(bar.group), plates), labels)
        codes[bar.group] = code
    return list(groups.values()), codes


def group_labels(factors: tuple, frame: pd.DataFrame) -> tuple[pd.Index, np.ndarray]:
    """The levels of the grouping factor ``a`` or ``a:b`` (combinations present, R's lexical order) and each row's code."""
    labels, code = None, None
    for factor in factors:
        lab, cod = levels(frame[factor], factor, drop_unused=True)
        if labels is None:
            labels, code = lab, cod
            continue
        key, inverse = np.unique(code * len(lab) + cod, return_inverse=True)  # a:b in R's lexical order
        labels = pd.Index([f"{labels[k // len(lab)]}:{lab[k % len(lab)]}" for k in key.tolist()])
        code = inverse.astype(np.int64).reshape(-1)
    return labels, code


def _blocks(parsed: ParsedFormula, frame: pd.DataFrame, taken: set):
    blocks, Z, count = [], [], {}
    for bar in parsed.bars:
        mm = _matrix_of(bar.expr, frame, bar.text)
        spec = mm.model_spec
        if mm.shape[1] == 0:
            raise ModelSpecError(f"The random-effect term `{bar.text}` has no columns (`0` alone?).")
        pieces = [range(mm.shape[1])] if bar.correlated else [range(s.start, s.stop) for s in spec.term_slices.values()]
        for cols in pieces:
            cols = tuple(cols)
            terms = tuple(_lme4_name(spec.column_names[c]) for c in cols)
            nodes = tuple(_unique(_identifier(f"{bar.group}_{t}"), taken) for t in terms)
            sds = tuple(_unique(f"sd_{n}", taken) for n in nodes)
            coefs = tuple((j, i, _unique(f"c_{nodes[j]}_{_identifier(terms[i])}", taken))
                          for j in range(len(cols)) for i in range(j))
            k = count.get(bar.group, 0)
            count[bar.group] = k + 1
            blocks.append(Block(bar.group, bar.group if k == 0 else f"{bar.group}.{k}", bar.text, terms, nodes, sds,
                                coefs, spec, cols))
            Z.append(np.asarray(mm, dtype=float)[:, list(cols)])
    return blocks, Z


def _matrix_of(expr: str, frame: pd.DataFrame, where: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return _formulaic().model_matrix(expr, frame, na_action="raise")
    except (_formulaic().errors.FormulaicError, Warning, ValueError, TypeError, NameError) as err:
        raise ModelSpecError(f"formulaic could not build the columns of `{where}`: {err}") from None


def _matrix(spec, frame: pd.DataFrame, where: str) -> np.ndarray:
    """``spec``'s columns for new rows; a level the fit never saw is an error, not a silent zero."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return np.asarray(spec.get_model_matrix(frame, na_action="raise"), dtype=float)
    except (_formulaic().errors.FormulaicError, Warning, ValueError, TypeError, NameError) as err:
        raise DataError(f"The columns of {where} could not be built: {err}") from None


def _combined_labels(frame: pd.DataFrame, factors: tuple) -> pd.Index:
    if len(factors) == 1:
        return pd.Index(frame[factors[0]].to_numpy())
    parts = [frame[f].astype(str) for f in factors]
    return pd.Index(parts[0].str.cat(parts[1:], sep=":"))  # a:b as training writes it, column-wise


def _as_frame(data, what: str) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    try:
        return pd.DataFrame(dict(data))
    except (TypeError, ValueError) as err:
        raise DataError(f"`{what}` must be a pandas DataFrame or a mapping of equal-length columns: {err}") from None


def _variables(parsed: ParsedFormula) -> set:
    names = _variables_of(f"{parsed.response} ~ {parsed.fixed}")
    for bar in parsed.bars:
        names |= _variables_of(bar.expr) | set(bar.factors)
    return names


def _group_names(parsed: ParsedFormula) -> set:
    return {f for bar in parsed.bars for f in bar.factors}


def _variables_of(expr: str) -> set:
    return set(_formulaic().Formula(expr).required_variables)


def _lme4_name(column: str) -> str:
    """formulaic's column name as R's ``model.matrix`` writes it: ``(Intercept)``, ``recipeB:temp``, ``I(x^2)``."""
    if column == "Intercept":
        return "(Intercept)"
    return re.sub(r"\s*\*\*\s*", "^", re.sub(r"\[(?:T\.)?([^\[\]]*)\]", r"\1", column))


def _identifier(text: str) -> str:
    name = re.sub(r"\W+", "_", text.replace("(Intercept)", "Intercept")).strip("_") or "x"
    return "x_" + name if name[0].isdigit() else name


def _unique(name: str, taken: set) -> str:
    """``name``, or ``name_2``, ``name_3``... if taken; recorded in ``taken``."""
    out, k = name, 1
    while out in taken or keyword.iskeyword(out):
        k += 1
        out = f"{name}_{k}"
    taken.add(out)
    return out


def _formulaic():
    """formulaic, imported on a formula's first use: ``import gdag`` does not pay its 0.06 s."""
    import formulaic
    import formulaic.errors  # noqa: F401 - FormulaicError, named in except clauses

    return formulaic
