"""The layers import one way: a graph of the package's imports, built from the source (AST).

- the core (`ukcancel.*`) imports neither `ukcancel.service` (HTTP) nor `ukcancel.worker` (Celery);
- the HTTP layer does not import the Celery layer, nor the Celery layer the HTTP layer;
- only the wiring (`ukcancel.assemble`, and `ukcancel.wsgi`, which imports only it) and the CLI
  import several layers; nothing but the CLI imports the CLI;
- there are no import circles, counting imports inside functions and imports under
  `if TYPE_CHECKING:` (an annotation that needs a module is a dependency on it, even if it costs
  nothing at run time). The layer rules above leave the `TYPE_CHECKING` imports out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Where each package's source lives (pyproject.toml's package-dir).
SOURCES = {
    "ukcancel": ROOT / "ukcancel",
    "ukcancel.service": ROOT / "service",
    "ukcancel.worker": ROOT / "worker",
    "ukcancel.simulator": ROOT / "ops" / "simulator",
}
WIRING = {"ukcancel.assemble", "ukcancel.wsgi"}
# importer layer -> layers it may import
ALLOWED = {
    "core": {"core"},
    "service": {"core", "service"},
    "worker": {"core", "worker"},
    "simulator": {"core", "simulator"},
    "wiring": {"core", "service", "worker", "wiring"},
    "cli": {"core", "service", "worker", "wiring", "simulator", "cli"},
}


def layer_of(module: str) -> str:
    if module in WIRING:
        return "wiring"
    for prefix, name in (("ukcancel.service", "service"), ("ukcancel.worker", "worker"),
                         ("ukcancel.simulator", "simulator"), ("ukcancel.cli", "cli")):
        if module == prefix or module.startswith(prefix + "."):
            return name
    return "core"


def discover(sources: dict[str, Path]) -> dict[str, Path]:
    """Module name -> file, for every .py file of the packages (a subpackage's own dir wins)."""
    found: dict[str, Path] = {}
    claimed = {path.resolve() for path in sources.values()}
    for package, directory in sources.items():
        for path in sorted(directory.rglob("*.py")):
            if any(parent.resolve() in claimed and parent.resolve() != directory.resolve()
                   for parent in path.parents if directory.resolve() in parent.resolve().parents):
                continue  # inside another package's directory
            parts = path.relative_to(directory).with_suffix("").parts
            name = ".".join((package, *parts[:-1])) if parts[-1] == "__init__" else ".".join((package, *parts))
            found[name] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, path: Path, modules: set[str], annotations: bool = False) -> set[str]:
    """The project modules `module` imports at run time (module level or in functions), and with
    `annotations` also those it imports under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        if not annotations and isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from ukcancel import keys` imports the module ukcancel.keys
                candidate = f"{base}.{alias.name}"
                targets.add(candidate if candidate in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {target for target in targets if target in modules and target != module}


def import_graph(sources: dict[str, Path], annotations: bool = False) -> dict[str, set[str]]:
    files = discover(sources)
    names = set(files)
    return {module: imports_of(module, path, names, annotations) for module, path in files.items()}


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{importer} ({layer_of(importer)}) imports {imported} ({layer_of(imported)})"
        for importer, targets in graph.items()
        for imported in targets
        if layer_of(imported) not in ALLOWED[layer_of(importer)]
    )


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                strongconnect(target)
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
            strongconnect(node)
    return sorted(found)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(SOURCES)


@pytest.fixture(scope="module")
def annotated_graph() -> dict[str, set[str]]:
    """The graph with the `if TYPE_CHECKING:` imports counted."""
    return import_graph(SOURCES, annotations=True)


def test_the_graph_covers_the_package(graph: dict[str, set[str]]) -> None:
    # Without this a mistake in discovery would make the rules below pass on an empty graph.
    assert {"ukcancel.runtime", "ukcancel.service.app", "ukcancel.worker.tasks", "ukcancel.assemble",
            "ukcancel.cli", "ukcancel.simulator.state"} <= set(graph)
    assert "ukcancel.worker.celery_app" in graph["ukcancel.assemble"]
    assert "ukcancel.fleet" in graph["ukcancel.service.health"]


def test_no_layer_imports_upward_or_sideways(graph: dict[str, set[str]]) -> None:
    assert upward_edges(graph) == []


def test_no_import_circles(graph: dict[str, set[str]], annotated_graph: dict[str, set[str]]) -> None:
    assert circles(graph) == []
    assert circles(annotated_graph) == []


def test_the_checks_name_an_upward_edge_and_a_circle(tmp_path: Path) -> None:
    core, service, worker = tmp_path / "core", tmp_path / "service", tmp_path / "worker"
    for directory in (core, service, worker):
        directory.mkdir()
        (directory / "__init__.py").write_text("")
    (core / "runtime.py").write_text("def make():\n    from ukcancel.worker.tasks import run\n")
    (core / "keys.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from ukcancel.service.app import x\n")
    (worker / "tasks.py").write_text("from ukcancel.runtime import make\nfrom . import celery_app\n")
    (worker / "celery_app.py").write_text("from ukcancel.worker import tasks\n")
    (service / "app.py").write_text("from ukcancel.worker import tasks\n")
    fake = import_graph({"ukcancel": core, "ukcancel.service": service, "ukcancel.worker": worker})

    assert upward_edges(fake) == [
        "ukcancel.runtime (core) imports ukcancel.worker.tasks (worker)",  # a function-level import counts
        "ukcancel.service.app (service) imports ukcancel.worker.tasks (worker)",
    ]  # ukcancel.keys's TYPE_CHECKING import does not
    assert circles(fake) == [["ukcancel.runtime", "ukcancel.worker.celery_app", "ukcancel.worker.tasks"]]

    # A circle closed only by an annotation import is still a circle.
    (core / "plans.py").write_text("from ukcancel import submission\n")
    (core / "submission.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                        "    from ukcancel.plans import Plan\n")
    sources = {"ukcancel": core, "ukcancel.service": service, "ukcancel.worker": worker}
    assert ["ukcancel.plans", "ukcancel.submission"] not in circles(import_graph(sources))
    assert ["ukcancel.plans", "ukcancel.submission"] in circles(import_graph(sources, annotations=True))
