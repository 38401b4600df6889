"""The layering of weftnet, checked from the source: pure cores, no import cycles, and the
arrows between the rooms of ``router/``.

Theory of operation. Every ``.py`` file of every package in pyproject's
``[tool.setuptools.package-dir]`` (``proto/`` is ``weftnet.proto``, ...) is parsed with
``ast``, never imported. Each ``import`` is resolved to an absolute name (relative ones
against the file's package; ``from P import n`` names the module ``P.n`` when that is a
module, else ``P``) and noted with its line and how it runs:

    at module level       runs when the module is imported
    lazy                  inside a function (or lambda): runs when that is called
    typing only           under ``if TYPE_CHECKING:``: never runs

Three checks, each reporting every offence as ``file:line`` with what to do:

1. purity: the cores (``proto/``, ``ipam/``, ``dns/``) import none of ``FORBIDDEN`` and
   nothing of ``weftnet.router``, in any of the three ways;
2. no cycles: the strongly connected components of the graph of ``weftnet.*`` modules,
   every import an edge (lazy and typing-only ones too: they are cycles waiting to be
   made eager), each reported as one concrete cycle;
3. the rooms of ``router/``: ``ARROWS`` below is the single source of which room may import
   which (``router/__init__.py`` points here). Imports inside a room are free, and so is
   a package's own ``__init__`` (``weftnet.router`` and each room's: a docstring saying
   what the room may import); importing ``P.m`` counts as importing ``m`` only.

The checks run on a tree given as an argument, so the last test feeds them a small
synthetic tree with one offence of each kind, to show they catch what they claim to.
Imports made by name at run time (``importlib.import_module("...")``) are not seen.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CORES = ("weftnet.proto", "weftnet.ipam", "weftnet.dns", "weftnet.policy")
SHELL = "weftnet.router"
# what a core never imports: I/O, clocks, threads and processes come in from the shell
FORBIDDEN = ("trio", "time", "os", "socket", "subprocess", "threading", "pyroute2", "hypercorn")


@dataclass(frozen=True, slots=True)
class May:
    """What one room may import of another: ``modules`` at module level (None: all of
    them), and with ``lazy_rest`` any other module, but only inside a function."""

    modules: frozenset[str] | None = None
    lazy_rest: bool = False


ALL = May()
LAZY = May(frozenset(), lazy_rest=True)


def only(*modules: str, lazy_rest: bool = False) -> May:
    return May(frozenset(modules), lazy_rest)


# The arrows of router/: room -> {room (or "cores") it may import: how}. A room missing
# from a row may not be imported at all; "tools" may import the standard library and
# itself only (it drives routers through the CLI, in subprocesses).
ARROWS: dict[str, dict[str, May]] = {
    "programs": {"api": ALL, "daemon": only("config", lazy_rest=True),  # weft launch runs it
                 "host": ALL, "tools": LAZY, "cores": ALL},
    "api": {"cores": ALL},
    "daemon": {"api": ALL, "dataplane": ALL, "host": ALL, "cores": ALL},
    # netdev and nlevents: the kernel interfaces the data plane programs and listens to
    "dataplane": {"host": only("netdev", "nlevents"), "cores": ALL},
    "host": {"cores": ALL},
    "tools": {},
}
STDLIB_ONLY = {"tools"}


# --- reading the tree ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Import:
    source: str        # the importing module
    target: str        # the imported module (or name), absolute
    file: str          # the importing file, relative to the root
    line: int
    lazy: bool         # inside a function
    typing_only: bool  # under ``if TYPE_CHECKING:``

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Tree:
    root: Path
    modules: dict[str, Path]   # module name -> file
    packages: frozenset[str]   # module names that are packages (an __init__.py)
    imports: tuple[Import, ...]


def package_dirs(root: Path) -> dict[str, Path]:
    """pyproject's package-dir: package name -> its folder."""
    with open(root / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: root / folder for name, folder in mapping.items()}


def read_tree(root: Path) -> Tree:
    modules: dict[str, Path] = {}
    packages: set[str] = set()
    for package, folder in sorted(package_dirs(root).items()):
        for path in sorted(folder.glob("*.py")):
            if path.stem == "__init__":
                modules[package] = path
                packages.add(package)
            else:
                modules[f"{package}.{path.stem}"] = path
    imports: list[Import] = []
    for name, path in sorted(modules.items()):
        tree = ast.parse(path.read_text(), filename=str(path))
        package = name if name in packages else name.rpartition(".")[0]
        imports += _Imports(name, package, str(path.relative_to(root)), set(modules)).run(tree)
    return Tree(root, modules, frozenset(packages), tuple(imports))


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, package: str, file: str, known: set[str]) -> None:
        self.module, self.package, self.file, self.known = module, package, file, known
        self.found: list[Import] = []
        self.depth = 0          # functions we are inside
        self.typing = 0         # ``if TYPE_CHECKING:`` bodies we are inside

    def run(self, tree: ast.AST) -> list[Import]:
        self.visit(tree)
        return self.found

    def _add(self, target: str, node: ast.stmt) -> None:
        self.found.append(Import(self.module, target, self.file, node.lineno, self.depth > 0,
                                 self.typing > 0))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        self.typing += 1
        for stmt in node.body:
            self.visit(stmt)
        self.typing -= 1
        for stmt in node.orelse:
            self.visit(stmt)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.known else base, node)


