"""The query cache a :class:`gdag.Model` owns: what later queries of the same declarations reuse.

One :class:`QueryCache` serves one version of a model's declarations; a new
declaration replaces it with an empty one, so nothing here is ever stale.
It keeps the model's graph, the compiled model, the shared all-unobserved conditioning and the
few most recent observed patterns (each holds a Gram structure and a symbolic
analysis).  Which mode a new pattern gets is :meth:`QueryCache.query_conditioning`.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .compiler import CompiledModel, compile_model
from .graph import ModelGraph, build_graph, check_acyclic
from .linalg.forest import skeleton_forest_edges
from .observations import LeafRows, ReducedConditioning, latent_spec
from .pattern import Conditioning, PaddedConditioning
from .spec import ModelSpec
from .timing import phase

# Conditionings kept besides the shared one: the most recently used observed patterns.
CONDITIONING_CACHE = 4
# The rule of query_conditioning, from the measurements in docs/concepts.md ("Many queries"):
# a factor whose flops are below THIN_FACTOR times its nonzeros is near a tree (mean column
# length about 2), and analysing it is cheap; for the others, a new observed pattern reuses
# the shared analysis when at least SHARED_FRACTION of the stochastic variables are unobserved.
THIN_FACTOR = 4.0
SHARED_FRACTION = 0.1


class QueryCache:
    """Compiled model and conditionings of one version of a model's declarations."""

    def __init__(self):
        self._graph: ModelGraph | None = None
        self._compiled: CompiledModel | None = None
        self._shared: Conditioning | None = None
        self._patterns: OrderedDict = OrderedDict()  # (mode, packed mask) -> conditioning
        self._fills: bool | None = None  # see fills()
        self._latent: dict = {}  # leaf families -> (QueryCache, ModelSpec) of the model without them
        self.last_conditioning = None  # the pattern of the last posterior (for Model.describe)

    def __reduce__(self):
        """A cache pickles empty (a pickled Model carries none): what it keeps is rebuilt on first use."""
        return QueryCache, ()

    def __len__(self) -> int:
        """Number of cached conditionings (for tests of the cache's bound)."""
        return len(self._patterns) + (self._shared is not None)

    def graph(self, spec: ModelSpec) -> ModelGraph:
        """The family graph of ``spec`` (one walk of its edges, shared by drawings, dicts and the compiler)."""
        if self._graph is None:
            self._graph = build_graph(spec)
        return self._graph

    def compiled(self, spec: ModelSpec) -> CompiledModel:
        """The compiled form of ``spec`` (built once, acyclicity checked)."""
        if self._compiled is None:
            with phase("compile"):
                result = compile_model(spec)
                check_acyclic(self.graph(spec))
            self._compiled = result
        return self._compiled

    def latent(self, spec: ModelSpec, leaves: tuple[str, ...]) -> tuple["QueryCache", ModelSpec]:
        """The cache and spec of ``spec`` without the leaf families (their rows are summed apart)."""
        key = tuple(sorted(leaves))
        if key not in self._latent:
            check_acyclic(self.graph(spec))
            self._latent[key] = (QueryCache(), latent_spec(spec, key))
        return self._latent[key]

    def reduced_conditioning(self, spec: ModelSpec, cm: CompiledModel, observed: np.ndarray,
                             leaves: tuple[str, ...]) -> ReducedConditioning:
        """The latent model's per-mask conditioning plus the leaves' row sums (structure only; data per query)."""
        key = ("reduced", tuple(sorted(leaves)), np.packbits(observed).tobytes())
        return self._remember(key, lambda: ReducedConditioning(
            self.conditioning_for(cm, observed), [LeafRows(spec.nodes[name], cm) for name in sorted(leaves)]))

    def shared_conditioning(self, cm: CompiledModel) -> Conditioning:
        """The all-unobserved conditioning, whose analysis every padded query shares."""
        if self._shared is None:
            self._shared = Conditioning(cm, np.zeros(cm.n, dtype=bool))
        return self._shared

    def conditioning_for(self, cm: CompiledModel, observed: np.ndarray) -> Conditioning:
        """The index sets and symbolic analysis of one observed pattern: the per-mask mode.

        Used by the fit, which refactors one pattern many times, and by
        queries (:meth:`query_conditioning`).  With nothing observed it is the
        shared conditioning itself.
        """
        if not observed.any():
            return self.shared_conditioning(cm)
        return self._remember(("mask", np.packbits(observed).tobytes()), lambda: Conditioning(cm, observed))

    def query_conditioning(self, cm: CompiledModel, observed: np.ndarray):
        """The conditioning a posterior query uses: per-mask, or padded through the shared analysis.

        The mode is a function of the model version and of ``observed`` alone,
        never of earlier queries, so that the same model, data and seed give the
        same bits and the same draws whatever was asked before (the two modes
        agree only up to rounding, and their draws differ: another elimination
        order gives another square root of the covariance):

        - Nothing observed: the shared (all-unobserved) conditioning itself.
        - Padded (:class:`~gdag.pattern.PaddedConditioning`: no new Gram
          structure, no new CHOLMOD analysis, a factor over all of R) when the
          model's factor has fill (:meth:`fills`) and at least
          :data:`SHARED_FRACTION` of the stochastic variables are unobserved.
        - Per-mask (:class:`~gdag.pattern.Conditioning`) otherwise: near-tree
          models (whose analyses are cheap: padding costs more than it saves)
          and mostly observed queries.

        The few most recent patterns keep their conditioning.  Measurements:
        docs/concepts.md, "Many queries".
        """
        if not observed.any():
            return self.shared_conditioning(cm)
        n_R = int(np.count_nonzero(~cm.deterministic))
        n_U = n_R - int(np.count_nonzero(observed & ~cm.deterministic))
        if n_U >= SHARED_FRACTION * n_R and self.fills(cm):
            shared = self.shared_conditioning(cm)
            return self._remember(("padded", np.packbits(observed).tobytes()),
                                  lambda: PaddedConditioning(shared, observed))
        return self.conditioning_for(cm, observed)

    def fills(self, cm: CompiledModel) -> bool:
        """Whether the all-unobserved factor has fill, ``flops >= THIN_FACTOR * nnz(L)`` (decided once).

        A property of the model version alone (its shared analysis), so that
        :meth:`query_conditioning` does not depend on which queries came first.
        """
        if self._fills is None:
            if not cm.deterministic.any() and skeleton_forest_edges(cm.n, cm.B_rows, cm.B_cols) is not None:
                self._fills = False  # a forest (chains, trees): no fill, and no shared conditioning built to say so
            else:
                size = self.shared_conditioning(cm).factor_size()
                self._fills = bool(size.nnz_L and size.flops >= THIN_FACTOR * size.nnz_L)
        return self._fills

    def _remember(self, key, build):
        patterns = self._patterns
        if key in patterns:
            patterns.move_to_end(key)
            return patterns[key]
        value = patterns[key] = build()
        while len(patterns) > CONDITIONING_CACHE:
            patterns.popitem(last=False)
        return value
