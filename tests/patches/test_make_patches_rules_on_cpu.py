"""The patch series builder's transformations on small inputs (scripts/patches/build.py): import rewriting by
the module map, plugin-only blocks dropped by their markers, loud failures for anything not declared (unmapped
imports, missing anchors, missing definitions, unpaired markers, a module copied twice)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from patches import build as mp  # noqa: E402
from patches.series import PATCHES  # noqa: E402

sys.path.pop(0)

MAPPING = {
    "verl_stable.objectives": "verl.trainer.ppo.minirl_objectives",
    "verl_stable.routing": "verl.utils.routing_replay",
    "verl_stable.routing.hf": "verl.utils.routing_replay.hf",
    "verl_stable.routing.fsdp": "verl.workers.engine.fsdp.router_replay",
    "tiny_moe": "tests.utils.routing_replay.tiny_moe",
}


def test_imports_are_rewritten_by_the_module_map():
    src = (
        "from verl_stable import objectives\n"
        "from verl_stable.routing.hf import ADAPTERS, find_routers as fr\n"
        "import verl_stable.routing.fsdp as rr\n"
        "from tiny_moe import VOCAB\n"
        "def f():\n"
        "    from verl_stable.routing import Routes  # lazy\n"
        '    """See ``verl_stable.routing.hf.ADAPTERS``."""\n'
    )
    out = mp.rewrite_python(src, "x.py", MAPPING)
    assert "from verl.trainer.ppo import minirl_objectives as objectives\n" in out
    assert "from verl.utils.routing_replay.hf import ADAPTERS, find_routers as fr\n" in out
    assert "import verl.workers.engine.fsdp.router_replay as rr\n" in out
    assert "from tests.utils.routing_replay.tiny_moe import VOCAB\n" in out
    assert "    from verl.utils.routing_replay import Routes  # lazy\n" in out
    assert "``verl.utils.routing_replay.hf.ADAPTERS``" in out
    assert "verl_stable" not in out


def test_an_unmapped_project_import_fails_loudly():
    with pytest.raises(mp.GenerationError, match="no module map entry for verl_stable.cpu"):
        mp.rewrite_python("from verl_stable.cpu import activate_if_requested\n", "x.py", MAPPING)


def test_dropped_definitions_leave_all_and_must_exist():
    src = '__all__ = [\n    "keep",\n    "install",\n]\n\n\ndef keep():\n    pass\n\n\n# installs it\ndef install():\n    pass\n'
    out = mp.drop_defs(src, "x.py", ("install",))
    assert "install" not in out and "def keep" in out and '"keep"' in out
    with pytest.raises(mp.GenerationError, match="no top-level definition named"):
        mp.drop_defs(src, "x.py", ("gone",))


def test_an_edit_whose_anchor_is_missing_fails(tmp_path):
    (tmp_path / "f.py").write_text("a = 1\n")
    patch = mp.Patch(slug="s", title="t", ops=[mp.Edit("f.py", "b = 2\n", "b = 3\n")])
    with pytest.raises(mp.GenerationError, match="anchor found 0 times"):
        mp.apply_patch_ops(tmp_path, patch, MAPPING)


def test_long_docstring_lines_are_rewrapped_but_code_strings_are_not():
    long = "word " * 30
    src = f'def f():\n    """Doc.\n\n    {long}\n    """\n    run("""\n    {long}\n    """)\n'
    out = mp.wrap_long_prose(src, "x.py")
    lines = out.splitlines()
    assert max(len(line) for line in lines[:5]) <= 120
    assert any(len(line) > 120 for line in lines[5:])


def test_plugin_only_blocks_are_dropped_in_code_and_docstrings():
    src = (
        '"""Doc.\n\n.. plugin-only: begin\nRegistration: the plugin.\n.. plugin-only: end\n"""\n'
        "def f():\n    a = 1\n    # plugin-only: begin\n    import plugin\n\n    plugin.install()\n"
        "    # plugin-only: end\n    return a\n"
    )
    out = mp.strip_plugin_only(src, "x.py")
    assert out == '"""Doc.\n\n"""\ndef f():\n    a = 1\n    return a\n'


@pytest.mark.parametrize(
    "src",
    ["# plugin-only: begin\nx = 1\n", "x = 1\n# plugin-only: end\n", "# plugin-only: begin\n# plugin-only: begin\n"],
)
def test_an_unpaired_plugin_only_marker_fails(src):
    with pytest.raises(mp.GenerationError, match="plugin-only"):
        mp.strip_plugin_only(src, "x.py")


def test_a_module_copied_to_two_places_fails():
    twice = [mp.Copy("verl_stable/a.py", "verl/a.py"), mp.Copy("verl_stable/a.py", "verl/b.py")]
    patch = mp.Patch(slug="s", title="t", ops=twice)
    with pytest.raises(mp.GenerationError, match="copied twice"):
        mp.build_module_map([patch])


def test_every_declared_copy_source_exists():
    for patch in PATCHES:
        for op in mp.expand(patch.ops):
            if isinstance(op, mp.Copy):
                assert (mp.ROOT / op.src).is_file(), op.src


def test_ruff_formats_new_files_and_fails_on_problems_in_touched_ones(tmp_path):
    """New files are fixed and formatted; a file verl already has (changed by an Edit) is only checked, with
    ``ruff check`` and ``ruff format --check``, and any problem fails generation."""
    (tmp_path / "pyproject.toml").write_text('[tool.ruff.lint]\nselect = ["I"]\n')
    unsorted = "import sys\nimport os\n\nprint(os, sys)\n"
    (tmp_path / "new.py").write_text(unsorted)
    mp.ruff(tmp_path, ["new.py"], ["new.py"])
    assert (tmp_path / "new.py").read_text().startswith("import os\nimport sys\n")
    (tmp_path / "edited.py").write_text(unsorted)
    with pytest.raises(mp.GenerationError, match="I001"):
        mp.ruff(tmp_path, [], ["edited.py"])
    assert (tmp_path / "edited.py").read_text() == unsorted  # not fixed behind the series' back
    (tmp_path / "edited.py").write_text("x = {  'a':1 }\n")
    with pytest.raises(mp.GenerationError, match="format --check"):
        mp.ruff(tmp_path, [], ["edited.py"])
