r"""Blocked Cholesky for crossed designs: an independent head and a dense tail.

Used by fits (:mod:`gdag.fitting`).  In a crossed random-effects model the
precision of the unobserved variables has the block form

.. math::

    Q = \begin{pmatrix} D & C^T \\ C & Q_{TT} \end{pmatrix}, \qquad D = \mathrm{diag}(q_h)

where the *head* ``H`` is a set of variables with no precision entry between
any two of them (the levels of the largest grouping factor: two students are
never in the same row of ``A``), and the *tail* ``T`` is everything else.
Eliminating the head is free, and the Schur complement
``K = Q_TT - C D^{-1} C^T`` of a crossed design is nearly dense, so it is
factored by LAPACK (``K = U^T U``, upper triangle, column-major) at BLAS speed.  This is the structure
MixedModels.jl exploits (a diagonal first block, dense blocks after it).

* ``log|Q| = sum log q_h + 2 sum log U_ii``
* ``Q^{-1}`` on any pair of variables: with ``Z = K^{-1}`` (``dpotri``),
  ``(Q^{-1})_TT = Z``, ``(Q^{-1})_{Th} = -Z c_h / q_h`` and
  ``(Q^{-1})_{hh} = 1/q_h + c_h^T Z c_h / q_h^2``.

The split and the index maps are computed once per pattern
(:func:`analyze_blocked`, a :class:`BlockedAnalysis`); each new set of values
costs one pass over ``C`` (the Schur update), ``dpotrf`` and, for gradients,
``dpotri``.  :class:`BlockedFactor` follows :class:`gdag.linalg.factor.Factor`.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from ..timing import timed
from .factor import not_identified
from .gram import counting_sort

# Largest dense tail (its K takes 8 |T|^2 bytes, twice when the inverse is needed).
MAX_TAIL = 4000
# A tail this small is always dense; a larger one only when its Schur
# complement has at least this density (else the sparse factor is cheaper).
SMALL_TAIL = 300
MIN_DENSITY = 0.05


def choose_split(Q_pattern: sp.csc_matrix, family: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(head, tail)`` positions for a blocked factorization of this pattern, or None.

    ``family`` labels each variable's family.  The head is built greedily from
    whole families, largest first, that have no precision entry inside
    themselves or with the head so far.  None when the tail is too large for a
    dense factor (:attr:`BlockedAnalysis.worthwhile` then judges its density).
    """
    n = Q_pattern.shape[0]
    if n == 0:
        return None
    coo = sp.coo_matrix(Q_pattern)
    off = coo.row != coo.col
    n_fam = int(family.max()) + 1
    coupled = np.zeros((n_fam, n_fam), bool)
    fi, fj = family[coo.row[off]], family[coo.col[off]]
    coupled[fi, fj] = True
    coupled[fj, fi] = True
    sizes = np.bincount(family, minlength=n_fam)
    head_fams: list[int] = []
    for f in np.argsort(-sizes, kind="stable"):
        if sizes[f] == 0 or coupled[f, f] or any(coupled[f, g] for g in head_fams):
            continue
        head_fams.append(int(f))
    in_head = np.isin(family, head_fams)
    head, tail = np.flatnonzero(in_head), np.flatnonzero(~in_head)
    if tail.size > MAX_TAIL:
        return None
    return head, tail


@timed("analyze")
def analyze_blocked(Q_pattern: sp.csc_matrix, family: np.ndarray, required: bool) -> "BlockedAnalysis | None":
    """The blocked analysis of a pattern, or None when it does not pay (``required``: always, with any split).

    Without ``required`` it is None when :func:`choose_split` finds no split
    or the tail's Schur complement is too sparse (:attr:`BlockedAnalysis.worthwhile`);
    with it, a pattern without a split is all tail.
    """
    split = choose_split(Q_pattern, family)
    if split is None:
        if not required:
            return None
        split = (np.zeros(0, np.int64), np.arange(Q_pattern.shape[0]))
    analysis = BlockedAnalysis(Q_pattern, split[0], split[1])
    return analysis if required or analysis.worthwhile else None


