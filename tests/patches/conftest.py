"""The patched verl tree the tests in this directory share: built once per session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make_patches.py"
SERIES = ROOT / "patches" / "verl-0.9.1"


def load_build():
    """``scripts/patches/build.py`` (the generator's engine), imported without putting scripts/ on the path for good."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from patches import build
    finally:
        sys.path.pop(0)
    return build


@pytest.fixture(scope="session")
def patched_tree(tmp_path_factory):
    """Pristine verl 0.9.1 (the sdist, plus the files of verl's repository it lacks that the series edits:
    ``patches/base/``) with the COMMITTED series applied by ``git apply``, in order.

    The tree is a git repository: commit ``pristine`` (tagged) and one commit with the series on top, made before
    any test runs in the tree, so ``git clone`` of it gives exactly the patched files.
    """
    build = load_build()
    tree = tmp_path_factory.mktemp("patched") / "verl"
    tree.mkdir()
    build.pristine_tree(tree)
    build.git(tree, "init", "-q", "-b", "main")
    build.git(tree, "add", "-A")
    build.git(tree, "commit", "-q", "-m", "verl 0.9.1 (PyPI sdist) and patches/base")
    build.git(tree, "tag", "pristine")
    patches = sorted(str(p) for p in SERIES.glob("*.patch"))
    assert patches, f"no patches in {SERIES}"
    for patch in patches:  # in order, each on top of the previous ones
        check = subprocess.run(["git", "apply", "--check", patch], cwd=tree, capture_output=True, text=True)
        assert check.returncode == 0, f"{Path(patch).name} does not apply to verl 0.9.1 + its predecessors:\n{check.stderr}"
        subprocess.run(["git", "apply", patch], cwd=tree, check=True)
    build.git(tree, "add", "-A")
    build.git(tree, "commit", "-q", "-m", "the patch series")
    return tree
