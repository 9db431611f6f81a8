"""Draw a model with graphviz: a plate diagram, or one vertex per scalar.

:func:`render` returns a ``graphviz.Digraph``, which Jupyter displays inline,
and writes ``.svg``, ``.png``, ``.pdf`` or ``.dot``/``.gv`` files.
It draws the model's :class:`~gdag.graph.ModelGraph`: the plate view in
:mod:`gdag.render_plates`, the expanded view in :mod:`gdag.render_expanded`,
both with the shapes and label text of :mod:`gdag.render_style`.

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
    * set by ``m.do()``: double box filled orange (dashed: some entries set);
      shifted by ``gdag.shift``: orange outline and ``+δ``.

Edges
    * solid: the source enters the target's mean (a parent, a fixed effect,
      or a parameter scaling a parent's term, as ``rho`` in ``rho * u0``);
    * dashed: a parameter is the target's standard deviation.
    * dashed grey, marked ✕: an edge ``m.do()`` cut.
    * A self-referencing family (an AR chain) has a self-loop labelled with
      the recurrence: ``[t-1]`` for ``x.lag(1)``, ``[self]`` for any other
      pattern of earlier entries.

Plates
    Each plate is a box (a graphviz cluster) labelled ``name (size)`` at its
    bottom right; a family sits in the box of its plate and scalar families
    and parameters sit outside every box.  A plate declared ``within``
    another is drawn inside that plate's box: nesting is drawn only where it
    is declared, never inferred from the indices.  When an edge would run
    through a box's label (a small box whose one family has edges in and
    out), the label becomes a plaintext vertex in the box's bottom row, which
    edges go around (:mod:`gdag.render_labels`, from a first layout).

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
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .compiler import CompiledModel
from .data import node_values
from .errors import DataError, ModelSpecError
from .graph import ModelGraph, graph_of, plate_crossings
from .render_expanded import draw_expanded
from .render_labels import crossed_labels
from .render_plates import draw_plates
from .render_style import Style
from .spec import ModelSpec, Node

if TYPE_CHECKING:  # pragma: no cover
    import graphviz

__all__ = ["render", "plate_crossings", "observed_masks", "FORMATS", "MAX_VERTICES"]

#: File extensions :func:`render` writes, and the graphviz format of each.
FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".gv": "dot"}

#: Default largest expanded drawing (vertices); beyond it graphviz output is unreadable.
MAX_VERTICES = 300

PNG_DPI = 144


def render(
    model: ModelSpec | ModelGraph,
    path: str | os.PathLike | None = None,
    *,
    expanded: bool = False,
    observed: Iterable[str] | Mapping[str, Any] | None = None,
    edge_labels: bool = False,
    subscripts: bool = True,
    max_vertices: int = MAX_VERTICES,
    rankdir: str | None = None,
    compiled: CompiledModel | None = None,
    interventions=(),
    distributions: bool = False,
) -> "graphviz.Digraph":
    """Draw ``model`` as a plate diagram (or one vertex per scalar) with graphviz.

    Parameters
    ----------
    model : ModelSpec, ModelGraph or Model
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
    distributions : bool
        Write each family's distribution under its name, ``~ N(R, 0.5²)``
        (the plate view; see :mod:`gdag.render_distributions`).  Textbook
        figures; wider vertices.
    interventions : tuple of gdag.intervene.Intervention
        What ``m.do()`` set or shifted (``Model.render`` passes
        ``m.interventions``): set families are double boxes filled orange
        (dashed when only some entries are set), the edges into them that do()
        cut are dashed grey and marked ✕, shifted families have an orange
        outline and ``+δ``; in the expanded view, the entries themselves.

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
    graph = graph_of(model)
    masks = observed_masks(graph.spec, observed)
    style = Style(subscripts=subscripts, edge_labels=edge_labels)
    if expanded:
        dot = draw_expanded(gv, graph, masks, style, max_vertices, rankdir, compiled, interventions)
    else:
        dot = draw_plates(gv, graph, masks, style, rankdir or "TB", interventions, None, distributions)
        crossed = crossed_labels(gv, dot) if graph.spec.plates else set()
        if crossed:  # edges ran through these plates' labels: draw them as vertices edges go around
            dot = draw_plates(gv, graph, masks, style, rankdir or "TB", interventions, crossed, distributions)
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
    observed) or a data mapping (entries that are not NaN), whose values are
    checked as a query's data is.  Families with no observed entry are left out.
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
        mask = ~np.isnan(_node_data(node, observed[name]))
        if mask.any():
            masks[name] = mask
    return masks


def _node_data(node: Node, value) -> np.ndarray:
    """``value`` as ``node``'s data, checked as a query's data is (:func:`gdag.data.node_values`)."""
    try:
        length = len(value) if np.ndim(value) == 1 else None
    except (TypeError, ValueError):  # ragged or odd: node_values says what is wrong
        length = None
    if length is not None and length != node.size:
        raise DataError(f"Data for node `{node.name}` has {length} entries; the node has {node.size}.")
    return node_values(node, value)
