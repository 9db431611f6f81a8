"""Draw a model with graphviz: a plate diagram, or one vertex per scalar.

:func:`render` returns a ``graphviz.Digraph``, which Jupyter displays inline,
and writes ``.svg``, ``.png``, ``.pdf`` or ``.dot``/``.gv`` files.

Drawing conventions (also in ``docs/rendering.md``)
---------------------------------------------------

Vertices
    * random family: ellipse;
    * deterministic family (``sd=0``): double-outlined ellipse;
    * partly deterministic family (``sd`` zero at some entries): dashed
      double-outlined ellipse;
    * parameter: no outline, a solid dot before its name (``● beta``); a
      vector parameter shows its size (``● alpha (5)``);
    * observed family: filled grey; partly observed (some NaN in the data):
      filled light grey.

Edges
    * solid: the source enters the target's mean (a parent, a fixed effect,
      or a parameter scaling a parent's term, as ``rho`` in ``rho * u0``);
    * dashed: a parameter is the target's standard deviation.
    * A self-referencing family (an AR chain) has a self-loop labelled with
      the recurrence: ``[t-1]`` for ``x.lag(1)``, ``[self]`` for any other
      pattern of earlier entries.

Plates
    Each plate is a box (a graphviz cluster) labelled ``name (size)`` at its
    bottom right; a family sits in the box of its plate and scalar families
    and parameters sit outside every box.  A plate declared ``within``
    another is drawn inside that plate's box: nesting is drawn only where it
    is declared, never inferred from the indices.

Gathers and crossing
    An edge into a plate that is not declared within the source's plate
    carries the index it gathers with, named after the source's plate:
    ``[friend]`` on ``R_i -> X`` in the romcom model.  Edges whose gather
    follows the declared nesting (``classroom -> student`` where ``student``
    is within ``classroom``) carry no label: the boxes already say it.
    A design-matrix term (``gdag.dot(W, z)``, several source entries per
    target entry) is labelled ``W``.

    A plate is *crossed* when its families gather from two or more plates
    that are not nested in each other (counting its own ``within`` plate):
    installs of apps on devices, students in classrooms and socio-economic
    backgrounds.  Graphviz boxes cannot overlap, so a crossed plate is drawn
    as its own box (inside the plate it is declared within, if any) whose
    label names what it crosses, ``install (10000)`` over ``crossed: app ×
    device``, and its gather edges carry their indices, ``[app]`` and
    ``[device]``.  :func:`plate_crossings` returns these factors.

Labels
    With ``subscripts=True`` (the default), names that read as maths are
    drawn as maths through graphviz HTML-like labels: ``R_i`` is R with a
    subscript i and spelled-out Greek names become letters (``sigma_P`` is
    σ with subscript P).  A name reads as maths when it is one letter (with
    digits) or a Greek letter's name, then ``_`` and one to four letters or
    digits; descriptive names (``class_effect``) are drawn verbatim.  The DOT vertex ids
    stay the names, so the DOT source is searchable for ``R_i``.
    ``edge_labels=True`` adds coefficients: on a family edge only when it is
    one constant for every entry (``0.9``), a scale parameter by its name
    (``rho``), and ``sd`` on dashed edges.

Expanded view
    ``expanded=True`` draws one vertex per scalar variable (``R_i[3]``) and per
    parameter entry, with the shapes above and no plate boxes: boxes around
    hundreds of entries force graphviz into tangled layouts, and the index
    in each label already says where an entry belongs (the SVG tooltip reads
    ``R_i[friend=3]``).  Parameter edges are grey and do not constrain the
    layout.  Drawings over ``max_vertices`` (300) are refused.

Layout
    Top to bottom (hierarchies read downwards).  The expanded view goes left
    to right when its longest path is longer than its widest rank (chains).
    PNG files are written at 144 dpi.
"""

from __future__ import annotations

import difflib
import html
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .compiler import CompiledModel, compile_model
from .errors import DataError, ModelSpecError
from .graph import check_acyclic, expanded_graph, node_kind
from .spec import ModelSpec, Node, Param, Plate

if TYPE_CHECKING:  # pragma: no cover
    import graphviz

__all__ = ["render", "plate_crossings", "observed_masks", "FORMATS", "MAX_VERTICES"]

#: File extensions :func:`render` writes, and the graphviz format of each.
FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".gv": "dot"}

