"""lme4's formula syntax, parsed: the response, the fixed part, and the random-effect bars.

``gdag.from_formula`` (:mod:`gdag.design`) reads a formula in two halves:
formulaic builds the fixed-effect design (R's contrasts, interactions,
``I()``), and this module finds and expands the bars, which formulaic does
not know:

==========================  ==================================================
``(expr | g)``              one block: the columns of ``expr`` (intercept
                            implied, as in R), correlated within each level of ``g``
``(expr || g)``             one block per term of ``expr`` (uncorrelated)
``(expr | a:b)``            grouped by the combinations of ``a`` and ``b`` present
``(expr | a/b)``            nested: ``(expr | a) + (expr | b:a)`` (and ``c:b:a`` for ``a/b/c``)
==========================  ==================================================

The fixed part is what remains after the bars are taken out (``1`` when
nothing does, so ``y ~ (1 | g)`` has an intercept, as in lme4).  Inside
function calls R's ``^`` becomes Python's ``**`` (``I(x^2)``).  Anything
gdag cannot express is a :class:`~gdag.ModelSpecError` naming the term.
The second half builds a parsed formula's columns on a data frame
(formulaic, group levels and codes): what :mod:`gdag.design` declares a
model from, in memory and per partition of a dask DataFrame.
"""

from __future__ import annotations

import keyword
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError, ModelSpecError
from .frame import levels

__all__ = ["Bar", "ParsedFormula", "parse_formula", "Group", "Block", "group_labels"]

_NAME = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")


