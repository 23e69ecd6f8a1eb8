"""The shape of the two packages: small modules, and no import cycles among them.

Both checks read the sources (``ast``), so they hold without importing any back end.

Import cycles are counted among module-level imports (the body, and under ``if``/``try``/``with``
there, except ``if TYPE_CHECKING:`` which never runs) in both packages. An import inside a
function runs when the function is called, after the modules it names have loaded, so it cannot
leave a module half-initialised; ``appliance`` uses such imports on purpose (heavy back ends
loaded only by the frozen runtime that carries them, a moved module's old name kept as an alias)
and some of them point back at their caller. ``image`` is held to more: no cycle even counting
function-level imports, because such circles (freeze <-> freeze_foreign, model_optimise <->
model_passthrough) were how its modules had lost their seams before it was split into
subpackages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("appliance", "image")
MAX_LINES = 500


def _modules(package: str) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of ``package``."""
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, known: set[str], *, lazy: bool = False) -> set[str]:
    """The modules of ``known`` that ``path`` (module ``name``) imports.

    At module level only (the body, and under ``if``/``try``/``with`` there), or everywhere with
    ``lazy``. ``from pkg import mod`` names the module pkg.mod; ``from pkg import name`` the
    package. The packages on the way (pkg/__init__) are not counted: a package's __init__
    re-exporting its modules, which import their siblings through the package path, is the
    usual layout and runs in a well-defined order.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(node: ast.stmt) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            add(node)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.If | ast.Try | ast.With):
                for block in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, block, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    if lazy:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                add(node)
    else:
        visit(tree.body)
    return {target for target in found if target in known and target != name}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as a list of modules (first == last), or []."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def walk(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_passes_the_line_limit(package: str) -> None:
    long = {
        str(path.relative_to(REPO)): n
        for path in _modules(package).values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them along a real seam): {long}"


@pytest.mark.parametrize(
    ("package", "lazy"), [("appliance", False), ("image", False), ("image", True)]
)
def test_no_import_cycle(package: str, lazy: bool) -> None:
    modules = _modules(package)
    known = set(modules)
    graph = {name: _imports(path, name, known, lazy=lazy) for name, path in modules.items()}
    cycle = _cycle(graph)
    where = "counting function-level imports" if lazy else "at module level"
    assert not cycle, f"import cycle {where}: " + " -> ".join(cycle)


def test_the_checks_see_a_cycle_and_a_long_module(tmp_path: Path) -> None:
    """The graph walk finds a planted cycle, so the tests above can fail."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []
    src = tmp_path / "m.py"
    src.write_text(
        "import os\nfrom pkg import x, CONST\nif TYPE_CHECKING:\n    from pkg import t\n"
        "try:\n    from pkg.y import z\nexcept ImportError:\n    pass\n"
        "def f():\n    import pkg.w\n"
    )
    known = {"pkg", "pkg.x", "pkg.y", "pkg.w", "pkg.t"}
    assert _imports(src, "pkg.m", known) == {"pkg", "pkg.x", "pkg.y"}
    assert _imports(src, "pkg.m", known, lazy=True) == {"pkg", "pkg.x", "pkg.y", "pkg.w", "pkg.t"}
