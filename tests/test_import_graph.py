"""The import graph of manipex, read from the source's AST (issue 27): no cycles, function-local
imports included (they hide cycles rather than remove them); ``metrics/`` a leaf that imports
nothing above it; ``experiments/`` and ``cli.py`` import no private (``_name``) names of other
modules. Read from the files, not from ``sys.modules``, so it cannot depend on what ran before."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

import manipex

ROOT = Path(manipex.__file__).parent

#: what ``metrics/`` may import: the package's validation helpers (its checks) and itself
METRICS_MAY_IMPORT = ("manipex.metrics", "manipex._validation")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: Dict[str, Path] = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _lazy_aliases(tree: ast.Module) -> Set[int]:
    """Nodes inside a module-level ``__getattr__`` (PEP 562): the lazy aliases of names that moved
    to another module. They run only when a user asks for the old name, never at import, so they
    add no edge a cycle could go through."""
    return {id(node) for top in tree.body if isinstance(top, ast.FunctionDef) and top.name == "__getattr__"
            for node in ast.walk(top)}


def imports() -> List[Tuple[str, str, str, int]]:
    """Every import of a manipex module by a manipex module: ``(importer, imported module, name,
    line)``; ``name`` is the imported name for ``from m import name`` ('' for ``import m``)."""
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        lazy = _lazy_aliases(tree)
        for node in ast.walk(tree):
            if id(node) in lazy:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != "manipex":
                    continue
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    found.append((module, sub if sub in MODULES else source, alias.name, node.lineno))
            elif isinstance(node, ast.Import):
                found += [(module, a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "manipex"]
    return [(a, _existing(b), name, line) for a, b, name, line in found]


def _existing(module: str) -> str:
    while module not in MODULES and "." in module:
        module = module.rsplit(".", 1)[0]
    return module


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan), iteratively."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _graph() -> Dict[str, Set[str]]:
    edges: Dict[str, Set[str]] = defaultdict(set)
    for module in MODULES:
        edges[module]
    for importer, imported, _, _ in imports():
        # a package's __init__ re-exports its modules: importing from the package is importing them
        if imported != importer and not importer.startswith(imported + "."):
            edges[importer].add(imported)
        # importing a module of another package first runs that package's __init__
        parts = imported.split(".")
        for k in range(2, len(parts)):
            package = ".".join(parts[:k])
            if package in MODULES and not importer.startswith(package + ".") and package != importer:
                edges[importer].add(package)
    return edges


def test_the_graph_reader_sees_a_cycle_and_a_lazy_alias(tmp_path, monkeypatch):
    """The checks below cannot pass vacuously: the reader finds a planted cycle, and skips only
    what a module-level ``__getattr__`` imports."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("def __getattr__(name):\n    from .x import y\n    return y\n\ndef f():\n    from .z import w\n")
    lazy = _lazy_aliases(tree)
    kinds = [isinstance(n, ast.ImportFrom) and id(n) in lazy for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert kinds == [True, False]
    found = imports()
    assert len(found) > 300 and any(name == "manipulate_input" for _, _, name, _ in found)


def test_there_are_no_import_cycles_function_local_imports_included():
    found = cycles(_graph())
    assert not found, "import cycles (module-level and function-local imports): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_metrics_import_nothing_above_them():
    above = sorted({f"{importer}:{line} imports {imported}" for importer, imported, _, line in imports()
                    if importer.startswith("manipex.metrics") and not imported.startswith(METRICS_MAY_IMPORT)})
    assert not above, "metrics/ is the leaf of pure tensor maths:\n" + "\n".join(above)


@pytest.mark.parametrize("floor", ["manipex.experiments", "manipex.cli"])
def test_experiments_and_the_cli_import_no_private_names_of_other_modules(floor):
    private = sorted({f"{importer}:{line} imports {name} from {imported}" for importer, imported, name, line in imports()
                      if importer.startswith(floor) and name.startswith("_") and not name.startswith("__")
                      and imported != importer})
    assert not private, "\n".join(private)


def test_function_local_imports_of_manipex_say_why_they_are_local():
    """Issue 27: a function-local import of manipex's own modules hides the graph; one remains
    only where it defers something (an optional or heavy dependency, the root package, a name
    that would clash, the command line's commands), with a comment on its line or above its
    block of imports saying so."""
    silent = []
    for module, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        tree = ast.parse(text)
        lazy = _lazy_aliases(tree)
        for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(function):
                if id(node) in lazy or not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                ours = (node.level > 0 if isinstance(node, ast.ImportFrom) else False) or any(
                    (getattr(node, "module", None) or a.name).split(".")[0] == "manipex" for a in node.names)
                above = node.lineno - 2  # the line above the block of imports this one belongs to
                while above > 0 and lines[above].strip().startswith(("from ", "import ", ")")) or (
                        above > 0 and lines[above].startswith(" ") and lines[above].rstrip().endswith(",")):
                    above -= 1
                said = "#" in lines[node.lineno - 1] or lines[above].strip().startswith("#")
                if ours and not said:
                    silent.append(f"{module}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not silent, "function-local imports without a reason:\n" + "\n".join(silent)


def test_names_that_moved_to_the_evaluation_floor_are_still_importable_where_they_were():
    """Issue 27 moved the transfer matrix, evaluate_manipulation and the sanity checks above the
    attacks; code written against their old homes gets the same objects."""
    import manipex.attacks
    import manipex.evaluation
    import manipex.metrics
    import manipex.sanity

    for name in manipex.attacks.MOVED_TO_EVALUATION:
        assert getattr(manipex.attacks, name) is getattr(manipex.evaluation, name)
    for name in manipex.metrics.MOVED_TO_EVALUATION:
        assert getattr(manipex.metrics, name) is getattr(manipex.evaluation, name)
    assert manipex.sanity.model_randomization is manipex.evaluation.model_randomization
    with pytest.raises(AttributeError, match="no attribute 'transfer'"):
        manipex.attacks.transfer  # noqa: B018