#: Default largest expanded drawing (vertices); beyond it graphviz output is unreadable.
MAX_VERTICES = 300

PNG_DPI = 144
FONT = "Helvetica,Arial,sans-serif"
OBSERVED_FILL = "gray70"
PARTLY_OBSERVED_FILL = "gray90"

_GREEK = {
    name: chr(code)
    for name, code in {
        "alpha": 0x3B1, "beta": 0x3B2, "gamma": 0x3B3, "delta": 0x3B4, "epsilon": 0x3B5,
        "zeta": 0x3B6, "eta": 0x3B7, "theta": 0x3B8, "iota": 0x3B9, "kappa": 0x3BA,
        "lambda": 0x3BB, "lam": 0x3BB, "mu": 0x3BC, "nu": 0x3BD, "xi": 0x3BE, "pi": 0x3C0,
        "rho": 0x3C1, "sigma": 0x3C3, "tau": 0x3C4, "upsilon": 0x3C5, "phi": 0x3C6,
        "chi": 0x3C7, "psi": 0x3C8, "omega": 0x3C9,
        # Capitals only where they differ from Latin letters (Beta would read as B).
        "Gamma": 0x393, "Delta": 0x394, "Theta": 0x398, "Lambda": 0x39B, "Xi": 0x39E,
        "Pi": 0x3A0, "Sigma": 0x3A3, "Phi": 0x3A6, "Psi": 0x3A8, "Omega": 0x3A9,
    }.items()
}


# A name that reads as maths: one letter (with digits) or a Greek letter's name,
# then a short subscript (R_i, Y_jk, sigma_P, u0_g).  Others stay verbatim.
_MATH_NAME = re.compile(r"^((?:[A-Za-z][0-9]*)|(?:" + "|".join(_GREEK) + r"))_([A-Za-z0-9]{1,4})$")


def render(
    model: ModelSpec,
    path: str | os.PathLike | None = None,
    *,
    expanded: bool = False,
    observed: Iterable[str] | Mapping[str, Any] | None = None,
    edge_labels: bool = False,
    subscripts: bool = True,
    max_vertices: int = MAX_VERTICES,
    rankdir: str | None = None,
    compiled: CompiledModel | None = None,
) -> "graphviz.Digraph":
    """Draw ``model`` as a plate diagram (or one vertex per scalar) with graphviz.

    Parameters
    ----------
    model : ModelSpec or Model
    path : str or path-like, optional
        Also write the drawing there, in the format its extension names:
        ``.svg``, ``.png``, ``.pdf``, or ``.dot``/``.gv`` (the DOT source).
    expanded : bool
        False: one vertex per family, plates as boxes (any size of model).
        True: one vertex per scalar variable and parameter entry, labelled
        like ``R_i[3]``; exact but only readable for small models.
    observed : iterable of node names, or a data mapping (name -> values)
        Nodes drawn shaded.  With a mapping, NaN entries are unobserved: a
        family with some observed entries is drawn light grey, and in the
        expanded view exactly the observed entries are shaded.
    edge_labels : bool
        Add coefficients to edges (where they are not 1); see the module
        docstring.  Clearer for small models, busier for large ones.
    subscripts : bool
        Draw ``R_i`` as R with subscript i and Greek names as letters; False
        draws names verbatim.
    max_vertices : int
        Largest expanded drawing; larger models raise instead of producing
        an unreadable figure.
    rankdir : {"TB", "LR", "BT", "RL"}, optional
        Layout direction; by default top to bottom, or left to right for a
        long chain in the expanded view.
    compiled : CompiledModel, optional
        The model's compiled form, when the caller has it (the expanded view
        needs it; without it, it is compiled here).

    Returns
    -------
    graphviz.Digraph
        Displays inline in Jupyter; ``.source`` is the DOT text.

    Raises
    ------
    ModelSpecError
        An unknown file extension, or an expanded drawing over ``max_vertices``.
    DataError
        ``observed`` names something that is not a node (or is a parameter).
    ImportError
        The graphviz Python package is missing.

    Examples
    --------
    >>> import gdag
    >>> m = gdag.Model("tiny")
    >>> g = m.plate("group", 3)
    >>> mu = m.normal("mu", mean=0.0, sd=1.0)
    >>> u = m.normal("u", mean=mu, sd=0.5, plate=g)
    >>> dot = m.render(observed=["u"])
    >>> "cluster_group" in dot.source and "filled" in dot.source
    True
    """
    gv = _import_graphviz()
    fmt = _format_of(path) if path is not None else None
    if rankdir is not None and rankdir not in ("TB", "LR", "BT", "RL"):
        raise ModelSpecError(f"`rankdir` must be one of TB, LR, BT, RL; got {rankdir!r}.")
    masks = observed_masks(model, observed)
    style = _Style(subscripts=subscripts, edge_labels=edge_labels)
    if expanded:
        dot = _draw_expanded(gv, model, masks, style, max_vertices, rankdir, compiled)
    else:
        dot = _draw_families(gv, model, masks, style, rankdir or "TB")
    if path is not None:
        _write(gv, dot, os.fspath(path), fmt)
    return dot


