"""The shape of rawfetch/ itself: no import circle (function-level imports included) and
no class too large to read in one sitting.

A lazy import (inside a function) is kept only to keep `import rawfetch` cheap; it must
never hide a circle, which Python only reveals as an ImportError on some first-call
order. The graph is read from the source with `ast`, so it sees every import whether or
not it ever runs. `python3 tests/test_layout.py` prints the graph's size and its cycles.
"""
from __future__ import annotations

import ast
import os
import sys
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "rawfetch"
MAX_CLASS_LINES = 200   # a class a newcomer can read in one sitting

# Import circles tolerated, each named in import order: none. (A new entry needs a reason.)
KNOWN_CYCLES: Tuple[Tuple[str, ...], ...] = ()
# Classes over MAX_CLASS_LINES being split (each named): none.
KNOWN_LARGE_CLASSES: frozenset = frozenset()   # none: every class fits the budget

Graph = Dict[str, Set[str]]


def source_files(root: str = ROOT, package: str = PACKAGE) -> Dict[str, str]:
    """Module name -> path for every package/**/*.py (a package is its __init__.py)."""
    found: Dict[str, str] = {}
    for folder, _, names in os.walk(os.path.join(root, package)):
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _parse(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as handle:
        return ast.parse(handle.read(), path)


def _base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names before its `import` part."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if not is_package:
        parts.pop()                       # a module's level 1 is its package
    parts = parts[:len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _imported(base: str, name: str, modules: Set[str]) -> str:
    """`from base import name`: the submodule when name is one, else base itself."""
    submodule = "%s.%s" % (base, name)
    return submodule if submodule in modules else base


def imports_of(module: str, path: str, modules: Set[str]) -> Iterator[str]:
    """Every rawfetch module `module` imports, at any depth of its code: `import x.y`,
    `from .x import y`, `from . import x` (x a module: that module; else the package)."""
    is_package = path.endswith("__init__.py")
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, is_package, node)
            names = [_imported(base, alias.name, modules) for alias in node.names]
        else:
            continue
        for name in names:
            if name in modules:
                yield name


def import_graph(root: str = ROOT, package: str = PACKAGE) -> Graph:
    """Module -> the package's modules it imports (itself excluded)."""
    files = source_files(root, package)
    modules = set(files)
    return {module: set(imports_of(module, path, modules)) - {module}
            for module, path in files.items()}


def strongly_connected(graph: Graph) -> List[List[str]]:
    """Tarjan's components with more than one module (each one holds a circle)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def one_cycle(graph: Graph, component: List[str]) -> Tuple[str, ...]:
    """A shortest circle through the component's first module, as a readable path."""
    start = component[0]
    members = set(component)
    paths = {start: (start,)}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node] & members):
            if target == start:
                return paths[node] + (start,)
            if target not in paths:
                paths[target] = paths[node] + (target,)
                queue.append(target)
    raise AssertionError("component %r holds no circle" % component)


def cycles(graph: Graph) -> List[Tuple[str, ...]]:
    return [one_cycle(graph, component) for component in strongly_connected(graph)]


def _show(cycle: Tuple[str, ...]) -> str:
    return " -> ".join(name[len(PACKAGE) + 1:] or PACKAGE for name in cycle)


def class_sizes(root: str = ROOT) -> Iterator[Tuple[str, int]]:
    """(module.Class, lines from `class` to its last line) for every class in rawfetch/."""
    for module, path in sorted(source_files(root).items()):
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.ClassDef):
                yield "%s.%s" % (module, node.name), node.end_lineno - node.lineno + 1


# ---------------------------------------------------------------- the tests

