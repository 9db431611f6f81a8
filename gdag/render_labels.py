"""Plate labels that edges run through, found in a first layout and moved beside the plate's contents.

A plate's label sits at the bottom right of its box.  When a small box holds
one node with edges in and out (an app within its publisher, feeding the
installs), the label spans the box's bottom and the outgoing edges cross it.
:func:`crossed_labels` lays the drawing out once (graphviz's JSON output) and
returns the plates whose label box an edge passes through; the plate view is
then drawn again with those labels as plaintext vertices in the box's bottom
row (``plate_label_<plate>``), which graphviz routes edges around.
"""

from __future__ import annotations

import json

import numpy as np

LABEL_PREFIX = "plate_label_"


def crossed_labels(gv, dot) -> dict[str, str]:
    """Plates whose label an edge of ``dot`` crosses -> the lowest vertex in their box (the label's row).

    Empty when graphviz cannot lay the drawing out (then nothing moves).
    """
    try:
        layout = json.loads(dot.pipe(format="json"))
    except (gv.ExecutableNotFound, gv.backend.CalledProcessError, ValueError):
        return {}
    objects = layout.get("objects", ())
    boxes, lowest = {}, {}
    for obj in objects:
        name = obj.get("name", "")
        if name.startswith("cluster_") and "lp" in obj and obj.get("nodes"):
            x, y = (float(v) for v in obj["lp"].split(","))
            w, h = 72 * float(obj.get("lwidth", 0)) / 2 + 2, 72 * float(obj.get("lheight", 0)) / 2 + 1
            plate = name[len("cluster_"):]
            boxes[plate] = (x - w, x + w, y - h, y + h)
            below = min(obj["nodes"], key=lambda i: float(objects[i]["pos"].split(",")[1]))
            lowest[plate] = objects[below]["name"]
    crossed = {}
    for edge in layout.get("edges", ()):
        points = _spline_points(edge)
        for plate, (x0, x1, y0, y1) in boxes.items():
            if points.size and np.any((points[:, 0] > x0) & (points[:, 0] < x1) &
                                      (points[:, 1] > y0) & (points[:, 1] < y1)):
                crossed[plate] = lowest[plate]
    return crossed


def _spline_points(edge) -> np.ndarray:
    """Points along an edge's drawn cubic Bezier pieces (20 per piece)."""
    out = []
    for op in edge.get("_draw_", ()):
        if op.get("op") not in ("b", "B"):
            continue
        ctrl = np.asarray(op["points"], dtype=float)
        t = np.linspace(0.0, 1.0, 20)[:, None]
        for i in range(0, ctrl.shape[0] - 3, 3):
            p0, p1, p2, p3 = ctrl[i: i + 4]
            out.append((1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3)
    return np.concatenate(out) if out else np.zeros((0, 2))


def add_label_vertex(sub, plate_name: str, label: str) -> None:
    """``label`` as a plaintext vertex in the plate's box (:func:`rank_label_vertices` puts it in the bottom row)."""
    sub.attr(label="")  # else the box would show the drawing's own title
    sub.node(LABEL_PREFIX + plate_name, label=label, shape="plaintext", fontsize="11", margin="0.02",
             tooltip=f"plate {plate_name}")


def rank_label_vertices(dot, anchors: dict[str, str]) -> None:
    """Each label vertex in the same row as its plate's lowest vertex (``anchors``: plate -> vertex id)."""
    for plate, anchor in anchors.items():
        with dot.subgraph() as row:
            row.attr(rank="same")
            row.node(anchor)
            row.node(LABEL_PREFIX + plate)
