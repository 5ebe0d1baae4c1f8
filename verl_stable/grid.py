"""The paper's grid (docs/method.md §4): one row per cell, the one declaration both the recipes and the lab read.

A cell is a loss preset (``algorithm=...``) x a routing replay mode (``routing_replay=...``, None: none) x N, the
number of gradient steps per rollout (``offpolicy=n<N>``: the global batch split into N mini-batches). The
recipes launch each cell at the paper's size on ``recipes/qwen3_30b_a3b`` (``python -m verl_stable.apps.recipes
list``; ``recipes/qwen3_30b_a3b/grid.yaml`` is this table rendered by :func:`grid_yaml`, for readers of the recipe
directory); the CPU lab runs the cells with N in its own, smaller set (:mod:`verl_stable.lab.variants`).

The no-clip ablation removes clipping from the configuration that is otherwise stable at that N: R2 at N = 2,
R3 at N = 4 and 8 (the paper: N = 2, R2 beats R3; N = 4, 8, R3 beats R2 and R2 collapses). The
no-replay cells keep clipping and drop routing replay. Pure data: no import beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

ON_POLICY = "on_policy"
OFF_POLICY = "off_policy"


@dataclass(frozen=True)
class Cell:
    """One cell of the paper's grid; ``name`` is its stable name (recipes: ``<name>@<backend>``)."""

    name: str
    loss: str  # the algorithm preset (verl_stable/config/algorithm/<loss>.yaml)
    replay: Optional[str]  # "R2" | "R3" | None
    n: int  # gradient steps per rollout

    @property
    def regime(self) -> str:
        return ON_POLICY if self.n == 1 else OFF_POLICY

    @property
    def offpolicy(self) -> str:
        """The recipe's ``offpolicy`` group choice."""
        return f"n{self.n}"

    @property
    def choices(self) -> tuple[str, ...]:
        """The Hydra group choices (without ``offpolicy``, whose sizes the recipe and the lab set each their own)."""
        return (f"algorithm={self.loss}", *((f"routing_replay={self.replay}",) if self.replay else ()))


def _off_policy(n: int, stable: str) -> tuple[Cell, ...]:
    """The four cells at N: both replay modes, the stable one without clipping, and no replay (with clipping)."""
    return (
        Cell(f"minirl_r2_n{n}", "minirl", "R2", n),
        Cell(f"minirl_r3_n{n}", "minirl", "R3", n),
        Cell(f"minirl_no_clip_{stable.lower()}_n{n}", "minirl_no_clip", stable, n),
        Cell(f"minirl_no_replay_n{n}", "minirl", None, n),
    )


#: The replay mode that keeps training stable at N: the one the no-clip ablation keeps.
STABLE_REPLAY: dict[int, str] = {2: "R2", 4: "R3", 8: "R3"}

CELLS: tuple[Cell, ...] = (
    Cell("minirl", "minirl", None, 1),
    Cell("minirl_no_is", "minirl_no_is", None, 1),
    Cell("minirl_length_norm", "minirl_length_norm", None, 1),
    Cell("minirl_no_clip", "minirl_no_clip", None, 1),
    Cell("minirl_r3", "minirl", "R3", 1),
    *(cell for n, stable in STABLE_REPLAY.items() for cell in _off_policy(n, stable)),
)


def by_name() -> dict[str, Cell]:
    return {cell.name: cell for cell in CELLS}


_HEADER = """\
# GENERATED from verl_stable/grid.py (the one declaration of the paper's grid, docs/method.md §4): edit there and
# rewrite this file with `python -m verl_stable.grid > recipes/qwen3_30b_a3b/grid.yaml`; tests/recipes fails when the
# two differ. Every cell is a set of choices on qwen3_30b_a3b.yaml and exists for backend=fsdp and backend=megatron;
# `python -m verl_stable.apps.recipes list` prints a launch line per cell.
"""
_REGIME_NOTE = {ON_POLICY: "N = 1: global 1,024 = 64 prompts x 16",
                OFF_POLICY: "N = 2, 4, 8: global 2,048 / 4,096 / 8,192, mini-batch 1,024"}


def grid_yaml() -> str:
    """The cell table as ``recipes/qwen3_30b_a3b/grid.yaml`` holds it: ``{regime: {cell: {algorithm, ...}}}``."""
    width = max(len(c.name) for c in CELLS) + 2
    loss_width = max(len(c.loss) for c in CELLS) + 1
    lines = [_HEADER.rstrip("\n")]
    for regime in (ON_POLICY, OFF_POLICY):
        lines.append(f"{regime + ':':<12} # {_REGIME_NOTE[regime]}")
        for c in (c for c in CELLS if c.regime == regime):
            replay = c.replay or "null"
            lines.append(f"  {c.name + ':':<{width}} {{algorithm: {c.loss + ',':<{loss_width}} "
                         f"routing_replay: {replay + ',':<5} offpolicy: {c.offpolicy}}}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(grid_yaml(), end="")
