"""The lab's grid: the paper's comparisons (arXiv 2512.01374; docs/method.md §4), one row per variant.

Every variant is a run of ``python -m verl_stable.main`` on the same base (same seed, data, model and sizes):
its row names the presets and overrides it adds, and nothing else differs. Off-policy variants split the
global batch into N mini-batches (``ppo_mini_batch_size`` = prompts per step / N), i.e. N gradient steps per
rollout; the cold-start rows change only the model they start from.

    name               regime          adds
    minirl             on-policy       algorithm=minirl
    minirl_no_is       on-policy       algorithm=minirl_no_is
    minirl_length_norm on-policy       algorithm=minirl_length_norm
    minirl_r3          on-policy       algorithm=minirl routing_replay=R3
    n2_no_clip ...     off-policy N=2  algorithm=minirl_no_clip (+ mini-batch = batch / 2)
    n2_r2_no_clip      off-policy N=2  algorithm=minirl_no_clip routing_replay=R2
    n2_r2 / n2_r3      off-policy N=2  algorithm=minirl routing_replay=R2 / R3
    n4_*               off-policy N=4  the same four
    cold_<name>_r2     cold start      algorithm=minirl routing_replay=R2, N=2, model from cold start <name>
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

MINI_BATCH_KEY = "actor_rollout_ref.actor.ppo_mini_batch_size"


@dataclass(frozen=True)
class Variant:
    """One run of the grid: ``presets`` (Hydra group choices) + ``n_minibatches`` + the cold start."""

    name: str
    regime: str  # "on-policy", "off-policy N=2", ..., "cold start"
    presets: tuple[str, ...]
    n_minibatches: int = 1
    cold_start: str = "default"
    extra: tuple[str, ...] = ()
    what: str = ""

    def overrides(self, prompts_per_step: int) -> list[str]:
        """The Hydra overrides this variant adds to the lab's base (sizes in prompts, as verl counts them)."""
        if self.n_minibatches < 1 or prompts_per_step % self.n_minibatches:
            raise ValueError(
                f"variant {self.name}: {prompts_per_step} prompts per step (lab --prompts) do not split into "
                f"{self.n_minibatches} mini-batches; use a multiple of {self.n_minibatches}"
            )
        mini = [f"{MINI_BATCH_KEY}={prompts_per_step // self.n_minibatches}"] if self.n_minibatches > 1 else []
        return [*self.presets, *mini, *self.extra]

    @property
    def label(self) -> str:
        return self.what or self.name


def _offpolicy(n: int) -> list[Variant]:
    regime = f"off-policy N={n}"
    return [
        Variant(f"n{n}_no_clip", regime, ("algorithm=minirl_no_clip",), n, what=f"MiniRL w/o clipping, N={n}"),
        Variant(
            f"n{n}_r2_no_clip",
            regime,
            ("algorithm=minirl_no_clip", "routing_replay=R2"),
            n,
            what=f"MiniRL + R2 w/o clipping, N={n}",
        ),
        Variant(f"n{n}_r2", regime, ("algorithm=minirl", "routing_replay=R2"), n, what=f"MiniRL + R2, N={n}"),
        Variant(f"n{n}_r3", regime, ("algorithm=minirl", "routing_replay=R3"), n, what=f"MiniRL + R3, N={n}"),
    ]


ON_POLICY: list[Variant] = [
    Variant("minirl", "on-policy", ("algorithm=minirl",), what="MiniRL"),
    Variant("minirl_no_is", "on-policy", ("algorithm=minirl_no_is",), what="MiniRL w/o train-infer IS"),
    Variant("minirl_length_norm", "on-policy", ("algorithm=minirl_length_norm",), what="MiniRL w/ length-norm"),
    Variant("minirl_r3", "on-policy", ("algorithm=minirl", "routing_replay=R3"), what="MiniRL + R3"),
]


def cold_start_variants(cold_starts: Iterable[str]) -> list[Variant]:
    return [
        Variant(
            f"cold_{name}_r2",
            "cold start",
            ("algorithm=minirl", "routing_replay=R2"),
            2,
            cold_start=name,
            what=f"MiniRL + R2, N=2, cold start {name}",
        )
        for name in cold_starts
    ]


def grid(cold_starts: Iterable[str] = ("default",)) -> dict[str, Variant]:
    """The whole grid (``lab --full``), by name, in the order the report lists it."""
    variants = [*ON_POLICY, *_offpolicy(2), *_offpolicy(4), *cold_start_variants(cold_starts)]
    return {v.name: v for v in variants}


#: ``verl-stable lab`` without --full: MiniRL against its no-IS ablation and R3, on-policy (three runs; their time
#: on 2 cores is the README's "A real run"): the mismatch dial's training-inference gap is what both
#: comparisons act on. ``--variants`` adds any other (``minirl_length_norm`` completes the paper's on-policy
#: block); ``--full`` adds off-policy N=2 / N=4 and the cold starts.
DEFAULT_VARIANTS: tuple[str, ...] = ("minirl", "minirl_no_is", "minirl_r3")
#: ``--quick`` (CI): one off-policy R2 run draws every plot (staleness KL, clipping and
#: route agreement need the second mini-batch) and writes the report. Start-up dominates each variant (README, "A
#: real run"), so a second variant would nearly double CI's time; no finding is tested at this size.
QUICK_VARIANTS: tuple[str, ...] = ("n2_r2",)


def select(names: Sequence[str] | None, table: Mapping[str, Variant]) -> list[Variant]:
    """The variants named (comma lists allowed), in table order; unknown names are refused, listing the known."""
    if not names:
        return list(table.values())
    wanted: list[str] = []
    for item in names:
        wanted.extend(n.strip() for n in item.split(",") if n.strip())
    unknown = [n for n in wanted if n not in table]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown} (lab --variants); known: {', '.join(table)}")
    return [table[n] for n in dict.fromkeys(wanted)]


@dataclass(frozen=True)
class GridSize:
    """How big each run is: steps, prompts per step x group size, held-out eval cadence."""

    steps: int
    prompts_per_step: int = 8
    group_size: int = 8
    eval_every: int = 0  # 0: evaluate before training and at the last step only
    notes: dict = field(default_factory=dict)


QUICK = GridSize(steps=2, prompts_per_step=4)
DEFAULT = GridSize(steps=16, prompts_per_step=8, eval_every=8)
FULL = GridSize(steps=30, prompts_per_step=8, eval_every=5)
