"""The lab's grid: the paper's cells (:mod:`verl_stable.grid`, the table the recipes launch) scaled down to a CPU,
and the paper's findings as declared :class:`Claim` rows on them.

Every variant is a run of ``python -m verl_stable.main`` on the same base (same seed, data, model and sizes):
its row names the presets and overrides it adds, and nothing else differs. Sizes count gradient steps and the
prompts of one gradient step, as the paper does: an off-policy variant rolls out N x as many prompts per step and
splits them into N mini-batches of the on-policy size (``data.train_batch_size`` = N x prompts,
``ppo_mini_batch_size`` = prompts), over steps / N rollout steps, so every variant makes the same number of
gradient steps of the same size on the same number of prompts; the cold-start rows change only the model they
start from.

    name               cell                   regime          adds
    minirl ...         minirl ...             on-policy       the cell's algorithm / routing_replay presets
    n2_r2 / n2_r3      minirl_r2_n2 / ..._r3  off-policy N=2  algorithm=minirl routing_replay=R2 / R3 (+ mini-batch)
    n2_r2_no_clip      minirl_no_clip_r2_n2   off-policy N=2  algorithm=minirl_no_clip routing_replay=R2
    n2_no_replay       minirl_no_replay_n2    off-policy N=2  algorithm=minirl
    n4_*               ..._n4                 off-policy N=4  the same four, the no-clip one with R3 (stable at N=4)
    cold_<name>_r2     --                     cold start      algorithm=minirl routing_replay=R2, N=2, model <name>
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from verl_stable import grid as paper

MINI_BATCH_KEY = "actor_rollout_ref.actor.ppo_mini_batch_size"
TRAIN_BATCH_KEY = "data.train_batch_size"
STEPS_KEY = "trainer.total_training_steps"
TEST_FREQ_KEY = "trainer.test_freq"
#: what a lab run's step counts (its meta's ``step_unit``): updates, an off-policy rollout being N of them. Runs
#: made before this sizing split one rollout into N smaller updates and have no ``step_unit``.
STEP_UNIT = "gradient"
#: The Ns the lab runs. N=8 would roll out 64 prompts per step over 2 rollout steps at the default size: too few
#: rollouts to follow a run; N=4 already shows the R2 / R3 reversal.
LAB_N: tuple[int, ...] = (1, 2, 4)


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
    #: the paper's cell this variant runs scaled down (:data:`verl_stable.grid.CELLS`); "" for the cold starts
    cell: str = ""

    def rollout_steps(self, size: "GridSize") -> int:
        """verl's steps (rollouts) for ``size.steps`` gradient steps: one per N gradient steps."""
        if self.n_minibatches < 1 or size.steps % self.n_minibatches:
            raise ValueError(
                f"variant {self.name}: {size.steps} gradient steps (lab --steps) are not whole rollouts of "
                f"{self.n_minibatches} updates each; use a multiple of {self.n_minibatches}"
            )
        return size.steps // self.n_minibatches

    def overrides(self, size: "GridSize") -> list[str]:
        """The Hydra overrides this variant adds to the lab's base (sizes in prompts, as verl counts them): an
        off-policy variant's global batch of N mini-batches, its rollout steps and its held-out eval cadence."""
        n = self.n_minibatches
        if n == 1:
            return [*self.presets, *self.extra]
        steps = self.rollout_steps(size)
        if size.eval_every % n:
            raise ValueError(
                f"variant {self.name}: held-out eval every {size.eval_every} gradient steps falls inside a rollout of "
                f"{n} updates; the lab's eval cadence must be a multiple of {n}"
            )
        sizes = [
            f"{TRAIN_BATCH_KEY}={size.prompts_per_step * n}",
            f"{MINI_BATCH_KEY}={size.prompts_per_step}",
            f"{STEPS_KEY}={steps}",
            f"{TEST_FREQ_KEY}={size.eval_every // n if size.eval_every else steps}",
        ]
        return [*self.presets, *sizes, *self.extra]

    @property
    def label(self) -> str:
        return self.what or self.name


_LOSS_WORDS = {
    "minirl": "MiniRL",
    "minirl_no_is": "MiniRL w/o train-infer IS",
    "minirl_length_norm": "MiniRL w/ length-norm",
    "minirl_no_clip": "MiniRL w/o clipping",
}


