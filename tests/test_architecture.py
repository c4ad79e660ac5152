"""Where knowledge lives (DESIGN.md §7), checked on the source: no import circle, records are a leaf,
reporting and evaluation never import training code, only bench.runs knows the run layout, no
module grows past the size a reader can hold, and no test skips because a project module is gone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "bench"
MAX_LINES = 600  # DESIGN.md: about 500, 600 at most
DATA_TEXT = {"bench.data.embedded_text", "bench.data.borderline_text"}  # the embedded data's text, not code


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        name = ".".join(p.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Project modules a file imports, at module level or inside functions."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("bench"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                deps.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name.startswith("bench")}
    return {d for d in deps if d in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("leaf,allowed", [("bench.io", set()), ("bench.records", {"bench.io"}),
                                          ("bench.precision", set()),
                                          ("bench.provenance", {"bench.config", "bench.precision"})])
def test_low_level_modules_are_leaves(leaf, allowed):
    assert GRAPH[leaf] <= allowed, f"{leaf} imports {sorted(GRAPH[leaf] - allowed)}"


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in GRAPH[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(("bench.leaderboard", "bench.report",
                                                                                 "bench.eval", "bench.metrics",
                                                                                 "bench.verify"))))
def test_reporting_and_evaluation_never_import_training(module):
    """The leaderboard renders from records only; evaluation never depends on how a variant was
    trained."""
    training = sorted(d for d in _reachable(module) if d.startswith("bench.train"))
    assert not training, f"{module} reaches {training}"


LAYOUT = re.compile(r"(?<![\w])eval/\*|record\.json\"|\.glob\([^)]*RECORD_NAME")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_runs_knows_the_run_layout(module):
    if module in ("bench.runs", "bench.records"):
        return
    code = MODULES[module].read_text()
    hits = [line.strip() for line in code.splitlines() if LAYOUT.search(line) and not line.strip().startswith("#")]
    assert not hits, f"{module} re-derives the run layout: {hits}"


@pytest.mark.parametrize("module", sorted(set(MODULES) - DATA_TEXT))
def test_no_module_over_the_size_limit(module):
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{module}: {n} lines (at most {MAX_LINES}); split it by concern"


def test_no_test_skips_a_missing_project_module():
    bad = [f"{p.name}: {line.strip()}" for p in sorted((REPO / "tests").glob("*.py"))
           for line in p.read_text().splitlines() if re.search(r"importorskip\(\s*[\"']bench", line)]
    assert not bad, bad
