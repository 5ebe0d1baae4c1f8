"""verl's own PR checks pass on pristine verl 0.9.1 with the committed patch series applied.

verl's checks are not in its sdist; reference copies live beside this repository in
``../shared/verl-upstream/`` (``special_sanity/*.py``, ``pre-commit-config.yaml``, ``workflows/*.yml``,
``PULL_REQUEST_TEMPLATE.md``, ``docs-index.rst``). Each test runs one check the way verl's pre-commit hooks and
workflows call it, from the root of a git clone of the patched tree laid out like verl's repository (the checks
in ``tests/special_sanity/``, the PR template in ``.github/``), and asserts its exit status is 0, printing the
check's output when it is not. ``check_license.py`` is the series' own version: patch 0001 adds the new files'
copyright line to verl's list, as verl's CI would run it on the PR. Each check is also shown to fail on a
deliberately bad input, so a pass means something.

Without ``../shared/verl-upstream`` (or a folder named by ``VERL_UPSTREAM_CHECKS``) the tests skip; CI has it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERIES = ROOT / "patches" / "verl-0.9.1"
#: CI: the ``shared/`` folder beside the repository; elsewhere ``VERL_UPSTREAM_CHECKS=/path/to/verl-upstream``
SHARED = Path(os.environ.get("VERL_UPSTREAM_CHECKS") or ROOT.parent / "shared" / "verl-upstream")
SANITY = SHARED / "special_sanity"

pytestmark = pytest.mark.skipif(
    not SANITY.is_dir(), reason=f"verl's PR checks are not beside this repository ({SHARED} is absent)"
)


def load_build():
    """``scripts/patches/build.py``: its git environment and ruff lookup."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from patches import build
    finally:
        sys.path.pop(0)
    return build


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VERL_PLATFORM")}
    full_env.update(env or {})
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)


def _report(res: subprocess.CompletedProcess) -> str:
    return f"exit status {res.returncode}\n--- stdout\n{res.stdout[-8000:]}\n--- stderr\n{res.stderr[-4000:]}"


