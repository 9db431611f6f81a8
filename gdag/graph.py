"""ModelSpec -> ModelGraph: the model's structure, walked once, and the acyclicity checks.

:func:`build_graph` walks every mean term and sd of a model once and returns
a frozen :class:`ModelGraph`: the family-level edges with their roles and
terms, the kind of every family, the plates' nesting and crossings.  The
drawings (:mod:`gdag.render`), the dict form (:mod:`gdag.serialize`) and
:func:`family_graph` read it instead of walking the terms again.

Acyclicity is a property of the *scalar* graph.  Families form a DAG (a node
can only use nodes declared before it, or itself through a callable mean), so
a scalar cycle can only run inside one self-referencing family.  Those are
checked with scipy's strongly connected components, which is vectorized and
handles millions of entries; networkx names a cycle once one is known.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import networkx as nx
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .errors import CycleError, ModelSpecError
from .expr import Term
from .spec import ModelSpec, Node, Plate, label

EXPANDED_LIMIT = 5000


@dataclass(frozen=True, eq=False)
class Edge:
    """One dependency of family ``target`` on family or parameter ``source``.

    ``role`` is ``"mean"`` (a node in the mean), ``"fixed"`` (a parameter in
    the mean), ``"scale"`` (a parameter multiplying a node term, as ``rho``
    in ``rho * u0``) or ``"sd"``.  ``term`` is the mean term the edge comes
    from (None for an sd); a scaled term gives two edges, its source's and
    its scale's.
    """

    source: str
    target: str
    role: str
    term: Term | None = None


@dataclass(frozen=True, eq=False)
class ModelGraph:
    """The structure of one :class:`~gdag.spec.ModelSpec`, built once by :func:`build_graph`.

    Attributes
    ----------
    spec : ModelSpec
        The declarations this graph describes.
    kinds : mapping
        Every parameter and family name -> ``"param"``, ``"random"``,
        ``"deterministic"`` or ``"partly deterministic"`` (see :func:`node_kind`).
    edges : tuple of Edge
        Every dependency, target by target in declaration order, each
        target's in the order of its mean terms, its sd last.
    incoming : mapping
        Family name -> its edges (the part of ``edges`` with that target).
    nested : mapping
        Plate name, or None for the top level -> the plates declared
        directly within it, in declaration order.
    crossings : mapping
        Crossed plate name -> the plates it crosses (see :func:`plate_crossings`).
    """

    spec: ModelSpec
    kinds: Mapping[str, str]
    edges: tuple[Edge, ...]
    incoming: Mapping[str, tuple[Edge, ...]]
    nested: Mapping[str | None, tuple[Plate, ...]]
    crossings: Mapping[str, tuple[str, ...]]

    def mean_terms(self, target: str) -> tuple[Term, ...]:
        """The mean terms of family ``target`` in declaration order (its ``mean.terms``)."""
        return tuple(e.term for e in self.incoming[target] if e.role in ("mean", "fixed"))


def build_graph(model: ModelSpec) -> ModelGraph:
    """Walk ``model``'s mean terms and sds once into a :class:`ModelGraph`."""
    kinds = {p.name: "param" for p in model.params.values()}
    incoming = {}
    for node in model.nodes.values():
        kinds[node.name] = node_kind(node)
        edges = []
        for t in node.mean.terms:
            edges.append(Edge(t.source.name, node.name, "fixed" if t.source.is_param else "mean", t))
            if t.scale is not None:
                edges.append(Edge(t.scale.name, node.name, "scale", t))
        if node.sd.param is not None:
            edges.append(Edge(node.sd.param.name, node.name, "sd"))
        incoming[node.name] = tuple(edges)
    nested: dict[str | None, list[Plate]] = {}
    for plate in model.plates.values():
        nested.setdefault(None if plate.within is None else plate.within.name, []).append(plate)
    return ModelGraph(
        spec=model,
        kinds=MappingProxyType(kinds),
        edges=tuple(e for edges in incoming.values() for e in edges),
        incoming=MappingProxyType(incoming),
        nested=MappingProxyType({k: tuple(v) for k, v in nested.items()}),
        crossings=MappingProxyType(_crossings(model, incoming)),
    )


def graph_of(model: ModelSpec | ModelGraph) -> ModelGraph:
    """``model`` itself if it is a :class:`ModelGraph`, else its graph (for stages that take either)."""
    return model if isinstance(model, ModelGraph) else build_graph(model)


def node_kind(node: Node) -> str:
    """``"random"``, ``"deterministic"`` (sd 0 everywhere) or ``"partly deterministic"``."""
    zero = node.sd.base == 0  # a parameter's sd has positive bases, except where m.do() set the entries
    if zero.all():
        return "deterministic"
    return "partly deterministic" if zero.any() else "random"


