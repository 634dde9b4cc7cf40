"""The layering of ``tldr_index`` and ``connectors``, read from the source with ``ast``.

Layers (docs/architecture.md): the bottom layer imports nothing above it; ``connectors`` imports
only the bottom layer; the engine maths never imports ``connectors`` or a pipeline; the pipelines
(``shrink``, ``reindex``, serving and evaluation) sit on both; the CLI sits on top. On top of that:
no import circle (function-level imports count), no private name (``_x``) imported from another
module, no module over 700 lines, and no store module imported outside ``connectors``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tldr_index", "connectors")
MAX_LINES = 700

BOTTOM = {"version", "errors", "joblock", "validation", "artifact", "progress", "oserrors", "threads",
          "faults", "tables"}
ENGINE = {"vectors", "knn", "faiss_utils", "losses", "optim", "model", "trainer", "reducer", "base",
          "baselines", "pca", "qat", "quantizer", "codecs", "compact", "comparisons",
          "store_codecs", "code_index", "recall_table", "fastscan_lists", "linear"}
CLI = {"cli", "__main__"}
STORE_MODULES = {"connectors.lance_store", "connectors.parquet_store", "connectors.qdrant_store"}


def layer(module: str) -> str:
    """The layer of a module name: bottom, connectors, engine, pipeline, cli or api (the package)."""
    parts = module.split(".")
    if parts[0] == "connectors":
        return "connectors"
    if module == "tldr_index":
        return "api"
    head = parts[1]
    if head in BOTTOM:
        return "bottom"
    if head in ENGINE:
        return "engine"
    if head in CLI:
        return "cli"
    return "pipeline"


#: Which layers each layer may import.
ALLOWED = {
    "bottom": {"bottom"},
    "connectors": {"bottom", "connectors"},
    "engine": {"bottom", "engine"},
    "pipeline": {"bottom", "connectors", "engine", "pipeline"},
    "cli": {"bottom", "connectors", "engine", "pipeline", "cli", "api"},
    "api": {"bottom", "engine", "pipeline"},
}


def modules(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts.pop()
            out[".".join(parts)] = (path, is_pkg)
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:`` (not run, so not an import)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                for inner in ast.walk(sub):
                    skip.add(id(inner))
    return skip


def imports(mods: dict[str, tuple[Path, bool]]) -> list[tuple[str, str, str | None, int]]:
    """Every project import: (importer, imported module, imported name or None, line)."""
    out = []
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_nodes(tree)
        here = mod.split(".") if is_pkg else mod.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in PACKAGES:
                        out.append((mod, a.name, None, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] not in PACKAGES:
                    continue
                for a in node.names:
                    full = f"{target}.{a.name}"
                    if full in mods:
                        out.append((mod, full, None, node.lineno))
                    else:
                        out.append((mod, target, a.name, node.lineno))
    return out


def _known(module: str, mods) -> str:
    while module and module not in mods:
        module = module.rpartition(".")[0]
    return module


def graph(mods, imps) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for src, tgt, _name, _line in imps:
        tgt = _known(tgt, mods)
        if tgt and tgt != src:
            edges[src].add(tgt)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@pytest.fixture(scope="module")
def project():
    mods = modules()
    imps = imports(mods)
    return mods, imps


def test_the_reader_sees_every_kind_of_import(tmp_path):
    """The checks below are only as good as the import reader: check it on a small tree."""
    pkg = tmp_path / "tldr_index"
    (pkg / "sub").mkdir(parents=True)
    (tmp_path / "connectors").mkdir()
    (tmp_path / "connectors" / "__init__.py").write_text("from tldr_index import errors\n")
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from .sub.mod import _hidden\n")
    (pkg / "sub" / "__init__.py").write_text("from . import mod\n")
    (pkg / "sub" / "mod.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import knn\n"
        "import tldr_index.errors\nfrom ..errors import f\n_hidden = 1\n")
    (pkg / "knn.py").write_text("")
    mods = modules(tmp_path)
    imps = imports(mods)
    assert ("tldr_index.errors", "tldr_index.sub.mod", "_hidden", 2) in imps
    assert ("tldr_index.sub", "tldr_index.sub.mod", None, 1) in imps
    assert ("connectors", "tldr_index.errors", None, 1) in imps
    assert not any(t == "tldr_index.knn" for _s, t, _n, _l in imps)  # TYPE_CHECKING only
    assert cycles(graph(mods, imps)) == [["tldr_index.errors", "tldr_index.sub.mod"]]
    assert layer("tldr_index.sub.mod") == "pipeline" and layer("connectors") == "connectors"


def test_no_import_circle(project):
    mods, imps = project
    found = cycles(graph(mods, imps))
    assert not found, "\n".join(" <-> ".join(c) for c in found)


def test_imports_point_down_the_layers(project):
    mods, imps = project
    bad = []
    for src, tgt, _name, line in imps:
        tgt = _known(tgt, mods)
        if tgt and tgt != src and layer(tgt) not in ALLOWED[layer(src)]:
            bad.append(f"{src}:{line} ({layer(src)}) imports {tgt} ({layer(tgt)})")
    assert not bad, "\n".join(bad)


def test_connectors_import_only_the_bottom_layer(project):
    mods, imps = project
    bad = [f"{s}:{line} imports {t}" for s, t, _n, line in imps
           if s.startswith("connectors") and t.startswith("tldr_index")
           and layer(_known(t, mods)) != "bottom"]
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_a_module(project):
    mods, imps = project
    bad = []
    for src, tgt, name, line in imps:
        if _known(tgt, mods) == src:
            continue
        if (name and _private(name)) or any(_private(part) for part in tgt.split(".")):
            bad.append(f"{src}:{line} imports {tgt}{'.' + name if name else ''}")
    assert not bad, "\n".join(bad)


def test_store_modules_are_used_only_inside_connectors(project):
    """The engine and the pipelines reach a store only through ``connectors`` and its base
    classes: adding a store touches one module."""
    mods, imps = project
    bad = [f"{s}:{line} imports {t}" for s, t, _n, line in imps
           if not s.startswith("connectors") and _known(t, mods) in STORE_MODULES]
    assert not bad, "\n".join(bad)


def test_no_module_over_700_lines(project):
    mods, _ = project
    big = {m: n for m, (p, _) in mods.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, "\n".join(f"{m}: {n} lines" for m, n in big.items())
