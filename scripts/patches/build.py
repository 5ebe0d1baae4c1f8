"""Build the upstream patch series ``patches/verl-<version>/`` from this project's code.

This module is the engine; what the series contains is declared in ``series.py`` (``PATCHES``; PR
descriptions in ``patches/templates/``). The series is generated, never edited by hand: the engine downloads
the pristine verl sdist (cached under ``.cache/``, sha256-checked), copies verl-stable's modules into verl's
tree with their imports rewritten by one module map, applies small anchored edits to verl files, regenerates
verl's ``_generated_*.yaml`` trainer configs when a config file changed, runs verl's ruff config over the new
Python files, commits each concern in a scratch git repository with a fixed author and date, and runs
``git format-patch``.

The operations:

* :class:`CopyTree` / :class:`Copy` -- a project directory or file into verl's tree; Python imports and dotted
  names are rewritten by one module map that :func:`build_module_map` derives from the copy operations
  themselves, prose by :data:`TEXT_RULES`; a project import left unmapped, or any ``verl_stable`` left in a
  written file, fails the run. Copying a directory copies whatever files it has today, so refactors of
  ``verl_stable.routing`` flow into the series on the next run. Lines from a ``plugin-only: begin`` marker
  line to a ``plugin-only: end`` one (``#`` comments in code, ``..`` comments in docstrings) are dropped.
* :class:`Edit` -- replace an anchor text in a verl file (or a copied one); the anchor must occur exactly
  ``count`` times or generation fails, naming the file and the anchor.
* :class:`DropDefs` -- remove plugin-only top-level definitions from a copied module (they must exist).
* :class:`NewFile` -- patch-only content (test fixtures for verl's tree, a docs page assembled from the
  README's sections, package ``__init__``).

    python scripts/make_patches.py            # rewrite patches/verl-0.9.1/*.patch and patches/README.md
    python scripts/make_patches.py --check    # regenerate into a temp dir, fail with a diff if they differ
    python scripts/make_patches.py --tree DIR # also leave the patched verl tree (a git repo) in DIR

Needs: network or the cached sdist, git, and ruff (``pip install ruff==0.12.2``; verl's pre-commit pin).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

from verl_stable import VERL_VERSION  # the one pin: the release every adapter is written against

from .ops import (  # noqa: F401  (re-exported: the engine's callers and tests name them through build)
    LICENSE_HEADER,
    ROOT,
    TEMPLATES,
    Copy,
    CopyTree,
    DropDefs,
    Edit,
    GenerationError,
    NewFile,
    Op,
    Patch,
    readme_sections,
    template,
)

SDIST_NAME = f"verl-{VERL_VERSION}.tar.gz"
SDIST_SHA256 = "3e03d8816b2546b2c5580705671b8d0bb3f79b8364e7b5c56dbfc1245536ba22"
CACHE_DIR = ROOT / ".cache" / "verl-sdist"
OUT_DIR = ROOT / "patches" / f"verl-{VERL_VERSION}"
README_OUT = ROOT / "patches" / "README.md"
RUFF_VERSION = "0.12.2"

#: files verl's git repository has and its sdist lacks, which the series edits: copies of verl's (main branch,
#: the branch PRs target) placed in the pristine tree before the series is applied. ``tests/patches`` checks
#: they still equal the reference copies of verl's checks in ``../shared/verl-upstream/``.
BASE_DIR = ROOT / "patches" / "base"
BASE_FILES = ("docs/index.rst", "tests/special_sanity/check_license.py")

GIT_AUTHOR = ("verl-stable", "verl-stable@users.noreply.github.com")
GIT_DATE = "2026-01-01T00:00:00+00:00"


# ============================================================================================ rewriting
#: prose / YAML / Markdown rules applied to every copied or generated text file
TEXT_RULES: list[tuple[str, str]] = [
    (r"python -m verl_stable\.main", "python -m verl.trainer.main_ppo"),
    # not inside string literals that start with the override (regexes in tests match it anyway)
    (r"(?<![\w+.`\"'])algorithm=(?=[a-z])", "+algorithm="),
    (r"`algorithm=", "`+algorithm="),
    (r"(?<![\w+.`\"'])routing_replay=(?=[R<])", "+routing_replay="),
    (r"verl-stable's ", ""),
    (r" \(docs/method\.md §[\d.\-–]+\)", ""),  # the project's method notes, not verl's
    (r" \(\[docs/method\.md §[\d.\-–]+\]\(docs/method\.md#s\d+\)\)", ""),  # the same, as a Markdown link
    (r"verl_stable/addition_mod10", "addition_mod10"),
    (r'f"verl_stable/\{self\.name\}"', "self.name"),  # the addition task's data sources: addition_mod10, addition_sum
    (r" \(:mod:`verl_stable\.lab\.task`\)", ""),  # the CPU lab is not copied
    (r'"verl_stable_build\.json"', '"tiny_moe_build.json"'),  # the tiny model build cache's marker
    (r"verl_stable_cpu_device", "verl_cpu_device"),
    # the plugin's subclass adds max_unrouted_fraction; the series adds it to verl's class itself
    (r"verl_stable\.integration\.fsdp_engine\.RouterReplayConfig", "verl.workers.config.EngineRouterReplayConfig"),
    # the plugin keeps compact routes through verl's agent loop by wrapping it; in verl's tree, the agent loop
    (r"verl_stable\.integration\.agent_loop", "verl.experimental.agent_loop.agent_loop"),
]


def module_of(path: str) -> Optional[str]:
    if not path.endswith(".py"):
        return None
    parts = path[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def expand(ops: list[Op]) -> list[Op]:
    out: list[Op] = []
    for op in ops:
        if isinstance(op, CopyTree):
            src = ROOT / op.src
            if not src.is_dir():
                raise GenerationError(f"CopyTree: {op.src} is not a directory")
            rename = dict(op.rename)
            for f in sorted(src.glob(op.pattern)):
                if not f.is_file():
                    continue
                dst = os.path.normpath(os.path.join(op.dst, rename.get(f.name, f.name)))
                out.append(Copy(f"{op.src}/{f.name}", dst))
            missing = set(rename) - {f.name for f in src.glob(op.pattern)}
            if missing:
                raise GenerationError(f"CopyTree {op.src}: renamed files not found: {sorted(missing)}")
        else:
            out.append(op)
    return out


def build_module_map(patches: list[Patch]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for patch in patches:
        for op in expand(patch.ops):
            if isinstance(op, Copy) and op.src.endswith(".py"):
                src_mod, dst_mod = module_of(op.src), module_of(op.dst)
                if mapping.get(src_mod, dst_mod) != dst_mod:
                    raise GenerationError(f"{op.src} is copied twice, to {mapping[src_mod]} and {dst_mod}")
                mapping[src_mod] = dst_mod
    return mapping


_PLUGIN_ONLY_MARKER = re.compile(r"^\s*(?:#|\.\.)\s*plugin-only:\s*(begin|end)\s*$")


def strip_plugin_only(text: str, path: str) -> str:
    """Drop every block from a ``plugin-only: begin`` marker line to a ``plugin-only: end`` one, both included."""
    kept: list[str] = []
    inside = False
    for n, line in enumerate(text.splitlines(keepends=True), 1):
        m = _PLUGIN_ONLY_MARKER.match(line)
        if m and (m.group(1) == "begin") == inside:
            raise GenerationError(f"{path}:{n}: plugin-only marker {m.group(1)!r} without its pair")
        if m:
            inside = not inside
        elif not inside:
            kept.append(line)
    if inside:
        raise GenerationError(f"{path}: plugin-only block never ends")
    return "".join(kept)


def _map_module(name: str, mapping: dict[str, str]) -> Optional[str]:
    if name in mapping:
        return mapping[name]
    for key in sorted(mapping, key=len, reverse=True):
        if name.startswith(key + "."):
            return mapping[key] + name[len(key) :]
    return None


def rewrite_python(text: str, path: str, mapping: dict[str, str]) -> str:
    """Rewrite imports of project modules by ``mapping``; fail on any project import left unmapped."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, int, int, str]] = []  # (line0, col0, line1, col1, new)
    project_roots = {k.split(".")[0] for k in mapping}

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            root = node.module.split(".")[0]
            if root not in project_roots:
                continue
            new_mod = _map_module(node.module, mapping)
            names = []
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                sub = mapping.get(full)
                if sub is not None:  # ``from verl_stable import objectives`` -> from verl.x import minirl_objectives as objectives
                    parent, leaf = sub.rsplit(".", 1)
                    names.append((parent, leaf, alias.asname or alias.name))
                elif new_mod is not None:
                    names.append((new_mod, alias.name, alias.asname))
                else:
                    raise GenerationError(f"{path}:{node.lineno}: no module map entry for {full}")
            parents = {p for p, _, _ in names}
            indent = " " * node.col_offset
            stmts = []
            for parent in sorted(parents):
                parts = [f"{leaf} as {asn}" if asn and asn != leaf else leaf for p, leaf, asn in names if p == parent]
                stmts.append(f"from {parent} import {', '.join(parts)}")
            new = ("\n" + indent).join(stmts)
            edits.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, new))
        elif isinstance(node, ast.Import):
            if not any(a.name.split(".")[0] in project_roots for a in node.names):
                continue
            parts = []
            for alias in node.names:
                new_mod = _map_module(alias.name, mapping) if alias.name.split(".")[0] in project_roots else alias.name
                if new_mod is None:
                    raise GenerationError(f"{path}:{node.lineno}: no module map entry for {alias.name}")
                if alias.asname:
                    parts.append(f"{new_mod} as {alias.asname}")
                elif new_mod != alias.name:
                    if "." in alias.name:
                        raise GenerationError(f"{path}:{node.lineno}: `import {alias.name}` needs an alias to be moved")
                    parts.append(f"{new_mod} as {alias.name}")
                else:
                    parts.append(new_mod)
            edits.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, f"import {', '.join(parts)}"))

    for l0, c0, l1, c1, new in sorted(edits, reverse=True):
        head = lines[l0 - 1][:c0]
        tail = lines[l1 - 1][c1:]
        lines[l0 - 1 : l1] = [head + new + tail]
    return wrap_long_prose(rewrite_prose("".join(lines), mapping), path)


