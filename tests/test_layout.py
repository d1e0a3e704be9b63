"""The package rules of core/ (README, Layout): who may import whom, and no Streamlit anywhere in core."""

from __future__ import annotations

import ast

from conftest import ROOT

CORE = ROOT / "core"
SHARED = {"config", "errors"}  # settings and typed errors: every package uses them
# package -> the packages of core it may import (besides itself and SHARED)
ALLOWED = {
    "verification": set(),
    "i18n": set(),
    "storage": {"verification"},
    # workflows and training hand long work to the queue (jobs.submit_*); jobs runs them, importing
    # them only inside its task functions, so neither import runs the other at load time
    "workflows": {"jobs", "storage", "verification"},
    "training": {"jobs", "storage", "verification"},
    "jobs": {"workflows", "training", "storage", "verification"},
    "api": {"jobs", "workflows", "training", "storage", "verification", "i18n"},
    "dashboard": {"jobs", "workflows", "training", "storage", "verification", "i18n"},
    "benchmarks": {"api", "jobs", "workflows", "training", "storage", "verification", "i18n"},
}


def _imports(path):
    """Every module name imported anywhere in the file (top level or inside functions)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "core":
                yield from (f"core.{alias.name}" for alias in node.names)
            else:
                yield node.module


def test_every_package_is_declared():
    packages = {p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(ALLOWED), f"add {sorted(packages - set(ALLOWED))} to ALLOWED with its rule"


def test_packages_import_only_what_the_layout_allows():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((CORE / package).rglob("*.py")):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] != "core" or len(parts) < 2:
                    continue
                target = parts[1]
                if target not in {package, *SHARED, *allowed}:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_core_never_imports_streamlit():
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted(CORE.rglob("*.py"))
        if any(name.split(".")[0] == "streamlit" for name in _imports(path))
    ]
    assert not offenders, offenders


def test_each_package_says_what_it_holds():
    for package in ALLOWED:
        init = CORE / package / "__init__.py"
        if init.exists():
            assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), (
                f"{package} has no docstring"
            )


def _module_name(path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _core_imports(path, modules: set[str]):
    """core modules the file imports, at load time or inside its functions (a cycle through a
    function-level import is still two modules that need each other)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        yield from (n for n in names if n in modules)


def test_no_import_cycles_between_modules():
    paths = sorted(CORE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph = {_module_name(p): set(_core_imports(p, modules)) - {_module_name(p)} for p in paths}
    done, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node) :] + [node]))
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if not nxt.startswith(node + ".") and not node.startswith(nxt + "."):
                # a package and its own modules may refer to each other
                visit(nxt)
        stack.pop()
        done.add(node)

    for module in sorted(graph):
        visit(module)


# The dashboard's side: pages reach core only through their services.
PAGE_MAY_IMPORT = ("ui", "core.dashboard", "core.i18n", "core.errors")
# ui/ also reads the settings; ui/resources.py alone builds the process's resources (the database,
# the photo store, the model registry and engine) from the layers below.
UI_MAY_IMPORT = (*PAGE_MAY_IMPORT, "core.config")
RESOURCES_MAY_IMPORT = (*UI_MAY_IMPORT, "core.storage", "core.training", "core.verification")


def _project_imports(path):
    """Imports of this project's packages (core, ui, pages), top level or inside functions."""
    return [name for name in _imports(path) if name.split(".")[0] in ("core", "ui", "pages")]


def _outside(names, allowed) -> list[str]:
    return [n for n in names if not any(n == a or n.startswith(a + ".") for a in allowed)]


def test_pages_and_ui_reach_core_only_through_the_dashboard_services():
    wrong = []
    for path in [ROOT / "Home.py", *sorted((ROOT / "pages").glob("*.py"))]:
        wrong += [
            f"{path.relative_to(ROOT)} imports {n}" for n in _outside(_project_imports(path), PAGE_MAY_IMPORT)
        ]
    for path in sorted((ROOT / "ui").glob("*.py")):
        allowed = RESOURCES_MAY_IMPORT if path.name == "resources.py" else UI_MAY_IMPORT
        wrong += [f"{path.relative_to(ROOT)} imports {n}" for n in _outside(_project_imports(path), allowed)]
    assert not wrong, "\n".join(wrong)


def test_pages_run_no_queries_of_their_own():
    """A page asks its service; it builds no SQL (select, insert, ...) itself."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in [
            ROOT / "Home.py",
            *sorted((ROOT / "pages").glob("*.py")),
            *sorted((ROOT / "ui").glob("*.py")),
        ]
        if any(name.split(".")[0] == "sqlalchemy" and name != "sqlalchemy.exc" for name in _imports(path))
    ]
    assert not offenders, offenders


def test_the_dashboard_services_write_no_rows_themselves():
    """core.dashboard adds, deletes and updates rows only by calling workflows or storage functions."""
    writes = []
    for path in sorted((CORE / "dashboard").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sqlalchemy"):
                writes += [
                    f"{path.relative_to(ROOT)} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name in ("insert", "update", "delete")
                ]
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("add", "add_all", "delete", "merge", "bulk_save_objects")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "session"
            ):
                writes.append(f"{path.relative_to(ROOT)}:{node.lineno} session.{node.func.attr}")
    assert not writes, "\n".join(writes)