def family_graph(model: ModelSpec | ModelGraph) -> nx.DiGraph:
    """One vertex per node or parameter family.

    Vertex attributes: ``kind`` (``random``, ``deterministic``, ``partly
    deterministic``, ``param``), ``plate`` (name or None), ``size``.  Edge
    attribute ``roles``: the set of roles (see :class:`Edge`).  A
    self-referencing family has a self-loop.
    """
    graph = graph_of(model)
    spec = graph.spec
    g = nx.DiGraph(name=spec.name)
    for p in spec.params.values():
        g.add_node(p.name, kind="param", plate=None, size=p.size, positive=p.positive)
    for nd in spec.nodes.values():
        g.add_node(nd.name, kind=graph.kinds[nd.name], plate=None if nd.plate is None else nd.plate.name, size=nd.size)
    for e in graph.edges:
        if g.has_edge(e.source, e.target):
            g.edges[e.source, e.target]["roles"].add(e.role)
        else:
            g.add_edge(e.source, e.target, roles={e.role})
    return g


# ------------------------------------------------------------ plate structure


def ancestors(plate: Plate | None) -> list[Plate]:
    """The plates ``plate`` is declared within, innermost first."""
    out = []
    while plate is not None and plate.within is not None:
        plate = plate.within
        out.append(plate)
    return out


def nesting_map(plate: Plate, outer: Plate) -> np.ndarray | None:
    """Entry of ``outer`` holding each entry of ``plate`` (declared within it), if the indices say."""
    idx = np.arange(plate.size)
    while plate is not outer:
        if plate.index is None:
            return None
        idx = plate.index[idx]
        plate = plate.within
    return idx


def _finest(plates: Iterable[Plate]) -> list[Plate]:
    """Drop every plate some other plate in the collection is declared within."""
    plates = list(dict.fromkeys(plates))
    coarser = {id(a) for p in plates for a in ancestors(p)}
    return [p for p in plates if id(p) not in coarser]


def plate_crossings(model: ModelSpec | ModelGraph) -> dict[str, tuple[str, ...]]:
    """The crossed plates of ``model`` and the plates each one crosses.

    A plate is crossed when its families' means gather from two or more
    plates none of which is declared within another, its own ``within``
    plate counting as one of them (gathers from plates it lies within, or
    from plates inside it, are nesting, not crossing).

    Returns
    -------
    dict
        Crossed plate name -> names of the plates it crosses, in declaration
        order (``{"install": ("app", "device")}``).
    """
    return dict(graph_of(model).crossings)


def _crossings(model: ModelSpec, incoming: Mapping[str, tuple[Edge, ...]]) -> dict[str, tuple[str, ...]]:
    sources: dict[str, list[Plate]] = {}
    for node in model.nodes.values():
        plate = node.plate
        if plate is None:
            continue
        found = sources.setdefault(plate.name, [plate.within] if plate.within is not None else [])
        for e in incoming[node.name]:
            src = e.term.source.plate if e.role == "mean" else None
            if src is None or src is plate or plate in ancestors(src):
                continue
            found.append(src)
    order = {name: i for i, name in enumerate(model.plates)}
    out = {}
    for name, found in sources.items():
        factors = _finest(found)
        if len(factors) >= 2:
            out[name] = tuple(sorted((p.name for p in factors), key=order.__getitem__))
    return out


# --------------------------------------------------------------- scalar graph


