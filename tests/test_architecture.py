"""The shape of the code, checked: layers without import cycles, all SQL in the store, small modules.

Each check walks ``oaasd/`` with ``ast`` and counts every import, also those
inside functions and under ``TYPE_CHECKING``: a lazy import that dodges a
cycle is still an arrow. Set OAAS_ARCH_ROOT to check another checkout (the
checks print what they find on the tree before the redesign).
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

ROOT = Path(os.environ.get("OAAS_ARCH_ROOT", Path(__file__).resolve().parent.parent))
PACKAGE = ROOT / "oaasd"
MAX_LINES = 500
MAX_TOP_FILES = 12
SQL = re.compile(r"^\s*(SELECT\s.+\sFROM\s|INSERT\s+(OR\s+\w+\s+)?INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s"
                 r"|CREATE\s+(TABLE|INDEX|TRIGGER)\s|ALTER\s+TABLE\s)", re.I | re.S)
# Layers, top down: a module may import its own layer and any layer below it, never one above.
LAYERS = [
    ("cli", ["oaasd.cli", "oaasd.__main__"]),
    ("edges", ["oaasd.http", "oaasd.client"]),
    ("service", ["oaasd.service", "oaasd.tuning.driver", "oaasd.tuning.workers", "oaasd.tuning.trials",
                 "oaasd.pipeline.loop", "oaasd.pipeline.actuators", "oaasd.pipeline.sources"]),
    ("io", ["oaasd.store", "oaasd.launchers", "oaasd.sim"]),
    ("cores", ["oaasd.core", "oaasd.tuning", "oaasd.pipeline"]),
    ("vocabulary", ["oaasd.ports", "oaasd.states", "oaasd.models", "oaasd.errors", "oaasd.config", "oaasd.gpus"]),
]
PURE = ["oaasd.core", "oaasd.tuning.space", "oaasd.tuning.gp", "oaasd.tuning.acquisition", "oaasd.tuning.samplers",
        "oaasd.tuning.pruners", "oaasd.tuning.pareto", "oaasd.tuning.tuner", "oaasd.pipeline.model",
        "oaasd.pipeline.options", "oaasd.pipeline.solver", "oaasd.pipeline.greedy", "oaasd.pipeline.pareto",
        "oaasd.pipeline.predictors", "oaasd.pipeline.adapt"]
IMPURE = ("asyncio", "aiohttp", "aiosqlite", "asyncssh")


def modules() -> dict[str, tuple[Path, ast.Module]]:
    """Every module of the package: dotted name -> (file, parsed tree)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = (path, ast.parse(path.read_text(), str(path)))
    return out


def imports(name: str, path: Path, tree: ast.Module, known: frozenset[str] = frozenset()) -> set[str]:
    """Every module name ``name`` imports (absolute), wherever the import statement sits.

    ``from package import submodule`` is an arrow to the submodule only (as import-linter counts it).
    """
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            subs = {f"{target}.{a.name}" for a in node.names} & known
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    """The import graph among oaasd's own modules."""
    mods = modules()
    known = frozenset(mods)
    return {name: {m for m in imports(name, *mods[name], known) if m in mods and m != name} for name in mods}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for start in g:
        if start in index:
            continue
        work = [(start, iter(sorted(g[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def layer_of(name: str) -> int | None:
    """The index of the most specific layer prefix matching ``name`` (0 is the top)."""
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and p.count(".") > depth:
                best, depth = i, p.count(".")
    return best


def test_no_import_cycle_among_oaasd_modules():
    found = cycles(graph())
    assert not found, "import cycles (counting lazy and TYPE_CHECKING imports):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_every_module_is_in_a_layer_and_imports_only_downwards():
    g = graph()
    unplaced = [m for m in g if m != "oaasd" and layer_of(m) is None]
    assert not unplaced, f"modules in no layer: {unplaced}"
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m in sorted(g) if m != "oaasd" for d in sorted(g[m])
              if d != "oaasd" and layer_of(d) < layer_of(m)]
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


def test_pure_cores_import_no_event_loop_nor_io_library():
    mods = modules()
    bad = [f"{name} imports {m}" for name, (path, tree) in mods.items()
           if any(name == p or name.startswith(p + ".") for p in PURE)
           for m in sorted(imports(name, path, tree)) if m.split(".")[0] in IMPURE]
    assert not bad, "\n".join(bad)


def test_sql_text_lives_only_in_the_store():
    outside = []
    for name, (path, tree) in modules().items():
        if name.startswith("oaasd.store"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value):
                outside.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    assert not outside, "SQL outside oaasd/store/:\n" + "\n".join(outside)


def test_no_module_is_over_500_lines_and_the_top_level_stays_small():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    top = sorted(p.name for p in PACKAGE.iterdir() if p.is_file() and p.suffix == ".py")
    assert len(top) <= MAX_TOP_FILES, f"{len(top)} files directly in oaasd/: {top}"
