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
factored by LAPACK (``K = L L^T``, lower triangle, column-major) at BLAS speed.  This is the structure
MixedModels.jl exploits (a diagonal first block, dense blocks after it).

* ``log|Q| = sum log q_h + 2 sum log L_ii``
* ``diag(Q^{-1})`` (all a fit's gradient reads): with ``Y = L^{-1}``
  (``dtrtri`` in place of ``L``, half of ``dpotri``'s work; solves then
  multiply by ``Y`` and ``Y^T``) and ``Z = K^{-1} = Y^T Y``,
  ``Z_tt = |Y e_t|^2`` and ``(Q^{-1})_{hh} = 1/q_h + |Y c_h|^2 / q_h^2``, where
  ``Y c_h`` sums the columns of ``Y`` at ``c_h``'s rows; column ``t`` of ``Y``
  is zero above row ``t``, so the tail is ordered by its number of head
  entries, fewest first (the busiest columns are then the shortest).
* ``Q^{-1}`` on any other pairs: ``Z`` itself (``dpotri``, or ``dlauum`` of ``Y``),
  ``(Q^{-1})_TT = Z``, ``(Q^{-1})_{Th} = -Z c_h / q_h`` and
  ``(Q^{-1})_{hh} = 1/q_h + c_h^T Z c_h / q_h^2``.

The split, the tail's order and the index maps are computed once per pattern
(:func:`analyze_blocked`, a :class:`BlockedAnalysis`); each new set of values
costs one pass over ``C`` (the Schur update) and ``dpotrf``, and for gradients
``dtrtri`` and one pass over ``C`` again.  ``K`` (then ``L``, then ``Y``) lives
in one buffer kept by the factor across refactorizations.  :class:`BlockedFactor` follows
:class:`gdag.linalg.factor.Factor`.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp
from scipy.linalg import blas, lapack

from ..timing import timed
from .factor import not_identified

# Largest dense tail (its K takes 8 |T|^2 bytes, twice when pairs of the inverse other than variances are asked).
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
    analysis = BlockedAnalysis(Q_pattern, split[0], split[1], judge=not required)
    return analysis if required or analysis.worthwhile else None


class BlockedAnalysis:
    """The head/tail split of one pattern and the index maps of its blocks (computed once per pattern).

    Parameters
    ----------
    Q_pattern : csc_matrix
        Lower triangle of ``Q`` with the pattern every later matrix will have.
    head, tail : int arrays
        From :func:`choose_split`; the tail is reordered by its number of head entries, fewest first.
    judge : bool
        Whether to count the Schur complement's entries for :attr:`worthwhile` (up to the number it needs).
    """

    def __init__(self, Q_pattern: sp.csc_matrix, head: np.ndarray, tail: np.ndarray, judge: bool = True):
        n = Q_pattern.shape[0]
        Q = sp.csc_matrix(Q_pattern)  # positions below index Q.data of later matrices with this pattern
        self.nnz = Q.nnz
        self.kind = np.zeros(n, np.int8)  # 0 head, 1 tail
        self.kind[tail] = 1
        rows, cols = Q.indices, np.repeat(np.arange(n), np.diff(Q.indptr))
        cross = self.kind[rows] != self.kind[cols]
        degree = np.bincount(np.where(self.kind[rows[cross]] == 1, rows[cross], cols[cross]), minlength=n)
        tail = tail[np.argsort(degree[tail], kind="stable")]
        self.n, self.head, self.tail = n, head, tail
        self.n_H, self.n_T = int(head.shape[0]), int(tail.shape[0])
        self.dense_enough = int(np.ceil(MIN_DENSITY * self.n_T * (self.n_T + 1) / 2))  # Schur entries worth LAPACK
        self.local = np.empty(n, np.int64)
        self.local[head] = np.arange(self.n_H)
        self.local[tail] = np.arange(self.n_T)
        (self.pos_qh, self.c_indptr, self.c_rows, self.c_pos, self.tt_pos, self.tt_i, self.tt_j,
         self.schur_nnz) = _split_indices(Q.indptr.astype(np.int64), Q.indices.astype(np.int64), self.kind, self.local,
                                          self.n_H, self.dense_enough if judge and self.n_T > SMALL_TAIL else 0)

    @property
    def worthwhile(self) -> bool:
        """Whether the tail's Schur complement is dense enough for LAPACK to beat a sparse factor."""
        return self.n_T <= SMALL_TAIL or self.schur_nnz >= self.dense_enough

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
        a = self._a = analysis
        self._describe, self.n = describe, a.n
        # C (tail x head) for scipy's products; each refactorization writes its values in place
        self._C = sp.csc_matrix((np.zeros(a.c_rows.shape[0]), a.c_rows, a.c_indptr), shape=(a.n_T, a.n_H))
        self._L = np.empty((a.n_T, a.n_T), order="F")  # K, then its factor L, then (for variances) L^{-1}
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
        self.c_data = np.take(data, a.c_pos, out=self._C.data)
        self._Z, self._diagonal, self._inverted = None, None, False
        self._logdet_T = 0.0
        if a.n_T:
            K = self._L
            K.fill(0.0)
            K[a.tt_i, a.tt_j] = data[a.tt_pos]  # lower triangle
            if a.n_H:
                _schur_update(a.c_indptr, a.c_rows, self.c_data, self.q_h, K)
            L, info = lapack.dpotrf(K, lower=1, overwrite_a=1, clean=0)  # K = L L^T, in place
            if info != 0:
                self._not_identified(a.tail[max(info - 1, 0)])
            self._logdet_T = 2.0 * float(np.sum(np.log(np.diag(L))))

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
        bH, bT = B[an.head] / self.q_h[:, None], B[an.tail]
        if an.n_T:
            if an.n_H:
                bT = bT - self._C @ bH
            if self._inverted:  # K^{-1} = Y^T Y
                xT = blas.dtrmm(1.0, self._L, blas.dtrmm(1.0, self._L, bT, lower=1), lower=1, trans_a=1, overwrite_b=1)
            else:
                xT, info = lapack.dpotrs(self._L, bT, lower=1)
            xH = bH - (self._C.T @ xT) / self.q_h[:, None]
        else:
            xT, xH = bT, bH
        out = np.empty_like(B)
        out[an.head], out[an.tail] = xH, xT
        return out.reshape(-1) if vec else out

    def covariances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(Q^{-1})[a[k], b[k]]`` for pairs of positions (see the module docstring)."""
        if a is b or np.array_equal(a, b):  # variances only: no K^{-1}
            return self._inverse_diagonal()[a]
        an = self._a
        if an.n_T and self._Z is None:  # lower triangle of K^{-1}
            self._Z, info = lapack.dlauum(self._L, lower=1) if self._inverted else lapack.dpotri(self._L, lower=1)
        Z = self._Z if an.n_T else np.zeros((0, 0), order="F")
        return _pair_values(a, b, an.kind, an.local, self.q_h, an.c_indptr, an.c_rows, self.c_data, Z)

    @timed("variances")
    def inverse_diagonal(self) -> np.ndarray:
        """``diag(Q^{-1})`` (see the module docstring)."""
        return self._inverse_diagonal().copy()

    def _inverse_diagonal(self) -> np.ndarray:
        """``diag(Q^{-1})``, computed once per factorization from ``Y = L^{-1}``."""
        if self._diagonal is None:
            an, Y = self._a, np.zeros((0, 0), order="F")
            if an.n_T:  # L^{-1} in place of L: later solves multiply by it
                Y, info = lapack.dtrtri(self._L, lower=1, overwrite_c=1)
                self._inverted = True
            out = np.empty(self.n)
            out[an.tail], out[an.head] = _diagonal(Y.ravel(order="F"), an.n_T, an.c_indptr, an.c_rows, self.c_data,
                                                   self.q_h)
            self._diagonal = out
        return self._diagonal


@numba.njit(cache=True)
def _split_indices(indptr, indices, kind, local, n_H, schur_until):
    """Index maps from ``Q``'s lower CSC data to the head diagonal, ``C`` (by head, tail rows sorted) and ``Q_TT``
    (lower: ``tt_i >= tt_j``), and the entries of the Schur complement's lower triangle counted up to ``schur_until``."""
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
    n_T = local.shape[0] - n_H
    schur = _schur_pattern_size(counts, c_rows, n_T, tt_i, tt_j, schur_until) if schur_until > 0 else 0
    return pos_qh, counts, c_rows, c_pos, tt_pos, tt_i, tt_j, schur


@numba.njit(cache=True)
def _by_key(keys, n):
    """Counting sort: ``(starts, order)`` with ``order`` listing positions by key (stable)."""
    starts = np.zeros(n + 1, np.int64)
    for k in keys:
        starts[k + 1] += 1
    for k in range(n):
        starts[k + 1] += starts[k]
    fill = starts[:-1].copy()
    order = np.empty(keys.shape[0], np.int64)
    for p in range(keys.shape[0]):
        order[fill[keys[p]]] = p
        fill[keys[p]] += 1
    return starts, order


@numba.njit(cache=True)
def _schur_pattern_size(indptr, rows, n_T, tt_i, tt_j, until):
    """Entries in the lower triangle of the pattern of ``Q_TT + C C^T``, counted until there are ``until``."""
    head_of = np.empty(rows.shape[0], np.int64)
    for h in range(indptr.shape[0] - 1):
        head_of[indptr[h]:indptr[h + 1]] = h
    counts, by_tail = _by_key(rows, n_T)
    heads = head_of[by_tail]  # tail -> heads (CSR of C^T)
    qcount, by_col = _by_key(tt_j, n_T)
    qrows = tt_i[by_col]  # Q_TT's own entries, by column
    marker = np.full(n_T, -1, np.int64)
    total = 0
    for j in range(n_T):
        if total >= until:
            break
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
    """Lower triangle of ``K -= C diag(1/q) C^T`` (C by head columns, rows sorted; K column-major)."""
    for h in range(q.shape[0]):
        inv = 1.0 / q[h]
        for b in range(indptr[h], indptr[h + 1]):
            j = rows[b]
            cb = vals[b] * inv
            for a in range(b, indptr[h + 1]):
                K[rows[a], j] -= cb * vals[a]


@numba.njit(cache=True)
def _diagonal(Y, n_T, indptr, rows, vals, q):
    """``(diag(Z) over the tail, diag(Q^{-1}) over the head)`` from ``Y = L^{-1}`` (flat, column-major, lower)."""
    tail = np.empty(n_T)
    for t in range(n_T):
        s, column = 0.0, Y[t * n_T + t:(t + 1) * n_T]
        for i in range(column.shape[0]):
            s += column[i] * column[i]
        tail[t] = s
    n_H = q.shape[0]
    head = np.empty(n_H)
    w = np.zeros(n_T)  # Y c_h, zero above c_h's first row
    for h in range(n_H):
        lo, hi = indptr[h], indptr[h + 1]
        s = 0.0
        if hi > lo:
            for a in range(lo, hi):  # slices as loop bounds: LLVM vectorizes these loops
                r, c = rows[a], vals[a]
                part, column = w[r:], Y[r * n_T + r:(r + 1) * n_T]
                for i in range(part.shape[0]):
                    part[i] += c * column[i]
            part = w[rows[lo]:]
            for i in range(part.shape[0]):
                s += part[i] * part[i]
                part[i] = 0.0
        head[h] = 1.0 / q[h] + s / (q[h] * q[h])
    return tail, head


@numba.njit(cache=True)
def _pair_values(a, b, kind, local, q, indptr, rows, vals, Z):
    """Entries of ``Q^{-1}`` for pairs, from the lower triangle of ``Z = K^{-1}`` (column-major reads)."""
    out = np.empty(a.shape[0])
    for k in range(a.shape[0]):
        i, j = a[k], b[k]
        if kind[i] == 1 and kind[j] == 1:
            li, lj = local[i], local[j]
            out[k] = Z[li, lj] if li >= lj else Z[lj, li]
        elif kind[i] == 0 and kind[j] == 0:  # necessarily i == j
            h = local[i]
            s = 0.0
            for p in range(indptr[h], indptr[h + 1]):  # rows sorted: Z[rows[r], rows[p]] with r >= p
                col = rows[p]
                acc = 0.5 * Z[col, col] * vals[p]
                for r in range(p + 1, indptr[h + 1]):
                    acc += Z[rows[r], col] * vals[r]
                s += 2.0 * vals[p] * acc
            out[k] = 1.0 / q[h] + s / (q[h] * q[h])
        else:
            h = local[i] if kind[i] == 0 else local[j]
            t = local[j] if kind[i] == 0 else local[i]
            s = 0.0
            for p in range(indptr[h], indptr[h + 1]):
                r = rows[p]
                s += (Z[r, t] if r >= t else Z[t, r]) * vals[p]
            out[k] = -s / q[h]
    return out
