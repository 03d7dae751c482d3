"""Reading a params file as YAML, with bounds: the safe loader plus what a hostile or mistaken file needs.

``yaml.safe_load`` executes no code, but it still accepts files that hurt later: a 1 KB "billion laughs"
file whose aliases expand to billions of values (any walk of it, or an error message printing it, runs out of
time and memory), lists nested 10,000 deep (a RecursionError), a key written twice (the last one silently
wins), and ``lr: 1e-5`` read as the *string* "1e-5" (YAML 1.1 wants ``1.0e-5``). :func:`parse_yaml` refuses or
fixes each of these, and every refusal is one short line (:class:`YAMLRefused`), never a traceback:

* the file: at most :data:`MAX_FILE_BYTES`, UTF-8 (a BOM is fine), one document;
* nesting: at most :data:`MAX_DEPTH` levels, counted while composing (before Python recursion can fail) and
  again through aliases;
* aliases: anchors are fine (params.yaml shares lists of model names with ``&ls_models`` / ``*ls_models``), but
  the document *as a tree* (every alias expanded) may hold at most :data:`MAX_NODES` values, and an alias may
  not refer to a node that contains it;
* duplicate keys: refused with both line numbers, ``stores.foo: key defined twice (lines 12 and 40)``
  (``<<`` merge keys keep their YAML meaning: explicit keys override merged ones);
* numbers: ``1e-5``, ``1E5``, ``-2e3``, ``.5`` are floats (the YAML 1.2 forms); integers stay integers.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gfm.base.errors import shorten

__all__ = ["ParamsLoader", "YAMLRefused", "parse_yaml", "read_params_text", "MAX_FILE_BYTES", "MAX_DEPTH",
           "MAX_NODES"]

MAX_FILE_BYTES = 4 * 2**20
"""Largest params file read (params.yaml is ~20 KB; a bigger file is a mistake, not a study)."""
MAX_DEPTH = 64
"""Deepest nesting of lists and mappings (params.yaml nests 5 levels)."""
MAX_NODES = 100_000
"""Most values in the document with every alias expanded (params.yaml: ~1,000)."""


class YAMLRefused(ValueError):
    """The text is not a params document this loader accepts. ``problems`` holds one short line each."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


