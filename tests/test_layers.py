"""The import graph of rsjax/, built from the source (every import, inside functions too),
against the layer order of ``rsjax.LAYERS``: no module imports a higher layer, no import
circle, no job imports another job (only the registry ``rsjax.jobs``), and the TFDS builders
import the library, never the other way round (only ``rsjax.tfds_builders`` loads them)."""

from __future__ import annotations

import ast
import pathlib

import rsjax

REPO = pathlib.Path(__file__).resolve().parents[1]


def _modules(package: str) -> dict[str, pathlib.Path]:
    out = {}
    for f in (REPO / package).rglob("*.py"):
        parts = f.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


MODULES = _modules("rsjax")


def _targets(module: str, path: pathlib.Path) -> set[str]:
    """The modules ``module`` imports (rsjax modules and the top-level tfds_builders package)."""
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for n in names:
            if n.split(".")[0] == "tfds_builders":
                out.add("tfds_builders")
                continue
            while n and n not in MODULES:
                n = n.rpartition(".")[0]
            if n and n != module:
                out.add(n)
    return out


GRAPH = {m: _targets(m, p) for m, p in MODULES.items()}


def _layer(module: str) -> int | None:
    best = None
    for i, names in enumerate(rsjax.LAYERS):
        for n in names:
            if module == n or (n != "rsjax" and module.startswith(n + ".")):
                if best is None or len(n) > best[1]:
                    best = (i, len(n))
    return None if best is None else best[0]


def test_every_module_has_a_layer():
    assert [m for m in MODULES if _layer(m) is None] == []


def test_no_import_of_a_higher_layer():
    up = [
        f"{m} (layer {_layer(m)}) -> {t} (layer {_layer(t)})"
        for m, ts in GRAPH.items()
        for t in ts
        if t in MODULES and _layer(t) > _layer(m)
    ]
    assert up == []


def test_no_import_circle():
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert circles == []


def test_jobs_import_no_other_job():
    side = [
        f"{m} -> {t}"
        for m, ts in GRAPH.items()
        if m.startswith("rsjax.jobs.")
        for t in ts
        if t.startswith("rsjax.jobs.")
    ]
    assert side == []


def test_the_builders_import_the_library_not_the_other_way_round():
    # rsjax.tfds_builders loads them by name (importlib, after checking the package's path)
    assert sorted(m for m, ts in GRAPH.items() if "tfds_builders" in ts) == []
    common = ast.parse((REPO / "tfds_builders" / "_common.py").read_text())
    assert any(isinstance(n, ast.ImportFrom) and n.module == "rsjax.data.images" for n in ast.walk(common))


def test_the_graph_is_not_empty():  # a broken parser would pass the tests above vacuously
    assert len(MODULES) > 60 and sum(map(len, GRAPH.values())) > 200
    assert "rsjax.data.op_registry" in GRAPH["rsjax.data.augment"]


# --------------------------------------------------------------------------------------
# Hygiene: no definition nothing uses
# --------------------------------------------------------------------------------------
# Where a name may be used: the library, its tests, configs, builders, notebooks, docs, CI.
_USE_SITES = (
    "rsjax/**/*.py",
    "tests/**/*.py",
    "configs/**/*.py",
    "tfds_builders/**/*.py",
    "colab/*.ipynb",
    "docs/*.md",
    "README.md",
    ".ci/**/*",
    "pyproject.toml",
)


def _top_level_definitions() -> dict[str, list[str]]:
    """``{name: [files]}`` of the module-level functions, classes and UPPER_CASE constants of
    rsjax/, except dunders and definitions registered by a decorator (op implementations)."""
    out: dict[str, list[str]] = {}
    for path in sorted((REPO / "rsjax").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.decorator_list:
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()]
            for name in names:
                if not (name.startswith("__") and name.endswith("__")):
                    out.setdefault(name, []).append(str(path.relative_to(REPO)))
    return out


def test_every_definition_is_used_somewhere():
    """A module-level definition of rsjax/ that no file of the repository names besides its own
    definition is dead code: remove it (or use it). Counted by whole-word occurrences."""
    import collections
    import re

    words = collections.Counter(
        w
        for pattern in _USE_SITES
        for p in REPO.glob(pattern)
        if p.is_file()
        for w in re.findall(r"\w+", p.read_text(errors="ignore"))
    )
    unused = [
        f"{name} ({', '.join(files)})" for name, files in _top_level_definitions().items() if words[name] <= len(files)
    ]
    assert not unused, f"defined but never used: {unused}"


def _function_level_imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """``(line, source line)`` of every import inside a function of ``path`` with no comment on
    any of its lines or on the line above (the comment says why it is not at module top)."""
    lines = path.read_text().splitlines()
    out = []
    for fn in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                span = lines[max(node.lineno - 2, 0) : node.end_lineno]
                if not any("#" in line for line in span):
                    out.append((node.lineno, lines[node.lineno - 1].strip()))
    return out


def test_imports_sit_at_module_top_unless_a_comment_says_why():
    """An import inside a function hides an arrow of the graph from a reader (and used to hide
    circles): rsjax/ imports at module top, except where a comment gives the reason (an optional
    or heavy dependency, jax kept out of a numpy-only path)."""
    hidden = [
        f"{p.relative_to(REPO)}:{n}: {src}"
        for p in sorted((REPO / "rsjax").rglob("*.py"))
        for n, src in _function_level_imports(p)
    ]
    assert not hidden, "imports inside functions without a comment saying why:\n" + "\n".join(hidden)


def test_the_import_rule_sees_a_hidden_import(tmp_path):  # the check above must be able to fail
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import os\n    return os\n\n\ndef g():\n    import torch  # optional dependency\n")
    assert _function_level_imports(f) == [(2, "import os")]