class BlockedAnalysis:
    """The head/tail split of one pattern and the index maps of its blocks (computed once per pattern).

    Parameters
    ----------
    Q_pattern : csc_matrix
        Lower triangle of ``Q`` with the pattern every later matrix will have.
    head, tail : int arrays
        From :func:`choose_split`.
    """

    def __init__(self, Q_pattern: sp.csc_matrix, head: np.ndarray, tail: np.ndarray):
        n = Q_pattern.shape[0]
        self.n, self.head, self.tail = n, head, tail
        self.n_H, self.n_T = int(head.shape[0]), int(tail.shape[0])
        Q = sp.csc_matrix(Q_pattern)  # positions below index Q.data of later matrices with this pattern
        self.nnz = Q.nnz
        self.kind = np.zeros(n, np.int8)  # 0 head, 1 tail
        self.kind[tail] = 1
        self.local = np.empty(n, np.int64)
        self.local[head] = np.arange(self.n_H)
        self.local[tail] = np.arange(self.n_T)
        (self.pos_qh, self.c_indptr, self.c_rows, self.c_pos, self.tt_pos, self.tt_i,
         self.tt_j) = _split_indices(Q.indptr.astype(np.int64), Q.indices.astype(np.int64), self.kind, self.local,
                                     self.n_H)

    @property
    def worthwhile(self) -> bool:
        """Whether the tail's Schur complement is dense enough for LAPACK to beat a sparse factor."""
        if self.n_T <= SMALL_TAIL:
            return True
        nnz = _schur_pattern_size(self.c_indptr, self.c_rows, self.n_T, self.tt_i, self.tt_j)
        return nnz >= MIN_DENSITY * self.n_T * (self.n_T + 1) / 2

    def factor(self, Q: sp.csc_matrix, describe) -> "BlockedFactor":
        """A new numeric factor of ``Q`` (this pattern)."""
        return BlockedFactor(self, Q, describe)


class BlockedFactor:
    """Numeric factor of ``Q`` (lower triangle given, fixed pattern) in head/tail blocks (a :class:`Factor`).

    Parameters
    ----------
    analysis : BlockedAnalysis
        The split of ``Q``'s pattern (shared by every factor of it).
    Q : csc_matrix
        The matrix, with the analysed pattern.
    describe : callable
        Maps positions of ``Q`` to labels for error messages.
    """

    def __init__(self, analysis: BlockedAnalysis, Q: sp.csc_matrix, describe):
        self._a, self._describe = analysis, describe
        self.n = analysis.n
        self.refactor_inplace(Q)

    @timed("factor")
    def refactor_inplace(self, Q: sp.csc_matrix) -> None:
        """Factor new values on the analysed pattern."""
        a, data = self._a, Q.data
        if Q.nnz != a.nnz:  # pragma: no cover - guarded by the caller
            raise ValueError("pattern changed")
        self.q_h = data[a.pos_qh]
        bad = np.flatnonzero(~(self.q_h > 0))
        if bad.size:
            self._not_identified(a.head[bad[0]])
        self.c_data = data[a.c_pos]
        K = np.zeros((a.n_T, a.n_T), order="F")
        K[a.tt_j, a.tt_i] = data[a.tt_pos]  # upper triangle: column-major friendly
        if a.n_T and a.n_H:
            _schur_update(a.c_indptr, a.c_rows, self.c_data, self.q_h, K)
        self._Z = None
        if a.n_T:
            L, info = lapack.dpotrf(K, lower=0, overwrite_a=1, clean=0)  # K = U^T U
            if info != 0:
                self._not_identified(a.tail[max(info - 1, 0)])
            self._L = L
            self._logdet_T = 2.0 * float(np.sum(np.log(np.diag(L))))
        else:
            self._L, self._logdet_T = None, 0.0

    def _not_identified(self, position: int):
        raise not_identified(self._describe(np.array([position]))[0])

    def logdet(self) -> float:
        """``log det Q``."""
        return float(np.sum(np.log(self.q_h))) + self._logdet_T

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``Q^{-1} b`` for a vector or a matrix of columns."""
        an = self._a
        b = np.asarray(b, dtype=float)
        vec = b.ndim == 1
        B = b.reshape(self.n, -1)
        bH, bT = B[an.head] / self.q_h[:, None], B[an.tail].copy()
        if an.n_T:
            if an.n_H:
                bT -= _c_times(an.c_indptr, an.c_rows, self.c_data, bH, an.n_T)
            xT, info = lapack.dpotrs(self._L, bT, lower=0)
            xH = bH - _ct_times(an.c_indptr, an.c_rows, self.c_data, xT) / self.q_h[:, None]
        else:
            xT, xH = bT, bH
        out = np.empty_like(B)
        out[an.head], out[an.tail] = xH, xT
        return out.reshape(-1) if vec else out

    def covariances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(Q^{-1})[a[k], b[k]]`` for pairs of positions (see the module docstring)."""
        an = self._a
        if an.n_T and self._Z is None:
            self._Z, info = lapack.dpotri(self._L, lower=0)  # upper triangle of K^{-1}
        Z = self._Z if an.n_T else np.zeros((0, 0), order="F")
        return _pair_values(a, b, an.kind, an.local, self.q_h, an.c_indptr, an.c_rows, self.c_data, Z)

    @timed("variances")
    def inverse_diagonal(self) -> np.ndarray:
        """``diag(Q^{-1})`` (see the module docstring)."""
        every = np.arange(self.n, dtype=np.int64)
        return self.covariances(every, every)