def rewrite_prose(text: str, mapping: dict[str, str]) -> str:
    """Dotted project names in strings, comments and docstrings (``verl_stable.routing.Routes``)."""
    roots = sorted({k.split(".")[0] for k in mapping if "." in k})
    pattern = re.compile(r"(?<![\w.])(?:%s)(?:\.\w+)+" % "|".join(map(re.escape, roots)))

    def sub(m: re.Match) -> str:
        name = m.group(0)
        parts = name.split(".")
        for n in range(len(parts), 0, -1):  # the longest prefix that is a module
            mod = _map_module(".".join(parts[:n]), mapping)
            if mod is not None:
                return ".".join([mod, *parts[n:]])
        return name

    return rewrite_text(pattern.sub(sub, text))


def rewrite_text(text: str) -> str:
    for pat, repl in TEXT_RULES:
        text = re.sub(pat, repl, text)
    return text


def wrap_long_prose(text: str, path: str, limit: int = 120) -> str:
    """Re-wrap comment and docstring lines that renaming pushed past verl's line length (code lines fail ruff)."""
    import io
    import tokenize

    prose: dict[int, str] = {}  # line number -> "comment" | "string"
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            prose[tok.start[0]] = "comment"
        elif tok.type == tokenize.STRING and tok.end[0] > tok.start[0] and not tok.line[: tok.start[1]].strip():
            # a statement-level string (docstring), not a multi-line argument such as code for a subprocess
            for n in range(tok.start[0] + 1, tok.end[0]):
                prose[n] = "string"
    src = text.splitlines()
    out: list[str] = []
    carry = ""  # the tail of a wrapped line, prepended to the next line of the same paragraph
    carry_prefix = ""
    for n, line in enumerate(src, 1):
        kind = prose.get(n)
        indent = len(line) - len(line.lstrip())
        if carry:
            body = line.strip()
            if kind == "comment":
                body = body[1:].lstrip() if body.startswith("#") else None
            if kind and body and not re.match(r"([*|=-]|\d+\.)\s", body):
                line = line[:indent] + ("# " if kind == "comment" else "") + carry + " " + body
            else:
                out.append(carry_prefix + carry)
            carry = ""
        while kind and len(line) > limit and not line.lstrip().startswith(("|", "=")):
            if kind == "comment" and not line.lstrip().startswith("#"):
                break
            cut = line.rfind(" ", 0, limit)
            indent = len(line) - len(line.lstrip())
            if cut <= indent:
                break
            carry_prefix = line[:indent] + ("# " if kind == "comment" else "")
            line, carry = line[:cut].rstrip(), line[cut + 1 :]
        out.append(line)
    if carry:
        out.append(carry_prefix + carry)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def drop_defs(text: str, path: str, names: tuple[str, ...]) -> str:
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    spans = []
    found = set()
    for node in tree.body:
        targets: list[str] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            targets = [node.name]
        elif isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        hit = [t for t in targets if t in names]
        if hit:
            found.update(hit)
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            spans.append((start, node.end_lineno))
    missing = set(names) - found
    if missing:
        raise GenerationError(f"DropDefs {path}: no top-level definition named {sorted(missing)} (update the series)")
    for start, end in spans:  # comment lines directly above a dropped definition go with it
        while start > 1 and lines[start - 2].lstrip().startswith("#"):
            start -= 1
        for i in range(start - 1, end):
            lines[i] = None
    for node in tree.body:  # and the names leave ``__all__``
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            for i in range(node.lineno - 1, node.end_lineno):
                if lines[i] is None:
                    continue
                for name in names:
                    lines[i] = re.sub(r"""\s*(["'])%s\1,?""" % re.escape(name), "", lines[i])
                if not lines[i].strip():
                    lines[i] = None
    lines = [line for line in lines if line is not None]
    return re.sub(r"\n{3,}(?=\S)", "\n\n\n", "".join(lines)).rstrip() + "\n"


