#!/usr/bin/env python3
"""Generate or check the upstream patch series ``patches/verl-<version>/`` (see ``scripts/patches/``).

    python scripts/make_patches.py              # rewrite patches/verl-0.9.1/*.patch and patches/README.md
    python scripts/make_patches.py --check      # regenerate into a temp dir, fail with a diff if they differ
    python scripts/make_patches.py --tree DIR   # also leave the patched verl tree (a git repo) in DIR
    python scripts/make_patches.py --list-tests # the tests (paths in verl's tree) tests/patches runs

The series is declared in ``scripts/patches/series.py`` and built by ``scripts/patches/build.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patches.build import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
