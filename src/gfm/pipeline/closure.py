"""Code dependencies of a stage: the import closure, inside ``src/gfm``, of the modules it runs.

Walked in the source's AST, not executed, so lazy imports inside functions count as much as module-level ones
(editing a module a stage imports only on some path still changes what it may compute).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import cache
from pathlib import Path

from gfm.pipeline import SRC, STAGES, stage

__all__ = ["scan", "import_closure", "code_deps", "stage_code", "stage_codes", "collapsed"]


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def _statements(tree: ast.Module, *, module_level: bool):
    """Statements that can run: all of them, those inside functions included, or (``module_level``) those that
    run when the module is imported. ``if TYPE_CHECKING:`` blocks never run. Only statement lists are walked (an
    import is a statement, never part of an expression), which is what keeps a scan cheap."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield node
        for attr in _BODIES:
            stack.extend(getattr(node, attr, None) or ())


def _lists_own_directory(node: ast.AST) -> bool:
    """Whether statement ``node`` itself (its nested statements aside: :func:`_statements` visits them) calls
    ``pkgutil.iter_modules(__path__)``: a package that imports every module of its own directory, as a registry
    that fills itself does (``for m in pkgutil.iter_modules(__path__): importlib.import_module(...)``,
    gfm.forecasters and gfm.tasks)."""
    stack = [node]
    while stack:
        n = stack.pop()
        func = getattr(n, "func", None)
        if (isinstance(func, ast.Attribute) and func.attr == "iter_modules" and isinstance(func.value, ast.Name)
                and func.value.id == "pkgutil" and [a.id for a in n.args if isinstance(a, ast.Name)] == ["__path__"]):
            return True
        stack.extend(c for c in ast.iter_child_nodes(n)
                     if not isinstance(c, (ast.stmt, ast.excepthandler, ast.match_case)))
    return False


def scan(source: str) -> dict[str, list]:
    """What a module's source imports, before names are resolved against the package: for ``all`` (every
    statement that can run) and ``top`` (those run on import), a list of ``[level, module, names]`` per import
    statement (level -1 for ``import a.b``, whose names are the modules), and ``[-2, "", []]`` where a package
    imports every module of its own directory (:func:`_lists_own_directory`; names the AST cannot follow)."""
    tree = ast.parse(source)
    by_name_possible = "iter_modules" in source
    out: dict[str, list] = {}
    for key, module_level in (("all", False), ("top", True)):
        entries: list = []
        for node in _statements(tree, module_level=module_level):
            if isinstance(node, ast.Import):
                entries.append([-1, "", [a.name for a in node.names]])
            elif isinstance(node, ast.ImportFrom):
                entries.append([node.level, node.module or "", [a.name for a in node.names]])
            elif by_name_possible and _lists_own_directory(node) and [-2, "", []] not in entries:
                entries.append([-2, "", []])
        out[key] = entries
    return out


_SCANS: dict[str, dict[str, list]] = {}   # sha-256 of a source -> scan(source), shared by every closure
_USED: set[str] = set()                     # the digests looked up by this process


@cache
def _digest(file: Path, mtime_ns: int, size: int) -> str:
    """The sha-256 of ``file``, scanned into :data:`_SCANS` if no scan of that content is known."""
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest not in _SCANS:
        _SCANS[digest] = scan(data.decode())
    return digest


def _is_scan(value) -> bool:
    """Whether ``value`` (read back from a cache file) has the shape :func:`scan` returns."""
    def entry(e) -> bool:
        return (isinstance(e, list) and len(e) == 3 and isinstance(e[0], int) and isinstance(e[1], str)
                and isinstance(e[2], list) and all(isinstance(n, str) for n in e[2]))
    return isinstance(value, dict) and set(value) == {"all", "top"} and all(
        isinstance(v, list) and all(entry(e) for e in v) for v in value.values())


def stage_codes(cache: str | Path | None = None, src: str | Path = SRC) -> dict[str, list[str]]:
    """:func:`stage_code` of every stage. With ``cache`` (a JSON file, made if missing), the scans of the
    sources are kept there by content hash, so a start parses only the modules edited since the last one: the
    Snakefile computes this at every start (workflow/rules/common.smk), and parsing every module is most of
    what it costs (BENCHMARKS.md, "Snakemake's start"). A cache that cannot be read is ignored, one that cannot
    be written left as it is."""
    cache = None if cache is None else Path(cache)
    try:
        known = json.loads(cache.read_text()) if cache is not None else {}
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict):
        _SCANS.update({k: v for k, v in known.items() if isinstance(k, str) and _is_scan(v)})
    out = {st.name: stage_code(st.name, src) for st in STAGES}
    keep = {d: _SCANS[d] for d in sorted(_USED)}
    if cache is not None and keep != known:
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(keep, separators=(",", ":")))
            os.replace(tmp, cache)   # atomic: concurrent starts (cluster jobs) each write a whole file
        except OSError:
            tmp.unlink(missing_ok=True)
    return out


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
    st = file.stat()
    digest = _digest(file, st.st_mtime_ns, st.st_size)
    _USED.add(digest)
    return _imports_cached(name, file.name == "__init__.py", digest, src, module_level)


@cache
def _imports_cached(name: str, is_package: bool, digest: str, src: Path, module_level: bool) -> frozenset[str]:
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for level, module, names in _SCANS[digest]["top" if module_level else "all"]:
        if level == -1:
            found.update(names)
            continue
        if level == -2:
            if is_package:
                found.update(_own_directory(name, src))
            continue
        base = module
        if level:
            anchor = package.split(".")
            anchor = anchor[:len(anchor) - level + 1]
            base = ".".join(anchor + ([module] if module else []))
        # `from pkg import x`: x is a submodule or an attribute of pkg. Only an attribute needs pkg whole (it may
        # come from pkg's lazy __getattr__); for submodules pkg runs as their parent (its module-level imports)
        subs = [f"{base}.{n}" for n in names if _module_file(f"{base}.{n}", src)]
        found.update(subs)
        if len(subs) < len(names):
            found.add(base)
    return frozenset(m for m in found if (m == "gfm" or m.startswith("gfm.")) and _module_file(m, src))


def _own_directory(package: str, src: Path) -> list[str]:
    """The modules of package ``package``'s own directory: its files and its subpackages."""
    root = src.joinpath(*package.split(".")[1:])
    return [f"{package}.{p.name.removesuffix('.py')}" for p in sorted(root.iterdir())
            if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()]


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


def stage_code(name: str, src: str | Path = SRC) -> list[str]:
    """The code stage ``name`` runs, file by file: its rules file, then its import closure (:func:`code_deps`).
    dvc.yaml lists them as deps (subpackages held whole as directories, :func:`collapsed`); the Snakemake rules
    of the stage take them as inputs (workflow/rules/common.smk), so neither driver reads the other's files."""
    return [f"workflow/rules/{stage(name).rule_file}", *code_deps(name, src)]


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