def with_license(text: str) -> str:
    if "Licensed under the Apache License" in text.split('"""', 1)[0]:
        return text
    return LICENSE_HEADER + text


# ============================================================================================ sdist / git
def fetch_sdist() -> Path:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    target = CACHE_DIR / SDIST_NAME
    if not target.exists():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   f"verl=={VERL_VERSION}", "-d", tmp, "--quiet"]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / SDIST_NAME
            if res.returncode != 0 or not got.exists():
                raise GenerationError(f"could not download the verl {VERL_VERSION} sdist:\n{res.stdout}{res.stderr}")
            shutil.copy(got, target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise GenerationError(f"{target}: sha256 {digest} != expected {SDIST_SHA256}; delete it and retry")
    return target


def extract_sdist(dest: Path) -> None:
    with tarfile.open(fetch_sdist()) as tar:
        prefix = f"verl-{VERL_VERSION}/"
        members = []
        for m in tar.getmembers():
            if not m.name.startswith(prefix) or m.name.startswith(prefix + "verl.egg-info") or m.name == prefix + "PKG-INFO":
                continue
            m.name = m.name[len(prefix) :]
            if m.name:
                members.append(m)
        tar.extractall(dest, members=members, filter="data")


def pristine_tree(dest: Path) -> None:
    """The verl sdist unpacked into ``dest``, plus the :data:`BASE_FILES` from ``patches/base/``."""
    extract_sdist(dest)
    for rel in BASE_FILES:
        target = dest / rel
        if target.exists():
            raise GenerationError(f"{rel} is in the verl {VERL_VERSION} sdist now: drop it from BASE_FILES")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(BASE_DIR / rel, target)


def git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_AUTHOR_NAME=GIT_AUTHOR[0], GIT_AUTHOR_EMAIL=GIT_AUTHOR[1], GIT_AUTHOR_DATE=GIT_DATE,
        GIT_COMMITTER_NAME=GIT_AUTHOR[0], GIT_COMMITTER_EMAIL=GIT_AUTHOR[1], GIT_COMMITTER_DATE=GIT_DATE,
        GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, TZ="UTC", LC_ALL="C",
    )  # fmt: skip
    return env