def variant_name(cell: paper.Cell) -> str:
    """The lab's short name: the cell's own on-policy, ``n<N>_<replay>[_no_clip]`` off-policy."""
    if cell.n == 1:
        return cell.name
    replay = cell.replay.lower() if cell.replay else "no_replay"
    return f"n{cell.n}_{replay}" + ("_no_clip" if cell.loss == "minirl_no_clip" else "")


def from_cell(cell: paper.Cell) -> Variant:
    loss = _LOSS_WORDS[cell.loss]
    if cell.n == 1:
        what = f"{loss} + {cell.replay}" if cell.replay else loss
        return Variant(variant_name(cell), "on-policy", cell.choices, what=what, cell=cell.name)
    if cell.replay:
        base, _, ablation = loss.partition(" w/o ")
        what = f"{base} + {cell.replay}" + (f" w/o {ablation}" if ablation else "")
    else:
        what = f"{loss} w/o routing replay"
    return Variant(
        variant_name(cell), f"off-policy N={cell.n}", cell.choices, cell.n, what=f"{what}, N={cell.n}", cell=cell.name
    )


#: The paper's cells the lab runs, in the grid's order.
CELL_VARIANTS: tuple[Variant, ...] = tuple(from_cell(c) for c in paper.CELLS if c.n in LAB_N)
ON_POLICY: list[Variant] = [v for v in CELL_VARIANTS if v.n_minibatches == 1]


#: The cell the cold-start rows run from each model: MiniRL + R2 at N=2, the paper's stable off-policy setting.
COLD_START_CELL = "minirl_r2_n2"


def cold_start_variants(cold_starts: Iterable[str]) -> list[Variant]:
    cell = paper.by_name()[COLD_START_CELL]
    return [
        Variant(
            f"cold_{name}_r2",
            "cold start",
            cell.choices,
            cell.n,
            cold_start=name,
            what=f"MiniRL + R2, N={cell.n}, cold start {name}",
            cell=cell.name,
        )
        for name in cold_starts
    ]


def grid(cold_starts: Iterable[str] = ("default",)) -> dict[str, Variant]:
    """The whole grid (``lab --full``), by name, in the order the report lists it."""
    variants = [*CELL_VARIANTS, *cold_start_variants(cold_starts)]
    return {v.name: v for v in variants}


#: ``verl-stable lab`` without --full (the main job): the most robust finding of the lab's search (docs/lab/search.md,
#: entry 18), off-policy N=4 MiniRL + R3 with clipping trains stably at the paper's sizing (every one of 8 runs, 4
#: seeds on each of two kernel sets, ended above its start), beside on-policy MiniRL at the same gradient steps, over
#: the default size's two seeds. Clipping's lead over no clipping at N=4 (+0.075 on both kernel sets, K=4) is not:
#: its interval excludes zero on one kernel set only. ``--variants`` runs any other; ``--full`` runs them all.
DEFAULT_VARIANTS: tuple[str, ...] = ("minirl", "n4_r3")
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
    """How big each run is, in gradient steps: steps, prompts per gradient step x group size, held-out eval cadence
    (off-policy variants roll out N gradient steps' prompts at once: :meth:`Variant.overrides`)."""

    steps: int
    prompts_per_step: int = 8
    group_size: int = 8
    eval_every: int = 0  # 0: evaluate before training and at the last step only
    notes: dict = field(default_factory=dict)
    #: the CLI's default number of seeds at this size (``--seeds``): two give a verdict, one only a run
    seeds: int = 1


#: ``--quick``'s n2_r2: two rollouts of 4 prompts, each two updates of 2 prompts
QUICK = GridSize(steps=4, prompts_per_step=2)
DEFAULT = GridSize(steps=16, prompts_per_step=8, eval_every=8, seeds=2)
#: steps and eval cadence multiples of every N the lab runs (4): each variant evaluates at the same gradient steps
FULL = GridSize(steps=32, prompts_per_step=8, eval_every=8, seeds=3)


# ----------------------------------------------------------------------------------------------- the paper's claims
#: How a :class:`Claim` reads its variants (one evaluator, :func:`verl_stable.lab.findings.evaluate`). "Beats" means
#: by more than the report's margin; a comparison inside it is inconclusive.
EXPECTS: dict[str, str] = {
    "a>b": "a's metric beats that of every b that ran (at least one must)",
    "a<=b": "a's metric does not beat b's: no gain",
    "a<b": "a's metric is below (1 - the KL margin) x b's",
    "a collapses": "a collapses; where it does not, b beating a reproduces the claim (trains worse)",
    "a learns": "a trains stably: its score at the end beats its start (held-out accuracy before training)",
    "converge": "the variants of `regime` that ran end within the margin of each other, or closer than they started",
}


