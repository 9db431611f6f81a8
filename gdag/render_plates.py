"""The plate view of :mod:`gdag.render`: one vertex per family, plates as nested boxes.

Reads a :class:`~gdag.graph.ModelGraph`: its edges give the solid and dashed
edges and their labels, its plate nesting the boxes, its crossings the
``crossed: app × device`` lines.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .graph import Edge, ModelGraph, ancestors, nesting_map
from .render_distributions import distribution
from .render_labels import add_label_vertex, rank_label_vertices
from .render_style import INTERVENED_LINE, Style, add_edge, intervened_attrs, new_digraph, node_attrs
from .spec import Node, Plate

Members = dict  # plate name (None: outside every box) -> [(vertex id, attributes)]


def draw_plates(gv, graph: ModelGraph, masks: dict[str, np.ndarray], style: Style, rankdir: str, interventions=(),
                label_vertices=None, distributions: bool = False):
    """The plate diagram of ``graph``; ``masks`` (family -> observed entries) shades families.

    ``interventions`` (``Model.interventions``, see :mod:`gdag.intervene`) marks the families
    ``m.do()`` set or shifted, and draws the edges it cut dashed and crossed.  The plates in
    ``label_vertices`` get their label as a vertex in their bottom row (:mod:`gdag.render_labels`).
    """
    spec = graph.spec
    label_vertices = {} if label_vertices is None else label_vertices
    how, cut = _interventions(interventions)
    dot = new_digraph(gv, spec, rankdir)
    members: Members = {None: []}
    for param in spec.params.values():
        size = "" if param.is_scalar else f" ({param.size})"
        members[None].append((param.name, dict(node_attrs("param", None), label=style.param_label(param.name, size),
                                                tooltip=f"{param.name}: parameter, size {param.size}")))
    for node in spec.nodes.values():
        mask = masks.get(node.name)
        seen = None if mask is None else ("all" if mask.all() else "some")
        kind = graph.kinds[node.name]
        where = "" if node.plate is None else f", {node.size} entries on plate {node.plate.name}"
        text = style.name(node.name)
        if distributions:  # the family's distribution under its name (gdag.render_distributions)
            under = distribution(node, style, _index_label)
            text += f'<BR/><FONT POINT-SIZE="10">{under}</FONT>' if style.html else f"\\n{under}"
        attrs = dict(node_attrs(kind, seen), label=style.label(text), tooltip=f"{node.name}: {kind}{where}")
        if node.name in how:
            attrs = intervened_attrs(attrs, how[node.name], style)
            attrs["tooltip"] = f"{node.name}: {how[node.name].replace('shift', 'shifted')} by do(){where}"
        members.setdefault(None if node.plate is None else node.plate.name, []).append((node.name, attrs))
    _add_clusters(dot, graph, members, style, label_vertices)
    rank_label_vertices(dot, label_vertices)
    for node in spec.nodes.values():
        _add_family_edges(dot, node, graph.incoming[node.name], style)
    for target, sources in cut.items():
        for source in sources:
            add_edge(dot, source, target, style, index=style.text("✕"), dashed=True, color="gray55",
                     fontcolor=INTERVENED_LINE, tooltip=f"{source} -> {target}: cut by do()")
    return dot


def _interventions(interventions) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Family -> "set", "partly set" or "shift", and family -> the sources whose edges do() cut."""
    masks, how, cut = {}, {}, {}
    for iv in interventions:
        if iv.kind == "shift":
            how.setdefault(iv.name, "shift")
            continue
        mask = masks.setdefault(iv.name, np.zeros(iv.size, dtype=bool))
        mask[iv.entries] = True
        how[iv.name] = "set" if mask.all() else "partly set"
        cut.setdefault(iv.name, []).extend(s for s in iv.cut if s not in cut[iv.name])
    return how, cut


def _add_family_edges(dot, node: Node, edges: tuple[Edge, ...], style: Style) -> None:
    """The edges into ``node``: one solid edge per source of its mean, per scale, then its sd dashed."""
    terms: dict[str, list] = {}
    scales: list[str] = []
    for e in edges:
        if e.role in ("mean", "fixed"):
            terms.setdefault(e.source, []).append(e.term)
        elif e.role == "scale":
            scales.append(e.source)
    for source, ts in terms.items():
        coefficient = ""
        if style.edge_labels:
            coefs = {style.coefficient(t.vals, t.scale) for t in ts}
            if len(coefs) == 1 and None not in coefs:
                coefficient = coefs.pop()
        index = style.text(_join(_index_label(t, node) for t in ts))
        add_edge(dot, source, node.name, style, coefficient=coefficient, index=index)
    for source in dict.fromkeys(scales):
        if source not in terms:
            add_edge(dot, source, node.name, style)
    for e in edges:
        if e.role == "sd":
            add_edge(dot, e.source, node.name, style, coefficient="sd" if style.edge_labels else "", dashed=True)


def _index_label(term, target: Node) -> str:
    """How a family term picks its source entries, when the boxes do not say it."""
    src = term.source
    rows, cols = term.rows, term.cols
    if src is target:
        lag = rows - cols
        if lag.size and np.all(lag == lag[0]) and lag[0] != 0:
            k = int(lag[0])
            return f"[t-{k}]" if k > 0 else f"[t+{-k}]"
        return "[self]"
    if src.is_param or src.plate is None:
        return ""  # a scalar broadcast, or a parameter (drawn outside the boxes)
    if rows.size and np.bincount(rows, minlength=target.size).max() > 1:
        return "W"  # a design matrix: several source entries per target entry
    if target.plate is None:
        return f"[{src.plate.name}={int(cols[0])}]" if rows.size == 1 else "W"
    if src.plate is target.plate:
        return "" if np.array_equal(rows, cols) else f"[{src.plate.name}]"
    if src.plate in ancestors(target.plate):
        nest = nesting_map(target.plate, src.plate)
        if nest is None or np.array_equal(cols, nest[rows]):
            return ""
    return f"[{src.plate.name}]"


def _join(parts: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(p for p in parts if p))


def _add_clusters(dot, graph: ModelGraph, members: Members, style: Style, label_vertices) -> None:
    """Add vertices (``members[plate name]``: (id, attrs)) in nested plate clusters."""
    nested, crossings = graph.nested, graph.crossings

    def occupied(plate: Plate) -> bool:
        return bool(members.get(plate.name)) or any(occupied(c) for c in nested.get(plate.name, ()))

    def add(parent, plate: Plate) -> None:
        with parent.subgraph(name=f"cluster_{plate.name}") as sub:
            head = style.text(f"{plate.name} ({plate.size})")
            if plate.name in crossings:
                head = style.lines(head, style.text("crossed: " + " × ".join(crossings[plate.name])))
            if plate.name in label_vertices:  # an edge ran through the box's label: a vertex edges go around
                sub.attr(style="rounded", color="gray40", margin="10")
                add_label_vertex(sub, plate.name, style.label(head))
            else:
                sub.attr(label=style.label(head), labeljust="r", labelloc="b", style="rounded",
                         color="gray40", fontsize="11", margin="10")
            for vid, attrs in members.get(plate.name, []):
                sub.node(vid, **attrs)
            for child in nested.get(plate.name, ()):
                if occupied(child):
                    add(sub, child)

    for vid, attrs in members.get(None, []):
        dot.node(vid, **attrs)
    for plate in nested.get(None, ()):
        if occupied(plate):
            add(dot, plate)
