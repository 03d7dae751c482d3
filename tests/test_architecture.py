"""The shape of the package, checked in its source (parsed, never imported): no import loop among gfm's
modules, no private name imported from another module, no module over 400 lines, a package root that holds
only the package face, the command line and the subpackages, and subpackages that import only what their
docstrings allow."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "gfm"
MAX_LINES = 400
# The package face (gfm.record, gfm.open_trajectories, ... and the version) and the command line.
ROOT_FILES = {"__init__.py", "__main__.py", "_version.py", "cli.py", "cli_stages.py", "cli_tools.py"}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its ``__init__.py``)."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ["gfm", *path.relative_to(SRC).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _import_nodes(tree: ast.AST):
    """Every import that can run: at module level and inside functions (a lazy import is as much a dependency,
    only a later one); ``if TYPE_CHECKING:`` blocks never run."""
    stack = [tree]
    while stack:
        for child in ast.iter_child_nodes(stack.pop()):
            if _type_checking(child):
                stack.extend(child.orelse)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            else:
                stack.append(child)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every gfm module ``name`` imports: ``from pkg import sub``
    names the submodule, ``from mod import x`` the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name in modules]
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([node.module] if node.module else []))
        for a in node.names:
            sub = f"{base}.{a.name}"
            if sub in modules:
                found.append((sub, None, node.lineno))
            elif base in modules:
                found.append((base, a.name, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the gfm modules it imports. A module's own packages are left out: importing a submodule runs
    its packages first, so an import of its own package (a registry in its ``__init__``) closes no loop."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = {target for target, _, _ in _imports(name, path, modules)
                       if target != name and not name.startswith(target + ".")}
    return graph


def _loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
                    loops.append(sorted(component))
    return loops


def test_the_loop_finder_finds_a_loop_and_only_a_loop():
    assert _loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _loops({"a": {"b"}, "b": set()}) == []


def test_no_import_loop_among_modules():
    loops = _loops(_graph())
    assert not loops, "import loops (each a set of modules that import one another, lazily or not): " + \
        "; ".join(" <-> ".join(loop) for loop in loops)


def test_no_private_name_is_imported_from_another_module():
    modules = _modules()
    found = []
    for name, path in modules.items():
        for target, imported, line in _imports(name, path, modules):
            if imported and imported.startswith("_") and not imported.startswith("__") and target != name:
                found.append(f"{path.relative_to(SRC.parent)}:{line}: from {target} import {imported}")
    assert not found, "private names imported across modules (make the name public, or move the code that " \
        "needs it beside it):\n" + "\n".join(found)


def test_no_module_is_over_400_lines():
    long = [f"{p.relative_to(SRC.parent)}: {n} lines" for p in sorted(SRC.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines (split them by job):\n" + "\n".join(long)


def test_the_package_root_holds_the_face_the_command_line_and_subpackages():
    stray = sorted(p.name for p in SRC.iterdir() if p.is_file() and p.name not in ROOT_FILES)
    stray += sorted(f"{p.name}/" for p in SRC.iterdir()
                    if p.is_dir() and p.name != "__pycache__" and not (p / "__init__.py").is_file())
    assert not stray, f"at the root of {SRC.relative_to(SRC.parents[1])}, which holds only {sorted(ROOT_FILES)} " \
        f"and subpackages: {stray}"


def _allowed(doc: str) -> set[str] | None:
    """The subpackages a package docstring allows: the ``gfm.<name>`` in its clause "May import: ..." up to the
    clause's full stop (None without one)."""
    found = re.search(r"May import:(.*?)\.(?:\s|$)", doc, re.S)
    return None if found is None else set(re.findall(r"\bgfm\.(\w+)", found.group(1)))


def test_every_subpackage_says_what_lives_there_and_imports_only_what_it_allows():
    docs = {p.parent.name: ast.get_docstring(ast.parse(p.read_text())) or "" for p in SRC.glob("*/__init__.py")}
    allowed = {name: _allowed(doc) for name, doc in docs.items()}
    silent = sorted(name for name, doc in docs.items() if allowed[name] is None)
    assert not silent, f"subpackages whose __init__.py docstring does not say what lives there and what they may " \
        f"import (a clause 'May import: gfm.x, gfm.y.'): {silent}"
    modules = _modules()
    wrong = set()
    for name, path in modules.items():
        own = name.split(".")[1] if name.count(".") else None
        if own not in allowed:  # the package root: the face and the command line import what they need
            continue
        for target, _, line in _imports(name, path, modules):
            other = target.split(".")[1] if target.count(".") else None
            if target != "gfm._version" and other != own and other not in allowed[own]:
                wrong.add(f"{path.relative_to(SRC.parent)}:{line}: imports {target}")
    assert not wrong, "imports that the importing subpackage's docstring does not allow ('May import: ...'):\n" + \
        "\n".join(sorted(wrong))