def _check(name: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return _run([sys.executable, f"tests/special_sanity/{name}", *args], cwd=cwd, env=env)


def _ruff_version() -> str:
    """verl's ruff pin: the ``rev`` of the ruff-pre-commit hook in verl's pre-commit config."""
    text = (SHARED / "pre-commit-config.yaml").read_text()
    m = re.search(r"ruff-pre-commit\s*\n\s*rev:\s*\"?v?([\d.]+)\"?", text)
    assert m, "no ruff-pre-commit rev in verl's pre-commit-config.yaml"
    return m.group(1)


@pytest.fixture(scope="module")
def verl_repo(patched_tree, tmp_path_factory) -> Path:
    """A git clone of the patched tree with verl's checks in ``tests/special_sanity/`` and its PR template in
    ``.github/``, all tracked (``check_license.py`` looks at git-tracked files only)."""
    repo = tmp_path_factory.mktemp("verl-pr") / "verl"
    subprocess.run(["git", "clone", "-q", str(patched_tree), str(repo)], check=True, capture_output=True)
    sanity = repo / "tests" / "special_sanity"
    sanity.mkdir(exist_ok=True)
    for script in SANITY.glob("*.py"):
        if not (sanity / script.name).exists():  # the series' check_license.py stays
            shutil.copy(script, sanity / script.name)
    (repo / ".github").mkdir(exist_ok=True)
    shutil.copy(SHARED / "PULL_REQUEST_TEMPLATE.md", repo / ".github" / "PULL_REQUEST_TEMPLATE.md")
    build = load_build()
    build.git(repo, "add", "-A")
    build.git(repo, "commit", "-q", "-m", "verl's checks")
    return repo


@pytest.fixture(scope="module")
def series_files(patched_tree) -> dict[str, str]:
    """Path -> git status letter (A, M, D) of every file the series adds, modifies or deletes."""
    out = subprocess.run(["git", "diff", "--name-status", "--no-renames", "pristine", "HEAD"], cwd=patched_tree,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return {line.split("\t")[1]: line[0] for line in out.splitlines()}


def _patch_messages() -> list[tuple[str, str, str]]:
    """(file name, subject without ``[PATCH n/m]``, body) of each committed patch: PR title and description."""
    out = []
    for patch in sorted(SERIES.glob("*.patch")):
        text = patch.read_text()
        header, rest = text.split("\n\n", 1)
        m = re.search(r"^Subject: (.*(?:\n [^\n]*)*)", header, re.M)
        assert m, f"{patch.name}: no Subject header"
        subject = re.sub(r"\s*\n\s+", " ", m.group(1))
        subject = re.sub(r"^\[PATCH[^\]]*\]\s*", "", subject)
        out.append((patch.name, subject, rest.split("\n---\n", 1)[0]))
    assert out, f"no patches in {SERIES}"
    return out


MESSAGES = _patch_messages() if SERIES.is_dir() else []
MESSAGE_IDS = [name[:4] for name, _, _ in MESSAGES]


# ============================================================================================ reference copies
def test_the_series_base_files_are_verls():
    """``patches/base/`` (verl files the sdist lacks, which the series edits) equals the reference copies."""
    base = ROOT / "patches" / "base"
    assert (base / "docs/index.rst").read_text() == (SHARED / "docs-index.rst").read_text()
    assert (base / "tests/special_sanity/check_license.py").read_text() == (SANITY / "check_license.py").read_text()


# ============================================================================================ license headers
def test_license_headers(verl_repo):
    """pre-commit ``check-license``: ``check_license.py --directories .``."""
    res = _check("check_license.py", "--directories", ".", cwd=verl_repo)
    assert res.returncode == 0, _report(res)


def test_license_check_can_fail(verl_repo, tmp_path):
    """The same (series') check rejects a tracked file with an unlisted copyright line."""
    (tmp_path / "tests" / "special_sanity").mkdir(parents=True)
    shutil.copy(verl_repo / "tests/special_sanity/check_license.py", tmp_path / "tests/special_sanity")
    (tmp_path / "bad.py").write_text("# Copyright 2026 Someone Else\n#\n# Licensed under the Apache License\nx = 1\n")
    build = load_build()
    build.git(tmp_path, "init", "-q")
    build.git(tmp_path, "add", "-A")
    res = _check("check_license.py", "--directories", ".", cwd=tmp_path)
    assert res.returncode != 0 and "bad.py does not contain license" in res.stderr, _report(res)


# ============================================================================================ device API usage
def _device_check_tree(repo: Path, files: list[str], dest: Path) -> Path:
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / rel, dest / rel)
    return dest


def test_device_api_usage(verl_repo, series_files, tmp_path):
    """pre-commit ``check-device-api-usage``: ``check_device_api_usage.py --directory ./verl``, on the files of
    ``verl/`` the series adds or modifies (at their paths, so verl's whitelist applies as in its repository).

    verl 0.9.1's own ``verl/utils/profiler/torch_memory_profile.py``, which the series does not touch, fails the
    reference (main branch) version of the check; the series is answerable for its own files only.
    """
    touched = [f for f, s in series_files.items() if s != "D" and f.startswith("verl/") and f.endswith(".py")]
    assert "verl/workers/engine/fsdp/router_replay.py" in touched and not any("platform" in f for f in touched)
    scratch = _device_check_tree(verl_repo, touched, tmp_path / "repo")
    shutil.copytree(verl_repo / "tests" / "special_sanity", scratch / "tests" / "special_sanity")
    res = _check("check_device_api_usage.py", "--directory", "./verl", cwd=scratch)
    assert res.returncode == 0, _report(res)
    assert res.stdout.count("[CHECK]") + res.stdout.count("[SKIP]") == len(touched), _report(res)


def test_device_api_check_can_fail(verl_repo, tmp_path):
    (tmp_path / "verl" / "plugin" / "platform").mkdir(parents=True)
    (tmp_path / "verl" / "plugin" / "platform" / "platform_bad.py").write_text('"""Shaped like ``torch.cuda``."""\n')
    shutil.copytree(verl_repo / "tests" / "special_sanity", tmp_path / "tests" / "special_sanity")
    res = _check("check_device_api_usage.py", "--directory", "./verl", cwd=tmp_path)
    assert res.returncode != 0 and "platform_bad.py contains .cuda" in res.stderr, _report(res)


# ============================================================================================ ruff
def _ruff(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    build = load_build()
    version = _ruff_version()
    exe = build.find_ruff()
    got = _run([*exe, "--version"], cwd=cwd).stdout.split()[-1]
    assert got == version, f"ruff {got} installed; verl's pre-commit pins ruff {version}"
    return _run([*exe, *args], cwd=cwd, env={"RUFF_NO_CACHE": "true"})


def test_ruff_check(verl_repo):
    """pre-commit ``ruff`` (verl's pin, verl's pyproject config) on the whole patched repository."""
    res = _ruff("check", "--output-format=full", ".", cwd=verl_repo)
    assert res.returncode == 0, _report(res)


def test_ruff_format(verl_repo):
    """pre-commit ``ruff-format``: nothing to reformat."""
    res = _ruff("format", "--check", ".", cwd=verl_repo)
    assert res.returncode == 0, _report(res)


def test_ruff_can_fail(verl_repo, tmp_path):
    shutil.copy(verl_repo / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "bad.py").write_text("import sys\nimport os\n\nprint(os, sys)\n")  # I001, as a CPU-platform patch once had
    res = _ruff("check", ".", cwd=tmp_path)
    assert res.returncode != 0 and "I001" in res.stdout, _report(res)
    (tmp_path / "bad.py").write_text("x = {  'a':1 }\n")
    res = _ruff("format", "--check", ".", cwd=tmp_path)
    assert res.returncode != 0, _report(res)


# ============================================================================================ PR title / description
@pytest.mark.parametrize("name,subject,body", MESSAGES, ids=MESSAGE_IDS)
def test_pr_title(name, subject, body):
    """check-pr-title.yml: ``check_pr_title.py`` with ``PR_TITLE`` = the patch's subject line."""
    res = _run([sys.executable, str(SANITY / "check_pr_title.py")], cwd=ROOT, env={"PR_TITLE": subject})
    assert res.returncode == 0, f"{name}: {subject!r}\n" + _report(res)


def test_pr_title_check_can_fail():
    res = _run([sys.executable, str(SANITY / "check_pr_title.py")], cwd=ROOT, env={"PR_TITLE": "[routing] add: R3"})
    assert res.returncode != 0, _report(res)


def _pr_description(body: str, workspace: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"body": body}}))
    return _run([sys.executable, str(SANITY / "check_pr_description.py")], cwd=workspace,
                env={"GITHUB_EVENT_PATH": str(event), "GITHUB_WORKSPACE": str(workspace)})  # fmt: skip


