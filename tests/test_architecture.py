"""The package's shape: no import cycles, dependencies only downwards, plug-ins by registration.

The import graph is read with `ast` from the sources (imports under `if TYPE_CHECKING:` are not
run and are left out; imports inside functions count). A failure names the offending edge.
"""

import ast
import pathlib

import pytest

from pqm_jax import models
from pqm_jax.data import corpus, issues, sources
from pqm_jax.data import spec as data_spec

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pqm_jax"

# Layers a module may not import (prefix -> forbidden prefixes).
FORBIDDEN = {
    "pqm_jax.quant": ("pqm_jax.",),  # except itself (filtered below)
    "pqm_jax.models": ("pqm_jax.train", "pqm_jax.run", "pqm_jax.data", "pqm_jax.eval"),
    "pqm_jax.text": ("pqm_jax.train", "pqm_jax.run", "pqm_jax.data", "pqm_jax.eval"),
    "pqm_jax.data": ("pqm_jax.train", "pqm_jax.run", "pqm_jax.eval", "pqm_jax.models"),
    "pqm_jax.train": ("pqm_jax.run", "pqm_jax.eval"),
    "pqm_jax.testing": ("pqm_jax.run", "pqm_jax.eval"),
    "pqm_jax.convert": ("pqm_jax.run", "pqm_jax.eval", "pqm_jax.train"),
    "pqm_jax.run": ("pqm_jax.eval",),
}
_CORE = ("pqm_jax.models", "pqm_jax.train", "pqm_jax.run", "pqm_jax.data", "pqm_jax.eval")
FORBIDDEN |= {m: _CORE for m in ("pqm_jax.layers", "pqm_jax.lora", "pqm_jax.sharding")}
# The CLIs' own module: no library module may import it (nor the CLI scripts themselves); the
# programs behind the commands (`pqm`, train.py, evaluate.py) live in CLI_PACKAGE, which is CLI
# code itself: it may import pqm_jax.cli, and no library module may import it.
CLI_MODULES = ("pqm_jax.cli", "train", "evaluate")
CLI_PACKAGE = "pqm_jax.commands"
# A run folder's layout is spelled in one module only.
LAYOUT_MODULE = "pqm_jax.run.workdir"
LAYOUT_NAMES = ("ckpt", "features", "manifest.json", "metrics.jsonl", "tb", "chunk_")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def _resolve(name: str) -> str | None:
    """The pqm_jax module an imported name refers to (a module, or the module defining it)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    skip = _type_checking_lines(tree)
    out = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for n in names:
            if n.split(".")[0] in CLI_MODULES:
                out.add(n.split(".")[0])
            target = _resolve(n) if n.startswith("pqm_jax") else None
            if target and target != module:
                out.add(target)
    # `from pqm_jax.x import y` also names pqm_jax.x (its __init__ runs): keep only the deepest
    return {m for m in out if not any(o != m and o.startswith(m + ".") for o in out)} | {
        m for m in out if m in CLI_MODULES
    }


GRAPH = {m: _imports(m) for m in MODULES}


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if n not in MODULES:
                continue
            if state.get(n) == 1:
                cycle = [*stack[stack.index(n) :], n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(layer):
    bad = []
    for m, deps in GRAPH.items():
        if m != layer and not m.startswith(layer + "."):
            continue
        for d in deps:
            if d.startswith(layer + ".") or d == layer:
                continue
            if d in ("pqm_jax", "pqm_jax.errors") and layer != "pqm_jax.quant":
                continue  # the package root (PQMWarning) and the shared error type
            if any(d == f or d.startswith(f) for f in FORBIDDEN[layer]):
                bad.append(f"{m} -> {d}")
    assert not bad, f"{layer} imports a layer above it: {bad}"


def _is_cli(module: str) -> bool:
    return module in CLI_MODULES or module == CLI_PACKAGE or module.startswith(CLI_PACKAGE + ".")


def test_no_library_module_imports_a_cli():
    bad = [f"{m} -> {d}" for m, deps in GRAPH.items() if not _is_cli(m) for d in deps if _is_cli(d)]
    assert not bad, bad
    assert "pqm_jax.cli" in GRAPH["pqm_jax.commands.train"]  # the exemption is not vacuous


def test_the_run_folder_layout_is_spelled_in_one_module():
    bad = []
    for m, path in MODULES.items():
        if m == LAYOUT_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value in LAYOUT_NAMES:  # "chunk_" is the head of f"chunk_{i:04d}"
                    bad.append(f"{m}:{node.lineno} {node.value!r}")
    assert not bad, f"run-folder names outside {LAYOUT_MODULE}: {bad}"


def test_the_graph_sees_real_edges():
    """Guards the checks above against a parser that finds nothing."""
    assert "pqm_jax.models.whisper.model" in GRAPH["pqm_jax.models.whisper.family"]
    assert "pqm_jax.run.stages" in GRAPH["pqm_jax.run.pipeline"]
    assert "pqm_jax.data.corpus" not in GRAPH["pqm_jax.data.sources"]  # TYPE_CHECKING only


class _EchoFamily(models.Family):
    """A family known to nobody but this test: registering it is all a new family needs."""

    name = "echo"
    models = ("echo-tiny",)
    config_type = tuple
    max_tokens = 32
    lora_targets = (r"proj$",)


def test_a_new_family_is_one_registration():
    family = models.register(_EchoFamily())
    try:
        spec = models.ModelSpec(name="echo-tiny", max_tokens=32)
        assert spec.family is family and models.of((1, 2)) is family
        assert "echo-tiny" in models.model_names()
        with pytest.raises(ValueError, match=r"max_tokens must be in \[4, 32\]"):
            models.ModelSpec(name="echo-tiny", max_tokens=33)
    finally:
        models.unregister("echo")


def test_a_new_corpus_source_is_one_registration(tmp_path):
    seen = {}

    def build(spec, data_dir, report):
        seen["data_dir"] = data_dir
        return corpus.Corpus(targets={})  # no audio needed to prove the dispatch

    sources.register(sources.Source(name="echo", build=build))
    try:
        spec = data_spec.DataSpec(source="echo")
        with pytest.raises(ValueError, match="no target speakers found"):
            corpus.build(spec, tmp_path, report=issues.InputReport())
        assert seen["data_dir"] == tmp_path
    finally:
        sources.unregister("echo")
    with pytest.raises(ValueError, match=r"data\.source='echo' is not one of .*synth"):
        data_spec.DataSpec(source="echo")


def test_registries_hold_the_builtins():
    assert {f.name for f in models.families()} >= {"whisper", "conformer"}
    assert set(sources.names()) >= {"synth", "fsdd", "librispeech", "tedlium", "manifest"}
