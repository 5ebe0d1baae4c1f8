"""What a check yields (:class:`ConfigIssue`), what a refused launch raises (:class:`ConfigError`), and the
readers every check reads the config through: each read records its key, so a check that raises is refused
naming the key it was reading (the guarded pass in :mod:`verl_stable.validation`)."""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from omegaconf import DictConfig, OmegaConf

ACTOR = "actor_rollout_ref.actor"
ROLLOUT = "actor_rollout_ref.rollout"
CORRECTION = "algorithm.rollout_correction"
#: Exit status of a launch refused by validation (Hydra's own usage errors use 1).
EXIT_CONFIG_ERROR = 2
#: The only way past the pass; every entry point honours it and says so in one line.
SKIP_ENV = "VERL_STABLE_SKIP_VALIDATION"


@dataclass(frozen=True)
class ConfigIssue:
    """One refused setting: ``key=value: problem (allowed: ...)``; ``warning=True``: reported, not refused."""

    key: str
    value: Any
    problem: str
    allowed: str = ""
    warning: bool = False

    def __str__(self) -> str:
        value = "null" if self.value is None else self.value
        allowed = f" (allowed: {self.allowed})" if self.allowed else ""
        return f"{self.key}={value}: {self.problem}{allowed}"


class ConfigError(ValueError):
    """A composed trainer config that would fail (or silently misbehave) once training starts."""

    def __init__(self, issues: list[ConfigIssue], warnings: Iterable[ConfigIssue] = ()):
        self.issues = list(issues)
        self.warnings = list(warnings)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    @property
    def keys(self) -> list[str]:
        return [issue.key for issue in self.issues]


def skip_requested() -> bool:
    return os.environ.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes")


def announce_skip(file=None) -> None:
    print(f"verl-stable: {SKIP_ENV}=1: the pre-launch check was skipped; mistakes surface after start-up",
          file=file or sys.stderr, flush=True)


class Reading:
    """The key a check read last: a check that raises is refused naming it (the guarded pass)."""

    key: Optional[str] = None


def get(config: DictConfig, key: str, default: Any = None) -> Any:
    """The value at ``key``; ``default`` where it is unset or null."""
    Reading.key = key
    value = OmegaConf.select(config, key, default=default)
    return default if value is None else value


MISSING = object()


def select(config: DictConfig, key: str) -> Any:
    """The value at ``key`` (None kept), or :data:`MISSING` where the composed config has no such key."""
    Reading.key = key
    return OmegaConf.select(config, key, default=MISSING, throw_on_missing=False)


def nearest(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(str(word), [str(c) for c in candidates], n=n, cutoff=0.6)


def divisors(n: int) -> str:
    return fmt(d for d in range(1, n + 1) if n % d == 0)


def fmt(values) -> str:
    return ", ".join("null" if v is None else str(v) for v in values)
