"""The model as a graph: family-level networkx graphs and acyclicity checks.

Acyclicity is a property of the *scalar* graph.  Families form a DAG (a node
can only use nodes declared before it, or itself through a callable mean), so
a scalar cycle can only run inside one self-referencing family.  Those are
checked with scipy's strongly connected components, which is vectorized and
handles millions of entries; networkx names a cycle once one is known.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .errors import CycleError, ModelSpecError
from .spec import ModelSpec, Node, label

EXPANDED_LIMIT = 5000


def node_kind(node: Node) -> str:
    """``"random"``, ``"deterministic"`` (sd 0 everywhere) or ``"partly deterministic"``."""
    if node.sd.param is not None:
        return "random"
    zero = node.sd.base == 0
    if zero.all():
        return "deterministic"
    return "partly deterministic" if zero.any() else "random"


def family_edges(model: ModelSpec):
    """Yield ``(source, target, role)`` for every family-level dependency.

    Roles: ``"mean"`` (a node in a mean), ``"fixed"`` (a parameter in a mean),
    ``"scale"`` (a parameter multiplying a node term), ``"sd"``.
    """
    for node in model.nodes.values():
        seen = set()
        for t in node.mean.terms:
            role = "fixed" if t.source.is_param else "mean"
            for edge in ((t.source.name, role),) + (((t.scale.name, "scale"),) if t.scale is not None else ()):
                if edge not in seen:
                    seen.add(edge)
                    yield edge[0], node.name, edge[1]
        if node.sd.param is not None:
            yield node.sd.param.name, node.name, "sd"


def family_graph(model: ModelSpec) -> nx.DiGraph:
    """One vertex per node or parameter family.

    Vertex attributes: ``kind`` (``random``, ``deterministic``, ``partly
    deterministic``, ``param``), ``plate`` (name or None), ``size``.  Edge
    attribute ``roles``: the set of roles (see :func:`family_edges`).  A
    self-referencing family has a self-loop.
    """
    g = nx.DiGraph(name=model.name)
    for p in model.params.values():
        g.add_node(p.name, kind="param", plate=None, size=p.size, positive=p.positive)
    for nd in model.nodes.values():
        g.add_node(nd.name, kind=node_kind(nd), plate=None if nd.plate is None else nd.plate.name, size=nd.size)
    for source, target, role in family_edges(model):
        if g.has_edge(source, target):
            g.edges[source, target]["roles"].add(role)
        else:
            g.add_edge(source, target, roles={role})
    return g


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
        g.add_node(name, family=cm.param_names[f], index=index, kind="param",
                   label=name if cm.param_scalar[f] else f"{cm.param_names[f]}[{index}]")
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
    names: list[str] = []
    for fam, size, scalar in zip(families, sizes, scalar_flags):
        names.extend([fam] if scalar else [f"{fam}[{i}]" for i in range(int(size))])
    return names


def check_acyclic(model: ModelSpec) -> None:
    """Raise :class:`CycleError` naming a cycle if the scalar graph has one."""
    fam_graph = nx.DiGraph()
    fam_graph.add_nodes_from(model.nodes)
    fam_graph.add_edges_from(
        (s, t) for s, t, role in family_edges(model) if role == "mean" and s != t
    )
    if not nx.is_directed_acyclic_graph(fam_graph):
        cycle = [u for u, _ in nx.find_cycle(fam_graph)]
        raise CycleError(_cycle_message(cycle + [cycle[0]]))
    for node in model.nodes.values():
        check_self_reference(node)


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
    sub = nx.DiGraph(zip(cols[keep].tolist(), rows[keep].tolist()))
    cycle = [u for u, _ in nx.find_cycle(sub)]
    raise CycleError(_cycle_message([entry(k) for k in cycle + [cycle[0]]]))


def _cycle_message(labels: list[str]) -> str:
    path = " -> ".join(labels)
    return f"The model has a cycle: `{path}`. Remove one of these dependencies."