@dataclass(frozen=True)
class Claim:
    """One finding of the paper (arXiv 2512.01374), stated on the lab's variants."""

    text: str
    expect: str  # a key of EXPECTS
    a: str = ""
    b: tuple[str, ...] = ()
    metric: str = "score"  # a field of verl_stable.lab.metrics.Summary
    #: how the evidence names the metric, where its field name alone would not say what was compared
    measure: str = ""
    #: a second metric shown beside the judged one, not judged
    shown: str = ""
    regime: str = ""  # "converge": every variant of this regime


def _off_policy_claims(n: int) -> tuple[Claim, ...]:
    """The paper's off-policy findings at N, on the replay mode the grid keeps stable there (and the other one)."""
    stable = paper.STABLE_REPLAY[n]
    other = "R3" if stable == "R2" else "R2"
    s, o = f"n{n}_{stable.lower()}", f"n{n}_{other.lower()}"
    return (
        Claim(
            f"Off-policy N={n}: MiniRL + {stable} (clipping and routing replay) trains stably: it ends above its start",
            "a learns",
            s,
        ),
        Claim(
            f"Off-policy N={n}: without clipping the run collapses (or trains worse than with clipping + {stable})",
            "a collapses",
            f"{s}_no_clip",
            (s,),
        ),
        Claim(
            f"Off-policy N={n}: without routing replay the run collapses (or trains worse than MiniRL + {stable})",
            "a collapses",
            f"n{n}_no_replay",
            (s,),
        ),
        Claim(f"Off-policy N={n}: MiniRL + {stable} beats MiniRL + {other}", "a>b", s, (o,)),
    )


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "On-policy, MiniRL is best: it beats w/o train-infer IS, w/ length-norm and + R3",
        "a>b",
        "minirl",
        ("minirl_no_is", "minirl_length_norm", "minirl_r3"),
    ),
    Claim("On-policy, w/o train-infer IS collapses (reward falls, entropy drops)", "a collapses", "minirl_no_is"),
    Claim("On-policy, length normalisation trains worse than MiniRL", "a>b", "minirl", ("minirl_length_norm",)),
    # Step 1 is paired: both runs start from the same weights and sample the same responses, so the KL differs
    # only by the routes the π_old pass uses. Later steps' KLs follow diverged weights and spike by 10x from
    # step to step: their means are shown, not judged.
    Claim(
        "R3 lowers the training-inference KL (on-policy)",
        "a<b",
        "minirl_r3",
        ("minirl",),
        metric="train_infer_kl_step1",
        measure="step-1 rollout_corr/k3_kl (same weights and samples)",
        shown="train_infer_kl",
    ),
    Claim("R3 brings no gain on-policy (score within the margin of MiniRL, or lower)", "a<=b", "minirl_r3", ("minirl",)),
    *(claim for n in LAB_N if n > 1 for claim in _off_policy_claims(n)),
    Claim("Different cold starts with MiniRL + R2 converge to similar final scores", "converge", regime="cold start"),
)


def check_claims(claims: Sequence[Claim], table: Mapping[str, Variant]) -> None:
    """Refuse a claim that names a variant or regime the grid does not have, or an unknown relation: a renamed
    variant must fail here, not turn its finding into "not tested"."""
    for claim in claims:
        if claim.expect not in EXPECTS:
            raise ValueError(f"claim {claim.text!r}: expect={claim.expect!r} is not one of {list(EXPECTS)}")
        unknown = [n for n in (claim.a, *claim.b) if n and n not in table]
        if unknown:
            raise ValueError(f"claim {claim.text!r} names variant(s) {unknown} the lab's grid does not have")
        if claim.regime and not any(v.regime == claim.regime for v in table.values()):
            raise ValueError(f"claim {claim.text!r} names regime {claim.regime!r} no variant of the grid has")
        if not (claim.a or claim.regime):
            raise ValueError(f"claim {claim.text!r} names no variant")
        if claim.expect == "a learns" and (claim.b or claim.metric != "score"):
            raise ValueError(f"claim {claim.text!r}: 'a learns' compares a's score with its own start, nothing else")


check_claims(CLAIMS, grid())
