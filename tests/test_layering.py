"""The package's shape, read from its imports (with `ast`, nothing is imported): settings stop
at the composition root, no module reaches into another's private names, and the layers
point one way (the README's "How it is built").

Every import counts, the ones inside functions and under `TYPE_CHECKING` too: a lazy import
is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"

# Only these see `Settings`: the composition root, the command line, and the README table
# that is rendered from the settings themselves.
MAY_READ_SETTINGS = {"gateway.app", "gateway.cli", "gateway.config_table"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The module an `from ... import` reads, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def imports(path: Path, importer: str) -> list[tuple[str, str | None, int]]:
    """(module, name or None, line) for each import in the file of module `importer`."""
    is_package = path.name == "__init__.py"
    found: list[tuple[str, str | None, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = absolute(node, importer, is_package)
            found += [(module, alias.name, node.lineno) for alias in node.names]
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def reads(module: str, name: str | None, target: str) -> bool:
    """Whether an import of `name` from `module` reads the module `target`."""
    full = f"{module}.{name}" if name else module
    return any(m == target or m.startswith(target + ".") for m in (module, full))


def offenders(importers: set[str], target: str) -> list[str]:
    return [
        f"{importer}:{line} imports {module}{'.' + name if name else ''}"
        for importer in sorted(importers)
        for module, name, line in imports(MODULES[importer], importer)
        if reads(module, name, target)
    ]


def test_only_the_composition_root_cli_and_config_table_import_settings() -> None:
    below_the_root = set(MODULES) - MAY_READ_SETTINGS - {"gateway.config"}

    assert offenders(below_the_root, "gateway.config") == []


def test_no_module_imports_another_modules_private_names() -> None:
    private = [
        f"{importer}:{line} imports {name} from {module}"
        for importer, path in MODULES.items()
        for module, name, line in imports(path, importer)
        if module.startswith("gateway")
        and name is not None
        and name.startswith("_")
        and not (name.startswith("__") and name.endswith("__"))  # __version__
    ]

    assert private == []


def type_names(path: Path) -> list[str]:
    """The classes and type aliases (CamelCase names) a module defines at its top level."""
    names: list[str] = []
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [target.id for target in node.targets if isinstance(target, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [name for name in names if name[:1].isupper() and not name.isupper()]


def test_each_class_or_type_name_means_one_thing() -> None:
    # Two `BodyRefused`s (a dataclass and an exception) or two `Outcome`s made a reader
    # check which one a line meant; a concept used in two places is defined once and
    # imported.
    homes: dict[str, list[str]] = {}
    for module, path in MODULES.items():
        for name in type_names(path):
            homes.setdefault(name, []).append(module)

    assert {name: found for name, found in homes.items() if len(found) > 1} == {}


def imported_modules(importer: str) -> set[str]:
    """The gateway modules `importer` imports (a name imported from a package counts as its
    submodule when there is one)."""
    found: set[str] = set()
    for module, name, _ in imports(MODULES[importer], importer):
        full = f"{module}.{name}" if name else module
        target = full if full in MODULES else module
        if target in MODULES and target != importer:
            found.add(target)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or not (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def unit(module: str) -> str:
    """The module itself, or for one inside a subpackage (gateway.upstream.cache), the
    subpackage: a package is one layer, which other modules sit above or below."""
    return ".".join(module.split(".")[:2])


def test_no_modules_or_packages_import_each_other() -> None:
    # A cycle means two modules are one concept, or one reaches back up past its layer:
    # upstream.service -> entities -> upstream.cache made the upstream package and
    # entities import each other.
    modules = {module: imported_modules(module) for module in MODULES}
    units: dict[str, set[str]] = {}
    for module, targets in modules.items():
        units.setdefault(unit(module), set()).update(
            unit(target) for target in targets if unit(target) != unit(module)
        )

    assert import_cycles(modules) == []
    assert import_cycles(units) == []


def test_the_cycle_finder_finds_a_cycle_and_nothing_else() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}

    assert import_cycles(graph) == [["a", "b", "c"]]


def inside(package: str) -> set[str]:
    return {m for m in MODULES if m == package or m.startswith(package + ".")}


# (importers, what they must not import, why): each row a direction the README promises.
LAYERS = [
    pytest.param(set(MODULES) - {"gateway.__main__"}, "gateway.cli", id="nothing-imports-cli"),
    pytest.param(set(MODULES), "gateway.app", id="nothing-imports-app"),
    pytest.param(inside("gateway.schema"), "httpx", id="schema-knows-no-http-client"),
    pytest.param(inside("gateway.schema"), "starlette", id="schema-knows-no-http-server"),
    pytest.param(inside("gateway.upstream"), "strawberry", id="upstream-knows-no-schema"),
    pytest.param(inside("gateway.upstream"), "graphql", id="upstream-knows-no-graphql"),
    pytest.param(inside("gateway.upstream"), "starlette", id="upstream-knows-no-http-server"),
    pytest.param(inside("gateway.upstream"), "gateway.schema", id="upstream-below-schema"),
    pytest.param(inside("gateway.upstream"), "gateway.observability", id="upstream-via-seam"),
    pytest.param(inside("gateway.sandbox"), "gateway.upstream", id="sandbox-stands-alone"),
    # The middleware wraps the endpoint: what it acts on (the verdict) and what it answers
    # (the stopped code) are defined below it, and only the composition root places it.
    pytest.param(
        set(MODULES) - {"gateway.app"} - inside("gateway.middleware"),
        "gateway.middleware",
        id="only-app-places-the-middleware",
    ),
    pytest.param({"gateway.config"}, "gateway.upstream", id="settings-know-no-upstream"),
]


@pytest.mark.parametrize(("importers", "target"), LAYERS)
def test_dependencies_point_one_way(importers: set[str], target: str) -> None:
    assert importers, "the row names no module"

    assert offenders(importers, target) == []


# What the command line and the server load before the app: the GraphQL stack, and
# prometheus-client, which must not be imported before the command line sets
# PROMETHEUS_MULTIPROC_DIR (it picks its value store at import).
HEAVY = ("strawberry", "graphql", "prometheus_client")


@pytest.mark.parametrize("module", ["gateway.server", "gateway.cli"])
def test_the_command_line_and_server_load_no_graphql_stack(module: str) -> None:
    # Imported, not read: a chain of imports (a constant fetched from a module that
    # imports the schema) is what loads a package, and only importing shows it.
    script = (
        f"import sys, {module}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    )

    assert done.stdout.strip() == "[]"


# What importing the schema must not load, however indirectly: a layer is HTTP-free only if
# what it imports is too (the seam once held the factory, which loaded the loaders, the
# upstream client, httpx, aiohttp and starlette). Of the upstream package, only the tally
# (a type the seam names) and the REST routes (next links are checked against them).
HTTP_LIBRARIES = {"httpx", "aiohttp", "starlette", "uvicorn", "redis", "aiocache"}
SCHEMA_MAY_LOAD_OF_UPSTREAM = {
    "gateway.upstream",
    "gateway.upstream.routes",
    "gateway.upstream.tally",
}


def test_importing_the_schema_loads_no_http_client_server_or_upstream() -> None:
    # In a fresh interpreter: this one has loaded everything the other tests import.
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, gateway.schema; print(*sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    ).stdout.split()

    assert "gateway.schema" in loaded
    assert [
        module
        for module in loaded
        if module.split(".")[0] in HTTP_LIBRARIES
        or module in {"gateway.loaders", "gateway.context_factory"}
        or (module.startswith("gateway.upstream") and module not in SCHEMA_MAY_LOAD_OF_UPSTREAM)
    ] == []


def test_the_checks_read_every_kind_of_import(tmp_path: Path) -> None:
    # The checks above pass on a package with no imports at all: this one shows that the
    # reader finds each spelling, so that a pass means something.
    package = tmp_path / "gateway" / "schema"
    package.mkdir(parents=True)
    source = package / "types.py"
    source.write_text(
        "import httpx\n"
        "from .. import config\n"
        "from ..endpoint import _coded\n"
        "def later() -> None:\n"
        "    from gateway.config import Settings\n"
    )

    found = [(m, n) for m, n, _ in imports(source, "gateway.schema.types")]

    assert found == [
        ("httpx", None),
        ("gateway", "config"),
        ("gateway.endpoint", "_coded"),
        ("gateway.config", "Settings"),
    ]
    assert [reads(m, n, "gateway.config") for m, n in found] == [False, True, False, True]


# -- tests mirror modules -------------------------------------------------------------------

TESTS = PACKAGE.parent / "tests"

# Modules without a test module of their own, each with where it is tested instead. Package
# __init__ files hold docstrings and re-exports (schema's builds the schema every schema
# test runs); the rest are waiting for a split of the tests that cover them today.
UNMIRRORED = {
    "gateway": "docstring and __version__",
    "gateway.__main__": "`python -m gateway` is the CLI: tests/test_cli.py",
    "gateway.live": "docstring (the module map)",
    "gateway.middleware": "docstring",
    "gateway.observability": "MULTIPROC_ENV only: tests/observability/test_metrics.py",
    "gateway.sandbox": "re-exports",
    "gateway.schema": "build_schema and the SDL printers: tests/schema/, test_cli.py",
    "gateway.upstream": "docstring (the module map)",
}


def mirror(module: str) -> Path:
    """`gateway.a.b` is tested in tests/a/test_b.py (top-level modules: tests/test_b.py)."""
    *packages, name = module.split(".")[1:]
    return TESTS.joinpath(*packages, f"test_{name}.py")


def test_every_module_has_a_test_module_of_its_own() -> None:
    missing = [
        f"{module} -> {mirror(module).relative_to(TESTS.parent)}"
        for module in MODULES
        if module not in UNMIRRORED and not mirror(module).is_file()
    ]

    assert missing == []


def test_the_unmirrored_list_names_only_modules_still_without_one() -> None:
    # An entry whose module is gone, or whose test module now exists, is stale.
    stale = [
        module
        for module in UNMIRRORED
        if module not in MODULES
        or (MODULES[module].name != "__init__.py" and mirror(module).is_file())
    ]

    assert stale == []