@pytest.mark.parametrize("name,subject,body", MESSAGES, ids=MESSAGE_IDS)
def test_pr_description(name, subject, body, verl_repo, tmp_path):
    """check-pr-title.yml: ``check_pr_description.py`` on the PR body (the patch's commit message)."""
    res = _pr_description(body, verl_repo, tmp_path)
    assert res.returncode == 0, f"{name}\n" + _report(res)
    assert body.startswith("### What does this PR do?\n"), f"{name}: the body does not follow verl's PR template"


def test_pr_description_check_can_fail(verl_repo, tmp_path):
    res = _pr_description((SHARED / "PULL_REQUEST_TEMPLATE.md").read_text(), verl_repo, tmp_path)
    assert res.returncode != 0, _report(res)


# ============================================================================================ docs
def _toctree_entries(docs: Path) -> set[str]:
    """Every document named in a ``.. toctree::`` of an ``.rst`` file under ``docs`` (paths relative to docs/)."""
    entries: set[str] = set()
    for rst in docs.rglob("*.rst"):
        lines = rst.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() != ".. toctree::":
                continue
            for entry in lines[i + 1 :]:
                if entry.strip() and not entry.startswith((" ", "\t")):
                    break
                name = entry.strip()
                if not name or name.startswith(":"):
                    continue
                name = re.sub(r"^.*<(.+)>$", r"\1", name)  # "Title <path>"
                base = rst.parent.relative_to(docs)
                entries.add(os.path.normpath(base / re.sub(r"\.(md|rst)$", "", name)))
    return entries


