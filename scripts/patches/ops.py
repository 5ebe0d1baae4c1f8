"""The vocabulary of the upstream series: the operations a patch is made of, and the patch itself.

``series.py`` declares the series in these terms and ``build.py`` carries them out; neither imports the other's
internals, so the declaration can be read without the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

ROOT = Path(__file__).resolve().parents[2]

LICENSE_HEADER = """\
# Copyright 2026 verl-stable contributors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""


class GenerationError(RuntimeError):
    pass


# ============================================================================================ operations
@dataclass(frozen=True)
class Copy:
    """One project file -> one path in verl's tree (``.py`` rewritten by the module map)."""

    src: str
    dst: str


@dataclass(frozen=True)
class CopyTree:
    """Every file matching ``pattern`` in a project directory -> a verl directory.

    ``rename`` maps a source file name to a different destination (relative to ``dst``, may leave the
    directory: ``"fsdp.py": "../../workers/engine/fsdp/router_replay.py"``).
    """

    src: str
    dst: str
    pattern: str = "*.py"
    rename: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Edit:
    path: str
    anchor: str
    replacement: str
    count: int = 1


@dataclass(frozen=True)
class DropDefs:
    """Remove top-level definitions (functions, classes, assignments) by name from a copied module."""

    path: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class NewFile:
    path: str
    content: Union[str, Callable[[], str]]


Op = Union[Copy, CopyTree, Edit, DropDefs, NewFile]


@dataclass
class Patch:
    slug: str
    title: str
    ops: list[Op] = field(default_factory=list)
    #: tests (paths in verl's tree) that tests/patches runs against the patched tree
    tests: tuple[str, ...] = ()
    #: tests that need verl's device to be ``cpu``: a CPU platform plugin (verl-stable's; the series has none). Without
    #: one they skip; tests/patches runs them with the plugin supplying the platform
    cpu_platform_tests: tuple[str, ...] = ()
    #: for the reviewer: where to look first and what to weigh (patches/README.md's review guide)
    review: str = ""
    #: slugs of earlier patches whose code or tests this one uses (every patch applies to pristine verl alone)
    needs: tuple[str, ...] = ()

    @property
    def body(self) -> str:
        """The commit message body = the PR description (verl's PR template sections)."""
        path = TEMPLATES / f"{self.slug}.md"
        if not path.is_file():
            raise GenerationError(f"patch {self.slug}: no PR description {path.relative_to(ROOT)}")
        return path.read_text()


# ============================================================================================ helpers
def readme_sections(path: str, headings: tuple[str, ...]) -> str:
    """The README's sections under ``headings`` (exact heading lines), each up to the next heading."""
    lines = (ROOT / path).read_text().splitlines()
    out: list[str] = []
    for heading in headings:
        try:
            start = lines.index(heading)
        except ValueError as exc:
            raise GenerationError(f"{path}: section heading {heading!r} not found (update the series)") from exc
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
        out += lines[start:end]
    return "\n".join(out).rstrip() + "\n"


TEMPLATES = ROOT / "patches" / "templates"


def template(name: str) -> Callable[[], str]:
    """Patch-only content kept as a file under patches/templates/ (gets verl's license header)."""
    return lambda: LICENSE_HEADER + (TEMPLATES / name).read_text()
