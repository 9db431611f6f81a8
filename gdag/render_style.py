"""How drawings look: fonts, fills, vertex shapes, edge styles and the text of labels.

Both views of :mod:`gdag.render` (``render_plates``, ``render_expanded``)
draw through these helpers, so a family looks the same in either.  The
conventions are listed in :mod:`gdag.render` and ``docs/rendering.md``.
"""

from __future__ import annotations

import html
import re

import numpy as np

from .spec import ModelSpec, Param

FONT = "Helvetica,Arial,sans-serif"
OBSERVED_FILL = "gray70"
PARTLY_OBSERVED_FILL = "gray90"
INTERVENED_FILL = "#f9d9b4"  # entries set by m.do(): a double box in this fill
INTERVENED_LINE = "darkorange3"  # a shifted family's outline, and the colour of the marks of do()

GREEK = {
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
_MATH_NAME = re.compile(r"^((?:[A-Za-z][0-9]*)|(?:" + "|".join(GREEK) + r"))_([A-Za-z0-9]{1,4})$")


class Style:
    """Label text shared by both views: HTML-like maths labels or verbatim names."""

    def __init__(self, subscripts: bool, edge_labels: bool):
        self.html = subscripts
        self.edge_labels = edge_labels

    def name(self, name: str) -> str:
        """A family or parameter name as a label fragment (``R_i`` -> R<SUB>i</SUB>)."""
        if not self.html:
            return name
        stem = name[:-1] if name.endswith("_") and name[:-1] in GREEK else name  # lambda_ -> lambda
        if stem in GREEK:
            return GREEK[stem]
        math = _MATH_NAME.match(name)
        if math is None:  # a descriptive name such as state_effect: verbatim
            return html.escape(name)
        base, sub = math.group(1), math.group(2)
        return f"{html.escape(GREEK.get(base, base))}<SUB>{html.escape(sub)}</SUB>"

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

    def param_label(self, name: str, suffix: str = "") -> str:
        """A parameter's label: a solid dot before its name, ``● beta``, then ``suffix``."""
        return self.label(f"● {self.name(name)}{self.text(suffix)}")

    def coefficient(self, vals: np.ndarray, scale: Param | None) -> str | None:
        """A term's coefficient as text: None when it varies by entry, "" when it is 1."""
        if vals.size == 0 or not np.all(vals == vals[0]):
            return None
        c = float(vals[0])
        if scale is None:
            return "" if c == 1 else self.text(_number(c))
        scale_name = self.name(scale.name)
        if c == 1:
            return scale_name
        return f"{self.text(_number(c))}·{scale_name}" if self.html else f"{_number(c)}*{scale_name}"


def _number(value: float) -> str:
    return f"{value:.3g}"


def node_attrs(kind: str, observed: str | None) -> dict[str, str]:
    """Shape attributes of a vertex of ``kind``; ``observed`` is None, "all" or "some"."""
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


def intervened_attrs(attrs: dict[str, str], how: str, style: "Style") -> dict[str, str]:
    """``attrs`` of a vertex marked as set by ``m.do()`` (``how``: "set", "partly set") or shifted ("shift")."""
    attrs = dict(attrs)
    if how == "shift":  # keeps its parents and noise: its own shape, an orange outline and "+δ"
        attrs.update(color=INTERVENED_LINE, penwidth="2", xlabel=style.label(style.text("+δ")))
        return attrs
    styles = ["filled"] + (["dashed"] if how == "partly set" else [])
    attrs.update(shape="box", peripheries="2", style=",".join(styles), fillcolor=INTERVENED_FILL,
                 color=INTERVENED_LINE)
    return attrs


def new_digraph(gv, model: ModelSpec, rankdir: str):
    """An empty drawing of ``model`` with gdag's fonts and spacing."""
    # a name like "<a>" is not HTML; a backslash would escape the closing quote (`C:\models\`)
    dot = gv.Digraph(name=gv.nohtml(model.name.replace("\\", "\\\\")))
    dot.attr(rankdir=rankdir, fontname=FONT, fontsize="13", nodesep="0.4", ranksep="0.5",
             newrank="true", labelloc="t", label=f"<{html.escape(model.name)}>")
    dot.attr("node", fontname=FONT, fontsize="12", height="0.4", margin="0.06,0.03")
    dot.attr("edge", fontname=FONT, fontsize="10", fontcolor="gray25", arrowsize="0.7")
    return dot


def add_edge(dot, source: str, target: str, style: Style, *, coefficient: str = "", index: str = "",
             dashed: bool = False, **attrs: str) -> None:
    """One edge, labelled ``coefficient index`` (either may be empty); dashed for an sd."""
    text = " ".join(p for p in (coefficient, index) if p)
    if text:
        attrs["label"] = style.boxed(text)
    if dashed:
        attrs["style"] = "dashed"
    dot.edge(source, target, **attrs)