# ------------------------------------------------------------------ inputs


def _import_graphviz():
    try:
        import graphviz
    except ImportError as err:
        raise ImportError(
            "Drawing models needs the graphviz Python package and the Graphviz programs: "
            "`pip install graphviz` and `apt-get install graphviz` (or your system's package manager)."
        ) from err
    return graphviz


def _format_of(path) -> str:
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in FORMATS:
        known = ", ".join(FORMATS)
        raise ModelSpecError(
            f"Cannot tell the drawing format of `{os.fspath(path)}` from its extension {ext or '(none)'!r}; "
            f"use one of {known}."
        )
    return FORMATS[ext]


def _write(gv, dot, path: str, fmt: str) -> None:
    if fmt == "dot":
        data = dot.source.encode("utf-8")
    else:
        if fmt == "png" and "dpi" not in dot.graph_attr:
            dot = dot.copy()
            dot.attr(dpi=str(PNG_DPI))  # for PNG only: in SVG and PDF, dpi rescales the drawing
        try:
            data = dot.pipe(format=fmt)
        except gv.ExecutableNotFound as err:
            raise RuntimeError(
                "The Graphviz `dot` program is not installed, so the drawing cannot be written as "
                f"{fmt}: run `apt-get install graphviz` (or your system's package manager), "
                "or write the DOT source with a `.dot` path."
            ) from err
    with open(path, "wb") as fh:
        fh.write(data)


def observed_masks(model: ModelSpec, observed) -> dict[str, np.ndarray]:
    """Which entries of which families are observed, as boolean masks.

    ``observed`` is None, one name, an iterable of names (every entry
    observed) or a data mapping (entries that are not NaN).  Families with
    no observed entry are left out.
    """
    if observed is None:
        return {}
    if isinstance(observed, str):
        observed = [observed]
    is_mapping = isinstance(observed, Mapping)
    try:
        names = list(observed.keys() if is_mapping else observed)
    except TypeError:
        raise DataError(
            f"`observed` must be node names or a mapping of node names to data; got {type(observed).__name__}."
        ) from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise DataError(f"Observed nodes must be named by strings; got {bad[0]!r}.")
    params = [n for n in names if n in model.params]
    if params:
        listed = ", ".join(f"`{n}`" for n in params)
        raise DataError(
            f"{listed} {'is a parameter' if len(params) == 1 else 'are parameters'} of model `{model.name}`, "
            "not random nodes, so cannot be observed. Give parameter values with params=, or estimate them with fit()."
        )
    unknown = [n for n in names if n not in model.nodes]
    if unknown:
        hints = [difflib.get_close_matches(n, list(model.nodes), n=1) for n in unknown]
        listed = ", ".join(f"`{n}`" + (f" (did you mean `{h[0]}`?)" if h else "") for n, h in zip(unknown, hints))
        raise DataError(f"Observed names not declared as nodes of model `{model.name}`: {listed}.")
    masks = {}
    for name in names:
        node = model.nodes[name]
        if not is_mapping:
            masks[name] = np.ones(node.size, dtype=bool)
            continue
        try:
            values = np.asarray(observed[name], dtype=float).reshape(-1)
        except (TypeError, ValueError) as err:
            raise DataError(f"Data for node `{name}` must be numeric.") from err
        if values.shape[0] not in (1, node.size):
            raise DataError(f"Data for node `{name}` has {values.shape[0]} entries; the node has {node.size}.")
        mask = np.broadcast_to(~np.isnan(values), (node.size,)).copy()
        if mask.any():
            masks[name] = mask
    return masks


# ------------------------------------------------------------ plate structure