def git(tree: Path, *args: str, **kw) -> str:
    res = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, env=git_env(), **kw)
    if res.returncode != 0:
        raise GenerationError(f"git {' '.join(args)} failed:\n{res.stdout}{res.stderr}")
    return res.stdout


def find_ruff() -> list[str]:
    override = os.environ.get("RUFF")
    if override:
        return [override]
    candidates = [Path(sys.executable).parent / "ruff", shutil.which("ruff")]
    for c in candidates:
        if c and Path(c).exists():
            return [str(c)]
    try:
        import ruff  # noqa: F401

        return [sys.executable, "-m", "ruff"]
    except ImportError as exc:
        raise GenerationError(f"ruff not found: pip install ruff=={RUFF_VERSION} (or set RUFF=/path/to/ruff)") from exc


def ruff(tree: Path, new_files: list[str], touched: list[str]) -> None:
    """Format the new Python files with verl's ruff config, then check every Python file the patch touches.

    New files are generated, so ruff may fix and format them; files verl already has are only checked
    (``ruff check`` and ``ruff format --check``, as verl's pre-commit runs them): a problem there comes from an
    :class:`Edit` of the series, which is where it has to be fixed.
    """
    if not touched:
        return
    exe = find_ruff()
    version = subprocess.run([*exe, "--version"], capture_output=True, text=True).stdout.split()[-1]
    if version != RUFF_VERSION:
        raise GenerationError(f"ruff {version} found, the series is formatted with ruff {RUFF_VERSION} (verl's pin)")
    env = {**os.environ, "RUFF_NO_CACHE": "true"}
    if new_files:
        subprocess.run([*exe, "check", "--fix", "--quiet", *new_files], cwd=tree, env=env, capture_output=True)
        res = subprocess.run([*exe, "format", "--quiet", *new_files], cwd=tree, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise GenerationError(f"ruff format failed on the generated files:\n{res.stdout}{res.stderr}")
    for args in (["check", "--output-format=concise"], ["format", "--check"]):
        res = subprocess.run([*exe, *args, *touched], cwd=tree, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise GenerationError(
                f"`ruff {' '.join(args)}` (verl's config) reports problems in the files the series touches:\n"
                f"{res.stdout}{res.stderr}"
            )


_GENERATED_HEADER = re.compile(
    r"invokes 'python3 scripts/print_cfg.py --cfg job ?(?P<args>[^']*)' to flatten the "
    r"'verl/trainer/config/(?P<config>\w+)\.yaml'"
)


def trainer_config_specs(tree: Path) -> list[tuple[Path, list[str]]]:
    """verl's ``_generated_*.yaml`` files and the print_cfg.py arguments their own headers name."""
    specs = []
    for f in sorted((tree / "verl/trainer/config").glob("_generated_*.yaml")):
        m = _GENERATED_HEADER.search(f.read_text().split("\n", 3)[1])
        if m is None:
            raise GenerationError(f"{f.name}: unrecognised header, cannot regenerate it")
        args = m["args"].split()
        if m["config"] != "ppo_trainer":
            args.append(f"--config-name={m['config']}")
        specs.append((f, args))
    return specs


def regenerate_trainer_configs(tree: Path) -> None:
    """What verl's scripts/generate_trainer_config.sh does, on the patched tree with this interpreter."""
    env = {**os.environ, "PYTHONPATH": str(tree), "VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_LOGGING_LEVEL": "ERROR"}
    env.pop("VERL_PLATFORM", None)
    for target, args in trainer_config_specs(tree):
        res = subprocess.run([sys.executable, "scripts/print_cfg.py", "--cfg", "job", *args], cwd=tree, env=env,
                             capture_output=True, text=True)  # fmt: skip
        if res.returncode != 0:
            raise GenerationError(f"print_cfg.py {args} failed:\n{res.stderr[-3000:]}")
        out_lines = res.stdout.splitlines(keepends=True)
        start = next(i for i, line in enumerate(out_lines) if line.startswith("actor_rollout_ref"))
        header = "".join(target.read_text().splitlines(keepends=True)[:5])
        target.write_text(header + "".join(out_lines[start:]))


def check_config_generation(tree: Path) -> None:
    """Regenerating the pristine tree must reproduce the sdist's files, or the diffs would carry noise."""
    before = {f: f.read_bytes() for f, _ in trainer_config_specs(tree)}
    regenerate_trainer_configs(tree)
    changed = [f.name for f, data in before.items() if f.read_bytes() != data]
    if changed:
        raise GenerationError(
            f"regenerating the pristine {changed} with this environment changes them (different hydra/omegaconf "
            "or an installed plugin?); use the environment of the project's .venv"
        )


# ============================================================================================ build
def apply_patch_ops(tree: Path, patch: Patch, mapping: dict[str, str]) -> list[str]:
    """Apply one patch's operations to ``tree``; return the touched paths."""
    touched: list[str] = []
    for op in expand(patch.ops):
        if isinstance(op, Copy):
            src = ROOT / op.src
            if not src.is_file():
                raise GenerationError(f"Copy {op.src}: no such file in this repository (update the series)")
            text = strip_plugin_only(src.read_text(), op.src)
            dst = tree / op.dst
            if dst.exists():
                raise GenerationError(f"Copy {op.src} -> {op.dst}: destination already exists in verl's tree")
            if op.src.endswith(".py"):
                text = with_license(rewrite_python(text, op.src, mapping))
            else:
                text = rewrite_prose(text, mapping)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(text)
            touched.append(op.dst)
        elif isinstance(op, NewFile):
            content = rewrite_prose(op.content() if callable(op.content) else op.content, mapping)
            dst = tree / op.path
            if dst.exists():
                raise GenerationError(f"NewFile {op.path}: already exists in verl's tree")
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(content)
            touched.append(op.path)
        elif isinstance(op, Edit):
            dst = tree / op.path
            if not dst.exists():
                raise GenerationError(f"Edit {op.path}: file not found in verl's tree")
            text = dst.read_text()
            n = text.count(op.anchor)
            if n != op.count:
                raise GenerationError(
                    f"Edit {op.path}: anchor found {n} times, expected {op.count}:\n{op.anchor}"
                )
            dst.write_text(text.replace(op.anchor, op.replacement))
            touched.append(op.path)
        elif isinstance(op, DropDefs):
            dst = tree / op.path
            dst.write_text(drop_defs(dst.read_text(), op.path, op.names))
            touched.append(op.path)
    leftovers = []
    for rel in dict.fromkeys(touched):
        if rel.endswith((".py", ".yaml", ".md")):
            for i, line in enumerate((tree / rel).read_text().splitlines(), 1):
                if "verl_stable" in line:
                    leftovers.append(f"  {rel}:{i}: {line.strip()}")
    if leftovers:
        raise GenerationError(
            "project names left after rewriting (extend TEXT_RULES or the series):\n" + "\n".join(leftovers)
        )
    return list(dict.fromkeys(touched))


def build(work: Path, out_dir: Path, patches: list[Patch]) -> list[tuple[Patch, list[str]]]:
    """Build the series into ``out_dir``; the scratch repo (the patched tree) is ``work``."""
    mapping = build_module_map(patches)
    pristine_tree(work)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", f"verl {VERL_VERSION} (PyPI sdist)")
    git(work, "tag", "pristine")
    check_config_generation(work)
    result = []
    for patch in patches:
        touched = apply_patch_ops(work, patch, mapping)
        touched_py = [t for t in touched if t.endswith(".py") and (work / t).exists()]
        ruff(work, [t for t in touched_py if _is_new(work, t)], touched_py)
        if any(t.startswith("verl/trainer/config/") and t.endswith(".yaml") for t in touched):
            regenerate_trainer_configs(work)
        git(work, "add", "-A")
        files = git(work, "diff", "--cached", "--name-status").rstrip().splitlines()
        kinds = {"A": "new", "M": "modified", "D": "deleted"}
        listing = "\n".join(f"- `{f.split(chr(9))[1]}` ({kinds.get(f[0], f[0])})" for f in files)
        body = patch.body.replace("{files}", listing)
        git(work, "commit", "-q", "-F", "-", input=f"{patch.title}\n\n{body}")
        result.append((patch, touched))
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in out_dir.glob("*.patch"):
        f.unlink()
    git(work, "-c", "diff.algorithm=myers", "format-patch", "-q", "--zero-commit", "--no-signature", "--full-index",
        "--no-renames", "--stat=200", "-o", str(out_dir), "pristine")  # fmt: skip
    for i, (patch, _) in enumerate(result, 1):
        # the file names follow the titles; keep them short and stable
        produced = sorted(out_dir.glob(f"{i:04d}-*.patch"))
        produced[0].rename(out_dir / f"{i:04d}-{patch.slug}.patch")
    return result


def _is_new(tree: Path, rel: str) -> bool:
    res = subprocess.run(["git", "-C", str(tree), "cat-file", "-e", f"HEAD:{rel}"], capture_output=True, env=git_env())
    return res.returncode != 0


def _numstat(patch_file: Path) -> dict[str, list[int]]:
    """Lines added / removed per top-level directory (verl, tests, docs) of one patch file."""
    out = subprocess.run(["git", "apply", "--numstat", str(patch_file)], capture_output=True, text=True, check=True)
    per: dict[str, list[int]] = {}
    for line in out.stdout.splitlines():
        added, removed, path = line.split("\t")
        top = per.setdefault(path.split("/", 1)[0], [0, 0, 0])
        top[0] += int(added)
        top[1] += int(removed)
        top[2] += 1
    return per


def _applies_alone(work: Path, patch_file: Path) -> bool:
    """``git apply --check`` of one patch on pristine verl (the scratch repo's ``pristine`` tag)."""
    with tempfile.TemporaryDirectory(prefix="verl-alone-") as tmp:
        git(work, "worktree", "add", "-q", "--detach", tmp, "pristine")
        try:
            res = subprocess.run(["git", "apply", "--check", str(patch_file)], cwd=tmp, capture_output=True)
        finally:
            git(work, "worktree", "remove", "--force", tmp)
    return res.returncode == 0


def review_guide(result: list[tuple[Patch, list[str]]], out_dir: Path, work: Path) -> list[str]:
    """The maintainer's view: what each PR is, its size, what it needs, and what merging it removes from the plugin
    (the rows of verl-stable's shim table that name it, ``verl_stable.integration.SHIMS``)."""
    from verl_stable.integration import SHIMS

    numbers = {patch.slug: i for i, (patch, _) in enumerate(result, 1)}
    lines = [
        "## For verl's maintainers: reviewing and applying\n",
        "Five PRs, one per commit, each with its description in verl's template (below). Every patch applies to",
        "pristine verl 0.9.1 on its own (`git apply --check`, checked at generation); review and merge them in any",
        "order, except where a row says what it needs. Lines are counted by `git apply --numstat`.\n",
        "| # | PR | verl/ (files, +/-) | tests/ (files, +/-) | needs | merging it removes from verl-stable's plugin |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for i, (patch, _) in enumerate(result, 1):
        patch_file = out_dir / f"{i:04d}-{patch.slug}.patch"
        per = _numstat(patch_file)

        def cell(top: str) -> str:
            files, added, removed = per.get(top, [0, 0, 0])[2], *per.get(top, [0, 0, 0])[:2]
            return f"{files}, +{added}/-{removed}" if files else "—"

        if not _applies_alone(work, patch_file):
            raise GenerationError(f"patch {patch.slug} does not apply to pristine verl alone; declare it in `needs`")
        needs = ", ".join(f"{numbers[n]:04d} ({n})" for n in patch.needs) or "—"
        removes = [f"`{shim.name}`" for shim in SHIMS if f"{i:04d}-{patch.slug}" in shim.upstream]
        removed = ", ".join(removes) + " (rows of `verl-stable doctor`)" if removes else "—"
        lines.append(f"| {i:04d} | `{patch.title}` | {cell('verl')} | {cell('tests')} | {needs} | {removed} |")
        if patch.review:
            notes.append(f"- **{i:04d}** {patch.review}")
    lines += ["", "Where to look first:\n", *notes, ""]
    stays = [f"`{shim.name}`" for shim in SHIMS if shim.upstream.startswith("none")]
    lines += [
        "Not in the series, on purpose: the CPU platform, the FSDP engine's registration for device `cpu` and the",
        f"`hf_cpu` rollout ({', '.join(stays)}). verl's maintainers asked that new hardware register through",
        "`PlatformRegistry` from an external package (the review of #6086) and pointed #7229 to the same route;",
        "verl-stable is that external plugin, and patch 0003 holds the only two verl changes it needs. The FSDP",
        "engine tests of 0002 run on a CPU with that plugin supplying the platform (the engine under test is the",
        "patched tree's), and skip without it. Also plugin-only: the launcher, recipes, Slurm scripts, pre-launch",
        "validation and the CPU lab.\n",
        "Applying: `git am patches/verl-0.9.1/*.patch` on a verl 0.9.1 checkout (see below for the two files the",
        "sdist lacks), or each patch alone with `git am` / `git apply`. verl-stable may stay installed on a",
        "patched verl: `tests/patches` checks that its loss and engine rows then keep verl's own losses and",
        "engine, that it calls `register_rollout_class`, and that its CPU platform loads. Its rollout rows (0004,",
        "0005) were not checked on a patched verl; without a need for the CPU platform, set",
        "`VERL_USE_EXTERNAL_PLUGINS=none` there.\n",
    ]
    return lines


def readme(result: list[tuple[Patch, list[str]]], out_dir: Path, work: Path) -> str:
    parts = [
        f"# Upstream patch series against verl {VERL_VERSION}\n",
        "Generated by `python scripts/make_patches.py` from this repository's code -- do not edit by hand.",
        "`tests/patches/test_patch_series_on_cpu.py` regenerates the series and fails if it differs from",
        "what is committed here, applies it to the pristine PyPI sdist, and runs the copied tests against",
        "the patched verl with verl-stable's plugin switched off (`VERL_USE_EXTERNAL_PLUGINS=none`).\n",
        *review_guide(result, out_dir, work),
        "## Applying and checking\n",
        "Apply to a verl 0.9.1 git checkout with `git am patches/verl-0.9.1/*.patch`, or to an unpacked sdist",
        "one patch at a time, in order:\n",
        "    for p in patches/verl-0.9.1/*.patch; do git apply --check \"$p\" && git apply \"$p\" || break; done\n",
        "How it is checked (`pytest tests/patches`, about 4 minutes on 2 CPU cores): regenerate and compare;",
        "apply each committed patch in order to the unpacked sdist with `git apply --check` / `git apply`;",
        "import the patched tree with `verl_stable` made unimportable; run, in one pytest process against the",
        "patched tree, the tests each patch lists in `scripts/patches/series.py` (`python scripts/make_patches.py",
        "--list-tests`): the copied MiniRL, routing-replay and misc tests, and verl's own CPU tests of the files",
        "the series modifies that ship in the sdist (`tests/trainer/ppo/test_core_algos_on_cpu.py`,",
        "`test_dynamic_policy_losses_on_cpu.py`, `test_loss_aggregation_on_cpu.py`,",
        "`tests/checkpoint_engine/test_global_steps_on_cpu.py`); run the FSDP engine tests",
        "(`--list-cpu-platform-tests`) with verl-stable loaded only as the CPU platform plugin, checking that the",
        "engine under test is the patched tree's.\n",
        "**verl's CPU job, reproduced** (`tests/patches/test_verl_cpu_job_on_cpu.py`): on a clone of the patched",
        "tree, verl's `cpu_unit_tests.yml` command as written (`pytest.ini` with `python_files = *_on_cpu.py`,",
        "`pytest -s -x --asyncio-mode=auto tests/`, one process, `TORCH_COMPILE_DISABLE=1`), in `.venv-verl-cpu`",
        "(`bash scripts/setup.sh --with-verl-cpu-pins`: the `cpu` extra's torch 2.11.0 and transformers 5.9.0, read",
        "from verl's metadata; no verl-stable), under the job's 20-minute limit. Every `*_on_cpu.py` of the tree runs,",
        "verl's own and the series'. A pytest plugin (`tests/patches/process_state_guard.py`) fails any test module",
        "of the series that leaves process state changed for the tests after it (environment, working directory,",
        "`sys.path`, torch's global switches, an initialised process group, verl's registries and platform); it is",
        "shown to fail on a leaking module. verl's own Ray tests leave Ray's variables in `os.environ`; they are",
        "not held to it. Measured on 2 CPU cores: 621 passed, 18 skipped (the FSDP engine tests: no CPU platform",
        "in that venv), in 2.5 to 4 minutes of the job's 20. The first run of it failed on three things, now fixed:",
        "two copied property tests imported `hypothesis`, which verl's environment lacks (now seeded random cases),",
        "the router-source test read `transformers.models.mellum`, which transformers 5.9.0 lacks, and the engine",
        "tests set `VERL_PLATFORM` for the whole process.",
        "The sdist ships no `docs/`, `.github/` or `tests/special_sanity/`. The series edits two files it lacks,",
        "so `patches/base/` holds verl's copies (main branch, the branch PRs target) and the generator and the",
        "tests put them into the pristine tree before applying: `docs/index.rst` (patch 0001 lists",
        "`docs/algo/minirl.md` in the Algorithms toctree, after `algo/rollout_corr_math.md`) and",
        "`tests/special_sanity/check_license.py` (patch 0001 adds the new files' copyright line,",
        "`Copyright 2026 verl-stable contributors`, to its list of accepted lines, as each contributing",
        "organisation has done). On a checkout whose copies of these two files differ around those lines, `git am`",
        "stops at patch 0001: add the two lines by hand and `git am --continue`.\n",
        "## verl's PR checks\n",
        "`tests/patches/test_verl_pr_checks_on_cpu.py` runs verl's own contribution checks on the patched tree,",
        "each as verl's pre-commit hooks and workflows call it, from the root of a git repository laid out like",
        "verl's: `check_license.py --directories .`, `check_device_api_usage.py --directory ./verl` (on the",
        "`verl/` files the series adds or modifies, at their paths: verl 0.9.1's own",
        "`verl/utils/profiler/torch_memory_profile.py` fails the main-branch version of this check),",
        "`ruff check` and `ruff format --check` (verl's pyproject config, ruff 0.12.2 as verl's pre-commit pins),",
        "`check_pr_title.py` on each patch's subject line, `check_pr_description.py` on each commit message (the",
        "PR description), every new docs page in a toctree (what verl's doc job fails on),",
        "`check_docs_time_info.py`, `check_docstrings.py`, `validate_structure.py` and",
        "`check_dataproto_usage.py -d ./verl/workers/engine`, and the naming-conventions and compileall hooks",
        "(their entries read from verl's pre-commit config). License, device-API, ruff, title, description,",
        "toctree and naming checks are each also run on a deliberately bad input and must fail. mypy and the",
        "config regeneration hook are not run (the generator regenerates `_generated_*.yaml` itself). The checks",
        "come from `../shared/verl-upstream/` beside the repository (CI) or the folder `VERL_UPSTREAM_CHECKS`",
        "names, and the tests skip without it. All pass: `pytest tests/patches -q`. The generator itself fails when",
        "`ruff check` or `ruff format --check` reports a problem in any Python file the series touches.\n",
    ]
    for i, (patch, touched) in enumerate(result, 1):
        parts.append(f"## {i:04d} `{patch.title}`\n")
        parts.append(f"File: `{OUT_DIR.relative_to(ROOT)}/{i:04d}-{patch.slug}.patch`\n")
        parts.append("(The PR description is the commit message; reproduced here.)\n")
        body = (out_dir / f"{i:04d}-{patch.slug}.patch").read_text()
        msg = body.split("\n\n", 1)[1].split("\n---\n", 1)[0]
        parts.append(msg.rstrip() + "\n")
    return "\n".join(parts)


def generate(out_dir: Path, readme_path: Path, tree_dir: Optional[Path]) -> None:
    with tempfile.TemporaryDirectory(prefix="verl-patches-") as tmp:
        work = Path(tmp) / "verl"
        work.mkdir()
        try:
            from .series import PATCHES

            result = build(work, out_dir, PATCHES)
            readme_path.write_text(readme(result, out_dir, work))
        finally:  # the scratch tree is also what to look at when generation fails
            if tree_dir is not None:
                if tree_dir.exists():
                    shutil.rmtree(tree_dir)
                shutil.copytree(work, tree_dir, symlinks=True)


def check(tree_dir: Optional[Path] = None) -> int:
    with tempfile.TemporaryDirectory(prefix="verl-patches-check-") as tmp:
        out = Path(tmp) / OUT_DIR.relative_to(ROOT)
        readme_tmp = Path(tmp) / "README.md"
        generate(out, readme_tmp, tree_dir)
        problems = []
        want = {p.name: p for p in out.glob("*.patch")} | {"README.md": readme_tmp}
        have = {p.name: p for p in OUT_DIR.glob("*.patch")} | ({"README.md": README_OUT} if README_OUT.exists() else {})
        for name in sorted(set(want) | set(have)):
            if name not in have:
                problems.append(f"missing (not committed): {name}")
            elif name not in want:
                problems.append(f"stale (no longer generated): {name}")
            elif want[name].read_bytes() != have[name].read_bytes():
                diff = list(difflib.unified_diff(have[name].read_text().splitlines(), want[name].read_text().splitlines(),
                                                 f"committed/{name}", f"generated/{name}", lineterm="", n=1))  # fmt: skip
                problems.append(f"differs: {name} ({len(diff)} diff lines)\n" + "\n".join(diff[:40]))
        if problems:
            print("patch series is out of date; run `python scripts/make_patches.py` and commit:\n", file=sys.stderr)
            print("\n".join(problems), file=sys.stderr)
            return 1
        print(f"patch series is current ({len(want) - 1} patches)")
        return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed series differs")
    parser.add_argument("--tree", type=Path, help="also leave the patched verl tree (a git repo) here")
    parser.add_argument("--list-tests", action="store_true", help="print the tests (paths in verl's tree) to run")
    parser.add_argument("--list-cpu-platform-tests", action="store_true",
                        help="print the tests that need a CPU platform plugin (VERL_PLATFORM=cpu)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.list_tests or args.list_cpu_platform_tests:
        from .series import PATCHES

        field = "tests" if args.list_tests else "cpu_platform_tests"
        print("\n".join(t for patch in PATCHES for t in getattr(patch, field)))
        return 0
    try:
        if args.check:
            return check(args.tree)
        generate(OUT_DIR, README_OUT, args.tree)
        print(f"wrote {len(list(OUT_DIR.glob('*.patch')))} patches to {OUT_DIR.relative_to(ROOT)}")
        return 0
    except GenerationError as exc:
        print(f"make_patches: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
