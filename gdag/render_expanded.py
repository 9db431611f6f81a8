"""The expanded view of :mod:`gdag.render`: one vertex per scalar variable and parameter entry.

Draws :func:`gdag.graph.expanded_graph` (which needs the compiled model)
with the shapes of the plate view and no boxes; parameter edges are grey
and left out of the ranking.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from .compiler import CompiledModel, compile_model
from .errors import ModelSpecError
from .graph import ModelGraph, check_acyclic, expanded_graph
from .render_style import Style, add_edge, intervened_attrs, new_digraph, node_attrs
from .spec import label


def draw_expanded(gv, graph: ModelGraph, masks: dict[str, np.ndarray], style: Style, max_vertices: int,
                  rankdir: str | None, compiled: CompiledModel | None, interventions=()):
    """The expanded drawing; refused over ``max_vertices`` vertices.  ``compiled`` is compiled here if None.

    Entries ``m.do()`` set (``interventions``) are orange double boxes (their cut edges are gone), shifted ones
    have an orange outline.
    """
    marked = {(iv.name, int(k)): iv.kind for iv in interventions for k in iv.entries}
    spec = graph.spec
    total = sum(n.size for n in spec.nodes.values()) + sum(p.size for p in spec.params.values())
    if total > max_vertices:
        raise ModelSpecError(
            f"The expanded drawing of `{spec.name}` would have {total} vertices, over max_vertices={max_vertices}. "
            "Draw the plate view instead (render(model) or m.render() without expanded=True), "
            "or raise max_vertices."
        )
    if compiled is None:
        check_acyclic(graph)
        compiled = compile_model(spec)
    g = expanded_graph(spec, compiled, limit=max(total, 1))
    if rankdir is None:
        generations = list(nx.topological_generations(g)) if g.number_of_nodes() else [[]]
        rankdir = "LR" if len(generations) > max(len(gen) for gen in generations) else "TB"
    dot = new_digraph(gv, spec, rankdir)

    names: dict[str, dict[int, str]] = {}
    for vid, data in g.nodes(data=True):
        fam, idx, kind = data["family"], int(data["index"]), data["kind"]
        names.setdefault(fam, {})[idx] = vid
        suffix = vid[len(fam):]  # "[3]" or ""
        if kind == "param":
            dot.node(vid, label=style.param_label(fam, suffix), tooltip=f"parameter {vid}",
                     **node_attrs("param", None))
            continue
        mask = masks.get(fam)
        seen = "all" if mask is not None and mask[idx] else None
        plate = spec.nodes[fam].plate
        tip = label(fam, None if plate is None else plate.name, idx)
        attrs = node_attrs(kind, seen)
        if (fam, idx) in marked:
            attrs = intervened_attrs(attrs, marked[(fam, idx)], style)
        dot.node(vid, label=style.label(style.name(fam) + style.text(suffix)), tooltip=f"{tip} ({kind})", **attrs)

    scaled: dict[tuple[str, str], str] = {}  # (source entry, target entry) -> the scale of their term
    if style.edge_labels:
        for e in graph.edges:
            if e.role == "scale":
                t = e.term
                for r, c in zip(t.rows.tolist(), t.cols.tolist()):
                    scaled[(names[t.source.name][c], names[e.target][r])] = e.source
    for u, v, data in g.edges(data=True):
        role = data.get("role")
        text = ""
        if style.edge_labels:
            if role == "sd":
                text = "sd"
            elif "coef" in data:
                scale = spec.params[scaled[(u, v)]] if (u, v) in scaled else None
                text = style.coefficient(np.array([data["coef"]]), scale) or ""
        # Parameter edges fan out to many entries: grey, and left out of the
        # ranking, they keep the variables' own structure readable.
        add_edge(dot, u, v, style, coefficient=text, dashed=role == "sd",
                 **({"color": "gray55", "constraint": "false"} if g.nodes[u]["kind"] == "param" else {}))
    return dot
