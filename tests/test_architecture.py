"""The package's layout: no import cycle (imports inside functions included), each head's
name in its own module and the registry only, the API docs list every registered head,
and ``skconvexattn info`` counts the heads ``to_nonconvex()`` recovers."""

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest

import skconvexattn
from skconvexattn.cli import describe
from skconvexattn.heads import registered_heads

PACKAGE = Path(skconvexattn.__file__).resolve().parent
ROOT = PACKAGE.parent
HEADS = [pytest.param(spec, id=spec.name) for spec in registered_heads()]


def _module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(package_dir=PACKAGE):
    """``{module: {modules of the package it imports}}`` from the source, every import
    statement included (those inside functions too)."""
    files = {_module_name(p): p for p in package_dir.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[: len(base) - node.level + 1]
                    mod = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    mod = node.module
                # "from pkg import sub" imports the submodule pkg.sub
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph):
    """One import cycle (a list of modules, first == last), or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = import_graph()
    assert "skconvexattn.heads.attention" in graph["skconvexattn.heads"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_mlp_head_does_not_import_the_attention_head():
    assert "skconvexattn.heads.attention" not in import_graph()["skconvexattn.heads.mlp"]


@pytest.mark.parametrize("spec", HEADS)
def test_head_named_in_its_module_the_registry_and_the_package_only(spec):
    name = spec.estimator.__name__
    files = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if name in p.read_text()
    )
    module = spec.estimator.__module__.split(".")[-1] + ".py"
    allowed = {f"heads/{module}", "heads/__init__.py", "__init__.py"}
    assert set(files) <= allowed, files


@pytest.mark.parametrize("spec", HEADS)
def test_api_docs_list_every_head_and_its_cv(spec):
    api = (ROOT / "docs" / "api.rst").read_text()
    listed = {line.strip() for line in api.splitlines()}
    assert spec.estimator.__name__ in listed and spec.estimator.__name__ + "CV" in listed


@pytest.mark.parametrize("activation", ["gated_relu", "linear"])
@pytest.mark.parametrize("spec", HEADS)
def test_info_counts_the_heads_to_nonconvex_recovers(spec, activation):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4, 3))
    y = np.arange(30) % 3
    X[:, 0, 0] += y
    est = spec.estimator(alpha=1e-2, n_gates=3, activation=activation, random_state=0,
                         max_iter=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    info = describe(est)
    net = est.to_nonconvex()
    assert info["recovered_heads"] == net.n_heads > 0
    assert info["active_blocks"] == np.unique(net.block).size
    assert info["n_weights"] == est.coef_.size and info["block_shape"] == list(est.coef_.shape)
