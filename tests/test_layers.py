"""The package's shape: layers that point one way and no import circles (docs/architecture.md, "Layers").

Every ``import`` in ``installation/`` is read with ``ast`` (inside functions and under ``if TYPE_CHECKING:`` too: a
lazy import is still an arrow) and checked against the layer table in docs/architecture.md. A failure names each
offending arrow with its file and line. ``python tests/test_layers.py`` prints the whole map.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "installation"
DOC = ROOT / "docs" / "architecture.md"

# Arrows known to break the layering, each to go (none since issue 26): the list may only shrink (a test fails on a
# stale entry). Move the shared piece down rather than add one here.
KNOWN_UPWARD: set[tuple[str, str]] = set()
# Import circles known, each as the set of modules it joins (none since issue 26): a circle may only shrink or go.
KNOWN_CIRCLES: list[frozenset[str]] = []


@dataclass(frozen=True)
class Arrow:
    """One import: ``src`` imports ``dst`` at ``line`` of ``src``'s file; ``where`` says if it is lazy."""

    src: str
    dst: str
    line: int
    where: str = ""  # "", "in a function" or "type checking"

    def describe(self, layers: dict[str, str] | None = None) -> str:
        path = module_path(self.src).relative_to(ROOT)
        text = f"{path}:{self.line}  {short(self.src)} -> {short(self.dst)}"
        if self.where:
            text += f" ({self.where})"
        if layers is not None:
            text += f"  [{layers[self.src]} -> {layers[self.dst]}]"
        return text


def short(module: str) -> str:
    return module.removeprefix("installation.") if module != "installation" else module


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its ``__init__.py``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def module_path(name: str) -> Path:
    return modules()[name]


class _Imports(ast.NodeVisitor):
    """Collect the arrows out of one module, noting whether each import is inside a function or TYPE_CHECKING."""

    def __init__(self, name: str, is_package: bool, known: set[str]) -> None:
        self.name, self.is_package, self.known = name, is_package, known
        self.arrows: list[Arrow] = []
        self._where: list[str] = []

    def _target(self, dotted: str) -> str | None:
        while dotted and dotted not in self.known:
            if "." not in dotted:
                return None
            dotted = dotted.rsplit(".", 1)[0]
        return dotted or None

    def _add(self, dotted: str, node: ast.AST) -> None:
        target = self._target(dotted)
        if target is not None and target != self.name:
            self.arrows.append(Arrow(self.name, target, node.lineno, self._where[-1] if self._where else ""))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.name.split(".") if self.is_package else self.name.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        for alias in node.names:
            sub = f"{module}.{alias.name}"
            self._add(sub if sub in self.known else module, node)

    def _nested(self, node: ast.AST, where: str) -> None:
        self._where.append(self._where[-1] if self._where and self._where[-1] == "type checking" else where)
        self.generic_visit(node)
        self._where.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node, "in a function")

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or \
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING":
            self._where.append("type checking")
            for child in node.body:
                self.visit(child)
            self._where.pop()
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)


def arrows() -> list[Arrow]:
    """Every import from one module of the package to another."""
    mods = modules()
    out: list[Arrow] = []
    for name, path in mods.items():
        visitor = _Imports(name, path.name == "__init__.py", set(mods))
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        out.extend(dict.fromkeys(visitor.arrows))  # one arrow per import statement, however many names it takes
    return out


