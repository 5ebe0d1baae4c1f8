"""Fresh interpreters: verl's registries are process-global, so registration is checked the way a Ray worker
sees it, in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def run_python(code: str, platform: str | None) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in a fresh interpreter with ``VERL_PLATFORM=platform`` (unset when None)."""
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    if platform is not None:
        env["VERL_PLATFORM"] = platform
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=240
    )