def test_the_graph_sees_every_form_of_import(tmp_path):
    """The reader itself, on a package made for it: function-level, relative at both
    levels, `from . import module`, absolute, and a TYPE_CHECKING import are all edges."""
    files = {
        "pkg/__init__.py": "from .low import VALUE\n",
        "pkg/low.py": "VALUE = 1\n",
        "pkg/mid.py": "def later():\n    from . import low\n    return low\n",
        "pkg/top.py": ("from typing import TYPE_CHECKING\nimport pkg.mid\n"
                       "from . import VALUE\nif TYPE_CHECKING:\n    from .sub import leaf\n"),
        "pkg/sub/__init__.py": "",
        "pkg/sub/leaf.py": "import os\nfrom .. import low\nfrom ..mid import later\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(str(tmp_path), "pkg")
    assert graph == {"pkg": {"pkg.low"}, "pkg.low": set(), "pkg.mid": {"pkg.low"},
                     "pkg.top": {"pkg.mid", "pkg", "pkg.sub.leaf"}, "pkg.sub": set(),
                     "pkg.sub.leaf": {"pkg.low", "pkg.mid"}}
    real = import_graph()
    assert len(real) > 30 and "rawfetch.compat.fuel" in real


def test_the_cycle_finder_finds_a_circle_and_names_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert cycles(graph) == [("a", "b", "c", "a")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_redact_and_errors_are_the_bottom_of_the_stack():
    """redact.py imports nothing from rawfetch; errors.py only redact."""
    graph = import_graph()
    assert graph["rawfetch.redact"] == set()
    assert graph["rawfetch.errors"] <= {"rawfetch.redact"}


def test_no_import_circle_apart_from_known_ones():
    """Every set of modules importing one another is exactly a KNOWN_CYCLES entry: a new
    circle, or a known one that grew to take in another module, fails here."""
    graph = import_graph()
    known = {frozenset(cycle) for cycle in KNOWN_CYCLES}
    new = ["%s (modules in the circle: %s)" % (_show(one_cycle(graph, part)), ", ".join(part))
           for part in strongly_connected(graph) if frozenset(part) not in known]
    assert new == [], "import circle(s):\n" + "\n".join(new)


@pytest.mark.xfail(bool(KNOWN_CYCLES), strict=True,
                   reason="known circle(s): %s" % "; ".join(map(_show, KNOWN_CYCLES)))
def test_no_import_circle_at_all():
    found = [_show(cycle) for cycle in cycles(import_graph())]
    assert found == [], "import circle(s):\n" + "\n".join(found)


def test_classes_fit_the_budget_apart_from_known_ones():
    large = ["%s (%d lines)" % (name, size) for name, size in class_sizes()
             if size > MAX_CLASS_LINES and name not in KNOWN_LARGE_CLASSES]
    assert large == []


@pytest.mark.xfail(bool(KNOWN_LARGE_CLASSES), strict=True,
                   reason="over %d lines, being split: %s" % (
                       MAX_CLASS_LINES, ", ".join(sorted(KNOWN_LARGE_CLASSES))))
def test_every_class_fits_the_budget():
    large = ["%s (%d lines)" % (name, size) for name, size in class_sizes()
             if size > MAX_CLASS_LINES]
    assert large == []


def _string_collections(path: str) -> Iterator[Tuple[int, frozenset]]:
    """(line, the strings) of every tuple/list/set literal made only of strings."""
    for node in ast.walk(_parse(path)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) > 1 and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            yield node.lineno, frozenset(e.value for e in node.elts)


def test_each_enumeration_is_written_once():
    """The decompress kinds, mirror orders, TLS versions and credential headers are
    spelled out in one module each; everything else imports them (a second copy is how
    a new value reaches validation but not the command's choices)."""
    from rawfetch import options, redact
    homes = {frozenset(options.DECOMPRESS_KINDS): "rawfetch.options",
             frozenset(options.MIRROR_ORDERS): "rawfetch.options",
             frozenset(options.TLS_VERSIONS): "rawfetch.options",
             frozenset(redact.SECRET_HEADERS): "rawfetch.redact"}
    copies = ["%s:%d %s" % (module, line, sorted(values))
              for module, path in sorted(source_files().items())
              for line, values in _string_collections(path)
              if homes.get(values, module) != module]
    assert copies == []
    found = {values for module, path in source_files().items() if module in homes.values()
             for _, values in _string_collections(path)}
    assert set(homes) <= found    # the check sees the definitions themselves


CLOCK_CALLS = {("time", "monotonic"), ("time", "time"), ("time", "sleep"),
               ("time", "perf_counter")}


def direct_clock_uses(root: str = ROOT) -> Iterator[str]:
    """`time.monotonic()`-style calls, `from time import ...` and `.poll(` on a poller
    anywhere in rawfetch/ but timing.py: each would be a wait or a time read that the
    virtual clock cannot see."""
    for module, path in sorted(source_files(root).items()):
        if module == PACKAGE + ".timing":
            continue
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.ImportFrom) and node.module == "time" and not node.level:
                yield "%s:%d from time import" % (module, node.lineno)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                name = owner.id if isinstance(owner, ast.Name) else ""
                if (name, node.func.attr) in CLOCK_CALLS:
                    yield "%s:%d %s.%s()" % (module, node.lineno, name, node.func.attr)
                elif node.func.attr == "poll" and name not in ("timing", "select"):
                    yield "%s:%d .poll()" % (module, node.lineno)


def test_every_time_read_and_wait_goes_through_the_clock():
    """The one clock (rawfetch/timing.py): tests swap it for a virtual one, which only
    works if nothing reads the time or waits behind its back."""
    assert list(direct_clock_uses()) == []


METALINK_MODULES = ("rawfetch.metalink", "rawfetch.piececheck", "rawfetch.pieces",
                    "rawfetch.reimage", "rawfetch.delta")
PLAIN_JOB = """
import sys
from tests.faultserver import FaultServer, make_body
import rawfetch.cli
body = make_body(1 << 20, seed=3)
with FaultServer() as server:
    server.add("/img", body)
    code = rawfetch.cli.run([server.url("/img"), "-o", sys.argv[1], "-q"])
with open(sys.argv[1], "rb") as written:
    assert written.read() == body, "the plain job wrote other bytes"
print(code, " ".join(sorted(m for m in sys.modules if m.startswith("rawfetch"))))
"""


def test_a_plain_job_loads_no_metalink_module(tmp_path):
    """Start-up cost (bench baseline): a download without a Metalink never imports the
    Metalink reader, the piece check or the delta path (job.resolve imports them lazily)."""
    import subprocess
    proc = subprocess.run([sys.executable, "-c", PLAIN_JOB, str(tmp_path / "out")], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    code, loaded = proc.stdout.split(" ", 1)
    assert code == "0"
    assert "rawfetch.files" in loaded.split()
    assert [m for m in loaded.split() if m.startswith(METALINK_MODULES)] == []


def main(argv: List[str]) -> int:
    """`python3 tests/test_layout.py [CHECKOUT]`: the graph of this tree, or another's."""
    root = argv[0] if argv else ROOT
    graph = import_graph(root)
    found = cycles(graph)
    print("%d modules, %d import edges, %d circle(s)"
          % (len(graph), sum(map(len, graph.values())), len(found)))
    for cycle in found:
        print("  circle:", _show(cycle))
    for component in strongly_connected(graph):
        print("  modules importing one another:", ", ".join(component))
    for name, size in class_sizes(root):
        if size > MAX_CLASS_LINES:
            print("  class over %d lines: %s (%d)" % (MAX_CLASS_LINES, name, size))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
