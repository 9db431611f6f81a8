"""The package's layout: imports flow one way between gdag's modules, and stay at module level.

Read from the source with :mod:`ast` (nothing is imported), so a cycle or a
hidden import inside a function fails here with the modules named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "gdag"
# Imported inside functions on purpose: optional, or slow to import and needed by few calls.
LAZY_ALLOWED = {"graphviz", "scipy.optimize", "inspect", "formulaic", "formulaic.errors", "arviz", "xarray", "tqdm",
                "dask", "dask.dataframe", "distributed"}  # optional extras and slow imports, loaded on first use
MAX_LINES = 420


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """Absolute gdag module names an ``from ... import`` statement reaches."""
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    if not base.startswith("gdag"):
        return [base]
    names = [f"{base}.{alias.name}" for alias in node.names]
    return [n if (PACKAGE.parent / n.replace(".", "/")).with_suffix(".py").exists()
            or (PACKAGE.parent / n.replace(".", "/")).is_dir() else base for n in names]


def imports(path: Path):
    """``(target, at_module_level)`` for every import in one file (``TYPE_CHECKING`` blocks skipped)."""
    module, is_package = module_name(path), path.name == "__init__.py"
    found = []

    def visit(node, in_function: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, not in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.extend((target, not in_function) for target in resolve(module, is_package, node))
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def import_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        graph.add_node(source)
        for target, _ in imports(path):
            if target.startswith("gdag") and target != source and target != "gdag":
                graph.add_edge(source, target)
    return graph


def test_imports_between_gdag_modules_have_no_cycle():
    graph = import_graph()
    # a package's __init__ only re-exports, so it may import its own modules
    graph.remove_edges_from([(s, t) for s, t in list(graph.edges) if t.startswith(s + ".")])
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles[:5])


def test_imports_sit_at_module_level_except_optional_ones():
    lazy = sorted(f"{module_name(path)} imports {target}"
                  for path in PACKAGE.rglob("*.py")
                  for target, top in imports(path)
                  if not top and target not in LAZY_ALLOWED)
    assert not lazy, "imports inside functions: " + "; ".join(lazy)


def test_modules_stay_small():
    long = sorted(f"{module_name(p)} ({n} lines)" for p in PACKAGE.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > MAX_LINES)
    assert not long, "modules over the limit: " + ", ".join(long)