# --- the checks -----------------------------------------------------------------------------------


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def purity_violations(tree: Tree) -> list[str]:
    out = []
    for imp in tree.imports:
        if not any(_in(imp.source, core) for core in CORES):
            continue
        top = imp.target.split(".")[0]
        if top in FORBIDDEN:
            out.append(f"{imp.where}: imports {imp.target}: the cores stay pure (no I/O, clocks, "
                       "threads or processes): take `now`, an `rng` or bytes as arguments from the "
                       "router (the shell) instead; `ipaddress` converts addresses")
        elif _in(imp.target, SHELL):
            out.append(f"{imp.where}: imports {imp.target}: a core never imports the shell: move "
                       "what it needs into a core, or let the router pass it in")
    return out


def _strongly_connected(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components in a deterministic order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
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
                    out.append(sorted(component))
    return out


def _a_cycle(start: str, members: set[str], graph: Mapping[str, set[str]]) -> list[str]:
    """A shortest cycle through ``start`` inside one component (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")


def cycle_violations(tree: Tree) -> list[str]:
    graph: dict[str, set[str]] = {name: set() for name in tree.modules}
    first: dict[tuple[str, str], Import] = {}
    for imp in tree.imports:
        if imp.target in graph:
            graph[imp.source].add(imp.target)
            first.setdefault((imp.source, imp.target), imp)
    out = []
    for component in _strongly_connected(graph):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        cycle = _a_cycle(component[0], set(component), graph)
        steps = " -> ".join(f"{a} ({first[a, b].where})" for a, b in zip(cycle, cycle[1:], strict=False))
        more = f" (and {len(component) - len(cycle) + 1} more modules tangled with it)" \
            if len(component) > len(cycle) - 1 else ""
        out.append(f"import cycle: {steps} -> {cycle[-1]}{more}: break it by moving what both "
                   "sides need into a module both import (as ipam/state.py does for the allocator "
                   "and its helpers), or by passing it in (an argument, a Protocol)")
    return out


def room_of(module: str) -> str | None:
    """The room of a module: "cores", a room of router/, or None (anything else)."""
    if any(_in(module, core) for core in CORES):
        return "cores"
    if _in(module, SHELL) and module != SHELL:
        return module.split(".")[2]
    return None


def arrow_violations(tree: Tree) -> list[str]:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    out = []
    for imp in tree.imports:
        room = room_of(imp.source)
        if room is None or room == "cores":
            continue
        rule = ARROWS.get(room)
        if rule is None:
            out.append(f"{imp.where}: room {room!r} is not in ARROWS (tests/unit/test_layering.py): "
                       "add its row, and say what it may import in its __init__")
            continue
        if imp.target in tree.packages and _in(imp.target, SHELL):
            continue  # a room's __init__: its docstring
        target = room_of(imp.target)
        if target is None:
            if (room in STDLIB_ONLY and not _in(imp.target, SHELL)
                    and imp.target.split(".")[0] not in stdlib):
                out.append(f"{imp.where}: imports {imp.target}: room {room!r} may import the "
                           "standard library and itself only (it drives routers through the CLI)")
            continue
        if target == room:
            continue
        may = rule.get(target)
        module = imp.target.split(".")[3] if target != "cores" and imp.target.count(".") >= 3 else ""
        runs_later = imp.lazy or imp.typing_only
        if may is not None and (may.modules is None or module in may.modules
                                or (may.lazy_rest and runs_later)):
            continue
        allowed = ", ".join(sorted(rule)) or "nothing outside itself"
        how = ""
        if may is not None and may.lazy_rest:
            how = f" (of {target!r}: {', '.join(sorted(may.modules or ()))} at module level, the rest " \
                  "only inside a function)"
        elif may is not None:
            how = f" (of {target!r} only {', '.join(sorted(may.modules or ()))})"
        out.append(f"{imp.where}: imports {imp.target}: room {room!r} may import {allowed}{how}: "
                   "move what both need down into a room both may import (or a core), or hand it "
                   "over through a Protocol the importer defines")
    return out


# --- the tests --------------------------------------------------------------------------------------


def _report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n  " + "\n  ".join(problems)


TREE = read_tree(ROOT)


def test_the_tree_was_read() -> None:
    # a guard against checking nothing: every package of pyproject was found and parsed
    assert {"weftnet.proto.mesh", "weftnet.ipam.allocator", "weftnet.dns.records",
            "weftnet.router.daemon.router", "weftnet.router.api"} <= set(TREE.modules)
    assert any(imp.lazy for imp in TREE.imports) and any(imp.typing_only for imp in TREE.imports)
    assert len(TREE.imports) > 300


def test_every_package_folder_is_in_pyproject() -> None:
    # a folder missing from package-dir is neither installed nor checked here
    mapped = {path.resolve() for path in package_dirs(ROOT).values()}
    tops = {path for path in mapped if path.parent == ROOT}
    missing = sorted(str(init.parent.relative_to(ROOT)) for top in tops
                     for init in top.rglob("__init__.py") if init.parent.resolve() not in mapped)
    assert not missing, (f"package folders missing from pyproject.toml: {', '.join(missing)}: add "
                         "each to both `packages` and `package-dir` of [tool.setuptools]")
    with open(ROOT / "pyproject.toml", "rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    assert sorted(setuptools["packages"]) == sorted(setuptools["package-dir"]), \
        "pyproject.toml: `packages` and `package-dir` must name the same packages"


def test_cores_are_pure() -> None:
    problems = purity_violations(TREE)
    assert not problems, _report(problems)


def test_no_import_cycles() -> None:
    problems = cycle_violations(TREE)
    assert not problems, _report(problems)


def test_router_rooms_import_only_along_the_arrows() -> None:
    assert set(ARROWS) == {room_of(m) for m in TREE.modules} - {None, "cores"}, \
        "every room of router/ has a row in ARROWS, and every row a room"
    problems = arrow_violations(TREE)
    assert not problems, _report(problems)


# --- the checks catch what they claim to ------------------------------------------------------------

PYPROJECT = """
[tool.setuptools.package-dir]
"weftnet" = "weftnet"
"weftnet.proto" = "proto"
"weftnet.router" = "router"
"weftnet.router.api" = "router/api"
"weftnet.router.daemon" = "router/daemon"
"weftnet.router.programs" = "router/programs"
"weftnet.router.tools" = "router/tools"
"""

FILES = {
    "weftnet/__init__.py": "",
    "proto/__init__.py": '"""A core."""\n',
    "proto/clock.py": "from __future__ import annotations\n\nimport time\n",
    "proto/a.py": "from . import b\n\nX = 1\n",
    "proto/b.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .a import X\n",
    "proto/shell.py": "def f() -> None:\n    from weftnet.router.api import server\n",
    "router/__init__.py": "",
    "router/api/__init__.py": "",
    "router/api/server.py": ("from weftnet.proto import a\nfrom ..programs.cli import one_line\n"
                             "import weftnet.router.daemon\n"),
    "router/daemon/__init__.py": "",
    "router/daemon/config.py": "import os\n",
    "router/daemon/router.py": "import trio\n",
    "router/programs/__init__.py": "",
    "router/programs/cli.py": ("from weftnet.router.daemon import config\n"
                               "from weftnet.router.daemon.router import Router\n\n\n"
                               "def launch() -> None:\n"
                               "    from weftnet.router.daemon.router import Router\n"
                               "    from weftnet.router.tools import demo\n\n\n"
                               "def one_line() -> str:\n    return ''\n"),
    "router/tools/__init__.py": "",
    "router/tools/demo.py": ("import json\nimport msgpack\nfrom . import helper\n"
                             "from weftnet.proto import a\n"),
    "router/tools/helper.py": "import subprocess\n",
}


def test_the_checks_catch_a_synthetic_offence_of_each_kind(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    tree = read_tree(tmp_path)
    lazy = [i for i in tree.imports if i.lazy]
    assert {(i.file, i.line) for i in lazy} == {("proto/shell.py", 2), ("router/programs/cli.py", 6),
                                                ("router/programs/cli.py", 7)}
    assert [i.target for i in tree.imports if i.typing_only] == ["weftnet.proto.a"]

    purity = purity_violations(tree)
    assert [p.split(": ")[0] for p in purity] == ["proto/clock.py:3", "proto/shell.py:2"]
    assert "imports time" in purity[0] and "take `now`" in purity[0]
    assert "never imports the shell" in purity[1]

    (cycle,) = cycle_violations(tree)
    assert cycle.startswith("import cycle: weftnet.proto.a (proto/a.py:1) -> "
                            "weftnet.proto.b (proto/b.py:4) -> weftnet.proto.a")
    assert "break it" in cycle

    arrows = arrow_violations(tree)
    assert [p.split(": ")[0] for p in arrows] == [
        "router/api/server.py:2",       # api -> programs
        "router/programs/cli.py:2",     # daemon.router at module level (only config may be)
        "router/tools/demo.py:2",       # a third-party module in tools
        "router/tools/demo.py:4",       # a core in tools
    ], _report(arrows)
    assert "room 'api' may import cores" in arrows[0]
    assert "config at module level, the rest only inside a function" in arrows[1]
    assert "standard library and itself only" in arrows[2]
    assert "room 'tools' may import nothing outside itself" in arrows[3]