def expanded_graph(model: ModelSpec, cm, limit: int = EXPANDED_LIMIT) -> nx.DiGraph:
    """One vertex per scalar variable (``R_i[3]``) and per parameter entry of compiled model ``cm``.

    Vertex attributes: ``family``, ``index``, ``kind`` and ``label``, the
    label gdag uses in messages and tables (``R_i[friend=3]``).  Refuses
    models with more than ``limit`` vertices: use the family graph for those.
    """
    total = cm.n + cm.n_theta
    if total > limit:
        raise ModelSpecError(
            f"The expanded graph of `{model.name}` would have {total} vertices (limit {limit}); "
            "use m.graph() for the family-level graph."
        )
    var_names = _entry_names(cm.family_names, cm.family_size, [model.nodes[f].is_scalar for f in cm.family_names])
    par_names = _entry_names(cm.param_names, cm.param_size, list(cm.param_scalar))
    g = nx.DiGraph(name=model.name)
    det = cm.deterministic
    fam_of = np.repeat(np.arange(len(cm.family_names)), cm.family_size)
    for k, name in enumerate(var_names):
        f = int(fam_of[k])
        index = k - int(cm.family_offset[f])
        g.add_node(name, family=cm.family_names[f], index=index, kind="deterministic" if det[k] else "random",
                   label=label(cm.family_names[f], cm.family_plate[f], index))
    par_of = np.repeat(np.arange(len(cm.param_names)), cm.param_size)
    for k, name in enumerate(par_names):
        f = int(par_of[k])
        index = k - int(cm.param_offset[f])
        # a parameter is on no plate: its entries are labelled by position, as its vertices are
        g.add_node(name, family=cm.param_names[f], index=index, kind="param", label=name)
    # a parent that enters a mean twice (a + 2 * a) is one edge whose coefficient is the sum, as in B
    B = sp.coo_matrix((cm.B_base, (cm.B_rows, cm.B_cols)), shape=(cm.n, cm.n)).tocsr().tocoo()
    for r, c, v in zip(B.row.tolist(), B.col.tolist(), B.data.tolist()):
        g.add_edge(var_names[c], var_names[r], coef=v)
    scaled = cm.B_scale >= 0
    for r, s in zip(cm.B_rows[scaled].tolist(), cm.B_scale[scaled].tolist()):
        g.add_edge(par_names[s], var_names[r], role="scale")
    F = cm.F.tocoo()
    for r, c, v in zip(F.row.tolist(), F.col.tolist(), F.data.tolist()):
        g.add_edge(par_names[c], var_names[r], coef=v, role="fixed")
    has_sd = np.flatnonzero(cm.sd_param >= 0)
    for r in has_sd.tolist():
        g.add_edge(par_names[int(cm.sd_param[r])], var_names[r], role="sd")
    return g


def _entry_names(families, sizes, scalar_flags) -> list[str]:
    """Vertex ids of the expanded graph: ``R`` for a scalar family, ``R_i[3]`` for entries."""
    names: list[str] = []
    for fam, size, scalar in zip(families, sizes, scalar_flags):
        names.extend([fam] if scalar else [f"{fam}[{i}]" for i in range(int(size))])
    return names


# ----------------------------------------------------------------- acyclicity


def check_acyclic(model: ModelSpec | ModelGraph) -> None:
    """Raise :class:`CycleError` naming a cycle if the scalar graph has one."""
    graph = graph_of(model)
    spec = graph.spec
    cycle = find_cycle(spec.nodes, ((e.source, e.target) for e in graph.edges
                                    if e.role == "mean" and e.source != e.target))
    if cycle is not None:
        raise CycleError(cycle_message(cycle))
    for node in spec.nodes.values():
        check_self_reference(node)


def find_cycle(names: Iterable[str], pairs: Iterable[tuple[str, str]]) -> list[str] | None:
    """A cycle among the edges ``pairs`` (source, target) as a closed path ``[a, b, a]``, or None."""
    g = nx.DiGraph()
    g.add_nodes_from(names)
    g.add_edges_from(pairs)
    try:
        cycle = [u for u, _ in nx.find_cycle(g)]
    except nx.NetworkXNoCycle:
        return None
    return cycle + [cycle[0]]


def cycle_message(path: list[str], subject: str = "The model") -> str:
    """The message of a :class:`CycleError` along ``path`` (labels, closed: first == last)."""
    return f"{subject} has a cycle: `{' -> '.join(path)}`. Remove one of these dependencies."


def check_self_reference(node: Node) -> None:
    """Raise :class:`CycleError` if a family's references to itself form a cycle."""
    own = [t for t in node.mean.terms if t.source is node]
    if not own:
        return
    rows = np.concatenate([t.rows for t in own])
    cols = np.concatenate([t.cols for t in own])
    if np.all(cols < rows):  # every entry depends on earlier ones: the common, cheap case
        return

    def entry(k: int) -> str:
        return label(node.name, None if node.plate is None else node.plate.name, k)

    loops = np.flatnonzero(rows == cols)
    if loops.size:
        raise CycleError(
            f"The model has a cycle: `{entry(int(rows[loops[0]]))}` depends on itself. Remove that entry from its mean."
        )
    size = node.size
    graph = sp.csr_matrix((np.ones(rows.shape[0]), (cols, rows)), shape=(size, size))
    n_comp, comp = connected_components(graph, directed=True, connection="strong")
    if n_comp == size:
        return
    members = np.flatnonzero(comp == np.bincount(comp).argmax())
    keep = np.isin(cols, members) & np.isin(rows, members)
    cycle = find_cycle((), zip(cols[keep].tolist(), rows[keep].tolist()))
    raise CycleError(cycle_message([entry(k) for k in cycle]))
