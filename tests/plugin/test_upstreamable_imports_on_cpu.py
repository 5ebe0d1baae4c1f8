"""Upstreamable code never imports plugin-only code.

The patch series copies ``routing/``, ``cpu/``, ``objectives.py`` and ``losses.py`` into verl's tree, where
verl-stable's plugin-only packages (its touches of verl and vLLM, the apps, the lab, the config check, the
entry points) do not exist. Every import is read from the source, function-level ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "verl_stable"
UPSTREAMABLE = ("routing", "cpu", "objectives.py", "losses.py")
PLUGIN_ONLY = ("integration", "apps", "lab", "validation", "plugin", "cli", "main")


def imported_names(source: str, module: str) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every import in ``source``, relative ones resolved against ``module``; a
    ``from a import b`` yields ``a`` and ``a.b`` (``b`` may be a submodule)."""
    package = module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            parent = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, parent))
            found += [(node.lineno, f"{parent}.{alias.name}") for alias in node.names]
    return found


def plugin_only_imports(source: str, module: str) -> list[str]:
    hits = []
    for line, name in imported_names(source, module):
        parts = name.split(".")
        if parts[0] == "verl_stable" and len(parts) > 1 and parts[1] in PLUGIN_ONLY:
            hits.append(f"{module}:{line} imports {name}")
    return sorted(set(hits))


def upstreamable_modules() -> list[tuple[str, Path]]:
    files = []
    for entry in UPSTREAMABLE:
        path = PACKAGE / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    # a package's __init__ keeps its name here, so that its relative imports resolve inside the package
    return [(".".join(["verl_stable", *f.relative_to(PACKAGE).with_suffix("").parts]), f) for f in files]


def test_upstreamable_code_imports_no_plugin_only_module():
    modules = upstreamable_modules()
    assert {m for m, _ in modules} >= {"verl_stable.routing.__init__", "verl_stable.cpu.__init__", "verl_stable.losses"}
    hits = [hit for module, f in modules for hit in plugin_only_imports(f.read_text(), module)]
    assert not hits, "upstreamable code imports plugin-only code:\n" + "\n".join(hits)


@pytest.mark.parametrize(
    "source",
    [
        "import verl_stable.integration.agent_loop\n",
        "from verl_stable.apps import console\n",
        "from verl_stable import validation\n",
        "def f():\n    from verl_stable.lab.report import NULL_MEANS\n",
        "from ..integration import fsdp_engine\n",
        "from .. import plugin\n",
    ],
)
def test_the_check_sees_every_form_of_a_plugin_only_import(source):
    assert plugin_only_imports(source, "verl_stable.routing.fsdp")


def test_the_check_leaves_upstreamable_and_outside_imports_alone():
    source = (
        "import verl.utils.device\nfrom verl_stable.routing.routes import Routes\nfrom . import hf\n"
        "from verl_stable import objectives\nfrom .integration_notes import x\n"
    )
    assert plugin_only_imports(source, "verl_stable.routing.fsdp") == []
