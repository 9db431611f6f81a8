"""Tests of gdag.render: plate diagrams and expanded drawings.

Structure is checked on the DOT source (clusters, nesting, shapes, fills,
labels); files are checked by their signatures and by parsing the SVG.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import gdag
from gdag.graph import build_graph
from gdag.render import observed_masks, plate_crossings, render

graphviz = pytest.importorskip("graphviz")


def _has_dot() -> bool:
    try:
        graphviz.Digraph().pipe(format="svg")
    except graphviz.ExecutableNotFound:
        return False
    return True


needs_dot = pytest.mark.skipif(not _has_dot(), reason="the Graphviz `dot` program is not installed")


# --------------------------------------------------------------------------
# Models (small versions of the seed's three models and some features)
# --------------------------------------------------------------------------


def romcom() -> gdag.Model:
    m = gdag.Model("romcom")
    friend = m.plate("friend", 5)
    rating = m.plate("rating", 12)
    who = np.repeat(np.arange(5), [3, 3, 2, 2, 2])
    R = m.normal("R", mean=3.0, sd=1.0)
    R_i = m.normal("R_i", mean=R, sd=0.5, plate=friend)
    m.normal("X", mean=R_i[who], sd=0.8, plate=rating)
    return m


def students() -> gdag.Model:
    """Students in classrooms in schools in districts in states, crossed with ses."""
    rng = np.random.default_rng(0)
    m = gdag.Model("students")
    state = m.plate("state", 2)
    district = m.plate("district", 4, within=state, index=np.repeat(np.arange(2), 2))
    school = m.plate("school", 8, within=district, index=np.repeat(np.arange(4), 2))
    classroom = m.plate("classroom", 16, within=school, index=np.repeat(np.arange(8), 2))
    student = m.plate("student", 64, within=classroom, index=np.repeat(np.arange(16), 4))
    ses = m.plate("ses", 3)
    mu = m.normal("mu", mean=0.0, sd=10.0)
    S = m.normal("S", mean=mu, sd=1.0, plate=state)
    D = m.normal("D", mean=S[district.index], sd=1.0, plate=district)
    H = m.normal("H", mean=D[school.index], sd=1.0, plate=school)
    C = m.normal("C", mean=H[classroom.index], sd=1.0, plate=classroom)
    B = m.normal("B", mean=0.0, sd=1.0, plate=ses)
    m.normal("Y", mean=C[student.index] + B[rng.integers(0, 3, 64)], sd=2.0, plate=student)
    return m


def apps() -> gdag.Model:
    """Publishers > apps, devices, and installs crossing apps with devices."""
    rng = np.random.default_rng(1)
    m = gdag.Model("apps")
    publisher = m.plate("publisher", 4)
    app_pub = rng.integers(0, 4, 10)
    app = m.plate("app", 10, within=publisher, index=app_pub)
    device = m.plate("device", 6)
    install = m.plate("install", 40)
    sigma_Y = m.param("sigma_Y", positive=True)
    P = m.normal("P", mean=0.0, sd=1.0)
    P_i = m.normal("P_i", mean=P, sd=1.0, plate=publisher)
    A_j = m.normal("A_j", mean=P_i[app_pub], sd=1.0, plate=app)
    D_k = m.normal("D_k", mean=0.0, sd=1.0, plate=device)
    m.normal("Y_jk", mean=A_j[rng.integers(0, 10, 40)] + D_k[rng.integers(0, 6, 40)], sd=sigma_Y, plate=install)
    return m


def features() -> gdag.Model:
    """An AR chain, a parameter, deterministic nodes and a scale parameter."""
    m = gdag.Model("features")
    t = m.plate("time", 50)
    g = m.plate("group", 4)
    beta = m.param("beta")
    rho = m.param("rho")
    m.normal("x", mean=lambda x: 0.9 * x.lag(1), sd=1.0, plate=t)
    m.normal("z", mean=beta, sd=0)
    u0 = m.normal("u0", mean=0.0, sd=1.0, plate=g)
    m.normal("u1", mean=rho * u0, sd=1.0, plate=g)
    m.normal("w", mean=2.0 * u0, sd=np.array([0.0, 1.0, 1.0, 1.0]), plate=g)
    return m


def vertex(source: str, name: str) -> str:
    """The DOT statement declaring vertex ``name``."""
    match = re.search(rf"^\s*\"?{re.escape(name)}\"? \[(.*)\]$", source, re.M)
    assert match, f"no vertex {name} in\n{source}"
    return match.group(1)


def clusters(source: str) -> list[tuple[int, str]]:
    """(depth, plate) for each cluster, in order, from the DOT indentation."""
    return [(len(m.group(1)), m.group(2)) for m in re.finditer(r"^(\t+)subgraph cluster_(\w+) \{", source, re.M)]


# --------------------------------------------------------------------------
# Plate view
# --------------------------------------------------------------------------


def test_plates_are_clusters_labelled_with_name_and_size():
    src = render(romcom()).source
    assert [p for _, p in clusters(src)] == ["friend", "rating"]
    assert "friend (5)" in src and "rating (12)" in src
    # R is a scalar node: outside every box.
    head = src[: src.index("subgraph cluster_friend")]
    assert re.search(r"^\tR \[", head, re.M)


def test_nested_plates_are_nested_clusters():
    src = render(students()).source
    found = clusters(src)
    assert found == [(1, "state"), (2, "district"), (3, "school"), (4, "classroom"), (5, "student"), (1, "ses")]
    # Each family inside its own plate's box.
    block = src[src.index("subgraph cluster_classroom") : src.index("subgraph cluster_student")]
    assert re.search(r"^\t+C \[", block, re.M)


def test_nesting_follows_declarations_not_indices():
    # rating gathers from friend but is not declared within it: its own box.
    src = render(romcom()).source
    assert clusters(src) == [(1, "friend"), (1, "rating")]
    assert "[friend]" in src


def test_nested_gather_needs_no_index_label():
    src = render(students()).source
    c_to_y = re.search(r"^\s*C -> Y(.*)$", src, re.M).group(1)
    assert "label" not in c_to_y
    assert re.search(r"^\s*B -> Y .*\[ses\]", src, re.M)


def test_crossed_plate_label_and_gather_labels():
    m = apps()
    assert plate_crossings(m) == {"install": ("app", "device")}
    src = render(m).source
    assert "install (40)" in src and "crossed: app × device" in src
    assert re.search(r"^\s*A_j -> Y_jk .*\[app\]", src, re.M)
    assert re.search(r"^\s*D_k -> Y_jk .*\[device\]", src, re.M)
    # app is nested in publisher, install is its own box at the top level.
    assert clusters(src) == [(1, "publisher"), (2, "app"), (1, "device"), (1, "install")]


def test_crossing_counts_the_declared_parent_plate():
    m = students()
    assert plate_crossings(m) == {"student": ("classroom", "ses")}
    assert "crossed: classroom × ses" in render(m).source


def test_gathers_along_nesting_are_not_crossing():
    m = gdag.Model("skip")
    a = m.plate("a", 2)
    b = m.plate("b", 4, within=a, index=np.array([0, 0, 1, 1]))
    c = m.plate("c", 8)
    A = m.normal("A", plate=a)
    B = m.normal("B", plate=b)
    m.normal("Y", mean=A[np.arange(8) % 2] + B[np.arange(8) % 4], plate=c)
    assert plate_crossings(m) == {}
    assert "crossed" not in render(m).source


def test_observed_nodes_are_filled():
    src = render(romcom(), observed=["X"]).source
    assert "filled" in vertex(src, "X") and "gray70" in vertex(src, "X")
    assert "filled" not in vertex(src, "R_i")


def test_observed_data_mapping_partly_observed_is_light():
    x = np.arange(12.0)
    x[3] = np.nan
    src = render(romcom(), observed={"X": x, "R": 3.0}).source
    assert "gray90" in vertex(src, "X")
    assert "gray70" in vertex(src, "R")
    masks = observed_masks(romcom(), {"X": x, "R_i": np.full(5, np.nan)})
    assert set(masks) == {"X"} and masks["X"].sum() == 11


def test_unknown_observed_names_are_a_data_error():
    with pytest.raises(gdag.DataError, match=r"`Xx` \(did you mean `X`\?\)"):
        render(romcom(), observed=["R", "Xx"])
    with pytest.raises(gdag.DataError, match="`nope`"):
        render(romcom(), observed={"nope": [1.0]})


def test_parameters_cannot_be_observed():
    with pytest.raises(gdag.DataError, match="`beta` is a parameter"):
        render(features(), observed=["beta"])


def test_observed_data_of_the_wrong_length():
    with pytest.raises(gdag.DataError, match="`X` has 3 entries; the node has 12"):
        render(romcom(), observed={"X": [1.0, 2.0, 3.0]})


def test_shapes_of_params_and_deterministic_nodes():
    src = render(features()).source
    assert "plaintext" in vertex(src, "beta") and "●" in vertex(src, "beta")
    assert "peripheries=2" in vertex(src, "z") and "dashed" not in vertex(src, "z")
    assert "peripheries=2" in vertex(src, "w") and "dashed" in vertex(src, "w")  # partly deterministic
    assert "peripheries" not in vertex(src, "x") and "shape=ellipse" in vertex(src, "x")


def test_self_loop_for_ar_chain():
    src = render(features()).source
    assert re.search(r"^\s*x -> x .*\[t-1\]", src, re.M)


def test_sd_parameters_draw_dashed_edges():
    src = render(apps()).source
    assert re.search(r"^\s*sigma_Y -> Y_jk \[style=dashed\]", src, re.M)


def test_edge_labels_show_constant_coefficients_and_scale_params():
    plain = render(features()).source
    assert not re.search(r"^\s*u1 -> w.*label", plain, re.M)
    src = render(features(), edge_labels=True).source
    assert re.search(r"^\s*u0 -> w .*>2<", src, re.M)
    assert re.search(r"^\s*u0 -> u1 .*>ρ<", src, re.M)
    assert re.search(r"^\s*x -> x .*0\.9 \[t-1\]", src, re.M)
    assert re.search(r"^\s*rho -> u1", src, re.M)
    # coefficients varying by entry are not shown
    m = gdag.Model("vary")
    g = m.plate("g", 3)
    u = m.normal("u", plate=g)
    m.normal("v", mean=np.array([1.0, 2.0, 3.0]) * u, plate=g)
    assert "label" not in re.search(r"^\s*u -> v(.*)$", render(m, edge_labels=True).source, re.M).group(1)


def test_subscripts_in_html_labels_and_ids_stay_names():
    src = render(apps()).source
    assert "A_j [" in src and "label=<A<SUB>j</SUB>>" in src
    assert "σ<SUB>Y</SUB>" in src
    verbatim = render(apps(), subscripts=False).source
    assert "<SUB>" not in verbatim and "label=A_j" in verbatim


def test_hierarchies_are_drawn_top_to_bottom():
    assert "rankdir=TB" in render(students()).source
    assert "rankdir=LR" in render(students(), rankdir="LR").source
    with pytest.raises(gdag.ModelSpecError, match="rankdir"):
        render(students(), rankdir="sideways")


def test_a_model_graph_draws_as_its_model():
    for model in (romcom, students, apps, features):
        m = model()
        graph = build_graph(m.spec())
        assert render(graph, edge_labels=True).source == render(m, edge_labels=True).source
        assert plate_crossings(graph) == plate_crossings(m)
    assert dict(build_graph(apps().spec()).crossings) == {"install": ("app", "device")}
    assert [p.name for p in build_graph(students().spec()).nested[None]] == ["state", "ses"]


def test_model_render_method_and_jupyter_display():
    dot = romcom().render()
    assert isinstance(dot, graphviz.Digraph)
    assert hasattr(dot, "_repr_mimebundle_") or hasattr(dot, "_repr_svg_")


# --------------------------------------------------------------------------
# Expanded view
# --------------------------------------------------------------------------


def test_expanded_has_one_vertex_per_scalar():
    x = np.arange(12.0)
    x[4] = np.nan
    src = render(romcom(), expanded=True, observed={"X": x}).source
    assert '"R_i[3]" [' in src and "R<SUB>i</SUB>[3]" in src
    assert "filled" in vertex(src, "X[3]") and "filled" not in vertex(src, "X[4]")
    assert len(re.findall(r"^\s*\"?R_i\[\d\]\"? \[", src, re.M)) == 5
    assert len(re.findall(r"->", src)) == 5 + 12


def test_expanded_labels_and_params():
    src = render(features(), expanded=True, edge_labels=True, max_vertices=100).source
    assert re.search(r'^\s*"x\[0\]" -> "x\[1\]" .*>0\.9<', src, re.M)
    assert re.search(r'^\s*"u0\[2\]" -> "u1\[2\]" .*>ρ<', src, re.M)
    assert "peripheries=2" in vertex(src, "w[0]") and "peripheries" not in vertex(src, "w[1]")
    assert "plaintext" in vertex(src, "beta")


def test_expanded_refuses_large_models():
    with pytest.raises(gdag.ModelSpecError, match=r"would have 65 vertices, over max_vertices=50.*plate view"):
        render(features(), expanded=True, max_vertices=50)
    m = gdag.Model("big")
    m.normal("x", plate=m.plate("p", 301))
    with pytest.raises(gdag.ModelSpecError, match="max_vertices=300"):
        render(m, expanded=True)


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


@needs_dot
@pytest.mark.parametrize("model", [romcom, students, apps, features])
def test_every_format_is_written(tmp_path, model):
    m = model()
    render(m, tmp_path / "m.png", observed=None)
    assert (tmp_path / "m.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    m.render(str(tmp_path / "m.svg"))
    root = ET.parse(tmp_path / "m.svg").getroot()
    assert root.tag.endswith("svg")
    render(m, tmp_path / "m.pdf")
    assert (tmp_path / "m.pdf").read_bytes().startswith(b"%PDF")
    for ext in ("dot", "gv"):
        dot = render(m, tmp_path / f"m.{ext}")
        assert (tmp_path / f"m.{ext}").read_text(encoding="utf-8") == dot.source
    # only the files asked for: graphviz's own render() would add more
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dot", "m.gv", "m.pdf", "m.png", "m.svg"]


@needs_dot
def test_expanded_files(tmp_path):
    render(romcom(), tmp_path / "e.svg", expanded=True, edge_labels=True)
    ET.parse(tmp_path / "e.svg")


def test_unknown_extension(tmp_path):
    with pytest.raises(gdag.ModelSpecError, match=r"'\.jpeg'.*\.svg, \.png, \.pdf, \.dot, \.gv"):
        render(romcom(), tmp_path / "m.jpeg")
    with pytest.raises(gdag.ModelSpecError, match="none"):
        romcom().render(tmp_path / "m")
    assert not list(tmp_path.iterdir())


@needs_dot
def test_plate_labels_that_edges_cross_become_vertices_in_the_bottom_row():
    import json

    from gdag.render_labels import LABEL_PREFIX, crossed_labels

    m = gdag.Model("app_reliability")  # the example's shape: one node per small box, edges in and out
    pub = np.repeat(np.arange(4), 5)
    publisher = m.plate("publisher", 4)
    app = m.plate("app", 20, within=publisher, index=pub)
    device, install = m.plate("device", 5), m.plate("install", 60)
    P, D = m.normal("P"), m.normal("D")
    P_i = m.normal("P_i", mean=P, sd=0.5, plate=publisher)
    A_j = m.normal("A_j", mean=P_i[pub], sd=0.3, plate=app)
    D_k = m.normal("D_k", mean=D, sd=0.4, plate=device)
    rng = np.random.default_rng(0)
    m.normal("Y", mean=A_j[rng.integers(0, 20, 60)] + D_k[rng.integers(0, 5, 60)], sd=0.8, plate=install)
    dot = m.render(observed=["Y"])
    moved = set(re.findall(rf"{LABEL_PREFIX}(\w+) \[", dot.source))
    assert {"app", "device"} <= moved and "install" not in moved
    assert crossed_labels(graphviz, dot) == {}  # drawn again, no edge runs through a label
    layout = json.loads(dot.pipe(format="json"))
    y = {o["name"]: float(o["pos"].split(",")[1]) for o in layout["objects"] if "pos" in o}
    assert y[LABEL_PREFIX + "app"] == y["A_j"] and y[LABEL_PREFIX + "device"] == y["D_k"]
    assert LABEL_PREFIX not in students().render().source  # labels nothing crosses stay at the bottom right


def test_distributions_under_the_names():
    src = render(romcom(), distributions=True).source
    assert 'FONT POINT-SIZE="10">~ N(3, 1<SUP>2</SUP>)' in vertex(src, "R")
    assert "~ N(R, 0.5<SUP>2</SUP>)" in vertex(src, "R_i")
    assert "~ N(R<SUB>i</SUB>[friend], 0.8<SUP>2</SUP>)" in vertex(src, "X")
    m = gdag.Model("by_entry")
    m.normal("v", mean=np.array([1.0, 2.0]), sd=np.array([1.0, 2.0]), plate=m.plate("p", 2))
    assert "~ N(c, σ<SUB>k</SUB><SUP>2</SUP>)" in vertex(render(m, distributions=True).source, "v")  # by entry
    apps_src = render(apps(), distributions=True, subscripts=False).source
    assert "~ N(A_j[app] + D_k[device], sigma_Y^2)" in apps_src and "~ N(P_i, 1^2)" in apps_src
    feat = render(features(), distributions=True, subscripts=False).source
    assert "x\\n~ N(0.9·x[t-1], 1^2)" in feat and "z\\n= beta" in feat and "u1\\n~ N(rho·u0, 1^2)" in feat
    assert "~ N(" not in render(romcom()).source  # off by default
