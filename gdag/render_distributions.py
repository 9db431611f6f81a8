"""Each family's distribution as text under its name: ``R_i`` over ``~ N(R, 0.5²)`` (``render(distributions=True)``).

The mean is written term by term as the edges label them: a parent with its
coefficient (``0.9·x``, ``ρ·u0``) and the index it gathers with
(``R_i[friend]``), ``W·z`` for a design matrix, parameters by name, and the
constant when it is one number (``c`` when it varies by entry).  The sd is a
number, a parameter (``σ_Y``), or ``σ_k`` when it varies by entry; a
deterministic family reads ``= mean``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .render_style import Style, _number
from .spec import Node


def distribution(node: Node, style: Style, index_label: Callable) -> str:
    """The label fragment ``~ N(mean, sd²)`` (or ``= mean``) of ``node``; ``index_label(term, node)`` as the edges use."""
    mean = _mean(node, style, index_label)
    sd = node.sd
    if sd.param is None and np.all(sd.base == 0):
        return style.text("= ") + mean
    if sd.param is not None:
        base = sd.base[sd.base > 0]
        scale = "" if base.size == 0 or np.all(base == 1) else (
            style.text(_number(float(base[0])) + "·") if np.all(base == base[0]) else style.text("c·"))
        spread = scale + style.name(sd.param.name)
        spread = f"({spread})" if scale else spread
    elif np.all(sd.base == sd.base[0]):
        spread = style.text(_number(float(sd.base[0])))
    else:
        spread = style.name("sigma_k")
    square = "<SUP>2</SUP>" if style.html else "^2"
    return style.text("~ N(") + mean + style.text(", ") + spread + square + style.text(")")


def _mean(node: Node, style: Style, index_label: Callable) -> str:
    parts = []
    for t in node.mean.terms:
        index = index_label(t, node)
        name = style.name(t.source.name)
        if index == "W":
            parts.append(style.text("W·") + name)
            continue
        coef = style.coefficient(t.vals, t.scale)
        coef = style.text("c·") if coef is None else coef + ("·" if coef else "")
        parts.append(coef + name + style.text(index))
    offset = np.asarray(node.mean.offset)
    if np.any(offset != 0):
        constant = style.text(_number(float(offset[0]))) if np.all(offset == offset[0]) else style.text("c")
        parts.insert(0, constant)
    return style.text(" + ").join(parts) if parts else style.text("0")