def _ancestors(plate: Plate | None) -> list[Plate]:
    """The plates ``plate`` is declared within, innermost first."""
    out = []
    while plate is not None and plate.within is not None:
        plate = plate.within
        out.append(plate)
    return out


def _finest(plates: Iterable[Plate]) -> list[Plate]:
    """Drop every plate some other plate in the collection is declared within."""
    plates = list(dict.fromkeys(plates))
    coarser = {id(a) for p in plates for a in _ancestors(p)}
    return [p for p in plates if id(p) not in coarser]


def plate_crossings(model: ModelSpec) -> dict[str, tuple[str, ...]]:
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
    sources: dict[str, list[Plate]] = {}
    for node in model.nodes.values():
        if node.plate is None:
            continue
        plate = node.plate
        found = sources.setdefault(plate.name, [plate.within] if plate.within is not None else [])
        for t in node.mean.terms:
            src = t.source.plate if isinstance(t.source, Node) else None
            if src is None or src is plate or plate in _ancestors(src):
                continue
            found.append(src)
    order = {name: i for i, name in enumerate(model.plates)}
    out = {}
    for name, found in sources.items():
        factors = _finest(found)
        if len(factors) >= 2:
            out[name] = tuple(sorted((p.name for p in factors), key=order.__getitem__))
    return out


def _nesting_map(plate: Plate, outer: Plate) -> np.ndarray | None:
    """Entry of ``outer`` holding each entry of ``plate`` (declared within it), if indices say."""
    idx = np.arange(plate.size)
    while plate is not outer:
        if plate.index is None:
            return None
        idx = plate.index[idx]
        plate = plate.within
    return idx


# ------------------------------------------------------------------- labels


class _Style:
    """Label formatting shared by both views."""

    def __init__(self, subscripts: bool, edge_labels: bool):
        self.html = subscripts
        self.edge_labels = edge_labels

    def name(self, name: str) -> str:
        """A family or parameter name as a label fragment (``R_i`` -> R<SUB>i</SUB>)."""
        if not self.html:
            return name
        stem = name[:-1] if name.endswith("_") and name[:-1] in _GREEK else name  # lambda_ -> lambda
        if stem in _GREEK:
            return _GREEK[stem]
        math = _MATH_NAME.match(name)
        if math is None:  # a descriptive name such as state_effect: verbatim
            return html.escape(name)
        base, sub = math.group(1), math.group(2)
        return f"{html.escape(_GREEK.get(base, base))}<SUB>{html.escape(sub)}</SUB>"

    def text(self, text: str) -> str:
        return html.escape(text) if self.html else text

    def label(self, fragment: str) -> str:
        """Wrap a fragment: HTML-like labels are ``<...>`` in DOT."""
        return f"<{fragment}>" if self.html else fragment

    def boxed(self, fragment: str) -> str:
        """An edge label on a white ground: graphviz may place an edge label across
        a plate's border, and the ground keeps the text legible there."""
        if not self.html:
            fragment = html.escape(fragment)
        return (f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1" BGCOLOR="white">'
                f"<TR><TD>{fragment}</TD></TR></TABLE>>")

    def lines(self, first: str, second: str) -> str:
        """Two lines, the second in italics (cluster labels)."""
        if self.html:
            return f"{first}<BR/><I>{second}</I>"
        return f"{first}\\n{second}"


def _number(value: float) -> str:
    return f"{value:.3g}"


def _coefficient(vals: np.ndarray, scale: Param | None, style: _Style) -> str | None:
    """A term's coefficient as text: None when it varies by entry, "" when it is 1."""
    if vals.size == 0 or not np.all(vals == vals[0]):
        return None
    c = float(vals[0])
    if scale is None:
        return "" if c == 1 else style.text(_number(c))
    scale_name = style.name(scale.name)
    if c == 1:
        return scale_name
    return f"{style.text(_number(c))}·{scale_name}" if style.html else f"{_number(c)}*{scale_name}"


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
    if isinstance(src, Param) or src.plate is None:
        return ""  # a scalar broadcast, or a parameter (drawn outside the boxes)
    if rows.size and np.bincount(rows, minlength=target.size).max() > 1:
        return "W"  # a design matrix: several source entries per target entry
    if target.plate is None:
        return f"[{src.plate.name}={int(cols[0])}]" if rows.size == 1 else "W"
    if src.plate is target.plate:
        return "" if np.array_equal(rows, cols) else f"[{src.plate.name}]"
    if src.plate in _ancestors(target.plate):
        nest = _nesting_map(target.plate, src.plate)
        if nest is None or np.array_equal(cols, nest[rows]):
            return ""
    return f"[{src.plate.name}]"