@numba.njit(cache=True)
def _split_indices(indptr, indices, kind, local, n_H):
    """Index maps from ``Q``'s lower CSC data to the head diagonal, ``C`` (by head, tail rows sorted) and ``Q_TT``."""
    n = indptr.shape[0] - 1
    pos_qh = np.full(n_H, -1, np.int64)
    counts = np.zeros(n_H + 1, np.int64)
    n_tt = 0
    for j in range(n):
        for p in range(indptr[j], indptr[j + 1]):
            r = indices[p]
            if kind[r] == 0 and kind[j] == 0:
                pos_qh[local[j]] = p  # head variables share no entries: r == j
            elif kind[r] != kind[j]:
                counts[(local[j] if kind[j] == 0 else local[r]) + 1] += 1
            else:
                n_tt += 1
    for h in range(n_H):
        counts[h + 1] += counts[h]
    c_rows = np.empty(counts[n_H], np.int64)
    c_pos = np.empty(counts[n_H], np.int64)
    fill = counts[:-1].copy()
    tt_pos = np.empty(n_tt, np.int64)
    tt_i = np.empty(n_tt, np.int64)
    tt_j = np.empty(n_tt, np.int64)
    k = 0
    for j in range(n):
        for p in range(indptr[j], indptr[j + 1]):
            r = indices[p]
            if kind[r] != kind[j]:
                h, t = (local[j], local[r]) if kind[j] == 0 else (local[r], local[j])
                c_rows[fill[h]] = t
                c_pos[fill[h]] = p
                fill[h] += 1
            elif kind[r] == 1:
                a, b = local[r], local[j]
                tt_pos[k] = p
                tt_i[k] = max(a, b)
                tt_j[k] = min(a, b)
                k += 1
    for h in range(n_H):  # insertion sort of each head's tail rows (short lists)
        for a in range(counts[h] + 1, counts[h + 1]):
            r, q = c_rows[a], c_pos[a]
            b = a - 1
            while b >= counts[h] and c_rows[b] > r:
                c_rows[b + 1] = c_rows[b]
                c_pos[b + 1] = c_pos[b]
                b -= 1
            c_rows[b + 1] = r
            c_pos[b + 1] = q
    return pos_qh, counts, c_rows, c_pos, tt_pos, tt_i, tt_j


