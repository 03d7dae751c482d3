"""Code dependencies of a stage: the import closure, inside ``src/gfm``, of the modules it runs.

Walked in the source's AST, not executed, so lazy imports inside functions count as much as module-level ones
(editing a module a stage imports only on some path still changes what it may compute).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from gfm.pipeline import SRC, stage

__all__ = ["import_closure", "code_deps", "collapsed"]


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(tree: ast.AST, *, module_level: bool):
    """Import statements that can run: all of them, lazy ones inside functions included, or (``module_level``)
    those that run when the module is imported. ``if TYPE_CHECKING:`` blocks never run."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if module_level and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


@cache
def _parse(file: Path, mtime_ns: int) -> ast.Module:
    return ast.parse(file.read_text(), filename=str(file))


@cache
def _module_file(name: str, src: Path) -> Path | None:
    """``gfm.a.b`` -> src/a/b.py or src/a/b/__init__.py (``src`` is the gfm package directory)."""
    parts = name.split(".")[1:]
    base = src.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(name: str, file: Path, src: Path, *, module_level: bool) -> frozenset[str]:
    """The ``gfm`` modules that module ``name`` (source ``file``) imports."""
    return _imports_cached(name, file, file.stat().st_mtime_ns, src, module_level)


def _imports_own_directory(tree: ast.AST) -> bool:
    """Whether a package's ``__init__`` imports every module of its own directory, as a registry that fills itself
    does (``for m in pkgutil.iter_modules(__path__): importlib.import_module(...)``, gfm.forecasters)."""
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "iter_modules"
               and isinstance(node.func.value, ast.Name) and node.func.value.id == "pkgutil"
               and [a.id for a in node.args if isinstance(a, ast.Name)] == ["__path__"] for node in ast.walk(tree))


@cache
def _imports_cached(name: str, file: Path, mtime_ns: int, src: Path, module_level: bool) -> frozenset[str]:
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    if file.name == "__init__.py" and _imports_own_directory(_parse(file, mtime_ns)):
        found.update(f"{name}.{p.name.removesuffix('.py')}" for p in file.parent.iterdir()
                     if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file())
    for node in _import_nodes(_parse(file, mtime_ns), module_level=module_level):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[:len(anchor) - node.level + 1]
            base = ".".join(anchor + ([node.module] if node.module else []))
        # `from pkg import x`: x is a submodule or an attribute of pkg. Only an attribute needs pkg whole (it may
        # come from pkg's lazy __getattr__); for submodules pkg runs as their parent (its module-level imports)
        subs = [f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}", src)]
        found.update(subs)
        if len(subs) < len(node.names):
            found.add(base)
    return frozenset(m for m in found if (m == "gfm" or m.startswith("gfm.")) and _module_file(m, src))


def import_closure(modules: tuple[str, ...] | list[str], src: str | Path = SRC) -> list[Path]:
    """Source files of ``modules`` and of every ``gfm`` module they import, directly or not, lazy imports
    inside functions included (walked in the AST, not executed).

    A package entered only as the parent of an imported module contributes its module-level imports (what
    importing it runs), not the lazy ones of its functions (``gfm.__getattr__``'s)."""
    src = Path(src)
    full: set[str] = set()
    parents: set[str] = set()
    todo = [(m, False) for m in modules]
    while todo:
        name, module_level = todo.pop()
        seen = parents if module_level else full
        if name in full or name in seen:
            continue
        file = _module_file(name, src)
        if file is None:
            raise FileNotFoundError(f"{name}: no source under {src} (the stage table names a module that is gone)")
        seen.add(name)
        todo += [(p, True) for p in _parents(name)]
        todo += [(m, False) for m in _imports(name, file, src, module_level=module_level)]
    return sorted({_module_file(m, src) for m in full | parents})


def code_deps(name: str, src: str | Path = SRC) -> list[str]:
    """The code dependencies of stage ``name``: its import closure, as paths like ``src/gfm/x.py``."""
    src = Path(src)
    return [f"{SRC}/{f.relative_to(src).as_posix()}" for f in import_closure(stage(name).modules, src)]


def collapsed(deps: list[str], src: str | Path = SRC) -> list[str]:
    """``deps`` (from :func:`code_deps`) with every subpackage they hold whole written as its directory.

    Fewer, larger deps keep dvc.lock small (DVC parses it, and checks each dep, on every ``dvc status``). A
    directory is used only when each file in it (``__pycache__`` aside, which .dvcignore leaves out) is a
    dep, so the directory's hash changes exactly when one of the deps does."""
    src = Path(src)
    out = set(deps)
    subpackages = sorted({p.parent for p in src.rglob("__init__.py") if p.parent != src},
                         key=lambda p: len(p.parts))
    for pkg in subpackages:
        files = [f for f in pkg.rglob("*") if f.is_file() and "__pycache__" not in f.relative_to(pkg).parts]
        names = {f"{SRC}/{f.relative_to(src).as_posix()}" for f in files}
        if names and names <= set(deps):
            name = f"{SRC}/{pkg.relative_to(src).as_posix()}"
            if not any(name.startswith(d + "/") for d in out):
                out = {d for d in out if not d.startswith(name + "/")} | {name}
    return sorted(out)