def _join(parts: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(p for p in parts if p))


# -------------------------------------------------------------- family view


def _node_attrs(kind: str, observed: str | None) -> dict[str, str]:
    """Shape attributes of a vertex; ``observed`` is None, "all" or "some"."""
    if kind == "param":
        return {"shape": "plaintext", "margin": "0.02"}
    attrs = {"shape": "ellipse"}
    styles = []
    if kind in ("deterministic", "partly deterministic"):
        attrs["peripheries"] = "2"
        if kind == "partly deterministic":
            styles.append("dashed")
    if observed is not None:
        styles.append("filled")
        attrs["fillcolor"] = OBSERVED_FILL if observed == "all" else PARTLY_OBSERVED_FILL
    if styles:
        attrs["style"] = ",".join(styles)
    return attrs


def _param_label(param: Param, style: _Style) -> str:
    size = "" if param.is_scalar else style.text(f" ({param.size})")
    return style.label(f"● {style.name(param.name)}{size}" if style.html else f"● {param.name}{size}")


def _new_digraph(gv, model: ModelSpec, rankdir: str):
    dot = gv.Digraph(name=gv.nohtml(model.name))  # a name like "<a>" is not HTML
    dot.attr(rankdir=rankdir, fontname=FONT, fontsize="13", nodesep="0.4", ranksep="0.5",
             newrank="true", labelloc="t", label=f"<{html.escape(model.name)}>")
    dot.attr("node", fontname=FONT, fontsize="12", height="0.4", margin="0.06,0.03")
    dot.attr("edge", fontname=FONT, fontsize="10", fontcolor="gray25", arrowsize="0.7")
    return dot


def _plate_children(model: ModelSpec) -> dict[str | None, list[Plate]]:
    children: dict[str | None, list[Plate]] = {}
    for plate in model.plates.values():
        children.setdefault(None if plate.within is None else plate.within.name, []).append(plate)
    return children


def _add_clusters(dot, model: ModelSpec, members: dict[str | None, list[tuple[str, dict]]], style: _Style) -> None:
    """Add vertices (``members[plate name]``: (id, attrs)) in nested plate clusters."""
    children = _plate_children(model)
    crossings = plate_crossings(model)

    def occupied(plate: Plate) -> bool:
        return bool(members.get(plate.name)) or any(occupied(c) for c in children.get(plate.name, []))

    def add(graph, plate: Plate) -> None:
        with graph.subgraph(name=f"cluster_{plate.name}") as sub:
            head = style.text(f"{plate.name} ({plate.size})")
            if plate.name in crossings:
                head = style.lines(head, style.text("crossed: " + " × ".join(crossings[plate.name])))
            sub.attr(label=style.label(head), labeljust="r", labelloc="b", style="rounded",
                     color="gray40", fontsize="11", margin="10")
            for vid, attrs in members.get(plate.name, []):
                sub.node(vid, **attrs)
            for child in children.get(plate.name, []):
                if occupied(child):
                    add(sub, child)

    for vid, attrs in members.get(None, []):
        dot.node(vid, **attrs)
    for plate in children.get(None, []):
        if occupied(plate):
            add(dot, plate)