@numba.njit(cache=True)
def _schur_pattern_size(indptr, rows, n_T, tt_i, tt_j):
    """Entries in the lower triangle of the pattern of ``Q_TT + C C^T``."""
    # tail -> heads (CSR of C^T)
    head_of = np.empty(rows.shape[0], np.int64)
    for h in range(indptr.shape[0] - 1):
        head_of[indptr[h]:indptr[h + 1]] = h
    counts, by_tail = counting_sort(rows, n_T)
    heads = head_of[by_tail]
    # Q_TT's own entries, by column
    qcount, by_col = counting_sort(tt_j, n_T)
    qrows = tt_i[by_col]
    marker = np.full(n_T, -1, np.int64)
    total = 0
    for j in range(n_T):
        marker[j] = j
        total += 1
        for k in range(qcount[j], qcount[j + 1]):
            i = qrows[k]
            if marker[i] != j:
                marker[i] = j
                total += 1
        for a in range(counts[j], counts[j + 1]):
            h = heads[a]
            for b in range(indptr[h], indptr[h + 1]):
                i = rows[b]
                if i > j and marker[i] != j:
                    marker[i] = j
                    total += 1
    return total


@numba.njit(cache=True)
def _schur_update(indptr, rows, vals, q, K):
    """Upper triangle of ``K -= C diag(1/q) C^T`` (C by head columns, rows sorted; K column-major)."""
    for h in range(q.shape[0]):
        inv = 1.0 / q[h]
        for a in range(indptr[h], indptr[h + 1]):
            j = rows[a]
            ca = vals[a] * inv
            for b in range(indptr[h], a + 1):
                K[rows[b], j] -= ca * vals[b]


@numba.njit(cache=True)
def _c_times(indptr, rows, vals, X, n_T):
    """``C @ X`` (X: head x k)."""
    out = np.zeros((n_T, X.shape[1]))
    for h in range(indptr.shape[0] - 1):
        for a in range(indptr[h], indptr[h + 1]):
            for k in range(X.shape[1]):
                out[rows[a], k] += vals[a] * X[h, k]
    return out


@numba.njit(cache=True)
def _ct_times(indptr, rows, vals, X):
    """``C^T @ X`` (X: tail x k)."""
    n_H = indptr.shape[0] - 1
    out = np.zeros((n_H, X.shape[1]))
    for h in range(n_H):
        for a in range(indptr[h], indptr[h + 1]):
            for k in range(X.shape[1]):
                out[h, k] += vals[a] * X[rows[a], k]
    return out


@numba.njit(cache=True)
def _pair_values(a, b, kind, local, q, indptr, rows, vals, Z):
    """Entries of ``Q^{-1}`` for pairs, from the upper triangle of ``Z = K^{-1}`` (column-major reads)."""
    out = np.empty(a.shape[0])
    for k in range(a.shape[0]):
        i, j = a[k], b[k]
        if kind[i] == 1 and kind[j] == 1:
            li, lj = local[i], local[j]
            out[k] = Z[li, lj] if li <= lj else Z[lj, li]
        elif kind[i] == 0 and kind[j] == 0:  # necessarily i == j
            h = local[i]
            s = 0.0
            for r in range(indptr[h], indptr[h + 1]):  # rows sorted: Z[rows[p], rows[r]] with p <= r
                col = rows[r]
                acc = 0.5 * Z[col, col] * vals[r]
                for p in range(indptr[h], r):
                    acc += Z[rows[p], col] * vals[p]
                s += 2.0 * vals[r] * acc
            out[k] = 1.0 / q[h] + s / (q[h] * q[h])
        else:
            h = local[i] if kind[i] == 0 else local[j]
            t = local[j] if kind[i] == 0 else local[i]
            s = 0.0
            for p in range(indptr[h], indptr[h + 1]):
                r = rows[p]
                s += (Z[t, r] if t <= r else Z[r, t]) * vals[p]
            out[k] = -s / q[h]
    return out
