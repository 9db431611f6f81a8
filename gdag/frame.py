"""pandas in: data frames as data, columns of labels as plates.

Three things, used by :class:`gdag.Model` and the formula front end
(:mod:`gdag.formula`, :mod:`gdag.design`):

* :func:`frame_data`: a ``DataFrame`` given as ``data`` becomes the mapping
  the stages read, its columns that name nodes and nothing else;
* :func:`numeric`: a pandas ``Series``, ``Index`` or extension array (nullable
  ``Float64``, ``Int64``) as a float array with NaN for missing entries;
* :func:`levels`: a column of group labels (categorical, string, object,
  integer) as its levels and one integer code per row: what a plate and a
  gather are made of (``m.plate_from(df["Subject"])``).

Levels follow R's ``factor()``: a categorical column keeps its categories'
order, anything else is sorted (numbers numerically, strings as Python
sorts them), so that codes and tables line up with lme4's.
"""

from __future__ import annotations

import difflib
from typing import Any, Container

import numpy as np
import pandas as pd

from .errors import DataError, ModelSpecError

__all__ = ["is_frame", "frame_data", "numeric", "levels", "is_labels", "codes_of", "plate_labels"]


def is_frame(data: Any) -> bool:
    """True for a pandas ``DataFrame``."""
    return isinstance(data, pd.DataFrame)


def frame_data(frame: pd.DataFrame, names: Container[str]) -> dict[str, pd.Series]:
    """The columns of ``frame`` that name one of ``names`` (nodes), as ``{name: column}``.

    Other columns (predictors, group labels) are ignored: a data frame holds
    more than a model's nodes.  Duplicated column names are an error.
    """
    duplicated = frame.columns[frame.columns.duplicated()]
    if len(duplicated):
        raise DataError(f"The data frame has the column `{duplicated[0]}` more than once; column names must be unique.")
    found = {col: frame[col] for col in frame.columns if isinstance(col, str) and col in names}
    if not found and len(frame.columns):
        # no column names a node: a typo (`Score` for `score`) would otherwise give the prior, silently
        listed = ", ".join(f"`{c}`" for c in list(frame.columns)[:8])
        hints = [h for c in frame.columns if isinstance(c, str)
                 for h in difflib.get_close_matches(c, list(names), n=1, cutoff=0.6)]
        hint = f" Did you mean `{hints[0]}`?" if hints else ""
        raise DataError(f"No column of the data frame names a node of the model (columns: {listed}); "
                        f"its nodes are {', '.join(f'`{n}`' for n in list(names)[:8])}.{hint}")
    return found


def numeric(value: Any) -> Any:
    """A pandas column as a float array (missing entries NaN); anything else unchanged.

    Numeric and nullable numeric columns convert; categorical, string and
    object columns are returned as object arrays, which the validators
    refuse with a message naming the node.
    """
    if isinstance(value, (pd.Series, pd.Index)) or isinstance(value, pd.api.extensions.ExtensionArray):
        dtype = value.dtype
        if isinstance(dtype, pd.CategoricalDtype) or not (pd.api.types.is_numeric_dtype(dtype)
                                                         or pd.api.types.is_bool_dtype(dtype)):
            return np.asarray(value, dtype=object)
        if pd.api.types.is_bool_dtype(dtype):
            return np.asarray(value, dtype=object)  # refused as True/False values, as numpy booleans are
        return value.to_numpy(dtype=float, na_value=np.nan)
    return value


def is_labels(value: Any) -> bool:
    """True for a column (or array) of labels rather than integer codes: categorical, string or object."""
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return False
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype):
        return True
    return getattr(dtype, "kind", None) == "O"


def levels(column: Any, name: str = "group", drop_unused: bool = False) -> tuple[pd.Index, np.ndarray]:
    """The levels of a group column and each row's code: ``(labels, codes)``, ``labels[codes[i]]`` is row ``i``'s.

    Parameters
    ----------
    column : Series, Categorical, Index, array or list
        Group labels: categorical, strings, objects, integers or floats.
    name : str
        Used in messages.
    drop_unused : bool
        For a categorical column, drop categories that no row has (R's
        ``factor(f)``; lme4 does this).  Other columns only have used levels.

    Raises
    ------
    DataError
        Missing labels (a group needs one label per row), or a 2-d input.
    """
    if isinstance(column, pd.DataFrame):
        raise DataError(f"A group `{name}` is one column of labels; got a DataFrame with {column.shape[1]} columns.")
    if not isinstance(column, (pd.Series, pd.Index, pd.api.extensions.ExtensionArray)):
        column = np.asarray(column)
    if column.ndim != 1:
        raise DataError(f"A group `{name}` must be a 1-d column of labels; got shape {np.shape(column)}.")
    series = column if isinstance(column, pd.Series) else pd.Series(column)
    missing = np.flatnonzero(series.isna().to_numpy())
    if missing.size:
        raise DataError(
            f"The group `{name}` has {missing.size} missing label{'s' if missing.size > 1 else ''} "
            f"(first at row {missing[0]}); every row needs a level. Drop those rows or give them a level."
        )
    if isinstance(series.dtype, pd.CategoricalDtype):
        if drop_unused:
            series = series.cat.remove_unused_categories()
        return pd.Index(series.cat.categories), np.asarray(series.cat.codes, dtype=np.int64)
    try:
        codes, labels = pd.factorize(series, sort=True)
    except TypeError:  # labels of types that do not sort together: first appearance
        codes, labels = pd.factorize(series, sort=False)
    return pd.Index(labels), np.asarray(codes, dtype=np.int64)


def codes_of(labels: pd.Index, values: Any, what: str, error: type = DataError) -> np.ndarray:
    """The positions of ``values`` among ``labels`` (a plate's levels), refusing labels it does not have."""
    if not isinstance(values, (pd.Series, pd.Index, pd.api.extensions.ExtensionArray)):
        values = np.asarray(values, dtype=object)
    if values.ndim != 1:
        raise error(f"The {what} must be a 1-d column of labels; got shape {np.shape(values)}.")
    codes = np.asarray(labels.get_indexer(pd.Index(values)), dtype=np.int64)
    unknown = np.flatnonzero(codes < 0)
    if unknown.size:
        seen = pd.unique(np.asarray(values, dtype=object)[unknown])
        shown = ", ".join(repr(v) for v in seen[:5]) + (", ..." if seen.size > 5 else "")
        raise error(f"The {what} has {seen.size} label{'s' if seen.size > 1 else ''} the plate does not have: {shown}.")
    return codes


def plate_labels(name: str, size: int, labels: Any) -> pd.Index:
    """Validate the ``labels=`` of plate ``name``: ``size`` distinct, non-missing values."""
    if isinstance(labels, (str, bytes)) or np.ndim(labels) != 1:
        raise ModelSpecError(f"Plate `{name}`: `labels` must be a 1-d sequence of {size} labels.")
    labels = pd.Index(labels)
    if len(labels) != size:
        raise ModelSpecError(f"Plate `{name}` has {size} entries but {len(labels)} labels.")
    if labels.hasnans:
        raise ModelSpecError(f"Plate `{name}`: labels cannot be missing (NaN or None).")
    if labels.has_duplicates:
        raise ModelSpecError(f"Plate `{name}`: the label {labels[labels.duplicated()][0]!r} appears more than once.")
    return labels