def _draw_families(gv, model: ModelSpec, masks, style: _Style, rankdir: str):
    dot = _new_digraph(gv, model, rankdir)
    members: dict[str | None, list[tuple[str, dict]]] = {None: []}
    for param in model.params.values():
        members[None].append((param.name, dict(_node_attrs("param", None), label=_param_label(param, style),
                                                tooltip=f"{param.name}: parameter, size {param.size}")))
    for node in model.nodes.values():
        mask = masks.get(node.name)
        seen = None if mask is None else ("all" if mask.all() else "some")
        kind = node_kind(node)
        where = "" if node.plate is None else f", {node.size} entries on plate {node.plate.name}"
        attrs = dict(_node_attrs(kind, seen), label=style.label(style.name(node.name)),
                     tooltip=f"{node.name}: {kind}{where}")
        members.setdefault(None if node.plate is None else node.plate.name, []).append((node.name, attrs))
    _add_clusters(dot, model, members, style)

    for node in model.nodes.values():
        mean_terms: dict[str, list] = {}
        scales: list[str] = []
        for t in node.mean.terms:
            mean_terms.setdefault(t.source.name, []).append(t)
            if t.scale is not None:
                scales.append(t.scale.name)
        for source, ts in mean_terms.items():
            coefficient = ""
            if style.edge_labels:
                coefs = {_coefficient(t.vals, t.scale, style) for t in ts}
                if len(coefs) == 1 and None not in coefs:
                    coefficient = coefs.pop()
            index = style.text(_join(_index_label(t, node) for t in ts))
            _edge(dot, source, node.name, style, coefficient=coefficient, index=index)
        for source in dict.fromkeys(scales):
            if source not in mean_terms:
                _edge(dot, source, node.name, style)
        if node.sd.param is not None:
            _edge(dot, node.sd.param.name, node.name, style, coefficient="sd" if style.edge_labels else "",
                  dashed=True)
    return dot


def _edge(dot, source: str, target: str, style: _Style, *, coefficient: str = "", index: str = "",
          dashed: bool = False, **attrs: str) -> None:
    """One edge, labelled ``coefficient index`` (either may be empty)."""
    text = " ".join(p for p in (coefficient, index) if p)
    if text:
        attrs["label"] = style.boxed(text)
    if dashed:
        attrs["style"] = "dashed"
    dot.edge(source, target, **attrs)


# ------------------------------------------------------------ expanded view


def _draw_expanded(gv, model: ModelSpec, masks, style: _Style, max_vertices: int, rankdir: str | None,
                   compiled: CompiledModel | None):
    import networkx as nx

    total = sum(n.size for n in model.nodes.values()) + sum(p.size for p in model.params.values())
    if total > max_vertices:
        raise ModelSpecError(
            f"The expanded drawing of `{model.name}` would have {total} vertices, over max_vertices={max_vertices}. "
            "Draw the plate view instead (render(model) or m.render() without expanded=True), "
            "or raise max_vertices."
        )
    if compiled is None:
        check_acyclic(model)
        compiled = compile_model(model)
    g = expanded_graph(model, compiled, limit=max(total, 1))
    if rankdir is None:
        generations = list(nx.topological_generations(g)) if g.number_of_nodes() else [[]]
        rankdir = "LR" if len(generations) > max(len(gen) for gen in generations) else "TB"
    dot = _new_digraph(gv, model, rankdir)

    names: dict[str, dict[int, str]] = {}
    for vid, data in g.nodes(data=True):
        fam, idx, kind = data["family"], int(data["index"]), data["kind"]
        names.setdefault(fam, {})[idx] = vid
        suffix = vid[len(fam):]  # "[3]" or ""
        if kind == "param":
            frag = f"● {style.name(fam)}{style.text(suffix)}"
            dot.node(vid, label=style.label(frag), tooltip=f"parameter {vid}", **_node_attrs("param", None))
            continue
        mask = masks.get(fam)
        seen = "all" if mask is not None and mask[idx] else None
        plate = model.nodes[fam].plate
        tip = fam if plate is None else f"{fam}[{plate.name}={idx}]"
        dot.node(vid, label=style.label(style.name(fam) + style.text(suffix)), tooltip=f"{tip} ({kind})",
                 **_node_attrs(kind, seen))

    scaled: dict[tuple[str, str], str] = {}
    if style.edge_labels:
        for node in model.nodes.values():
            for t in node.mean.terms:
                if t.scale is not None:
                    for r, c in zip(t.rows.tolist(), t.cols.tolist()):
                        scaled[(names[t.source.name][c], names[node.name][r])] = t.scale.name
    for u, v, data in g.edges(data=True):
        role = data.get("role")
        label = ""
        if style.edge_labels:
            if role == "sd":
                label = "sd"
            elif "coef" in data:
                scale = model.params[scaled[(u, v)]] if (u, v) in scaled else None
                label = _coefficient(np.array([data["coef"]]), scale, style) or ""
        # Parameter edges fan out to many entries: grey, and left out of the
        # ranking, they keep the variables' own structure readable.
        _edge(dot, u, v, style, coefficient=label, dashed=role == "sd",
              **({"color": "gray55", "constraint": "false"} if g.nodes[u]["kind"] == "param" else {}))
    return dot
