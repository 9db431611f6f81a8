"""Arrays a declaration stores once: rows ``0..n-1`` and values repeated over every row.

A node over millions of rows (``b0 + b1 * x + u0[g] + x * u1[g]``) would
otherwise hold three arrays per term (rows, columns, coefficients: 150 bytes
a row for that mean).  Terms that cover every row share one read-only
``0..n-1`` (:func:`identity_rows`, recognised without a scan by
:func:`is_identity`), and a coefficient or parameter column that is one value
repeated is a read-only broadcast (:func:`compact_values`), which takes no
memory.  Every consumer reads these arrays; none writes into them.
"""

from __future__ import annotations

import weakref

import numpy as np

# The read-only 0..n-1 arrays made here, by id: a term's rows known to be every row without a scan.
_ORDERED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def identity_rows(n: int) -> np.ndarray:
    """``0..n-1``, read-only, registered as such."""
    rows = np.arange(n, dtype=np.int64)
    rows.flags.writeable = False
    _ORDERED[id(rows)] = rows
    return rows


def is_identity(rows: np.ndarray, n: int) -> bool:
    """Whether ``rows`` is ``0..n-1`` in order (one entry per row)."""
    if _ORDERED.get(id(rows)) is rows:
        return rows.shape[0] == n
    return rows.shape[0] == n and bool(n) and rows[0] == 0 and rows[-1] == n - 1 and bool(np.all(np.diff(rows) == 1))


def compact_values(a: np.ndarray) -> np.ndarray:
    """``a`` (an array gdag owns) as a read-only broadcast of its first value when every entry equals it."""
    if a.shape[0] > 1 and a.strides != (0,) and np.all(a == a[0]):
        return np.broadcast_to(a[:1].copy()[0], a.shape)
    return a


def all_finite(values: np.ndarray) -> bool:
    """Whether every entry is finite: two reductions, no temporary (min and max carry a NaN or an inf)."""
    return values.size == 0 or bool(np.isfinite(values.min()) and np.isfinite(values.max()))