@dataclass(frozen=True)
class Bar:
    """One random-effect term after expansion: the columns of ``expr``, grouped by ``factors``.

    ``factors`` are data columns (one for ``g``, several for ``a:b``);
    ``correlated`` is False for the pieces of a ``||`` term; ``text`` is the
    term as written, for messages.
    """

    expr: str
    factors: tuple[str, ...]
    correlated: bool
    text: str

    @property
    def group(self) -> str:
        """The grouping factor's name as lme4 prints it: ``Subject``, ``a:b``."""
        return ":".join(self.factors)


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into ``response``, ``fixed`` (a formulaic right-hand side) and ``bars``."""

    text: str
    response: str
    fixed: str
    bars: tuple[Bar, ...]


def parse_formula(formula: str) -> ParsedFormula:
    """Split an lme4 formula into response, fixed part and expanded bars.

    Examples
    --------
    >>> p = parse_formula("Reaction ~ Days + (Days | Subject)")
    >>> p.response, p.fixed, [(b.expr, b.group) for b in p.bars]
    ('Reaction', 'Days', [('Days', 'Subject')])
    >>> [b.group for b in parse_formula("y ~ 1 + (1 | a/b)").bars]
    ['a', 'b:a']
    """
    if not isinstance(formula, str) or not formula.strip():
        raise ModelSpecError(f"A formula is a string such as 'y ~ x + (1 | g)'; got {formula!r:.60}.")
    text = " ".join(formula.split())
    sides = _split_top(text, "~")
    if len(sides) != 2 or not sides[0].strip():
        raise ModelSpecError(
            f"The formula `{text}` needs one `~` with the response on its left: 'y ~ x + (1 | g)'."
        )
    response, rhs = _python_powers(sides[0].strip()), sides[1].strip()
    if not rhs:
        raise ModelSpecError(f"The formula `{text}` has nothing on the right of `~`; write '~ 1' for an intercept.")
    fixed, bars = [], []
    for sign, piece in _signed_terms(rhs):
        if not piece:
            raise ModelSpecError(f"The formula `{text}` has an empty term (two `+` in a row?).")
        if "|" not in piece:
            fixed.append(f"{sign} {piece}")
        elif sign == "+" and piece.startswith("(") and _closing(piece, 0) == len(piece) - 1 and _has_top_bar(piece[1:-1]):
            bars.extend(_expand_bar(piece))
        else:
            raise ModelSpecError(
                f"The term `{piece}` of `{text}` is not a random-effect term gdag supports: write bars as "
                "`(expr | g)`, `(expr || g)`, `(expr | a:b)` or `(expr | a/b)`, each on its own between `+`."
            )
    fixed_text = " ".join(fixed)
    fixed_text = fixed_text[2:] if fixed_text.startswith("+") else "1 " + fixed_text  # `~ -1 + x`: R's intercept removed
    return ParsedFormula(text, response, _python_powers(fixed_text) if fixed else "1", tuple(bars))


def _expand_bar(piece: str) -> list[Bar]:
    inner = piece[1:-1]
    double = "||" in _top_level(inner)
    parts = _split_top(inner, "||" if double else "|")
    if len(parts) != 2:
        raise ModelSpecError(f"The random-effect term `{piece}` needs exactly one `|` (or `||`).")
    expr, group = parts[0].strip(), parts[1].strip()
    if not expr:
        raise ModelSpecError(f"The random-effect term `{piece}` has nothing before the bar; write `(1 | g)` for an intercept.")
    nests = [g.strip() for g in group.split("/")]
    for g in nests:
        factors = [f.strip() for f in g.split(":")]
        if not all(_NAME.fullmatch(f) for f in factors):
            raise ModelSpecError(
                f"The grouping `{group}` in `{piece}` is not supported: gdag groups by data columns, "
                "as `g`, `a:b` (their combinations) or `a/b` (nested). Make a column for anything else."
            )
    bars, outer = [], []
    for g in nests:  # a/b is a and b:a (lme4's name: the inner factor first)
        outer = [f.strip() for f in g.split(":")] + outer
        bars.append(Bar(_python_powers(expr), tuple(outer), not double, piece))
    return bars


# ------------------------------------------------------------- scanning text


def _depths(text: str) -> list[int]:
    """The parenthesis depth at each character (an opening parenthesis counts as inside)."""
    depth, out = 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        out.append(depth)
        if ch == ")":
            depth -= 1
            if depth < 0:
                raise ModelSpecError(f"The formula text `{text}` has an unmatched `)`.")
    if depth != 0:
        raise ModelSpecError(f"The formula text `{text}` has an unmatched `(`.")
    return out


def _top_level(text: str) -> str:
    """``text`` with everything inside parentheses blanked out."""
    return "".join(ch if d == 0 else " " for ch, d in zip(text, _depths(text)))


def _split_top(text: str, sep: str) -> list[str]:
    """Split at the occurrences of ``sep`` outside parentheses (``|`` never splits a ``||``)."""
    top, parts, start, k = _top_level(text), [], 0, 0
    while k < len(text):
        if top.startswith(sep, k) and not (sep == "|" and (top.startswith("||", k) or top.startswith("||", k - 1))):
            parts.append(text[start:k])
            start = k = k + len(sep)
            continue
        k += 1
    parts.append(text[start:])
    return parts


def _signed_terms(text: str) -> list[tuple[str, str]]:
    """The terms between top-level ``+`` and ``-`` signs, each with its sign."""
    top, out, sign, start = _top_level(text), [], "+", 0
    for k, ch in enumerate(top):
        if ch in "+-":
            if k > start or text[start:k].strip():
                out.append((sign, text[start:k].strip()))
            elif k > 0:
                out.append((sign, ""))
            sign, start = ch, k + 1
    out.append((sign, text[start:].strip()))
    return out


def _closing(text: str, start: int) -> int:
    """Position of the parenthesis closing the one at ``start``."""
    depth = 0
    for k in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[k], 0)
        if depth == 0:
            return k
    raise ModelSpecError(f"The formula text `{text}` has an unmatched `(`.")


def _has_top_bar(text: str) -> bool:
    return "|" in _top_level(text)


def _python_powers(text: str) -> str:
    """R's ``^`` as Python's ``**`` inside function calls (``I(x^2)``); formula-level ``^`` is crossing."""
    out, calls = [], []
    for k, ch in enumerate(text):
        if ch == "(":
            before = text[:k].rstrip()
            calls.append(bool(before) and (before[-1].isalnum() or before[-1] in "_."))
        elif ch == ")" and calls:
            calls.pop()
        out.append("**" if ch == "^" and any(calls) else ch)
    return "".join(out)


# ------------------------------------------------------------- columns of a frame


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


def _blocks(parsed: ParsedFormula, frame: pd.DataFrame, taken: set, levels: dict | None = None):
    """The random-effect blocks; given each group's number of ``levels``, a block with as many random effects as
    observations is refused, as lme4's ``check.nobs.vs.nRE`` does (a 5,000-level text column in ``(x | g)`` would
    declare 12.5 million correlation coefficients)."""
    blocks, Z, count = [], [], {}
    for bar in parsed.bars:
        mm = _matrix_of(bar.expr, frame, bar.text)
        spec = mm.model_spec
        if mm.shape[1] == 0:
            raise ModelSpecError(f"The random-effect term `{bar.text}` has no columns (`0` alone?).")
        pieces = [range(mm.shape[1])] if bar.correlated else [range(s.start, s.stop) for s in spec.term_slices.values()]
        for cols in pieces:
            cols = tuple(cols)
            if levels is not None and len(cols) * levels[bar.group] >= frame.shape[0]:
                raise ModelSpecError(
                    f"number of observations (={frame.shape[0]}) <= number of random effects "
                    f"(={len(cols) * levels[bar.group]}) for term `{bar.text}` ({len(cols)} columns x "
                    f"{levels[bar.group]} levels of `{bar.group}`): the random-effect sds and the residual sd are "
                    "probably not identified (lme4 stops here too). Is a column text that should be numeric?")
            terms = tuple(_lme4_name(spec.column_names[c]) for c in cols)
            nodes = tuple(_unique(_identifier(f"{bar.group}_{t}"), taken) for t in terms)
            sds = tuple(_unique(f"sd_{n}", taken) for n in nodes)
            coefs = tuple((j, i, _unique(f"c_{nodes[j]}_{_identifier(terms[i])}", taken))
                          for j in range(len(cols)) for i in range(j))
            k = count[bar.group] = count.get(bar.group, -1) + 1  # its blocks so far
            blocks.append(Block(bar.group, bar.group if k == 0 else f"{bar.group}.{k}", bar.text, terms, nodes, sds,
                                coefs, spec, cols))
            Z.append(np.asarray(mm, dtype=float)[:, list(cols)])
    return blocks, Z


def _fixed(parsed: ParsedFormula, frame: pd.DataFrame):
    name = parsed.response
    dtype = frame[name].dtype if name in frame.columns else None  # text: formulaic would one-hot it; complex: drop
    if dtype is not None and (not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_complex_dtype(dtype)):
        raise ModelSpecError(f"The response `{name}` must be one numeric column; it has dtype {dtype}. "
                             f"Convert it first, e.g. `df[\"{name}\"] = pd.to_numeric(df[\"{name}\"])`, which names "
                             "any entry that is not a number.")
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


def in_lme4_words(message: str, design) -> str:
    """``message`` naming the fixed effects as lme4 does (``(Intercept)`` for ``beta[0]``) and lmer's options."""
    if design.beta is not None:
        message = re.sub(rf"`{re.escape(design.beta)}\[(\d+)\]`", lambda m: f"`{design.fixed_names[int(m[1])]}`", message)
    if message.startswith("m.fit() has no option"):
        message = ("gdag.lmer()" + message[len("m.fit()"):] + " lme4's weights, offset, subset, na.action and "
                   "control have no counterpart here (rows with missing values are dropped, as lme4's default).")
    return message


def refuse_stateful(parsed: ParsedFormula) -> None:
    """A ModelSpecError for transforms whose statistics come from all the rows (on a dask DataFrame formulaic
    would take the means, scales or knots of ``center``, ``scale``, ``poly`` or splines from the first rows)."""
    stateful = sorted(set(re.findall(r"\b(center|scale|standardize|poly|bs|cr|cs|cc|te)\s*\(", parsed.text)))
    if stateful:
        raise ModelSpecError(f"`{parsed.text}` uses {', '.join(f'{t}()' for t in stateful)}, whose statistics (means, "
                             "scales, knots) come from all the rows; on a dask DataFrame compute the column beforehand.")