def layer_table() -> list[tuple[str, list[str]]]:
    """The ``layers`` block of docs/architecture.md: (layer, patterns) from the top layer down."""
    block = re.search(r"^```layers\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)
    assert block, f"{DOC}: no ```layers block"
    table: list[tuple[str, list[str]]] = []
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        if line[0].isspace():  # a continuation of the layer above
            table[-1][1].extend(line.split())
        else:
            name, *patterns = line.split()
            table.append((name, patterns))
    return table


def _specificity(pattern: str) -> tuple[int, int, int]:
    """An exact path first, then the pattern that spells out more of the file name, then the longer one."""
    file_name = pattern.rsplit("/", 1)[-1]
    return ("*" not in pattern, len(file_name.replace("*", "")), len(pattern.replace("*", "")))


def layers() -> dict[str, str]:
    """Each module's layer; a module no pattern matches (or two match equally) raises AssertionError."""
    table = layer_table()
    out = {}
    problems = []
    for name, path in modules().items():
        rel = path.relative_to(PACKAGE).as_posix()
        matches = sorted(((_specificity(p), layer, p) for layer, patterns in table for p in patterns
                          if fnmatch.fnmatchcase(rel, p)), reverse=True)
        if not matches:
            problems.append(f"installation/{rel} is in no layer: add it to the ```layers table in {DOC.name}")
        elif len(matches) > 1 and matches[0][0] == matches[1][0] and matches[0][1] != matches[1][1]:
            problems.append(f"installation/{rel} matches {matches[0][2]!r} ({matches[0][1]}) and "
                            f"{matches[1][2]!r} ({matches[1][1]}) equally: make one more specific")
        else:
            out[name] = matches[0][1]
    assert not problems, "\n".join(problems)
    return out


def upward(found: list[Arrow], where: dict[str, str]) -> list[Arrow]:
    """The arrows from a lower layer to a higher one."""
    rank = {layer: i for i, (layer, _) in enumerate(reversed(layer_table()))}
    return [a for a in found if rank[where[a.src]] < rank[where[a.dst]]]


def circles(found: list[Arrow]) -> list[list[str]]:
    """The import circles: each strongly connected set of two or more modules (Tarjan), sorted."""
    graph: dict[str, set[str]] = {}
    for a in found:
        graph.setdefault(a.src, set()).add(a.dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _describe_circle(group: list[str], found: list[Arrow]) -> str:
    inside = set(group)
    lines = [f"circle of {len(group)}: {', '.join(short(m) for m in group)}"]
    lines += [f"    {a.describe()}" for a in sorted(found, key=lambda a: (a.src, a.line))
              if a.src in inside and a.dst in inside]
    return "\n".join(lines)


# -- the tests ---------------------------------------------------------------------------------------------------

def test_every_module_has_one_layer():
    layers()  # raises naming each module without a layer


def test_no_new_upward_import():
    found = arrows()
    where = layers()
    new = [a for a in upward(found, where) if (short(a.src), short(a.dst)) not in KNOWN_UPWARD]
    if new:
        pytest.fail("imports from a lower layer up to a higher one (docs/architecture.md, Layers); move the shared "
                    "piece down instead:\n" + "\n".join(a.describe(where) for a in new), pytrace=False)


def test_no_new_import_circle():
    found = arrows()
    new = [g for g in circles(found) if not any(set(map(short, g)) <= known for known in KNOWN_CIRCLES)]
    if new:
        pytest.fail("import circles (two modules that need each other: move the shared piece down):\n" +
                    "\n".join(_describe_circle(g, found) for g in new), pytrace=False)


def test_known_exceptions_are_still_there():
    """The allow-lists only shrink: an arrow or circle that is gone must leave them, so it cannot come back."""
    found = arrows()
    now_up = {(short(a.src), short(a.dst)) for a in upward(found, layers())}
    now_circles = [set(map(short, g)) for g in circles(found)]
    stale = [f"upward {s} -> {d}" for s, d in sorted(KNOWN_UPWARD - now_up)]
    for known in KNOWN_CIRCLES:
        if not any(now >= known for now in now_circles):  # a grown circle fails test_no_new_import_circle
            left = [", ".join(sorted(now)) for now in now_circles if now < known]
            stale.append(f"circle {', '.join(sorted(known))}" + (f" (now: {'; '.join(left)})" if left else ""))
    if stale:
        pytest.fail("gone (delete them from tests/test_layers.py's KNOWN_UPWARD / KNOWN_CIRCLES, or shrink the "
                    "circle to what is left):\n" + "\n".join(stale), pytrace=False)


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path):
    """The reader itself: an import in a function and one under TYPE_CHECKING are arrows, and a circle is found."""
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n"
              "def f():\n    from . import c\n")
    visitor = _Imports("p.a", False, {"p", "p.a", "p.b", "p.c"})
    visitor.visit(ast.parse(source))
    assert [(a.dst, a.where) for a in visitor.arrows] == [("p.b", "type checking"), ("p.c", "in a function")]
    ring = [Arrow("p.a", "p.b", 1), Arrow("p.b", "p.c", 1), Arrow("p.c", "p.a", 1), Arrow("p.c", "p.d", 1)]
    assert circles(ring) == [["p.a", "p.b", "p.c"]]


if __name__ == "__main__":
    found = arrows()
    where = layers()
    for layer, _ in layer_table():
        members = sorted(short(m) for m, lay in where.items() if lay == layer)
        print(f"{layer} ({len(members)}): {', '.join(members)}")
    print(f"\n{len(where)} modules, {len({(a.src, a.dst) for a in found})} arrows")
    ups = upward(found, where)
    print(f"\nupward arrows ({len({(a.src, a.dst) for a in ups})}):")
    for a in sorted(ups, key=lambda a: (a.src, a.line)):
        print("  " + a.describe(where))
    rings = circles(found)
    print(f"\nimport circles ({len(rings)}):")
    for g in rings:
        print("  " + _describe_circle(g, found).replace("\n", "\n  "))