# YAML 1.2 floats (plus the 1.1 sexagesimal form PyYAML already had): an exponent without a dot or a sign
# ("1e-5", "1E5", "-2e3") and a leading sign on ".5" are floats; "1" stays an integer.
_FLOAT = re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                        |[-+]?\.(?:inf|Inf|INF)
                        |\.(?:nan|NaN|NAN))$""", re.VERBOSE)
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class ParamsLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts nesting while composing and reads YAML 1.2 floats. Use it through
    :func:`parse_yaml`, which also checks the composed graph (alias expansion, cycles, duplicate keys)."""

    max_depth = MAX_DEPTH

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self.alias_uses = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.alias_uses += 1
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                mark = self.peek_event().start_mark
                raise YAMLRefused(f"line {mark.line + 1}: nested deeper than {self.max_depth} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# A copy of the resolver table for this class only, with the float rule replaced (yaml.SafeLoader keeps its own).
ParamsLoader.yaml_implicit_resolvers = {
    first: [(tag, _FLOAT if tag == _FLOAT_TAG else rx) for tag, rx in rules]
    for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "+-.":
    _rules = ParamsLoader.yaml_implicit_resolvers.setdefault(_first, [])
    if not any(tag == _FLOAT_TAG for tag, _ in _rules):
        _rules.insert(0, (_FLOAT_TAG, _FLOAT))


def read_params_text(path) -> str:
    """The text of a params file: a regular file of at most :data:`MAX_FILE_BYTES` bytes, UTF-8."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise YAMLRefused("is a directory; expected a params file (YAML)")
    if not path.exists():
        raise FileNotFoundError(path)
    if not path.is_file():
        raise YAMLRefused("not a regular file; expected a params file (YAML)")
    with path.open("rb") as fh:
        raw = fh.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise YAMLRefused(f"larger than {MAX_FILE_BYTES // 2**20} MiB; a params file is a few KB of YAML")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YAMLRefused(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}, offset {exc.start}); "
                          "save the file as UTF-8") from None


def _where(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One short line for a PyYAML error (its own text quotes the file, over several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        what = ", ".join(t for t in (exc.context, exc.problem) if t) or type(exc).__name__
        return f"not valid YAML ({_where(exc.problem_mark or exc.context_mark)}: {shorten(what, 160, quote=False)})"
    text = str(exc).strip().splitlines()
    return f"not valid YAML ({shorten(text[0] if text else type(exc).__name__, 160, quote=False)})"


def _key_text(node: Node) -> str:
    return shorten(node.value, 60, quote=False) if isinstance(node, ScalarNode) else f"<{node.id} key>"


class _GraphCheck:
    """One pass over the composed node graph (each node once): tree size with aliases expanded, nesting
    through aliases, cycles; then the duplicate-key check, once per mapping node."""

    def __init__(self, loader: ParamsLoader, max_nodes: int, max_depth: int):
        self.loader, self.max_nodes, self.max_depth = loader, max_nodes, max_depth
        self.size: dict[int, int] = {}
        self.height: dict[int, int] = {}
        self.open: set[int] = set()

    @staticmethod
    def children(node: Node) -> list[Node]:
        if isinstance(node, SequenceNode):
            return list(node.value)
        if isinstance(node, MappingNode):
            return [n for pair in node.value for n in pair]
        return []

    def measure(self, node: Node, depth: int) -> None:
        """Fill size/height for ``node`` reached at nesting ``depth``; refuse as soon as a bound is passed."""
        key = id(node)
        if key in self.open:
            raise YAMLRefused(f"line {node.start_mark.line + 1}: an alias refers to a node that contains it "
                              "(a recursive structure)")
        if key in self.size:
            if depth + self.height[key] > self.max_depth:
                raise YAMLRefused(f"line {node.start_mark.line + 1}: nested deeper than {self.max_depth} levels "
                                  "once aliases are expanded")
            return
        if depth > self.max_depth:
            raise YAMLRefused(f"line {node.start_mark.line + 1}: nested deeper than {self.max_depth} levels "
                              "once aliases are expanded")
        self.open.add(key)
        size, height = 1, 0
        for child in self.children(node):
            self.measure(child, depth + 1)
            size += self.size[id(child)]
            height = max(height, self.height[id(child)] + 1)
            if size > self.max_nodes:
                raise YAMLRefused(
                    f"expands to more than {self.max_nodes:,} values once aliases are expanded "
                    f"({self.loader.alias_uses:,} alias uses); a params file holds a few thousand at most. "
                    "Use anchors only to share small lists")
        self.open.discard(key)
        self.size[key], self.height[key] = size, height

    def duplicates(self, root: Node) -> list[str]:
        """``key.path: key defined twice (lines a and b)`` for every repeated key, in file order."""
        found: list[tuple[int, str]] = []
        seen: set[int] = set()
        stack: list[tuple[Node, str]] = [(root, "")]
        while stack:
            node, path = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, SequenceNode):
                stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node.value))
            elif isinstance(node, MappingNode):
                first: dict[Any, int] = {}
                for key_node, value_node in node.value:
                    sub = f"{path}.{_key_text(key_node)}" if path else _key_text(key_node)
                    stack.append((value_node, sub))
                    if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                        continue
                    value = self.loader.construct_object(key_node)
                    line = key_node.start_mark.line + 1
                    try:
                        before = first.get(value)
                    except TypeError:  # an unhashable key: the constructor refuses it with a line number
                        continue
                    if before is not None:
                        where = f"lines {before} and {line}" if before != line else f"both on line {line}"
                        found.append((line, f"{sub}: key defined twice ({where}); keep one"))
                        continue
                    first[value] = line
        return [text for _, text in sorted(found)]


def parse_yaml(text: str, *, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one params document from ``text``; raise :class:`YAMLRefused` (one short line) when refused."""
    loader = None
    try:
        loader = ParamsLoader(text)
        loader.max_depth = max_depth
        node = loader.get_single_node()
        if node is None:
            return None
        check = _GraphCheck(loader, max_nodes, max_depth)
        check.measure(node, 1)
        duplicates = check.duplicates(node)
        if duplicates:
            raise YAMLRefused(duplicates)
        return loader.construct_document(node)
    except YAMLRefused:
        raise
    except yaml.YAMLError as exc:
        raise YAMLRefused(_yaml_problem(exc)) from None
    except RecursionError:  # the bounds above should make this unreachable; never a traceback if not
        raise YAMLRefused(f"nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # int() refuses an integer of more than 4,300 digits
        what = "an integer with more than 4,300 digits" if "digits" in str(exc) else shorten(str(exc), 120, quote=False)
        raise YAMLRefused(f"not a valid value ({what})") from None
    finally:
        if loader is not None:
            loader.dispose()