def _pages_not_in_toctree(repo: Path, pages: list[str]) -> list[str]:
    entries = _toctree_entries(repo / "docs")
    return [p for p in pages if re.sub(r"\.(md|rst)$", "", p[len("docs/") :]) not in entries]


def test_new_docs_pages_are_in_a_toctree(verl_repo, series_files):
    """doc.yml fails on "WARNING: document isn't included in any toctree": every page the series adds is listed."""
    pages = [f for f, s in series_files.items() if s == "A" and f.startswith("docs/") and f.endswith((".md", ".rst"))]
    assert "docs/algo/minirl.md" in pages
    missing = _pages_not_in_toctree(verl_repo, pages)
    assert not missing, f"docs pages in no toctree (add them to docs/index.rst): {missing}"


def test_docs_toctree_check_can_fail(verl_repo):
    assert _pages_not_in_toctree(verl_repo, ["docs/algo/not_listed.md"]) == ["docs/algo/not_listed.md"]
    assert not _pages_not_in_toctree(verl_repo, ["docs/algo/ppo.md"])


def test_docs_time_info(verl_repo):
    """pre-commit ``check-docs-time-info``: every docs page has a "Last updated" line."""
    res = _check("check_docs_time_info.py", cwd=verl_repo)
    assert res.returncode == 0, _report(res)


# ============================================================================================ the other sanity hooks
def test_docstrings(verl_repo):
    """pre-commit ``check-docstrings`` (public functions and classes of core_algos.py and the other listed files)."""
    res = _check("check_docstrings.py", cwd=verl_repo)
    assert res.returncode == 0, _report(res)
    assert "Checking verl/trainer/ppo/core_algos.py" in res.stdout, _report(res)


def test_test_layout(verl_repo):
    """pre-commit ``validate-structure``: tests/<top-level package of verl>/..."""
    res = _check("validate_structure.py", cwd=verl_repo)
    assert res.returncode == 0, _report(res)


def test_dataproto_usage(verl_repo):
    """pre-commit ``check-dataproto-usage``: ``check_dataproto_usage.py -d ./verl/workers/engine``."""
    res = _check("check_dataproto_usage.py", "-d", "./verl/workers/engine", cwd=verl_repo)
    assert res.returncode == 0, _report(res)


# ============================================================================================ shell hooks
def _hook_entry(hook_id: str) -> str:
    """The ``entry`` of a local hook of verl's pre-commit config, run with this interpreter for ``python3``."""
    import yaml

    config = yaml.safe_load((SHARED / "pre-commit-config.yaml").read_text())
    for repo in config["repos"]:
        for hook in repo.get("hooks", []):
            if hook["id"] == hook_id:
                return hook["entry"].replace("python3 ", f"{sys.executable} ")
    raise AssertionError(f"no hook {hook_id!r} in verl's pre-commit config")


def test_naming_conventions(verl_repo):
    """pre-commit ``check-naming-conventions``: verl, never veRL; SGLang or sglang."""
    res = _run(["bash", "-c", _hook_entry("check-naming-conventions")], cwd=verl_repo)
    assert res.returncode == 0, _report(res)


def test_naming_conventions_check_can_fail(tmp_path):
    (tmp_path / "bad.md").write_text("Built on veRL and Sglang.\n")
    res = _run(["bash", "-c", _hook_entry("check-naming-conventions")], cwd=tmp_path)
    assert res.returncode != 0 and "bad.md" in res.stdout, _report(res)


def test_compileall(verl_repo):
    """pre-commit ``compileall``: every Python file compiles with warnings as errors."""
    res = _run(["bash", "-c", _hook_entry("compileall")], cwd=verl_repo)
    assert res.returncode == 0, _report(res)
