"""Turning the caller's values into arrays: the checks every stage shares (complex, boolean, masked, ragged).

``np.asarray`` alone would silently drop an imaginary part, read True as 1.0,
or use a masked array's fill values as numbers; these helpers refuse instead.
"""

from __future__ import annotations

import warnings

import numpy as np

from .errors import ModelSpecError


def as_float_array(value, error: type, message) -> np.ndarray:
    """``np.asarray(value, dtype=float)``, raising ``error(message)`` where that fails or would
    silently drop an imaginary part (complex entries nested in an object array).

    ``message`` is a string, or a callable that makes one (so that large values are
    formatted only when there is an error to report).
    """
    if np.ma.is_masked(value):
        raise error(f"{message() if callable(message) else message} It is a masked array with masked entries, "
                    "which have no value here: fill them (`.filled(...)`) or leave them out.")
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    if kind in ("m", "M"):  # numpy turns durations and dates into numbers in their own unit, without a word
        raise error(f"{message() if callable(message) else message} It holds {'durations' if kind == 'm' else 'dates'} "
                    f"({value.dtype}): divide them by a unit first, e.g. `values / np.timedelta64(1, 'D')` for days.")
    with warnings.catch_warnings():
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        try:
            return np.asarray(value, dtype=float)
        except (TypeError, ValueError, OverflowError, np.exceptions.ComplexWarning) as err:
            raise error(message() if callable(message) else message) from err


def _asarray(value, what: str) -> np.ndarray:
    """``np.asarray`` that reports ragged or unconvertible input (and masked entries) as a :class:`ModelSpecError`."""
    if np.ma.is_masked(value):
        raise ModelSpecError(f"The {what} is a masked array with masked entries, which have no value here: "
                             "fill them (`.filled(...)`) or leave them out.")
    try:
        return np.asarray(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise ModelSpecError(f"The {what} must be an array; got a ragged or unconvertible {type(value).__name__}.") from err


def is_boolean(value) -> bool:
    """True for True/False values, boolean arrays and sequences holding them (refused as numbers)."""
    if isinstance(value, (bool, np.bool_)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype == bool or (value.dtype == object and any(is_boolean(v) for v in value.reshape(-1)))
    if isinstance(value, (list, tuple)):
        return any(is_boolean(v) for v in value)
    return False


def is_complex(value) -> bool:
    """True for complex input (which a float conversion would silently truncate)."""
    try:
        return bool(np.iscomplexobj(value))
    except (TypeError, ValueError):  # ragged lists and the like: the float conversion reports them
        return False
